"""The running NVIDIA kernel module: which version runs, and why a reboot is (still) needed.
Part of :mod:`provisioner.gpu_stack`, which re-exports every name here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provisioner.gpu_packages import InstalledDriver


def loaded_module_version(
    module: Mapping[str, Any] | None, smi: Mapping[str, Any] | None
) -> str | None:
    """The version of the NVIDIA kernel module that runs: from /sys/module/nvidia/version or
    /proc/driver/nvidia/version, else the driver version nvidia-smi reports when it works
    (NVML only initialises when the user-space library and the loaded module agree)."""
    if module and module.get("version"):
        return str(module["version"])
    if smi and smi.get("state") == "ok" and smi.get("driver_version"):
        return str(smi["driver_version"])
    return None


def reboot_reasons(
    installed: InstalledDriver,
    module: Mapping[str, Any] | None,
    smi: Mapping[str, Any] | None,
) -> list[str]:
    """Why the module that should run is not the one that runs (empty: no reboot needed)."""
    reasons = []
    if (module or {}).get("nouveau_loaded"):
        reasons.append("the nouveau module is loaded")
    if not installed.driver_version:
        return reasons
    loaded = loaded_module_version(module, smi)
    state = (smi or {}).get("state")
    if state == "driver-mismatch":
        reasons.append(
            f"nvidia-smi reports a driver/library version mismatch "
            f"(installed {installed.driver_version})"
        )
    elif loaded is None:
        reasons.append(f"no NVIDIA kernel module is loaded (installed {installed.driver_version})")
    elif loaded != installed.driver_version:
        reasons.append(
            f"the loaded NVIDIA module is {loaded}, the installed driver is "
            f"{installed.driver_version}"
        )
    loaded_flavour = (module or {}).get("flavour")
    if loaded and loaded_flavour and installed.flavour and loaded_flavour != installed.flavour:
        reasons.append(
            f"the loaded module is the {loaded_flavour} flavour, {installed.flavour} is installed"
        )
    return reasons


def module_problem(
    installed: InstalledDriver, module: Mapping[str, Any] | None, smi: Mapping[str, Any] | None
) -> str | None:
    """After a reboot: what is still wrong with the running module (None: all right)."""
    reasons = reboot_reasons(installed, module, smi)
    if reasons:
        return "; ".join(reasons)
    if not installed.driver_version:
        return "no NVIDIA driver package is installed"
    state = (smi or {}).get("state")
    if state != "ok":
        detail = (smi or {}).get("error") or ""
        return f"nvidia-smi state is {state}" + (f": {detail}" if detail else "")
    return None
