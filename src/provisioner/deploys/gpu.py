"""The whole GPU stack in one deploy: driver, CUDA toolkit and PyTorch, with every part of the
plan checked before anything runs on a host (a PyTorch pairing the driver cannot run refuses
the host before its driver is touched)."""

from __future__ import annotations

from pyinfra.api import deploy

from provisioner.deploys import _gpu_plan
from provisioner.deploys.cuda_toolkit import install_toolkit
from provisioner.deploys.nvidia_driver import install_driver
from provisioner.deploys.pytorch import install_pytorch

__all__ = ["DEFAULTS", "gpu_stack"]

DEFAULTS = _gpu_plan.STACK_DEFAULTS


@deploy("GPU stack", data_defaults=DEFAULTS)
def gpu_stack() -> None:
    """
    NVIDIA driver, then the CUDA toolkit (when ``cuda_toolkit_version`` is set), then PyTorch.

    **Example:**

    .. code:: python

        from provisioner.deploys.gpu import gpu_stack

        gpu_stack()
    """
    plan = _gpu_plan.plan("GPU stack", toolkit=True, torch=True)
    if plan is None or plan.toolkit is None or plan.torch is None:
        return
    install_driver(plan.driver)
    install_toolkit(plan.toolkit, plan.driver)
    install_pytorch(plan.torch)
