"""Start-up: wall time of ``provision --help`` (the CLI keeps its imports inside the commands).

Measured against a bare interpreter start (``python -c pass``) in the same run, so that the
report shows what the CLI itself adds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path


def provision_command() -> list[str]:
    """``provision`` from the interpreter's own environment (the venv's console script)."""
    script = Path(sys.executable).with_name("provision")
    if script.exists():
        return [str(script)]
    found = shutil.which("provision")
    return [found] if found else [sys.executable, "-m", "provisioner.cli"]


def time_command(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def measure(reps: int) -> dict[str, list[float]]:
    """``reps`` timings each of ``provision --help`` and ``python -c pass``, interleaved."""
    help_command = [*provision_command(), "--help"]
    bare = [sys.executable, "-c", "pass"]
    time_command(help_command)  # warm the page cache: every run after the first is comparable
    times: dict[str, list[float]] = {"provision_help_s": [], "python_bare_s": []}
    for _ in range(reps):
        times["provision_help_s"].append(time_command(help_command))
        times["python_bare_s"].append(time_command(bare))
    return times
