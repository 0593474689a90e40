"""What an exposure change finds on a host, in one command per operation.

:class:`InstalledFiles` backs ``operations.exposure.switch`` (is every file already in place, with
its content, mode and owner?) and :class:`PresentPaths` backs ``operations.exposure.removed``
(is anything of it left?). One fact each instead of pyinfra's per-file ``File`` and
``Sha256File`` facts keeps a converged run's remote commands down.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pyinfra.api import FactBase

__all__ = ["InstalledFiles", "PresentPaths"]


class InstalledFiles(FactBase[dict[str, tuple[str, str, str, str]]]):
    """
    Returns the regular files among ``paths`` that exist, with their octal mode, owner, group
    and sha256:

    .. code:: python

        {"/etc/systemd/system/ollama.service": ("644", "root", "root", "<sha256>")}
    """

    @staticmethod
    def default() -> dict[str, tuple[str, str, str, str]]:
        return {}

    def command(self, paths: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return (
            f'for p in {quoted}; do [ -f "$p" ] || continue; '
            'printf "%s %s\\n" "$(stat -c "%a %U %G" "$p")" "$(sha256sum "$p")"; done; true'
        )

    def process(self, output: list[str]) -> dict[str, tuple[str, str, str, str]]:
        found = {}
        for line in output:
            parts = line.split(None, 4)
            if len(parts) == 5:
                mode, user, group, sha256, path = parts
                found[path] = (mode, user, group, sha256)
        return found


class PresentPaths(FactBase[list[str]]):
    """Returns those of ``paths`` that exist (files, directories, links), in order."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, paths: Sequence[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return (
            f'for p in {quoted}; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done; true'
        )

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]
