"""TEST DOUBLE of PyTorch for the provisioner lab: this is NOT the real torch.

Installed from the lab's wheel index under the real name so the PyTorch deploy runs unchanged.
It reports the lab host's simulated GPUs (read from the nvidia-smi double) and does tiny tensor
arithmetic, enough for the checks the toolkit runs, e.g.
``(torch.ones(2, device="cuda:0") * 2).sum().item() == 4.0``.
"""

from torch import cuda, version
from torch._tensor import (
    Tensor,
    arange,
    bfloat16,
    device,
    dtype,
    float16,
    float32,
    float64,
    full,
    int32,
    int64,
    ones,
    tensor,
    zeros,
)

__version__ = version.__version__
TEST_DOUBLE = True

__all__ = [
    "Tensor",
    "arange",
    "bfloat16",
    "cuda",
    "device",
    "dtype",
    "float16",
    "float32",
    "float64",
    "full",
    "int32",
    "int64",
    "ones",
    "tensor",
    "version",
    "zeros",
]
