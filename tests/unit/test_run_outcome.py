"""Each failed host's reason, from the pyinfra process itself (provisioner.run_outcome), and
apply's summary built from it: true counts even when every host failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.apply import RunResult, summarise
from provisioner.report import run_table
from provisioner.run_outcome import OUTCOME_ENV, ErrorLog, read, sentence

DEPLOY = """
from pyinfra.operations import server
server.shell(name="Say hi", commands=["echo hi"])
server.shell(
    name="Fetch the release",
    commands=["echo 'curl: (23) Failure writing output to destination' >&2; exit 23"],
    _if=lambda: host.name == "@local",
)
server.shell(name="Never reached", commands=["echo later"])
"""


def _launch(tmp_path: Path, inventory: str) -> tuple[int, str, dict]:
    (tmp_path / "inv.py").write_text(inventory)
    (tmp_path / "deploy.py").write_text("from pyinfra import host\n" + DEPLOY)
    side = tmp_path / "outcome.json"
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.run_outcome", "inv.py", "deploy.py", "--json", "-y"],
        cwd=tmp_path,
        env={**os.environ, OUTCOME_ENV: str(side)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, read(str(side))


# A closed port on loopback: the connection is refused at once.
DEAD = '("dead", {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_connect_retries": 0})'


def test_every_host_failing_keeps_true_counts_and_each_reason(tmp_path):
    rc, out, outcome = _launch(tmp_path, f'hosts = ["@local", {DEAD}]\n')
    assert rc == 1 and not out.strip()  # pyinfra: "No hosts remaining!", no --json result
    result = summarise("site", False, rc, out, outcome, ["@local", "dead"], {})
    local, dead = result.hosts["@local"], result.hosts["dead"]
    assert local.changed == ["Say hi"]  # what changed before the failure is still counted
    assert local.failed[0] == "Fetch the release"
    assert local.error == (
        "step 'Fetch the release' failed: the disk is full: "
        "curl: (23) Failure writing output to destination"
    )
    assert dead.failed == ["connect"]
    assert dead.error.startswith("step 'connect' failed: could not connect: ")
    assert "port 1 on 127.0.0.1" in dead.error
    document = result.to_json()
    assert document["hosts"]["@local"]["error"] == local.error
    assert document["failed_hosts"] == ["@local", "dead"] and document["exit_code"] == 1
    assert all("pyinfra run" not in run.failed for run in result.hosts.values())
    advice = "\n".join(result.advice())
    assert "the disk is full" in advice and "executed 0 commands" not in advice


def test_a_host_that_succeeds_has_no_error_next_to_one_that_fails(tmp_path):
    rc, out, outcome = _launch(tmp_path, 'hosts = ["@local"]\n')
    assert rc == 1
    result = summarise("site", False, rc, out, outcome, ["@local"], {})
    assert result.hosts["@local"].status == "failed"
    # the table carries the reason in its own column
    table = run_table(result)
    assert [c.header for c in table.columns][-1] == "reason"
    assert "the disk is full" in list(table.columns[-1].cells)[0]


def test_without_an_outcome_the_failure_still_says_where_to_look():
    raw = {"plan": [], "results": {"operations": [], "failed_hosts": ["h"]}}
    result = summarise("site", False, 1, json.dumps(raw), {"hosts": {}}, ["h"], {})
    assert result.hosts["h"].failed == ["pyinfra run"]
    assert "no reason was reported" in result.hosts["h"].error


def test_a_killed_launcher_leaves_an_empty_outcome(tmp_path):
    torn = tmp_path / "outcome.json"
    torn.write_text('{"results": ')
    assert read(str(torn)) == {"results": None, "hosts": {}}
    assert read(str(tmp_path / "missing.json")) == {"results": None, "hosts": {}}


@pytest.mark.parametrize(
    ("detail", "cause"),
    [
        ("Command socket/SSH error: Socket is closed", "the host stopped answering"),
        ("llama3.2:1b: the pull command failed (exit -1)", "the host stopped answering"),
        ("tee: /srv/x: No space left on device", "the disk is full"),
        ("checksum mismatch for http://r/o.tgz: expected ab, got cd", "did not match"),
        ("another provisioner run holds /run/provisioner.lock", "another run holds"),
        ("something new", None),
    ],
)
def test_causes_come_from_the_data_table(detail, cause):
    text = sentence("Unpack Ollama", detail)
    assert text.startswith("step 'Unpack Ollama' failed: ") and text.endswith(detail)
    if cause:
        assert cause in text
    else:
        assert text == f"step 'Unpack Ollama' failed: {detail}"


def test_error_log_keeps_host_messages_but_not_pyinfra_summaries():
    import logging

    log = ErrorLog()
    for message in (
        "    [gpu1] \x1b[31mCommand socket/SSH error: Socket is closed\x1b[0m",
        "    [gpu1] \x1b[31mError: executed 0 commands\x1b[0m",
        "--> pyinfra error: No hosts remaining!",
    ):
        log.emit(logging.LogRecord("pyinfra", logging.ERROR, "", 0, message, None, None))
    assert log.by_host == {"gpu1": ["Command socket/SSH error: Socket is closed"]}


def test_apply_runs_pyinfra_through_the_launcher():
    from provisioner.apply import pyinfra_command

    class Loaded:
        source = "inventories/prod.py"

    command = pyinfra_command(Loaded(), "site")  # type: ignore[arg-type]
    assert command[1:3] == ["-m", "provisioner.run_outcome"]
    assert RunResult("site", False, 0, {}, [], {}).to_json()["hosts"] == {}
