"""PyTorch layer: in its venv, the pinned torch imports, sees every GPU and computes on each
(on a CPU-only host: computes on the CPU)."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.verify import parse
from provisioner.verify.context import HostContext

pytestmark = pytest.mark.layer("pytorch")


def _probe(target: HostContext) -> dict[str, Any]:
    """The venv's report, failing the check when torch cannot be imported at all."""
    venv = target.key("pytorch_venv")
    if venv in (None, ""):
        target.skip("PyTorch not wanted (pytorch_venv is not set)")
    probe = target.torch_probe()
    for problem in ("missing", "probe_error", "import_error"):
        if problem in probe:
            target.fail(f"torch in {venv}", "importable", probe[problem])
    return probe


def test_torch_version(target: HostContext, request: pytest.FixtureRequest) -> None:
    """torch imports in the venv, at the pinned ``torch_version``."""
    probe = _probe(target)
    wanted = target.key("torch_version")
    version = str(probe.get("version"))
    if wanted not in (None, "") and parse.torch_public_version(version) != str(wanted):
        target.fail("torch version", wanted, version)
    target.passed(request, f"torch {version} (CUDA build {probe.get('cuda_build')})")


def test_cuda_available(target: HostContext, request: pytest.FixtureRequest) -> None:
    """``torch.cuda.is_available()`` on a GPU host."""
    target.require_gpu()
    probe = _probe(target)
    if not probe.get("cuda_available"):
        detail = (
            probe.get("cuda_error")
            or f"False (torch {probe.get('version')}, CUDA build {probe.get('cuda_build')})"
        )
        target.fail("torch.cuda.is_available()", True, detail)
    target.passed(request, "CUDA available")


def test_device_count(target: HostContext, request: pytest.FixtureRequest) -> None:
    """torch sees every GPU: ``gpu_count`` when set, else as many as nvidia-smi lists."""
    target.require_gpu()
    probe = _probe(target)
    expected = target.key("gpu_count")
    source = "gpu_count"
    if expected is None:
        smi = target.smi()
        if smi["state"] != "ok":
            target.fail(
                "torch device count", "GPUs listed by nvidia-smi", f"nvidia-smi {smi['state']}"
            )
        expected, source = len(smi["gpus"]), "nvidia-smi"
    if probe.get("device_count") != int(expected):
        target.fail(
            "torch.cuda.device_count()", f"{expected} ({source})", probe.get("device_count")
        )
    target.passed(request, f"{expected} device(s): " + ", ".join(probe.get("device_names") or []))


def test_compute(target: HostContext, request: pytest.FixtureRequest) -> None:
    """A small matmul gives the exact result on every GPU (on a CPU-only host: on the CPU)."""
    probe = _probe(target)
    results = {r.get("device"): r for r in probe.get("compute") or []}
    gpu_expected, reason = target.gpu_expected()
    if gpu_expected:
        devices = [d for d in results if str(d).startswith("cuda:")]
        if not devices:
            target.fail(
                "computation on the GPUs", "a result from every GPU", "torch sees no CUDA device"
            )
    else:
        devices = ["cpu"]
    bad = []
    for device in devices:
        result = results.get(device) or {"error": "not run"}
        if not result.get("ok"):
            bad.append(f"{device}: {result.get('error') or result.get('value')}")
    if bad:
        target.fail("computation (ones(64,64) @ ones(64,64), sum)", 64**3, "; ".join(bad))
    where = ", ".join(devices) + ("" if gpu_expected else f" ({reason})")
    target.passed(request, f"computed on {where}")
