"""
Configuration that must change as a whole: staged, checked, switched, and rolled back on failure.

How Ollama is reached (its unit and drop-in, the nftables allowlist, the nginx proxy) is a set
of files that only make sense together: a drop-in with ``OLLAMA_HOST=0.0.0.0`` without the
allowlist that guards it exposes Ollama, an nginx site that does not load takes nginx down at
its next restart. :func:`switch` uploads the new files beside the old ones, runs a check on
the staged copies (``nft -c -f``), keeps a copy of what is installed, moves the new files in
and runs the activation commands; when any step fails it puts the previous files back, runs
the restore commands, and fails the host with the step and its output. What served before
keeps serving.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from provisioner.facts.exposure import InstalledFiles, PresentPaths

__all__ = ["STAGE_DIR", "Staged", "only", "removed", "switch", "switch_script"]

#: Where new files wait while they are checked, and the previous ones while they are replaced.
STAGE_DIR = "/var/lib/provisioner/stage"

q = shlex.quote


@dataclass(frozen=True)
class Staged:
    """One file of a change: where it goes, what it holds, and its owner and mode."""

    dest: str
    content: str
    mode: str = "644"
    user: str = "root"
    group: str = "root"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


def _staged_name(index: int, item: Staged) -> str:
    return f"{index}-{posixpath.basename(item.dest)}"


def _fail(message: str) -> str:
    return f'fail {q(message)} "$out"'


def _undo(message: str) -> str:
    return f"{{ restore; {_fail(message)}; }}"


def switch_script(
    items: Sequence[Staged],
    stage: str,
    what: str,
    check: str | None = None,
    activate: Sequence[str] = (),
    restore: Sequence[str] = (),
) -> str:
    """The shell script behind :func:`switch`, for files already uploaded under ``stage``.

    ``check`` may name the staged copies as ``{0}``, ``{1}``, ... (in ``items`` order).
    """
    staged = [f"{stage}/{_staged_name(i, item)}" for i, item in enumerate(items)]
    backup = f"{stage}/previous"
    lines = [
        f"S={q(stage)}",
        'fail() { printf "%s: %s\\n" "$1" "$2" >&2; rm -rf "$S"; exit 1; }',
        "restore() {",
    ]
    for i, item in enumerate(items):
        saved = f"{backup}/{i}"
        lines.append(
            f"  if [ -e {q(saved)} ]; then mv -f {q(saved)} {q(item.dest)}; "
            f"else rm -f {q(item.dest)}; fi"
        )
    lines += [f"  {command} >/dev/null 2>&1 || true" for command in restore]
    lines += ["  :", "}", "out="]
    if check:
        lines.append(
            f"out=$({check.format(*(q(path) for path in staged))} 2>&1) || "
            + _fail(f"{what}: the check `{check.format(*staged)}` failed, nothing was changed")
        )
    lines.append(f"rm -rf {q(backup)} && mkdir -p {q(backup)} || " + _fail(f"{what}: no backup"))
    for i, item in enumerate(items):
        lines.append(
            f"if [ -e {q(item.dest)} ]; then cp -p {q(item.dest)} {q(f'{backup}/{i}')} || "
            + _fail(f"{what}: cannot keep a copy of {item.dest}, nothing was changed")
            + "; fi"
        )
    for i, item in enumerate(items):
        new = f"{item.dest}.provisioner-new"
        lines.append(
            f"out=$(mkdir -p {q(posixpath.dirname(item.dest))} && "
            f"install -m {q(item.mode)} -o {q(item.user)} -g {q(item.group)} "
            f"{q(staged[i])} {q(new)} && mv -f {q(new)} {q(item.dest)} 2>&1) || "
            + _undo(f"{what}: cannot install {item.dest}, the previous files are back")
        )
    for command in activate:
        lines.append(
            f"out=$({command} 2>&1) || "
            + _undo(f"{what}: `{command}` failed, the previous configuration is back")
        )
    lines.append('rm -rf "$S"')
    return "\n".join(lines)


def _in_place(item: Staged, installed: dict[str, tuple[str, str, str, str]]) -> bool:
    found = installed.get(item.dest)
    return found == (item.mode.lstrip("0") or "0", item.user, item.group, item.sha256)


@operation()
def switch(
    items: Sequence[Staged],
    what: str,
    check: str | None = None,
    activate: Sequence[str] = (),
    restore: Sequence[str] = (),
    stage: str = STAGE_DIR,
):
    """
    Replace a set of files as a whole: stage them, check the staged copies, move them in, run
    the activation commands; on any failure put the previous files back (files that did not
    exist are removed again), run ``restore`` and fail the host with the step and its output.
    Nothing is done when every file already has its content, mode and owner.

    + items: the files (:class:`Staged`: destination, content, mode, user, group)
    + what: what the files are, for messages ("the Ollama allowlist")
    + check: a command run on the staged copies before anything changes; ``{0}``, ``{1}``, ...
      are the staged paths of ``items``
    + activate: commands run after the files are in place (reload, restart)
    + restore: commands run after the previous files are back (their failures are ignored)
    + stage: the host directory for staged and previous copies

    **Example:**

    .. code:: python

        exposure.switch(
            name="Switch the Ollama allowlist",
            items=[Staged("/etc/provisioner/ollama.nft", rules)],
            what="the Ollama allowlist",
            check="nft -c -f {0}",
            activate=["systemctl restart provisioner-ollama-firewall"],
        )
    """
    if not items:
        host.noop(f"{what} is not wanted on this host")
        return
    installed = host.get_fact(InstalledFiles, paths=[item.dest for item in items])
    if all(_in_place(item, installed) for item in items):
        host.noop(f"{what} is in place")
        return
    yield f"rm -rf {q(stage)} && mkdir -p -m 700 {q(stage)}"
    for i, item in enumerate(items):
        yield FileUploadCommand(StringIO(item.content), f"{stage}/{_staged_name(i, item)}")
    yield switch_script(items, stage, what, check, activate, restore)


@operation()
def removed(
    paths: Sequence[str],
    what: str,
    wanted: bool = False,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
):
    """
    Remove what an exposure installed, once it is no longer wanted: run ``before`` (stop its
    service), remove ``paths`` (files or directories), run ``after`` (reload). Nothing is done
    while it is ``wanted``, or when none of ``paths`` is on the host.

    + paths: the files and directories it installed
    + what: what it is, for messages ("the Ollama proxy")
    + wanted: the host still wants it (the operation skips)
    + before: commands run before the paths are removed
    + after: commands run after the paths are removed

    **Example:**

    .. code:: python

        exposure.removed(
            name="Remove the Ollama allowlist",
            what="the Ollama allowlist",
            paths=["/etc/provisioner/ollama.nft"],
            before=["systemctl disable --now provisioner-ollama-firewall.service"],
            wanted=False,
        )
    """
    if wanted:
        host.noop(f"{what} is wanted")
        return
    if not host.get_fact(PresentPaths, paths=list(paths)):
        host.noop(f"{what} is not installed")
        return
    yield from before
    yield "rm -rf " + " ".join(q(path) for path in paths)
    yield from after


@operation()
def only(wanted: bool, what: str, then: Any, **arguments: Any):
    """
    Run the operation ``then`` with ``arguments`` on the hosts that want it; elsewhere nothing.
    Every host calls the same operations in the same order (docs/architecture.md), and unlike
    pyinfra's ``_if`` the skip also holds in a dry run's plan.

    + wanted: this host wants it
    + what: what it is, for the message of a skip
    + then: a pyinfra operation (``files.directory``, ``systemd.service``, ...)
    + arguments: the operation's own arguments

    **Example:**

    .. code:: python

        exposure.only(
            name="Run nginx",
            wanted=cfg.proxy,
            what="nginx",
            then=systemd.service,
            service="nginx",
            running=True,
        )
    """
    if not wanted:
        host.noop(f"{what} is not wanted on this host")
        return
    yield from then._inner(**arguments)
