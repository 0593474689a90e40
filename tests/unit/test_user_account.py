"""``facts.system.UserAccount`` reads one user as pyinfra's ``Users`` reads every user: both
commands run in this machine's real shell, on its real accounts, and agree on every field the
operations compare (``operations.system.user`` decides from it whether pyinfra's
``server.user`` has anything to do)."""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.facts.server import Users

from provisioner.facts.system import UserAccount
from provisioner.operations.system import account_matches

COMPARED = ("home", "comment", "shell", "group", "uid", "gid")


def run(command: str) -> list[str]:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def everyone() -> dict:
    return Users().process(run(Users().command()))


def test_every_local_user_reads_as_pyinfra_reads_it(everyone):
    assert "root" in everyone and len(everyone) > 5
    for name, theirs in everyone.items():
        fact = UserAccount()
        ours = fact.process(run(fact.command(name)))
        assert ours is not None, name
        assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}, name
        assert sorted(ours["groups"]) == sorted(theirs["groups"]), name


def test_a_missing_user_reads_as_none():
    fact = UserAccount()
    assert run(fact.command("provisioner-no-such-user")) == []


def test_a_name_is_matched_whole_not_as_a_pattern(everyone):
    """``ro.t`` or ``roo`` is not ``root``."""
    fact = UserAccount()
    for name in ("ro.t", "roo", "^root", "root:x"):
        if name not in everyone:
            assert run(fact.command(name)) == [], name


ACCOUNT = {"home": "/usr/share/ollama", "shell": "/usr/sbin/nologin", "group": "ollama",
           "groups": ["render", "video"]}  # fmt: skip


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        ({}, True),
        ({"home": "/usr/share/ollama", "groups": ["video", "render"]}, True),  # order is free
        ({"home": "/home/ollama"}, False),
        ({"shell": "/bin/bash"}, False),
        ({"group": "users"}, False),
        ({"groups": ["video"]}, False),  # exactly these groups, as server.user without append
        ({"groups": ["video", "render", "docker"]}, False),
    ],
)
def test_an_account_matches_when_server_user_would_change_nothing(wanted, matches):
    assert account_matches(dict(ACCOUNT), **wanted) is matches
    assert account_matches(None, **wanted) is False
