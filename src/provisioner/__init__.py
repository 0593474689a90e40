"""provisioner: turn bare NVIDIA machines into private LLM/ML servers with pyinfra."""

__version__ = "0.1.0"
