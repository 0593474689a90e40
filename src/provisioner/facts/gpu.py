"""
GPU facts: what ``nvidia-smi`` reports (GPUs, driver, CUDA, state) and the NVIDIA PCI
devices ``lspci`` sees before any driver is installed.

Neither fact ever raises from ``process()``: pyinfra aborts every host of a run when a
fact's parser raises, and a host whose GPU stack is broken is a normal input here.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from provisioner import nvidia_smi

__all__ = ["NvidiaSmi", "NvidiaPciDevices", "ONE_RUN"]

# NvidiaSmi's arguments where the CUDA version is not needed (the deploys, the model plan):
# one nvidia-smi run instead of two
ONE_RUN: dict[str, Any] = {"cuda_version": False}


class NvidiaSmi(FactBase[dict[str, Any]]):
    """
    Returns the host's NVIDIA GPUs as ``nvidia-smi`` reports them, with the driver
    version and the newest CUDA version that driver supports:

    .. code:: python

        {
            "state": "ok",  # or no-driver, driver-mismatch, no-gpu, error
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA H100 80GB HBM3",
                    "uuid": "GPU-...",
                    "memory_total_mib": 81559,
                    "compute_cap": "9.0",
                    "pci_bus_id": "00000000:00:09.0",
                    "mig": "Disabled",  # Enabled, Disabled or None (no MIG support)
                },
            ],
            "driver_version": "590.48.01",
            "cuda_version": "13.1",
            "error": None,  # nvidia-smi's own message when it failed
        }

    ``no-driver``: nvidia-smi is not on PATH, or cannot talk to the kernel module (exit
    status 9). ``driver-mismatch``: the kernel module loaded is older than the userspace
    library (exit status 18, e.g. after a driver upgrade without a reboot); ``error``
    keeps the message with the NVML library version. ``no-gpu``: the driver works but
    sees no GPU. ``error``: anything else, with the message kept.

    ``cuda_version=False`` runs nvidia-smi once instead of twice (``cuda_version`` is then
    None): the query answers the GPUs and the driver version, and only the default table has
    the CUDA version. On a real host each run loads NVML and queries every GPU; the deploys,
    which never use the CUDA version, read it so (``ONE_RUN``).
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return nvidia_smi.result(nvidia_smi.STATE_ERROR, error="no output from the fact command")

    def command(self, cuda_version: bool = True) -> str:
        return nvidia_smi.fact_script(cuda_version)

    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            return nvidia_smi.parse_fact_output(output)
        except Exception as exc:  # a fact must never abort the run
            return nvidia_smi.result(
                nvidia_smi.STATE_ERROR,
                error=f"could not parse nvidia-smi output: {exc!r}",
            )


class NvidiaPciDevices(FactBase[list[dict[str, str]]]):
    """
    Returns the NVIDIA GPUs and NVSwitches on the PCI bus, from ``lspci -n -D``, so a
    host can be planned before its driver is installed:

    .. code:: python

        [
            {"slot": "0000:01:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
        ]

    Kept classes: 0300 (VGA), 0302 (3D controller), 0380 (other display controller) and
    0680 (bridge: NVSwitch). The audio, USB and UCSI functions of consumer cards are left
    out. Without ``lspci`` (package ``pciutils``, absent from minimal images) the same lines
    are read from ``/sys/bus/pci/devices/*/{class,vendor,device}``.
    """

    @staticmethod
    def default() -> list[dict[str, str]]:
        return []

    def command(self) -> str:
        return (
            'PATH="$PATH:/usr/sbin:/sbin"; '
            "if command -v lspci >/dev/null 2>&1; then "
            f"lspci -n -D -d {nvidia_smi.NVIDIA_VENDOR_ID}: 2>/dev/null; "
            f"elif [ -d /sys/bus/pci/devices ]; then {nvidia_smi.SYSFS_PCI_SCRIPT}; fi; true"
        )

    def process(self, output: list[str]) -> list[dict[str, str]]:
        try:
            return nvidia_smi.parse_lspci(output)
        except Exception:  # a fact must never abort the run
            return []
