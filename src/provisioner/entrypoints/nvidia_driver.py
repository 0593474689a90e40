"""pyinfra deploy file of the NVIDIA driver alone (``python -m pyinfra INVENTORY <this file>``):
the driver deploy without the CUDA toolkit, PyTorch, Ollama and models."""

from provisioner.deploys.nvidia_driver import nvidia_driver

nvidia_driver()
