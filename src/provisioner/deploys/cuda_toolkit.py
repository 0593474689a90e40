"""The CUDA toolkit: ``cuda-toolkit-X-Y`` from NVIDIA's repository (configured by the driver
deploy, which runs first) and its ``bin`` on PATH for login shells. Optional per host:
``cuda_toolkit_version`` unset installs nothing (PyTorch's wheels bring their own runtime).
Keys: ``data/keys/cuda_toolkit.toml``.
"""

from __future__ import annotations

from pyinfra.api import deploy

from provisioner import gpu_stack
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
        packages=[plan.package] if plan.package else [],
        skip=skip,
    )
    nvidia.toolkit_path(
        name="Put the CUDA toolkit on PATH for login shells",
        version=plan.version,
        bin_dir=plan.bin_dir,
        skip=skip,
    )


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
