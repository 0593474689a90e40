"""Only the models, with plain pyinfra: ``pyinfra inventories/prod.py deploy/models.py``."""

from provisioner.deploys.models import ollama_models

ollama_models()
