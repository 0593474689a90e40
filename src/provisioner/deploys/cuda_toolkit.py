"""The CUDA toolkit: ``cuda-toolkit-X-Y`` from NVIDIA's repository (configured by the driver
deploy, which runs first) and its ``bin`` on PATH for login shells. Optional per host:
``cuda_toolkit_version`` unset installs nothing (PyTorch's wheels bring their own runtime).
Keys: ``data/keys/cuda_toolkit.toml``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from provisioner import gpu_stack
from provisioner import lock as fleet_lock
from provisioner.deploys import _gpu_plan
from provisioner.operations import nvidia

__all__ = ["DEFAULTS", "cuda_toolkit", "install_toolkit"]

DEFAULTS = _gpu_plan.STACK_DEFAULTS
COMPONENT = "CUDA toolkit"


def install_toolkit(plan: gpu_stack.ToolkitPlan, driver: gpu_stack.DriverPlan) -> None:
    """The toolkit's operations for one planned host (the same sequence on every host)."""
    skip = plan.skip
    _gpu_plan.announce(
        COMPONENT, f"skipped, {skip}" if skip else f"{plan.package}, {plan.bin_dir} on PATH"
    )
    nvidia.packages(
        name="Install the CUDA toolkit",
        distro=driver.distro_key,
        packages=[_locked(plan.package, driver)] if plan.package else [],
        skip=skip,
    )
    nvidia.toolkit_path(
        name="Put the CUDA toolkit on PATH for login shells",
        version=plan.version,
        bin_dir=plan.bin_dir,
        skip=skip,
    )


def _locked(package: str, driver: gpu_stack.DriverPlan) -> str:
    """``package`` at the version the fleet's lock holds for this host (``name=version`` on
    apt, ``name-version`` on dnf), or as it is without a lock."""
    version = fleet_lock.package_version(fleet_lock.current(), host.name, "toolkit", package)
    if not version or driver.distro is None:
        return package
    return f"{package}{driver.distro.family.version_separator}{version.split(':', 1)[-1]}"


@deploy(COMPONENT, data_defaults=DEFAULTS)
def cuda_toolkit() -> None:
    """
    Install the CUDA toolkit of ``cuda_toolkit_version`` (e.g. ``"13.0"``) and put it on PATH
    for login shells; refuse a version the driver branch cannot run.

    **Example:**

    .. code:: python

        from provisioner.deploys.cuda_toolkit import cuda_toolkit

        cuda_toolkit()
    """
    plan = _gpu_plan.plan(COMPONENT, toolkit=True)
    if plan is not None and plan.toolkit is not None:
        install_toolkit(plan.toolkit, plan.driver)
