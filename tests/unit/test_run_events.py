"""The pending-reboot state reaches ``provision apply`` through the run's events file
(``provisioner.run_events``), not through pyinfra's log."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from test_gpu_stack_deploy import apply as apply_doubles
from test_gpu_stack_double import GpuHostDouble, install_doubles

from provisioner import apply, run_events


def test_record_without_an_events_file_does_nothing(monkeypatch):
    monkeypatch.delenv(run_events.ENV, raising=False)
    assert run_events.record("gpu1", run_events.PENDING_REBOOT, reason="x") is False


def test_events_are_recorded_one_json_line_each_and_read_back(monkeypatch, tmp_path):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(run_events.ENV, str(path))
    assert run_events.record("gpu1", run_events.PENDING_REBOOT, reason="(a): b")
    assert run_events.record("gpu2", "something-else", n=1)
    assert run_events.record("gpu1", run_events.PENDING_REBOOT, reason="(a): c")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["host"] for line in lines] == ["gpu1", "gpu2", "gpu1"]
    with path.open("a") as stream:
        stream.write('{"host": "gpu3", "event": "pendi')  # a run killed mid-write
    events = run_events.read(path)
    assert len(events) == 3
    assert run_events.pending_reboots(events) == {"gpu1": "(a): c"}
    assert run_events.read(tmp_path / "absent.jsonl") == []


def test_the_driver_deploy_records_a_pending_reboot(monkeypatch, tmp_path):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(run_events.ENV, str(path))
    registry = install_doubles(monkeypatch)
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply_doubles(
        registry,
        {"a": host, "b": GpuHostDouble(distro="debian12", gpus=("2684",))},
        {"a": {"nvidia_reboot": False}},
    )
    pending = run_events.pending_reboots(run_events.read(path))
    assert list(pending) == ["@fake/a"]  # b was allowed to reboot
    assert pending["@fake/a"].startswith("(nvidia_reboot is false): ")
    assert "no NVIDIA kernel module is loaded (installed 580.126.09)" in pending["@fake/a"]


# A stand-in for ``pyinfra ... --json``: it records gpu3's pending reboot in the events file,
# logs a PENDING REBOOT line for gpu1 (a log line alone is no longer a pending reboot) and
# prints a --json result in which every host succeeded.
FAKE_PYINFRA = textwrap.dedent(
    """
    import json, sys
    from provisioner import run_events
    run_events.record("gpu3", run_events.PENDING_REBOOT,
                      reason="(nvidia_reboot is false): driver/library mismatch")
    print("    [gpu1] PENDING REBOOT (nvidia_reboot is false): made up", file=sys.stderr)
    ops = [{"name": "driver", "success": ["gpu1", "gpu3"], "no_change": [], "error": []}]
    print(json.dumps({"plan": [], "results": {"operations": ops, "failed_hosts": []}}))
    """
)


class Host:
    def __init__(self, name: str) -> None:
        self.name = name


class Loaded:
    source = "inventory.py"
    hosts = [Host("gpu1"), Host("gpu3")]


@pytest.mark.parametrize("fail", [False, True])
def test_apply_reports_the_recorded_pending_reboot_and_exit_3(monkeypatch, capsys, fail):
    script = FAKE_PYINFRA + ("raise SystemExit(1)\n" if fail else "")
    monkeypatch.setattr(apply, "pyinfra_command", lambda *a, **k: [sys.executable, "-c", script])
    result = apply.run_deploy(Loaded(), "site")
    assert "[gpu1] PENDING REBOOT" in capsys.readouterr().err  # the log still reaches the user
    hosts = result.to_json()["hosts"]
    assert hosts["gpu3"]["status"] == "pending-reboot"
    assert hosts["gpu3"]["pending_reboot"] == "(nvidia_reboot is false): driver/library mismatch"
    assert hosts["gpu1"]["pending_reboot"] is None and hosts["gpu1"]["status"] == "changed"
    assert result.exit_code == (1 if fail else apply.EXIT_PENDING_REBOOT)
