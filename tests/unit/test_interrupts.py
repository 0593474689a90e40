"""Ctrl-C: apply passes the interrupt on to its pyinfra child and bounds its exit; the CLI says
what happened and exits 130."""

from __future__ import annotations

import os
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
