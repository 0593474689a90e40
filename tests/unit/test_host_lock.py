"""One provisioner run per host at a time (provisioner.host_lock): the lock script on this
machine, the operation that fails a held host with the holder's name, and two real runs at
once against ``@local`` through ``provision apply``'s launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner import bounds, host_lock
from provisioner.apply import summarise
from provisioner.run_outcome import OUTCOME_ENV, read

# A stand-in controller: takes the lock with the real script and keeps its connection (itself)
# open for `hold` seconds. Its lock holder watches it, as it watches sshd on a real host.
CONTROLLER = """
import subprocess, sys, time
from provisioner import bounds, host_lock
bounds.bounds()["host_lock"]["wait_s"] = int(sys.argv[2])
out = subprocess.run(["sh", "-c", host_lock.script(sys.argv[1])], capture_output=True, text=True)
print(out.stdout.strip(), flush=True)
time.sleep(float(sys.argv[3]))
"""


def _controller(owner: str, wait: int = 1, hold: float = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, owner, str(wait), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _holders() -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if line.startswith("provisioner-lock") and host_lock.lock_path() in line
    ]


@pytest.fixture
def lock_file(tmp_path, monkeypatch):
    path = tmp_path / "provisioner.lock"
    monkeypatch.setenv(host_lock.PATH_ENV, str(path))
    yield path
    deadline = time.monotonic() + 5
    while _holders() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _holders()  # every holder went away with its controller


def test_a_second_run_is_told_who_holds_the_host_and_gets_it_after(lock_file):
    first = _controller("run aaaa by ops@ctl1 pid 1 since T", hold=3)
    assert first.stdout.readline().strip() == "held"
    second = _controller("run bbbb by ops@ctl2 pid 2 since T", wait=1)
    assert second.stdout.readline().strip() == "busy run aaaa by ops@ctl1 pid 1 since T"
    second.wait(timeout=10)
    first.wait(timeout=10)  # the first run ends: its holder lets go
    deadline = time.monotonic() + 5
    while _holders() and time.monotonic() < deadline:
        time.sleep(0.1)
    third = _controller("run cccc by ops@ctl3 pid 3 since T", wait=1)
    assert third.stdout.readline().strip() == "held"
    third.wait(timeout=10)


def test_the_holder_waits_on_the_runs_connection_in_one_sleeping_process(lock_file):
    """GNU tail --pid under timeout: the lock is let go within 0.1 s of the connection's end,
    and nothing is started every second while a run holds it."""
    run = _controller("run eeee", hold=3)
    assert run.stdout.readline().strip() == "held"
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert f"tail --pid={run.pid} -s 0.1 -f /dev/null" in out.splitlines()
    run.wait(timeout=10)


def test_the_same_run_taking_the_lock_again_is_told_it_holds_it(lock_file):
    script = host_lock.script("run dddd")
    holder = _controller("run dddd", hold=2)
    assert holder.stdout.readline().strip() == "held"
    again = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert again.stdout.strip() == "held"  # a later deploy of the same run (apply, then models)
    holder.wait(timeout=10)


DEPLOY = """
from pyinfra.operations import server
from provisioner.operations import system
system.run_lock(name="Hold the host lock")
server.shell(name="Work", commands=["sleep {sleep}"])
"""


def _launch(tmp_path: Path, name: str, inventory: str, sleep: float) -> subprocess.Popen:
    work = tmp_path / name
    work.mkdir()
    (work / "inv.py").write_text(inventory)
    (work / "deploy.py").write_text(DEPLOY.format(sleep=sleep))
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner.run_outcome", "inv.py", "deploy.py", "--json", "-y"],
        cwd=work,
        env={**os.environ, OUTCOME_ENV: str(work / "outcome.json")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _result(proc: subprocess.Popen, work: Path, names: list[str]):
    out, _ = proc.communicate(timeout=120)
    return summarise(
        "site", False, proc.returncode, out, read(str(work / "outcome.json")), names, {}
    )


def test_two_runs_at_once_on_one_host(tmp_path, lock_file):
    wait = bounds.get("host_lock", "wait_s")
    first = _launch(tmp_path, "first", 'hosts = ["@local"]\n', sleep=wait + 4)
    deadline = time.monotonic() + 30
    while not (lock_file.parent / "provisioner.lock.owner").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    holder = (lock_file.parent / "provisioner.lock.owner").read_text().strip()
    assert f"pid {first.pid} " in holder
    # the second run's other host goes on; @local is refused with the holder's name
    other = '("@fake/other", {"fake_responses": {"provisioner.lock.owner": "held"}})'
    second = _launch(tmp_path, "second", f'hosts = ["@local", {other}]\n', sleep=0)
    result = _result(second, tmp_path / "second", ["@local", "@fake/other"])
    local = result.hosts["@local"]
    assert local.status == "failed" and local.failed[0] == "Hold the host lock"
    assert local.error.startswith("step 'Hold the host lock' failed: another run holds the host:")
    assert holder in local.error and f"waited {wait}s" in local.error
    assert result.hosts["@fake/other"].status == "changed" and result.exit_code == 1
    assert "Work" not in result.hosts["@local"].changed  # nothing ran on the held host
    done = _result(first, tmp_path / "first", ["@local"])
    assert done.exit_code == 0 and done.hosts["@local"].changed == ["Work"]
    assert done.hosts["@local"].unchanged == ["Hold the host lock"]  # the lock is no change
