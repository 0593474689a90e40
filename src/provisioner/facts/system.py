"""
System facts the GPU stack depends on: the distribution, the architecture, the memory
and the running kernel. None of them raises from ``process()``.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra.api import FactBase

__all__ = ["OsInfo", "MemoryTotal", "KernelRelease", "UserAccount", "parse_os_release"]

_ARCH_MARK = "##arch "
_OS_KEYS = ("id", "version_id", "codename", "arch", "pretty_name", "id_like")
_CODENAME_IN_VERSION = re.compile(r"\(([a-z]+)\)")


def _unquote(value: str) -> str:
    try:
        parts = shlex.split(value, comments=False, posix=True)
    except ValueError:
        return value.strip().strip("\"'")
    return " ".join(parts)


def parse_os_release(lines: list[str]) -> dict[str, str]:
    """``KEY=value`` pairs of an os-release(5) file, values unquoted."""
    values: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.replace("_", "").isalnum():
            values[key] = _unquote(value)
    return values


class OsInfo(FactBase[dict[str, Any]]):
    """
    Returns the distribution (from ``/etc/os-release``, else ``/usr/lib/os-release``)
    and the machine architecture (``uname -m``):

    .. code:: python

        {
            "id": "debian",
            "version_id": "12",
            "codename": "bookworm",
            "arch": "x86_64",
            "pretty_name": "Debian GNU/Linux 12 (bookworm)",
            "id_like": None,  # e.g. "debian" on Ubuntu, "rhel centos fedora" on Rocky
        }

    A value the host does not report is None (Debian testing has no ``VERSION_ID``).
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return dict.fromkeys(_OS_KEYS)

    def command(self) -> str:
        return (
            "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null; "
            f'echo "{_ARCH_MARK}$(uname -m)"'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        info = self.default()
        try:
            arch_lines = [line for line in output if line.startswith(_ARCH_MARK)]
            release = parse_os_release([line for line in output if line not in arch_lines])
            codename = release.get("VERSION_CODENAME") or release.get("UBUNTU_CODENAME")
            if not codename:
                match = _CODENAME_IN_VERSION.search(release.get("VERSION", ""))
                codename = match.group(1) if match else None
            arch = arch_lines[-1][len(_ARCH_MARK) :].strip() if arch_lines else ""
            info.update(
                {
                    "id": release.get("ID") or None,
                    "version_id": release.get("VERSION_ID") or None,
                    "codename": codename or None,
                    "arch": arch or None,
                    "pretty_name": release.get("PRETTY_NAME") or None,
                    "id_like": release.get("ID_LIKE") or None,
                }
            )
        except Exception:  # a fact must never abort the run
            pass
        return info


class MemoryTotal(FactBase[int | None]):
    """
    Returns the host's memory in MiB (``MemTotal`` of ``/proc/meminfo``), or None.
    """

    def command(self) -> str:
        return "cat /proc/meminfo"

    def process(self, output: list[str]) -> int | None:
        try:
            for line in output:
                key, _, value = line.partition(":")
                if key.strip() == "MemTotal":
                    amount, _, unit = value.strip().partition(" ")
                    kib = int(amount)
                    if unit.strip().lower() not in ("kb", ""):
                        return None
                    return kib // 1024
        except Exception:  # a fact must never abort the run
            return None
        return None


class KernelRelease(FactBase[str | None]):
    """
    Returns the running kernel's release (``uname -r``), e.g. ``6.1.0-28-amd64``.
    """

    def command(self) -> str:
        return "uname -r"

    def process(self, output: list[str]) -> str | None:
        try:
            for line in output:
                if line.strip():
                    return line.strip()
        except Exception:  # a fact must never abort the run
            return None
        return None


class BootId(FactBase[str | None]):
    """
    The kernel's boot ID (``/proc/sys/kernel/random/boot_id``): a new random value at every
    boot. Unlike the uptime it also changes when a container reboots (systemd-nspawn gives
    each container boot its own), so it proves a reboot happened on servers and in the lab.
    """

    @staticmethod
    def default() -> str | None:
        return None

    def command(self) -> str:
        return "cat /proc/sys/kernel/random/boot_id 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        text = "".join(output).strip()
        return text or None


class HostLock(FactBase[dict[str, Any]]):
    """
    Takes this run's lock on the host, or says who holds it (``provisioner.host_lock``): the
    one fact with an effect, so that the lock is taken while the run prepares its first
    operation, before any other fact is read, and counts as no change:

    .. code:: python

        {"held": True}
        {"held": False, "holder": "run 1a2b3c4d by ops@ctl pid 4242 since 2026-05-01T10:00:00Z"}
        {"held": False, "error": "flock (util-linux) is not installed"}
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"held": False, "error": "the lock command gave no answer"}

    def command(self, owner: str) -> str:
        from provisioner.host_lock import script

        return script(owner)

    def process(self, output: list[str]) -> dict[str, Any]:
        text = " ".join(line.strip() for line in output if line.strip())
        kind, _, rest = text.partition(" ")
        if kind == "held":
            return {"held": True}
        if kind == "busy":
            return {"held": False, "holder": rest or "an unknown run"}
        return {"held": False, "error": rest or f"unexpected answer: {text[:200]}"}


_ID_NAMED = re.compile(r"(\d+)(?:\(([^)]*)\))?")


def _users_line(line: str) -> str:
    """``PASSWD|uid=.. gid=N(group) groups=N(a),M(b)`` (``LC_ALL=C id USER``) as pyinfra's
    ``Users`` command writes a user: ``PASSWD|group|groups||``, names as ``id -gn``/``-Gn``
    print them (the number where a group has no name)."""
    entry, _, ids = line.rpartition("|")
    fields = dict(part.split("=", 1) for part in ids.split() if "=" in part)

    def names(value: str) -> list[str]:
        return [m.group(2) or m.group(1) for m in _ID_NAMED.finditer(value)]

    group = next(iter(names(fields.get("gid", ""))), "")
    return f"{entry}|{group}|{' '.join(names(fields.get('groups', '')))}||"


class UserAccount(FactBase[dict[str, Any] | None]):
    """
    One local user, as pyinfra's ``Users`` fact describes each user (``/etc/passwd``, its
    primary group and its other groups by ``id``), or None when there is no such user. Reads
    that one user: ``Users`` runs about ten processes for every user on the host (``lastlog``,
    ``grep`` of ``/etc/shadow``, ``id``: 0.6 s on a Debian host), which a converged run paid
    twice. ``lastlog`` and ``password`` are not read (None).

    .. code:: python

        {"home": "/usr/share/ollama", "comment": None, "shell": "/usr/sbin/nologin",
         "group": "ollama", "groups": ["video", "render"], "uid": 998, "gid": 998,
         "lastlog": None, "password": None}
    """

    def command(self, user: str) -> str:
        # the passwd line by the shell's own read, the groups by one id(1): one process
        if ":" in user:  # no passwd name has one (the first field ends at it)
            return "true"
        name = shlex.quote(user)
        return (
            f'e=; while IFS= read -r l; do case "$l" in {name}:*) e=$l; break ;; esac; '
            "done < /etc/passwd; "
            f'[ -z "$e" ] || echo "$e|$(LC_ALL=C id {name})"'
        )

    def process(self, output: list[str]) -> dict[str, Any] | None:
        from pyinfra.facts.server import Users

        lines = [_users_line(line) for line in output if line.strip()]
        users = Users().process(lines)
        account = next(iter(users.values()), None)
        if account is not None:
            account["password"] = None
        return account
