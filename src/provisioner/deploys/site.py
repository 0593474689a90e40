"""The whole stack, in order: GPU stack (driver, CUDA toolkit, PyTorch), Ollama, models.

This is what ``provision apply`` runs (through ``provisioner/entrypoints/site.py``) and what an
operator's own pyinfra code can call.
"""

from __future__ import annotations

from pyinfra.api import deploy

from provisioner.deploys.gpu import gpu_stack
from provisioner.deploys.models import ollama_models
from provisioner.deploys.monitoring import monitoring, record_apply
from provisioner.deploys.ollama import install_ollama
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
    system.run_lock(name="Hold the host lock")
    gpu_stack()
    install_ollama()
    ollama_models()
    monitoring()
    record_apply()
