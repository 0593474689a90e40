"""The GPU stack's state probes: every fact the driver, CUDA toolkit and PyTorch operations
read, as ``(fact class, arguments)`` keys for ``fact_cache.probe`` (one remote command each).

Two probes, because the second's paths come from the plan the first one's facts make:

* ``PLAN_FACTS``: what ``deploys/_gpu_plan.gather_facts`` plans a host from;
* ``operation_keys(plan)``: what the operations read at their top (our own and pyinfra's
  ``files.put``, ``apt.sources_file``, ``systemd.service`` inside them), with the arguments
  they pass: a key spelled differently is simply read alone, so a missing key costs one
  command, never a wrong value.
"""

from __future__ import annotations

import posixpath
from typing import Any

from pyinfra.api import FactBase
from pyinfra.facts.apt import AptSources
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from provisioner import gpu_stack
from provisioner.facts.gpu import ONE_RUN, NvidiaPciDevices, NvidiaSmi
from provisioner.facts.nvidia import (
    AptSourcesFor,
    GpuStackPackages,
    KernelPackages,
    NvidiaKernelModule,
    RepoKey,
    SecureBoot,
)
from provisioner.facts.pytorch import TorchVersion
from provisioner.facts.system import KernelRelease, OsInfo, UserAccount

Key = tuple[type[FactBase], dict[str, Any]]

PLAN_FACTS: list[Key] = [
    (OsInfo, {}),
    (KernelRelease, {}),
    (NvidiaPciDevices, {}),
    (NvidiaSmi, ONE_RUN),
    (GpuStackPackages, {}),
    (NvidiaKernelModule, {}),
    (SecureBoot, {}),
]

# the operations' fixed paths (operations/nvidia.py) and the folders pyinfra's files.put checks
NOUVEAU_BLACKLIST = "/etc/modprobe.d/blacklist-nouveau.conf"
CUDA_PROFILE = "/etc/profile.d/cuda.sh"
REPO_PREFERENCE = "/etc/apt/preferences.d/nvidia-cuda.pref"
PERSISTENCED_DROPIN = "/etc/systemd/system/nvidia-persistenced.service.d/provisioner.conf"
DNF_REPO_FILE = "/etc/yum.repos.d/nvidia-cuda.repo"  # pyinfra's dnf.repo(src="nvidia-cuda")


def put_keys(path: str) -> list[Key]:
    """What pyinfra's ``files.put`` reads of a destination (pyinfra 3.10 files.put)."""
    return [
        (File, {"path": path}),
        (Directory, {"path": posixpath.dirname(path)}),
        (Sha1File, {"path": path}),
    ]


def service_keys(unit: str) -> list[Key]:
    """What pyinfra's ``systemd.service`` reads of a system unit (pyinfra 3.10)."""
    args = {"user_mode": False, "machine": None, "user_name": None, "services": [unit]}
    return [(SystemdStatus, dict(args)), (SystemdEnabled, dict(args))]


def _repository_keys(driver: gpu_stack.DriverPlan, target: gpu_stack.Distro) -> list[Key]:
    """NVIDIA's repository: key, source (apt) or repo file (dnf), apt's preference."""
    if target.distribution_driver:
        return []
    keys: list[Key] = []
    if driver.key is not None:
        keys.append((RepoKey, {"path": driver.key.path}))
    if target.family.name == "apt":
        return [*keys, (AptSourcesFor, {"url": driver.repo_url}), *put_keys(REPO_PREFERENCE)]
    return [*keys, *put_keys(DNF_REPO_FILE)]


def _driver_keys(driver: gpu_stack.DriverPlan) -> list[Key]:
    target = driver.distro
    if driver.skip or target is None:
        return []
    keys: list[Key] = [
        *_repository_keys(driver, target),
        *put_keys(NOUVEAU_BLACKLIST),
        (File, {"path": gpu_stack.REBOOT_MARKER}),
        *service_keys("nvidia-persistenced.service"),
    ]
    if target.persistenced_dropin:
        keys += put_keys(PERSISTENCED_DROPIN)
    if target.family.auto_upgrades_dropin:  # nvidia.auto_upgrades_exclude
        keys += put_keys(target.family.auto_upgrades_dropin)
    names = target.kernel_packages(driver.kernel) if driver.hold_kernel else []
    keys.append((KernelPackages, {"names": names}))  # nvidia.kernel_hold
    if target.family.name == "apt":
        keys.append((AptSources, {}))
    return keys


def operation_keys(plan: gpu_stack.StackPlan) -> list[Key]:
    """Every fact the GPU stack's operations read on a host with this plan."""
    keys = _driver_keys(plan.driver)
    if plan.toolkit is not None and not plan.toolkit.skip:
        keys += put_keys(CUDA_PROFILE)
    torch = plan.torch
    if torch is not None:
        keys += [
            (UserAccount, {"user": torch.user}),
            (Directory, {"path": torch.venv}),
            (File, {"path": posixpath.join(torch.venv, "pyvenv.cfg")}),
            (TorchVersion, {"python": posixpath.join(torch.venv, "bin", "python")}),
        ]
    return keys
