"""Running the Ansible peer: its own virtual environment, one ``ansible-playbook`` run, the recap.

ansible-core is installed only for the benchmark, into a virtual environment of its own in the
lab's cache (``$LAB_CACHE/bench/ansible-venv``), never into the project's environment: its
pins (jinja2, cryptography, ...) cannot change what the product runs with.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "site.yml"
CONFIG = HERE / "ansible.cfg"
ANSIBLE_CORE = "ansible-core==2.19.*"
_RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<fields>(?:\w+=\d+\s*)+)$")


def default_venv() -> Path:
    cache = Path(os.environ.get("LAB_CACHE", "/var/cache/provisioner-lab"))
    return cache / "bench" / "ansible-venv"


def ensure_venv(venv: Path, requirement: str = ANSIBLE_CORE, python: str | None = None) -> str:
    """Create ``venv`` with ``requirement`` unless it is there; returns ansible-core's version.
    The interpreter defaults to the one running the bench (a venv made from a venv's python
    is based on the same base interpreter)."""
    python = python or sys.executable
    playbook = venv / "bin" / "ansible-playbook"
    stamp = venv / ".bench-requirement"
    if not playbook.exists() or not stamp.exists() or stamp.read_text() != requirement:
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             requirement],
            check=True,
        )  # fmt: skip
        stamp.write_text(requirement)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ansible; print(ansible.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ``ansible-playbook`` output: host -> {ok, changed, failed, ...}."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if not in_recap:
            continue
        match = _RECAP.match(line.strip())
        if match:
            fields = dict(part.split("=") for part in match["fields"].split())
            recap[match["host"]] = {key: int(value) for key, value in fields.items()}
    return recap


@dataclass
class PlaybookRun:
    wall_s: float
    returncode: int
    recap: dict[str, dict[str, int]]
    log_tail: str
    cpu_s: float = 0.0  # ansible-playbook and its forks (not the detached SSH masters)


def run_playbook(
    venv: Path,
    inventory: Path,
    *,
    log: Path,
    work: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 1800,
) -> PlaybookRun:
    """One ``ansible-playbook site.yml`` over ``inventory``; SSH connections start cold (a fresh
    ControlPath directory) and are closed after the run, outside the time measured."""
    control = work / f"cp-{time.monotonic_ns()}"
    control.mkdir(parents=True)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(CONFIG),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        **(extra_env or {}),
    }
    command = [str(venv / "bin" / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            timeout=timeout,
        )  # fmt: skip
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    close_masters(control)
    text = log.read_text(errors="replace")
    return PlaybookRun(wall, proc.returncode, parse_recap(text), text[-3000:], cpu)


def close_masters(control: Path, sockets: Sequence[Path] | None = None) -> None:
    """Ask every OpenSSH control master of a run to exit (they would linger ControlPersist)."""
    for socket in sockets if sockets is not None else sorted(control.glob("*")):
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "bench"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    shutil.rmtree(control, ignore_errors=True)
