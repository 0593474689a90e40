"""Connect to the hosts of an inventory and gather their facts, in parallel.

The result is the ``provision facts --json`` shape, one entry per host::

    {"gpu_state": "ok"|"no-driver"|"driver-mismatch"|"no-gpu"|"error"|"unreachable",
     "gpus": [{"index", "name", "uuid", "memory_total_mib", "compute_cap", "pci_bus_id", "mig"}],
     "driver_version", "cuda_version", "error",
     "os": {"id", "version_id", "codename", "arch", ...},
     "memory_total_mib", "pci_devices": [{"slot", "class_id", "vendor_id", "device_id"}]}

A host that cannot be reached is reported (state ``unreachable``, the error kept) and never
stops the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner.nvidia_smi import gpus_on_bus

if TYPE_CHECKING:
    from pyinfra.api import Host

    from provisioner.inventory import LoadedInventory


def host_facts(host: Host, cuda_version: bool = True) -> dict[str, Any]:
    """Run the provisioner's facts on one connected host (also used inside operations);
    without ``cuda_version`` nvidia-smi runs once and ``cuda_version`` is None."""
    from provisioner.facts.gpu import NvidiaPciDevices, NvidiaSmi
    from provisioner.facts.system import MemoryTotal, OsInfo

    smi = host.get_fact(NvidiaSmi, cuda_version=cuda_version)
    pci = host.get_fact(NvidiaPciDevices)
    return shape(smi, pci, host.get_fact(OsInfo), host.get_fact(MemoryTotal))


def shape(
    smi: dict[str, Any], pci: list[dict[str, Any]], os_info: dict[str, Any], memory_mib: int | None
) -> dict[str, Any]:
    """Combine raw fact values into the ``provision facts --json`` host shape."""
    state = smi.get("state", "error")
    # nvidia-smi absent (no error text) and no NVIDIA GPU on the PCI bus: a CPU-only host.
    if state == "no-driver" and smi.get("error") is None and not gpus_on_bus(pci):
        state = "no-gpu"
    return {
        "gpu_state": state,
        "gpus": smi.get("gpus") or [],
        "driver_version": smi.get("driver_version"),
        "cuda_version": smi.get("cuda_version"),
        "error": smi.get("error"),
        "os": os_info,
        "memory_total_mib": memory_mib,
        "pci_devices": pci,
    }


def unreachable(error: str) -> dict[str, Any]:
    """The ``provision facts --json`` shape of a host that could not be reached."""
    return {
        "gpu_state": "unreachable",
        "gpus": [],
        "driver_version": None,
        "cuda_version": None,
        "error": error,
        "os": {},
        "memory_total_mib": None,
        "pci_devices": [],
    }


def gather(loaded: LoadedInventory, parallel: int = 0) -> dict[str, dict[str, Any]]:
    """Facts of every selected host, by host name, in inventory order."""
    import logging

    from provisioner import fleet

    # pyinfra's own warnings (e.g. unknown host keys) would interleave with our report.
    pyinfra_log = logging.getLogger("pyinfra")
    level = pyinfra_log.level
    pyinfra_log.setLevel(logging.ERROR)
    state = fleet.make_state(loaded, parallel)
    try:
        unreached = fleet.connect(state, loaded.hosts)
        facts, errors = fleet.each(state, fleet.connected(state, loaded.hosts), host_facts)
    finally:
        fleet.disconnect(state)
        pyinfra_log.setLevel(level)
    results = {name: unreachable(error) for name, error in unreached.items()}
    results.update(facts)
    for name, error in errors.items():
        results[name] = {**unreachable(f"fact gathering failed: {error}"), "gpu_state": "error"}
    return {host.name: results[host.name] for host in loaded.hosts}
