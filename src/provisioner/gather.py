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
    from pyinfra.api import Host, State

    from provisioner.inventory import LoadedInventory


def host_facts(host: Host) -> dict[str, Any]:
    """Run the provisioner's facts on one connected host (also used inside operations)."""
    from provisioner.facts.gpu import NvidiaPciDevices, NvidiaSmi
    from provisioner.facts.system import MemoryTotal, OsInfo

    smi = host.get_fact(NvidiaSmi)
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


def make_state(loaded: LoadedInventory, parallel: int = 0) -> State:
    from pyinfra.api import Config, State

    state = State()
    state.init(loaded.inventory, Config(PARALLEL=parallel), initial_limit=loaded.hosts)
    return state


def gather(loaded: LoadedInventory, parallel: int = 0) -> dict[str, dict[str, Any]]:
    """Facts of every selected host, by host name, in inventory order."""
    import logging

    import gevent
    from pyinfra.context import ctx_host, ctx_state

    # pyinfra's own warnings (e.g. unknown host keys) would interleave with our report.
    logging.getLogger("pyinfra").setLevel(logging.ERROR)

    state = make_state(loaded, parallel)
    results: dict[str, dict[str, Any]] = {}

    def one(host: Host) -> None:
        try:
            host.connect(raise_exceptions=True, show_errors=False)
        except Exception as exc:  # connection refused, auth, DNS...: the host is reported
            results[host.name] = unreachable(f"{type(exc).__name__}: {exc}".strip())
            return
        state.activate_host(host)
        try:
            with ctx_state.use(state), ctx_host.use(host):
                results[host.name] = host_facts(host)
        except Exception as exc:
            failed = unreachable(f"fact gathering failed: {exc}")
            results[host.name] = {**failed, "gpu_state": "error"}
        finally:
            host.disconnect()

    greenlets = [state.pool.spawn(one, host) for host in loaded.hosts]
    gevent.joinall(greenlets)
    return {host.name: results[host.name] for host in loaded.hosts}
