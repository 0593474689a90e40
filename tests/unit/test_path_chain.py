"""``facts.ollama.PathChain`` in a real shell on real directories reads what ``lstat`` says of
each directory from ``/`` down to the path (a missing level, a dangling link, the root)."""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import stat
import subprocess

import pytest

from provisioner.facts.ollama import PathChain


def expected(path: str) -> list[dict]:
    levels = [path]
    while levels[-1] != "/":
        levels.append(posixpath.dirname(levels[-1]))
    chain = []
    for level in reversed(levels):
        try:
            st = os.lstat(level)
        except OSError:
            missing = {"exists": False, "mode": None, "user": None, "group": None}
            chain.append({"path": level, **missing})
            continue
        chain.append(
            {
                "path": level,
                "exists": True,
                "mode": stat.S_IMODE(st.st_mode),
                "user": pwd.getpwuid(st.st_uid).pw_name,
                "group": grp.getgrgid(st.st_gid).gr_name,
            }
        )
    return chain


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "store" / "models").mkdir(parents=True)
    (tmp_path / "store").chmod(0o700)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


@pytest.mark.parametrize(
    "relative", ["", "store", "store/models", "store/models/a/b", "dangling", "dangling/x"]
)
def test_each_level_reads_as_lstat_says(tree, relative):
    path = str(tree / relative) if relative else str(tree)
    fact = PathChain()
    out = subprocess.run(["sh", "-c", fact.command(path)], capture_output=True, text=True)
    assert out.returncode == 0
    assert fact.process(out.stdout.splitlines()) == expected(path)


def test_the_root_alone():
    fact = PathChain()
    out = subprocess.run(["sh", "-c", fact.command("/")], capture_output=True, text=True)
    assert fact.process(out.stdout.splitlines()) == expected("/")
