"""PyTorch in a virtual environment owned by a service user, from the wheel index that matches
the driver branch and the GPUs (``cu126``/``cu128``/``cu130``, ``cpu`` on hosts without a GPU),
at a pinned version. Keys: ``data/keys/pytorch.toml``.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from provisioner import gpu_stack
from provisioner import lock as fleet_lock
from provisioner.deploys import _gpu_plan
from provisioner.operations import nvidia
from provisioner.operations import pytorch as pytorch_ops

__all__ = ["DEFAULTS", "install_pytorch", "pytorch"]

DEFAULTS = _gpu_plan.STACK_DEFAULTS
COMPONENT = "PyTorch"


def install_pytorch(plan: gpu_stack.TorchPlan) -> None:
    """PyTorch's operations for one planned host (the same sequence on every host)."""
    assert plan.distro is not None
    _gpu_plan.announce(
        COMPONENT, f"torch {plan.local_version} from {plan.index_url} ({plan.reason})"
    )
    nvidia.packages(
        name="Install what Python virtual environments need",
        distro=plan.distro.key,
        packages=[*plan.distro.venv_packages, *plan.python_packages],
    )
    pytorch_ops.service_user(name=f"Create the service user {plan.user}", user=plan.user)
    pytorch_ops.venv(
        name=f"Create the virtual environment {plan.venv}",
        path=plan.venv,
        user=plan.user,
        python=plan.python,
    )
    pytorch_ops.torch(
        name=f"Install torch {plan.local_version}",
        venv=plan.venv,
        version=plan.version,
        tag=plan.tag,
        index_url=plan.index_url,
        user=plan.user,
        trusted_host=plan.trusted_host,
        wheel=fleet_lock.torch_wheel(fleet_lock.current(), host.name, plan.index_url, plan.version),
    )


@deploy(COMPONENT, data_defaults=DEFAULTS)
def pytorch() -> None:
    """
    Install the pinned PyTorch from the matching wheel index into its virtual environment;
    refuse a pairing the driver cannot run (e.g. cu130 wheels on branch 570), naming both.

    **Example:**

    .. code:: python

        from provisioner.deploys.pytorch import pytorch

        pytorch()
    """
    plan = _gpu_plan.plan(COMPONENT, torch=True)
    if plan is not None and plan.torch is not None:
        install_pytorch(plan.torch)
