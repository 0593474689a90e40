"""The whole stack, in order: GPU stack (driver, CUDA toolkit, PyTorch), Ollama, models.

This is what ``provision apply`` runs (through ``provisioner/entrypoints/site.py``) and what an
operator's own pyinfra code can call.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from provisioner import fact_cache, host_lock
from provisioner.deploys.gpu import gpu_stack
from provisioner.deploys.models import ollama_models, source_settings
from provisioner.deploys.monitoring import monitoring, record_apply
from provisioner.deploys.ollama import install_ollama
from provisioner.facts import gpu_state, ollama_state
from provisioner.facts.system import HostLock
from provisioner.operations import system


@deploy("provisioner")
def site() -> None:
    """
    Driver → CUDA toolkit → PyTorch → Ollama → the models planned for each host → monitoring
    (node_exporter and the health collector, with ``monitoring = true``), and last the record
    of the successful run; all of it under the host's provisioner lock (one run per host at a
    time, ``provisioner.host_lock``).

    **Example:**

    .. code:: python

        from provisioner.deploys.site import site

        site()
    """
    register_planning_state()
    system.run_lock(name="Hold the host lock")
    gpu_stack()
    install_ollama()
    ollama_models()
    monitoring()
    record_apply()


def register_planning_state() -> None:
    """Register what every layer reads to plan the host (``fact_cache.register``), the host
    lock first: the GPU stack's planning probe then reads all of it in one command, the lock
    taken before the state it guards, and a converged host costs two commands (plan,
    execute)."""
    fact_cache.register(
        [
            (HostLock, {"owner": host_lock.owner()}),
            *gpu_state.PLAN_FACTS,
            *ollama_state.plan_keys(source_settings(host.data)["models_dir"]),
        ]
    )
