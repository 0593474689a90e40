"""Installed driver packages, as the GpuStackPackages fact reports them: which driver is
installed, what is held, whether the branch is locked. Apply acts on these answers and verify
judges with them. Part of :mod:`provisioner.gpu_stack`, which re-exports every name here."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from provisioner.gpu_data import FLAVOURS, Distro, branch_of, package_version


def name_matches(name: str, globs: Iterable[str]) -> bool:
    """Whether a package name matches one of the shell globs."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def installed_packages(packages_fact: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((packages_fact or {}).get("packages") or [])


def find_packages(
    packages_fact: Mapping[str, Any] | None, globs: Iterable[str]
) -> list[Mapping[str, Any]]:
    """Installed packages whose name matches one of ``globs``."""
    globs = tuple(globs)
    return [p for p in installed_packages(packages_fact) if name_matches(p["name"], globs)]


def is_installed(packages_fact: Mapping[str, Any] | None, spec: str) -> bool:
    """True when ``spec`` names an installed package: by name, by ``name-version[.arch]``
    as ``kernel-devel-$(uname -r)`` does on EL, or by apt's ``name=version``."""
    for p in installed_packages(packages_fact):
        plain = p["version"].split(":", 1)[-1]
        forms = (p["name"], f"{p['name']}-{plain}", f"{p['name']}-{plain}.{p.get('arch')}")
        if spec in forms or spec in (f"{p['name']}={plain}", f"{p['name']}={p['version']}"):
            return True
    return False


@dataclass(frozen=True)
class InstalledDriver:
    """The driver a host has installed, from its kernel-module package."""

    package: str | None = None  # e.g. nvidia-kernel-open-dkms
    version: str | None = None  # package version, e.g. 580.105.08-1
    flavour: str | None = None
    branches: frozenset[str] = frozenset()  # of every driver package seen

    @property
    def driver_version(self) -> str | None:
        return package_version(self.version) if self.version else None


def installed_driver(target: Distro, packages_fact: Mapping[str, Any] | None) -> InstalledDriver:
    found: tuple[str, str, str] | None = None
    for flavour in FLAVOURS:
        for p in find_packages(packages_fact, target.kernel_module[flavour]):
            found = found or (p["name"], p["version"], flavour)
    branches = frozenset(
        branch_of(p["version"])
        for p in find_packages(packages_fact, target.driver_globs)
        if re.match(r"(\d+:)?\d{3}\.", p["version"])
    )
    if not found:
        return InstalledDriver(branches=branches)
    return InstalledDriver(found[0], found[1], found[2], branches)


def packages_to_hold(target: Distro, packages_fact: Mapping[str, Any] | None) -> list[str]:
    """Installed driver packages that are not held yet."""
    return sorted(
        p["name"]
        for p in find_packages(packages_fact, target.hold_globs)
        if not name_matches(p["name"], target.hold_exclude) and not p.get("held")
    )


def branch_locked(target: Distro, packages_fact: Mapping[str, Any] | None, branch: str) -> bool:
    """Whether the driver is locked to ``branch`` the distro's way: its pinning package
    installed (apt), its module stream enabled (EL); a distribution's own driver ships one
    branch, so only its holds lock it."""
    if target.branch_lock == "pinning-package":
        return is_installed(packages_fact, target.pinning(branch))
    if target.branch_lock == "module-stream":
        return str((packages_fact or {}).get("stream") or "").startswith(f"{branch}-")
    return True


def lock_problems(
    target: Distro, packages_fact: Mapping[str, Any] | None, branch: str
) -> list[str]:
    """What the driver deploy would still change to lock the driver (empty: locked): the
    branch lock, and the driver packages not held yet (``packages_to_hold``). Verify judges
    with this, apply acts on the same two answers."""
    problems = []
    if not branch_locked(target, packages_fact, branch):
        how = (
            target.pinning(branch)
            if target.branch_lock == "pinning-package"
            else f"module stream {target.stream(branch, 'open').rsplit('-', 1)[0]}-*"
        )
        problems.append(f"branch {branch} is not locked ({how} missing)")
    unheld = packages_to_hold(target, packages_fact)
    if unheld:
        problems.append(f"not held: {', '.join(unheld)}")
    return problems
