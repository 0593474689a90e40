"""The smoke profile for the Vagrant VMs (every host of inventories/vagrant.py).

One small model, sized to the VM's RAM: enough for `provision verify` to load it and run a
generation on CPU, small enough to download and load in a few minutes. The Vagrantfile gives each
VM 4096 MiB (PROVISIONER_VM_MEMORY); the guest sees about 3.8 GiB of it.
"""

import os

# A VM has no NVIDIA GPU unless one is passed through (PROVISIONER_GPU_PCI, libvirt only; see
# the Vagrantfile). Then `gpu` stays unset and each VM is classified from its own PCI devices:
# the VM that got the GPU takes the GPU path, the others stay CPU-only.
if not os.environ.get("PROVISIONER_GPU_PCI"):
    gpu = False

# qwen3:0.6b: the smallest generative model of the catalog (523 MB). Planned against the RAM
# budget 0.9 x (RAM - ram_reserve_mib): at context 2048 it needs about 1.1 GiB. The default
# reserve (4096 MiB, sized for real servers) would leave a 4 GiB VM no budget at all.
models = ["qwen3:0.6b"]
ollama_context_length = 2048
ram_reserve_mib = 1536
