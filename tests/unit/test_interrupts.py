"""Ctrl-C: apply passes the interrupt on to its pyinfra child and bounds its exit; the CLI says
what happened and exits 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyinfra_cli  # noqa: F401  (patches the standard library for gevent, as provision does)
import pytest
from click.testing import CliRunner

from provisioner import apply, bounds, cli
from provisioner.interrupts import EXIT_INTERRUPTED, stop_child


def _ctrl_c_after(seconds: float) -> subprocess.Popen:
    """The operator: presses Ctrl-C (SIGINT to this process) after ``seconds``."""
    return subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -INT {os.getpid()}"])


@pytest.mark.parametrize("ignores_sigint", [False, True])
def test_apply_passes_ctrl_c_to_pyinfra_and_bounds_its_exit(monkeypatch, ignores_sigint):
    monkeypatch.setitem(bounds.bounds()["interrupt"], "grace_s", 1)
    body = "import signal, time\n"
    if ignores_sigint:  # a child that will not stop: killed after the grace period
        body += "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    body += "time.sleep(60)\n"
    children: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(apply.subprocess, "Popen", popen)
    operator = _ctrl_c_after(0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        apply._run_pyinfra([sys.executable, "-c", body], dict(os.environ))
    operator.wait()
    assert time.monotonic() - started < 5
    assert children[0].poll() is not None  # no pyinfra left running


def test_stop_child_leaves_a_finished_child_alone():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    stop_child(done)
    assert done.returncode == 0


@pytest.mark.parametrize("command", [["apply"], ["models", "sync"], ["models", "update"]])
def test_the_cli_says_it_was_interrupted_and_exits_130(monkeypatch, tmp_path, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from provisioner import models_sync

    monkeypatch.setattr(apply, "run_deploy", interrupted)
    monkeypatch.setattr(models_sync, "sync", interrupted)
    monkeypatch.setattr(models_sync, "update", interrupted)
    result = CliRunner().invoke(cli.main, [*command, "@local"])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert f"provision: {' '.join(command)} interrupted" in result.output
    assert "Re-run the same command" in result.output


# --- the signal reaches the main greenlet ------------------------------------------------------

_BUSY_THREAD = """
import os, signal, sys, threading, time
import pyinfra_cli  # noqa: F401  (gevent's monkey patching, as provision has it)
import gevent
from provisioner.interrupts import delivered_to_main

def busy():  # a thread (a greenlet under gevent) that runs Python code most of the time
    while True:
        sum(range(20000))
        gevent.sleep(0)

threading.Thread(target=busy, daemon=True).start()
mode = sys.argv[1]
if mode == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a shell script
print("ready", flush=True)
try:
    if mode == "plain":
        gevent.sleep(8)
    else:
        with delivered_to_main():
            gevent.sleep(8)
except KeyboardInterrupt:
    print("interrupted in main", flush=True)
    sys.exit(130)
sys.exit(0)
"""


def _signalled(mode: str, signum: int) -> tuple[int, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUSY_THREAD, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signum)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, time.monotonic() - sent


@pytest.mark.parametrize(
    ("mode", "signum"),
    [("handled", signal.SIGINT), ("ignored", signal.SIGINT), ("handled", signal.SIGTERM)],
)
def test_ctrl_c_and_sigterm_reach_the_main_greenlet_whatever_greenlet_runs(mode, signum):
    """A thread turned greenlet runs when the signal comes, or the process started with SIGINT
    ignored: the main greenlet still gets KeyboardInterrupt, at once."""
    code, out, took = _signalled(mode, signum)
    assert (code, out.strip()) == (130, "interrupted in main")
    assert took < 5


def test_without_it_python_loses_ctrl_c_in_a_thread_greenlet():
    """Why delivered_to_main exists: Python's own handler raises where the busy thread runs,
    threading's hook swallows it, and the main greenlet sleeps on (the run would finish)."""
    code, out, took = _signalled("plain", signal.SIGINT)
    assert "interrupted in main" not in out
    assert code == 0 and took > 5
