"""``facts.pytorch.TorchVersion`` reads torch's version from the ``METADATA`` file pip
installs into the venv, without starting Python, and agrees with ``importlib.metadata`` (the
interpreter's own answer, and the fact's fallback) on a venv pip really installed.

The wheel is the lab's stand-in (built from ``tests/lab/wheels/torch-double``, same
``torch-<version>+<label>.dist-info/METADATA`` layout as the real wheel: checked on
``torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl`` from download.pytorch.org, whose
``torch-2.13.0+cpu.dist-info/METADATA`` says ``Version: 2.13.0+cpu``); when the lab's cache
holds the real wheel, its METADATA is checked too."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from provisioner.facts.pytorch import _SCRIPT, TorchVersion
from tests.lab.packages import build_torch_wheel


def read(command: str) -> str | None:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    return TorchVersion().process(out.stdout.splitlines())


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torch-version")
    wheel = build_torch_wheel("2.9.1", "cu130", "13.0", root / "wheels")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    return venv


def test_the_metadata_file_and_importlib_agree_on_a_venv_pip_installed(venv):
    python = str(venv / "bin" / "python")
    by_metadata = read(TorchVersion().command(python))
    by_python = read(f"{python} -c '{_SCRIPT}'")
    assert by_metadata == by_python == "2.9.1+cu130"


def test_without_python_started_when_the_metadata_answers(venv, tmp_path):
    """The shell path alone answers: the interpreter is replaced by one that fails."""
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "lib").symlink_to(venv / "lib")
    (fake / "bin" / "python").write_text("#!/bin/sh\necho started >&2\nexit 1\n")
    (fake / "bin" / "python").chmod(0o755)
    assert read(TorchVersion().command(str(fake / "bin" / "python"))) == "2.9.1+cu130"


def test_the_interpreter_answers_when_the_venv_has_no_torch_metadata(tmp_path):
    """A venv of another layout (or torch from the system's packages): importlib's answer."""
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").write_text("#!/bin/sh\necho 2.8.0+cu128\n")
    (fake / "bin" / "python").chmod(0o755)
    assert read(TorchVersion().command(str(fake / "bin" / "python"))) == "2.8.0+cu128"
    assert read(TorchVersion().command(str(tmp_path / "none" / "bin" / "python"))) is None


def test_the_real_wheel_says_its_version_with_its_label_in_metadata():
    from tests.lab.fleet import cache_dir

    cache = cache_dir() / "wheels-real"
    wheels = sorted(cache.glob("torch-*.whl")) if cache.is_dir() else []
    if not wheels:
        pytest.skip("the real torch wheel is not in the lab's cache (LAB_REAL_TORCH=1 fetches it)")
    wheel = wheels[-1]
    version = wheel.name.split("-")[1]  # torch-2.13.0+cpu-cp311-...
    with zipfile.ZipFile(wheel) as z:
        text = z.read(f"torch-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in text
