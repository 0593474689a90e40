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

from provisioner.fact_batch import existing

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
        # one stat and one sha256sum for all the files (a process costs a host about 1 ms)
        return existing(paths, '[ -f "$p" ]') + (
            '[ $# -eq 0 ] || { stat -c "stat %a %U %G %n" -- "$@" && sha256sum -- "$@"; }; true'
        )

    def process(self, output: list[str]) -> dict[str, tuple[str, str, str, str]]:
        owners: dict[str, tuple[str, str, str]] = {}
        sums: dict[str, str] = {}
        for line in output:
            if line.startswith("stat "):
                parts = line.split(" ", 4)
                if len(parts) == 5:
                    owners[parts[4]] = (parts[1], parts[2], parts[3])
                continue
            sha256, sep, path = line.partition("  ")
            if sep and len(sha256) == 64:
                sums[path] = sha256
        return {path: (*owners[path], sha256) for path, sha256 in sums.items() if path in owners}


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
