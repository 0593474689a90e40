"""CUDA layer: the pinned toolkit's ``nvcc``, on the PATH of a login shell."""

from __future__ import annotations

import shlex

import pytest

from provisioner.verify import parse
from provisioner.verify.context import HostContext

pytestmark = pytest.mark.layer("cuda")


def test_nvcc_version(target: HostContext, request: pytest.FixtureRequest) -> None:
    """``nvcc --version`` in a login shell reports the pinned ``cuda_toolkit_version``."""
    target.require_gpu()
    wanted = target.key("cuda_toolkit_version")
    if wanted in (None, ""):
        target.skip("CUDA toolkit not wanted (cuda_toolkit_version is not set)")
    wanted = ".".join(str(wanted).replace("-", ".").split(".")[:2])  # 12.8 (or 12-8, 12.8.1)
    result = target.run("bash -lc 'nvcc --version' 2>&1 || sh -lc 'nvcc --version' 2>&1")
    release = parse.nvcc_release(result.stdout)
    if release is None:
        where = f"/usr/local/cuda-{wanted}/bin/nvcc"
        installed = target.run(f"test -x {shlex.quote(where)}").rc == 0
        target.fail(
            "nvcc --version",
            f"release {wanted}",
            "nvcc not on the PATH of a login shell"
            + (f" (but {where} exists)" if installed else ""),
        )
    if release != wanted:
        target.fail("CUDA toolkit (nvcc --version)", f"release {wanted}", f"release {release}")
    target.passed(request, f"nvcc release {release}")
