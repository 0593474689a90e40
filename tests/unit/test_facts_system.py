"""System facts: their commands run on this machine, and odd input never raises.

The fixture-driven fact tests (pyinfra-testing) are in test_fixtures.py.
"""

from __future__ import annotations

import os
import platform
import subprocess

import pytest

from provisioner.facts.system import KernelRelease, MemoryTotal, OsInfo, parse_os_release


def _run(command: str) -> list[str]:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done
    return done.stdout.splitlines()


def test_os_info_on_this_machine() -> None:
    release = platform.freedesktop_os_release()
    value = OsInfo().process(_run(OsInfo().command()))
    assert value["id"] == release["ID"]
    assert value["version_id"] == release.get("VERSION_ID")
    assert value["pretty_name"] == release.get("PRETTY_NAME")
    assert value["arch"] == os.uname().machine


def test_memory_total_on_this_machine() -> None:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    assert MemoryTotal().process(_run(MemoryTotal().command())) == kib // 1024


def test_kernel_release_on_this_machine() -> None:
    assert KernelRelease().process(_run(KernelRelease().command())) == os.uname().release


def test_parse_os_release_quoting() -> None:
    assert parse_os_release(
        [
            'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"',
            "ID=debian",
            "NAME='Single Quoted'",
            'ESCAPED="a \\"quoted\\" word"',
            "# comment",
            "not a pair",
            "EMPTY=",
        ]
    ) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "ID": "debian",
        "NAME": "Single Quoted",
        "ESCAPED": 'a "quoted" word',
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    "output",
    [
        [],
        [""],
        ["\x00", "=", "==", "ID", "##arch"],
        ['ID="unterminated', "VERSION='x"],
        ["MemTotal:", "MemTotal: x kB", "MemTotal: 1 MB"],
    ],
)
def test_system_facts_never_raise(output: list[str]) -> None:
    info = OsInfo().process(output)
    assert set(info) == {"id", "version_id", "codename", "arch", "pretty_name", "id_like"}
    assert MemoryTotal().process(output) is None
    kernel = KernelRelease().process(output)
    assert kernel is None or isinstance(kernel, str)
