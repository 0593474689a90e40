"""Facts read together: many reads of pyinfra's ``File``/``Directory`` (one ``stat``) and
``Sha1File`` (one ``sha1sum``) in one process each, and a unit's ``SystemdStatus`` and
``SystemdEnabled`` in one ``systemctl show``, for ``fact_cache``'s probe.

pyinfra reads each destination of ``files.put`` with three facts (``File``, ``Directory`` of
its folder, ``Sha1File``), each one process on the host. A converged GPU host's probe held
18 of them: about 36 ms of the host's CPU, more than any other part, on every run. A batch
runs one process for all of them and gives each fact the lines its own command would have
printed, so each fact's own ``process`` reads them.

A fact joins a batch only when pyinfra builds the very command the batch stands for (checked
on the command's text, so a pyinfra upgrade that changes it simply turns batching off for that
fact). A batch whose process fails (no GNU ``stat -c``, no ``sha1sum``, a path removed while it
ran) answers nothing: ``fact_cache`` then reads each of its facts alone, as pyinfra would.

``tests/unit/test_fact_batch.py`` runs both, the facts' own commands and the batches, on the
same files (file, folder, link, broken link, missing, unreadable) and compares what each fact
gets.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from pyinfra.api import FactBase
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

# pyinfra 3.10 files.File (and Directory, its subclass): the GNU stat format of its command
STAT_FORMAT = "user=%U group=%G mode=%A atime=%X mtime=%Y ctime=%Z size=%s %N"
# between the path and the fact's line, in the batch's output
SEPARATOR = "|#provisioner#|"


class Batch:
    """Facts of ``classes`` answered for many ``path`` arguments by one process."""

    classes: tuple[type[FactBase], ...] = ()

    def accepts(self, fact: FactBase, kwargs: dict[str, Any], text: str) -> bool:
        """Whether this fact's command (``text``) is the one this batch stands for."""
        path = kwargs.get("path")
        return (
            type(fact) in self.classes
            and set(kwargs) == {"path"}
            and isinstance(path, str)
            and self.single(shlex.quote(path)) in text
        )

    def single(self, quoted: str) -> str:
        """The piece of the fact's own command that prints its value."""
        raise NotImplementedError

    def command(self, paths: Sequence[str]) -> str:
        raise NotImplementedError

    def split(self, lines: Sequence[str], paths: Sequence[str]) -> dict[str, list[str]] | None:
        """Each path's lines as its fact's own command prints them; None: not understood."""
        raise NotImplementedError


def existing(paths: Sequence[str], test: str) -> str:
    """Shell that sets ``"$@"`` to those of ``paths`` that pass ``test``."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return f'set --; for p in {quoted}; do if {test}; then set -- "$@" "$p"; fi; done; '


class StatBatch(Batch):
    """``File`` and ``Directory``: ``stat -c`` of every path that exists (or is a link). A
    missing path prints nothing, as the fact's own ``! (test -e || test -L) || ...`` does."""

    classes = (File, Directory)

    def single(self, quoted: str) -> str:
        return f"stat -c '{STAT_FORMAT}' {quoted} 2> /dev/null"

    def command(self, paths: Sequence[str]) -> str:
        return existing(paths, 'test -e "$p" || test -L "$p"') + (
            f"[ $# -eq 0 ] || stat -c '%n{SEPARATOR}{STAT_FORMAT}' -- \"$@\""
        )

    def split(self, lines: Sequence[str], paths: Sequence[str]) -> dict[str, list[str]] | None:
        out: dict[str, list[str]] = {path: [] for path in paths}
        for line in lines:
            path, sep, rest = line.partition(SEPARATOR)
            if not sep or path not in out or out[path]:
                return None
            out[path] = [rest]
        return out


class Sha1Batch(Batch):
    """``Sha1File``: one ``sha1sum`` of every path that exists. A path sha1sum cannot read (a
    folder, no permission) prints nothing, as the fact's own command then prints nothing."""

    classes = (Sha1File,)

    def single(self, quoted: str) -> str:
        return f"sha1sum {quoted} 2> /dev/null"

    def command(self, paths: Sequence[str]) -> str:
        return (
            "command -v sha1sum >/dev/null 2>&1 || exit 1; "
            + existing(paths, 'test -e "$p"')
            + '[ $# -eq 0 ] || sha1sum -- "$@" 2>/dev/null; true'
        )

    def split(self, lines: Sequence[str], paths: Sequence[str]) -> dict[str, list[str]] | None:
        out: dict[str, list[str]] = {path: [] for path in paths}
        for line in lines:
            if line.startswith("\\"):  # sha1sum escaped a name: not one of ours as given
                return None
            digest, sep, path = line.partition("  ")
            if not sep or path not in out or out[path]:
                return None
            out[path] = [line]
        return out


BATCHES: tuple[Batch, ...] = (StatBatch(), Sha1Batch())

# pyinfra 3.10 systemd facts: ``systemctl show --all --property Id --property <state_key>``;
# each one's ``process`` reads its own property and skips the others
_SYSTEMD = (SystemdStatus, SystemdEnabled)
_BOTH = "--property Id --property SubState --property UnitFileState "


def widened(fact: FactBase, text: str) -> str | None:
    """A command that answers this fact and its sibling with the same arguments at once (the
    two then share one part: ``systemctl show`` of both properties), or None."""
    if type(fact) in _SYSTEMD:
        own = f"--property Id --property {type(fact).state_key} "
        if text.count(own) == 1:
            return text.replace(own, _BOTH)
    return None


def batch_for(fact: FactBase, kwargs: dict[str, Any], text: str) -> Batch | None:
    """The batch that can answer this fact read (its command's text is ``text``), or None."""
    return next((b for b in BATCHES if b.accepts(fact, kwargs, text)), None)
