"""fact_batch: one process answers many path facts exactly as their own commands would.

Each check runs pyinfra's own command of a fact and the batch on the same files with the real
/bin/sh and coreutils, and compares the values the fact's own ``process`` makes of them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import StringCommand
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from provisioner import fact_batch, fact_cache


def _sh(command: Any) -> tuple[int, list[str]]:
    text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    done = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout.splitlines()


def _value(fact: Any, status: int, lines: list[str]) -> tuple[bool, Any]:
    """What fact_cache keeps of a fact's output (reading a file moves its atime: left out)."""
    good, value = fact_cache._process(fact, status, lines)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "atime"}
    return good, value


def _alone(cls: Any, path: str) -> tuple[bool, Any]:
    """The fact read alone: its own command, processed by the same instance (as pyinfra does:
    Sha1File keeps the path its command was made for)."""
    fact = cls()
    return _value(fact, *_sh(fact.command(path=path)))


def _together(cls: Any, path: str, lines: list[str]) -> tuple[bool, Any]:
    fact = cls()
    fact.command(path=path)
    return _value(fact, 0, lines)


@pytest.fixture
def tree(tmp_path: Path) -> list[str]:
    (tmp_path / "file").write_text("hello\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "dir").mkdir()
    (tmp_path / "with space 'quote'").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dirlink").symlink_to(tmp_path / "dir")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    os.utime(tmp_path / "file", (1_700_000_000, 1_700_000_000))
    (tmp_path / "empty").chmod(0o600)
    names = ["file", "empty", "dir", "with space 'quote'", "link", "dirlink", "broken", "missing"]
    return [str(tmp_path / name) for name in names] + ["/", str(tmp_path / "dir" / "..")]


@pytest.mark.parametrize("cls", [File, Directory, Sha1File])
def test_a_batch_gives_each_fact_what_its_own_command_gives(cls: Any, tree: list[str]) -> None:
    batch = fact_batch.batch_for(cls(), {"path": tree[0]}, _text(cls, tree[0]))
    assert batch is not None
    status, lines = _sh(batch.command(tree))
    assert status == 0
    split = batch.split(lines, tree)
    assert split is not None
    for path in tree:
        alone = _alone(cls, path)
        assert _together(cls, path, split[path]) == alone, path
        assert alone[0]
    # the cases differ: not every fact read the same value
    assert len({repr(_together(cls, p, split[p])[1]) for p in tree}) > 2


def _text(cls: Any, path: str) -> str:
    return cls().command(path=path).get_raw_value()


def test_a_fact_whose_command_is_not_the_batchs_is_read_alone() -> None:
    text = _text(File, "/etc/hosts")
    assert fact_batch.batch_for(File(), {"path": "/etc/hosts"}, text) is not None
    changed = text.replace("stat -c 'user=%U", "stat -c 'owner=%U")
    assert fact_batch.batch_for(File(), {"path": "/etc/hosts"}, changed) is None
    # another argument than the path, or another fact class
    assert fact_batch.batch_for(File(), {"path": "/etc/hosts", "x": 1}, text) is None
    sha1 = _text(Sha1File, "/etc/hosts")
    assert fact_batch.batch_for(Sha1File(), {"path": "/etc/hosts"}, sha1) is not None
    assert fact_batch.batch_for(File(), {"path": "/etc/hosts"}, sha1) is None


def test_output_a_batch_does_not_understand_answers_nothing(tree: list[str]) -> None:
    stat, sha1 = fact_batch.BATCHES
    status, lines = _sh(stat.command(tree))
    assert stat.split([*lines, "stray line"], tree) is None
    assert stat.split([*lines, lines[0]], tree) is None  # a path twice
    assert sha1.split(["\\0123  /x"], ["/x"]) is None  # an escaped name
    assert sha1.split(["0123  /y"], ["/x"]) is None


def test_a_probe_reads_path_facts_with_one_stat_and_one_sha1sum(tree: list[str]) -> None:
    parts = fact_cache._Parts()
    todo = [(cls(), {"path": p}) for p in tree for cls in (File, Directory, Sha1File)]
    where = [parts.add(f, kw, fact_cache._part_command(f, kw)) for f, kw in todo]
    commands = parts.commands()
    assert len(commands) == 2
    status, lines = _sh(fact_cache.probe_command(commands, "n0nce"))
    outputs = parts.outputs(fact_cache.split_output(lines, "n0nce"))
    for (fact, kwargs), at in zip(todo, where, strict=True):
        alone = _alone(type(fact), kwargs["path"])
        assert _value(fact, *outputs[at]) == alone, (type(fact).__name__, kwargs)


def test_a_failed_batch_leaves_its_facts_to_be_read_alone(tree: list[str]) -> None:
    parts = fact_cache._Parts()
    where = parts.add(
        File(), {"path": tree[0]}, fact_cache._part_command(File(), {"path": tree[0]})
    )
    assert parts.outputs({where[0]: (1, [])}) == {}


# systemctl show --all --property Id --property P... of three units on a lab host (Debian 12,
# systemd 252.39-1~deb12u2), 2026-12-06: P = SubState, UnitFileState, and both
UNITS = ["nvidia-persistenced.service", "ollama.service", "nosuch.service"]
SHOW = {
    "SubState": ["Id=nvidia-persistenced.service", "SubState=running", "",
                 "Id=ollama.service", "SubState=running", "", "Id=nosuch.service", "SubState=dead"],
    "UnitFileState": ["Id=nvidia-persistenced.service", "UnitFileState=enabled", "",
                      "Id=ollama.service", "UnitFileState=enabled", "",
                      "Id=nosuch.service", "UnitFileState="],
    "both": ["Id=nvidia-persistenced.service", "SubState=running", "UnitFileState=enabled", "",
             "Id=ollama.service", "SubState=running", "UnitFileState=enabled", "",
             "Id=nosuch.service", "SubState=dead", "UnitFileState="],
}  # fmt: skip


def _systemd(cls: Any, services: list[str]) -> str:
    args = {"user_mode": False, "machine": None, "user_name": None, "services": services}
    return fact_cache._part_command(cls(), args).get_raw_value()


def test_a_units_status_and_enablement_share_one_systemctl_show() -> None:
    status, enabled = _systemd(SystemdStatus, UNITS), _systemd(SystemdEnabled, UNITS)
    wide = fact_batch.widened(SystemdStatus(), status)
    assert wide is not None and wide == fact_batch.widened(SystemdEnabled(), enabled)
    assert "--property SubState --property UnitFileState" in wide
    other = _systemd(SystemdStatus, UNITS[:1])
    assert fact_batch.widened(SystemdStatus(), other) != wide
    assert fact_batch.widened(File(), _text(File, "/etc/hosts")) is None


@pytest.mark.parametrize(
    ("cls", "own"), [(SystemdStatus, "SubState"), (SystemdEnabled, "UnitFileState")]
)
def test_each_systemd_fact_reads_the_same_from_both_properties(cls: Any, own: str) -> None:
    value = cls().process(SHOW["both"])
    assert value == cls().process(SHOW[own])
    assert set(value) == set(UNITS) and len(set(value.values())) == 2
