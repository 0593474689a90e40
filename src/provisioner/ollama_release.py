"""Which Ollama release archive to install, and whether it may be installed at all.

Reads ``data/ollama_releases.toml``: the CVE floor, the advisories behind it and the known
sha256 sums of release archives. Every decision here is made on the control host, before a
single byte is downloaded: a version below the floor is refused (unless the operator accepts
the risk explicitly), and a version whose checksum nobody pinned is refused too.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "Cve",
    "Release",
    "ReleaseError",
    "archive_format",
    "cve_floor",
    "cves_affecting",
    "known_cves",
    "parse_version",
    "release_arch",
    "resolve",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class ReleaseError(ValueError):
    """The requested release cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Cve:
    id: str
    title: str
    source: str
    fixed_in: str | None = None
    affected_through: str | None = None

    def affects(self, version: str) -> bool:
        v = parse_version(version)
        if self.fixed_in is not None:
            return v < parse_version(self.fixed_in)
        if self.affected_through is not None:
            return v <= parse_version(self.affected_through)
        return False


@dataclass(frozen=True)
class Release:
    """One release archive, ready to be downloaded and checked."""

    version: str
    arch: str
    url: str
    sha256: str
    format: str  # "tgz" | "zst"


def parse_version(version: str) -> tuple[int, int, int, int, str]:
    """``"0.32.15"`` -> a tuple that sorts as versions do (a pre-release before its release)."""
    match = _VERSION.match(version.strip())
    if not match:
        raise ReleaseError(f"{version!r} is not an Ollama version (expected e.g. 0.32.15)")
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


@cache
def _table() -> dict[str, Any]:
    path = resources.files("provisioner") / "data" / "ollama_releases.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))


def cve_floor() -> str:
    return str(_table()["cve_floor"])


def known_cves() -> list[Cve]:
    return [Cve(**entry) for entry in _table().get("cve", [])]


def cves_affecting(version: str) -> list[Cve]:
    """The advisories that a release of ``version`` is exposed to."""
    return [cve for cve in known_cves() if cve.affects(version)]


def release_arch(machine: str | None) -> str:
    """``uname -m`` -> the architecture name of Ollama's release files."""
    arch = _ARCHES.get((machine or "").strip())
    if arch is None:
        raise ReleaseError(f"no Ollama release for architecture {machine!r} (amd64 and arm64 only)")
    return arch


def archive_format(url: str) -> str:
    path = url.split("?", 1)[0]
    if path.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if path.endswith(".tar.zst"):
        return "zst"
    raise ReleaseError(f"{url}: unknown archive type (expected .tgz, .tar.gz or .tar.zst)")


def known_sha256(version: str, arch: str) -> str | None:
    entry = _table().get("sha256", {}).get(version, {})
    value = entry.get(arch) if isinstance(entry, dict) else None
    return str(value).lower() if value else None


def resolve(
    version: str,
    machine: str | None,
    url_template: str,
    sha256: str | None = None,
    allow_vulnerable: bool = False,
) -> Release:
    """The archive to install for ``version`` on a host whose ``uname -m`` is ``machine``.

    + version: the Ollama version (``ollama_version``)
    + machine: the host's architecture as ``uname -m`` prints it
    + url_template: ``ollama_release_url``, with ``{version}`` and ``{arch}``
    + sha256: an explicit pin (``ollama_sha256``), which wins over the table
    + allow_vulnerable: install a version below the CVE floor anyway

    Raises :class:`ReleaseError` when the version is below the CVE floor (and not allowed),
    when no checksum is known, or when the URL or the architecture cannot be used.
    """
    parse_version(version)
    floor = cve_floor()
    if parse_version(version) < parse_version(floor) and not allow_vulnerable:
        cves = ", ".join(cve.id for cve in cves_affecting(version)) or "see docs/ollama.md"
        raise ReleaseError(
            f"Ollama {version} is below the CVE floor {floor} ({cves}); install {floor} or "
            "newer, or set ollama_allow_vulnerable_version: true to accept the risk"
        )
    arch = release_arch(machine)
    try:
        url = url_template.format(version=version, arch=arch)
    except (KeyError, IndexError, ValueError) as exc:
        raise ReleaseError(
            f"ollama_release_url {url_template!r}: only {{version}} and {{arch}} "
            f"may be used ({exc})"
        ) from None
    pinned = (sha256 or "").strip().lower() or known_sha256(version, arch)
    if not pinned:
        raise ReleaseError(
            f"no sha256 known for Ollama {version} ({arch}): set ollama_sha256 to the value in "
            "the release's sha256sum.txt, or add it to data/ollama_releases.toml"
        )
    if not _SHA256.match(pinned):
        raise ReleaseError(f"ollama_sha256 {pinned!r} is not a sha256 (64 hex digits)")
    return Release(version=version, arch=arch, url=url, sha256=pinned, format=archive_format(url))
