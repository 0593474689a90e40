"""The Ollama install's state probe: every fact the Ollama deploy's operations read (ours and
pyinfra's ``server.packages``/``group``/``user`` and ``files.put`` inside them), and what the
models deploy after it reads (memory, the model store), as ``(fact class, arguments)`` keys
for ``fact_cache.probe``: one remote command.

The arguments are spelled as the operations pass them (recorded from a converged lab run with
``bench/layers.py``'s fact trail); a key spelled differently is simply read alone, so a
missing key costs one command, never a wrong value.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from pyinfra.api import FactBase
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.server import Groups, Os, Which

from provisioner.facts.exposure import InstalledFiles, PresentPaths
from provisioner.facts.nvidia import PACKAGE_FAMILIES, NamedPackages, package_names
from provisioner.facts.ollama import OllamaInstall, OllamaModels, PathChain
from provisioner.facts.system import MemoryTotal, UserAccount

Key = tuple[type[FactBase], dict[str, Any]]


def plan_keys(models_dir: str) -> list[Key]:
    """What the Ollama and models deploys read while planning (outside their operations): the
    groups the service user joins, the memory the models are planned for, the model store."""
    return [(Groups, {}), (MemoryTotal, {}), (OllamaModels, {"models_dir": models_dir})]


def operation_keys(
    *,
    family: str,
    packages: Sequence[str],
    user: str,
    home: str,
    models_dir: str,
    install_dir: str,
    service: str,
    fetch_helper: str,
    serving_files: Sequence[str],
    removable: Sequence[Sequence[str]],
) -> list[Key]:
    """Every fact the Ollama install reads on a host of package ``family`` (apt, dnf)."""
    keys: list[Key] = [(Which, {"command": m}) for m in PACKAGE_FAMILIES]  # system.packages
    if family in PACKAGE_FAMILIES:
        keys.append((NamedPackages, {"names": package_names(packages)}))
    keys += [
        (Os, {}),
        (UserAccount, {"user": user}),
        (Directory, {"path": home}),
        (PathChain, {"path": home.rstrip("/") or "/"}),
        (PathChain, {"path": models_dir.rstrip("/") or "/"}),
        (OllamaInstall, {"install_dir": install_dir}),
        (OllamaInstall, {"install_dir": install_dir, "service": service}),
        (File, {"path": fetch_helper}),
        (Directory, {"path": posixpath.dirname(fetch_helper)}),
        (Sha1File, {"path": fetch_helper}),
        (InstalledFiles, {"paths": list(serving_files)}),
    ]
    keys += [(PresentPaths, {"paths": list(paths)}) for paths in removable]
    return [*plan_keys(models_dir), *keys]
