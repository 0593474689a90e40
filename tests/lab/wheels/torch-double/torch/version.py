"""torch.version of the TEST DOUBLE (values fixed when the lab built the wheel)."""

from torch._build import __version__, cuda

git_version = "0" * 40
hip = None
debug = False

__all__ = ["__version__", "cuda", "debug", "git_version", "hip"]
