"""The NVIDIA driver: NVIDIA's CUDA repository with a checked signing key, a pinned and held
driver branch in the kernel-module flavour the GPUs need, nouveau off, a reboot only when the
module that runs is not the installed one, nvidia-persistenced, and Fabric Manager on NVSwitch
systems.

``nvidia_driver`` is the reusable ``@deploy``; every key it reads is declared in
``data/keys/nvidia_driver.toml`` (and ``core.toml``: ``gpu``). What each step does and why:
docs/gpu-stack.md.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from provisioner import gpu_stack
from provisioner.deploys import _gpu_plan
from provisioner.operations import nvidia

__all__ = ["DEFAULTS", "install_driver", "nvidia_driver"]

DEFAULTS = _gpu_plan.STACK_DEFAULTS
COMPONENT = "NVIDIA driver"


def describe(plan: gpu_stack.DriverPlan) -> str:
    if plan.skip:
        return f"skipped, {plan.skip}"
    text = f"branch {plan.branch}, {plan.flavour} kernel modules ({plan.flavour_reason})"
    if plan.nvswitch:
        text += ", Fabric Manager (NVSwitch system)"
    if plan.change:
        text += f"; replacing the installed driver: {plan.change}"
    return text


def install_driver(plan: gpu_stack.DriverPlan) -> None:
    """The driver's operations for one planned host; the same sequence on every host (a
    CPU-only host passes ``skip`` to each)."""
    _gpu_plan.announce(COMPONENT, describe(plan))
    skip = plan.skip
    distro = plan.distro_key
    key = plan.key or gpu_stack.KeySource("", "", None, None, False)
    target = plan.distro
    own = target is not None and target.distribution_driver
    repo_skip = skip or ("the distribution's own driver packages are used" if own else None)
    nvidia.repo_key(
        name="Install the NVIDIA repository signing key",
        distro=distro,
        url=key.url,
        path=key.path,
        sha256=key.sha256,
        fingerprint=key.fingerprint,
        strip_version=key.strip_version,
        skip=repo_skip,
    )
    nvidia.repository(
        name="Configure the NVIDIA CUDA repository",
        distro=distro,
        url=plan.repo_url,
        key_path=key.path,
        skip=repo_skip,
    )
    nvidia.repo_preference(
        name="Prefer NVIDIA's repository over the distribution's", distro=distro, skip=repo_skip
    )
    nvidia.distro_components(
        name="Enable the archive components the driver needs",
        components=list(plan.extra_components),
        exclude_urls=[plan.repo_url, *([plan.headers_repo_url] if plan.headers_repo_url else [])],
        skip=skip,
    )
    nvidia.headers_repository(
        name="Configure the kernel headers repository",
        distro=distro,
        url=plan.headers_repo_url,
        codename=plan.codename,
        skip=skip,
    )
    prerequisites = []
    if target:
        prerequisites = [plan.headers, *target.prerequisites]
    nvidia.packages(
        name="Install the running kernel's headers and the driver prerequisites",
        distro=distro,
        packages=prerequisites,
        skip=skip,
    )
    nvidia.branch_lock(
        name=f"Lock the driver to branch {plan.branch or '-'}",
        distro=distro,
        branch=plan.branch,
        flavour=plan.flavour,
        skip=skip,
    )
    nvidia.dkms_signing(
        name="Sign DKMS modules with the Machine Owner Key",
        key=plan.mok_key,
        cert=plan.mok_cert,
        skip=skip,
    )
    installed = nvidia.driver(
        name="Install the NVIDIA driver",
        distro=distro,
        branch=plan.branch,
        flavour=plan.flavour,
        version=plan.version,
        kernel=plan.kernel,
        skip=skip,
    )
    nvidia.fabricmanager(
        name="Install Fabric Manager at the driver's version",
        distro=distro,
        nvswitch=plan.nvswitch,
        branch=plan.branch,
        version=plan.version,
        skip=skip,
    )
    nvidia.hold(name="Hold the driver packages", distro=distro, skip=skip)
    nvidia.auto_upgrades_exclude(
        name="Keep unattended upgrades off the driver packages", distro=distro, skip=skip
    )
    nvidia.kernel_hold(
        name="Hold the running kernel's packages (nvidia_hold_kernel)",
        distro=distro,
        kernel=plan.kernel,
        hold=plan.hold_kernel,
        skip=skip,
    )
    nvidia.blacklist_nouveau(name="Blacklist nouveau", distro=distro, skip=skip)
    nvidia.reboot_if_needed(
        name="Reboot into the installed driver when needed",
        distro=distro,
        reboot=plan.reboot,
        changed=[installed],
        reboot_timeout=plan.reboot_timeout,
        skip=skip,
        _parallel=host.data.get("nvidia_reboot_batch") or 1,
    )
    nvidia.persistenced_override(
        name="Turn persistence mode on in nvidia-persistenced", distro=distro, skip=skip
    )
    nvidia.driver_service(
        name="Enable and start nvidia-persistenced",
        service="nvidia-persistenced",
        distro=distro,
        skip=skip,
    )
    nvidia.driver_service(
        name="Enable and start Fabric Manager",
        service="nvidia-fabricmanager",
        distro=distro,
        skip=skip or (None if plan.nvswitch else "not an NVSwitch system"),
    )


@deploy(COMPONENT, data_defaults=DEFAULTS)
def nvidia_driver() -> None:
    """
    Install, lock and load the NVIDIA driver (or skip a CPU-only host with the reason).

    A host whose data or hardware cannot work (unknown distro or architecture, a branch that
    does not drive its GPUs, an installed driver of another branch without
    ``nvidia_driver_allow_branch_change``) is failed before anything changes on it.

    **Example:**

    .. code:: python

        from provisioner.deploys.nvidia_driver import nvidia_driver

        nvidia_driver()
    """
    plan = _gpu_plan.plan(COMPONENT)
    if plan is not None:
        install_driver(plan.driver)
