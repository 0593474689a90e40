"""Which Ollama release archive to install, where its sha256 comes from, and whether it may be
installed at all.

Reads ``data/ollama_releases.toml``: the CVE floor, the advisories behind it, the archive
name per version (``.tgz`` before v0.14.0, ``.tar.zst`` from it) and optional pinned sums.
Every decision here is made on the control host, before a single byte is downloaded: a
version below the floor is refused (unless the operator accepts the risk explicitly).

The sum the archive is checked against comes, first found wins, from ``ollama_sha256`` (the
operator's pin), a lock file (:func:`sum_from_lock`), the table, or else the release's own
``sha256sum.txt`` fetched on the host from the same place as the archive
(:data:`SUMS_FROM_RELEASE`); :attr:`Release.sha256_source` says which.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "Cve",
    "Release",
    "ReleaseError",
    "SUMS_FROM_RELEASE",
    "archive_ext",
    "archive_format",
    "cve_floor",
    "cves_affecting",
    "known_cves",
    "newest_verified",
    "parse_version",
    "release_arch",
    "resolve",
    "sum_from_lock",
    "sums_line",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
#: ``Release.sha256_source`` when the host takes the sum from the release's sha256sum.txt.
SUMS_FROM_RELEASE = "sha256sum.txt"


class ReleaseError(ValueError):
    """The requested release cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Cve:
    id: str
    title: str
    source: str
    fixed_in: str | None = None
    affected_through: str | None = None
    verified: str = ""
    note: str = ""

    def affects(self, version: str) -> bool:
        v = parse_version(version)
        if self.fixed_in is not None:
            return v < parse_version(self.fixed_in)
        if self.affected_through is not None:
            return v <= parse_version(self.affected_through)
        return False


@dataclass(frozen=True)
class Release:
    """One release archive, ready to be downloaded and checked.

    ``sha256`` is None when the host is to take the sum from ``sums_url`` (the release's
    ``sha256sum.txt``, whose line for ``./<asset>`` names it); ``sha256_source`` says where
    the sum comes from either way.
    """

    version: str
    arch: str
    url: str
    sha256: str | None
    format: str  # "tgz" | "zst"
    sha256_source: str = "ollama_sha256"
    sums_url: str = ""

    @property
    def asset(self) -> str:
        """The archive's file name, as ``sha256sum.txt`` lists it (after ``./``)."""
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


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
    """The lowest version installed without ``ollama_allow_vulnerable_version``."""
    return str(_table()["cve_floor"])


def newest_verified() -> str:
    """The newest release the toolkit was checked against (the default ``ollama_version``)."""
    return str(_table()["newest_verified"])


def archive_ext(version: str) -> str:
    """The Linux archive's extension for ``version``: ``tgz`` before 0.14.0, else ``tar.zst``."""
    v = parse_version(version)
    ext = ""
    for entry in sorted(_table()["archive"], key=lambda e: parse_version(e["from"])):
        if v >= parse_version(entry["from"]):
            ext = str(entry["ext"])
    return ext


def known_cves() -> list[Cve]:
    """Every advisory in the table."""
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
    """``tgz`` or ``zst``, from the archive URL's file name."""
    path = url.split("?", 1)[0]
    if path.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if path.endswith(".tar.zst"):
        return "zst"
    raise ReleaseError(f"{url}: unknown archive type (expected .tgz, .tar.gz or .tar.zst)")


def known_sha256(version: str, arch: str) -> str | None:
    """The sum pinned in data/ollama_releases.toml for this version and architecture."""
    entry = _table().get("sha256", {}).get(version, {})
    value = entry.get(arch) if isinstance(entry, dict) else None
    return str(value).lower() if value else None


def sum_from_lock(lock: Mapping[str, Any] | None, version: str, arch: str) -> str | None:
    """The archive's sum recorded in a lock file (``provision lock``, docs/lock.md), or None.

    ``lock`` is the parsed lock (or one host's view of it, :func:`provisioner.lock.ollama_view`);
    the Ollama part is read as the list of ``[[ollama]]`` tables (``version``, ``arch``,
    ``sha256``), or as ``lock["ollama"][version][arch]`` / ``[version]["sha256"][arch]``.
    A lock that records another version says nothing about this one.
    """
    entries = (lock or {}).get("ollama") or {}
    if isinstance(entries, list):
        for item in entries:
            if isinstance(item, Mapping) and (item.get("version"), item.get("arch")) == (
                version,
                arch,
            ):
                return str(item.get("sha256") or "").strip().lower() or None
        return None
    entry = entries.get(version) if isinstance(entries, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    sums = entry.get("sha256", entry)
    value = sums.get(arch) if isinstance(sums, Mapping) else None
    return str(value).strip().lower() if value else None


def sums_line(text: str, asset: str) -> str | None:
    """The sum ``sha256sum.txt`` gives for ``asset``: lines are ``<sha256>  ./<asset>`` as
    ``find . -type f | xargs sha256sum`` writes them (release.yaml); ``<asset>`` and binary
    mode ``*./<asset>`` are accepted too. None when no line names the asset."""
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or not _SHA256.match(parts[0].lower()):
            continue
        name = parts[1].strip().lstrip("*")
        if name.removeprefix("./") == asset:
            return parts[0].lower()
    return None


def _fill(template: str, key: str, version: str, arch: str) -> str:
    try:
        return template.format(version=version, arch=arch, ext=archive_ext(version))
    except (KeyError, IndexError, ValueError) as exc:
        raise ReleaseError(
            f"{key} {template!r}: only {{version}}, {{arch}} and {{ext}} may be used ({exc})"
        ) from None


def _pinned(
    version: str, arch: str, sha256: str | None, lock: Mapping[str, Any] | None
) -> tuple[str | None, str]:
    if (sha256 or "").strip():
        return str(sha256).strip().lower(), "ollama_sha256"
    locked = sum_from_lock(lock, version, arch)
    if locked:
        return locked, "lock file"
    known = known_sha256(version, arch)
    if known:
        return known, "data/ollama_releases.toml"
    return None, SUMS_FROM_RELEASE


def resolve(
    version: str,
    machine: str | None,
    url_template: str,
    sha256: str | None = None,
    allow_vulnerable: bool = False,
    *,
    sums_url_template: str | None = None,
    lock: Mapping[str, Any] | None = None,
) -> Release:
    """The archive to install for ``version`` on a host whose ``uname -m`` is ``machine``.

    + version: the Ollama version (``ollama_version``)
    + machine: the host's architecture as ``uname -m`` prints it
    + url_template: ``ollama_release_url``, with ``{version}``, ``{arch}`` and ``{ext}``
    + sha256: an explicit pin (``ollama_sha256``), which wins over everything else
    + allow_vulnerable: install a version below the CVE floor anyway
    + sums_url_template: ``ollama_sha256sum_url``; empty: ``sha256sum.txt`` next to the archive
    + lock: a parsed lock file (:func:`sum_from_lock`), consulted after the pin

    Raises :class:`ReleaseError` when the version is below the CVE floor (and not allowed),
    when a pinned sum is malformed, or when the URL or the architecture cannot be used.
    """
    floor = cve_floor()
    if parse_version(version) < parse_version(floor) and not allow_vulnerable:
        cves = ", ".join(cve.id for cve in cves_affecting(version)) or "see docs/ollama.md"
        raise ReleaseError(
            f"Ollama {version} is below the CVE floor {floor} ({cves}); install {floor} or "
            "newer, or set ollama_allow_vulnerable_version: true to accept the risk"
        )
    arch = release_arch(machine)
    url = _fill(url_template, "ollama_release_url", version, arch)
    fmt = archive_format(url)
    pinned, source = _pinned(version, arch, sha256, lock)
    if pinned is not None and not _SHA256.match(pinned):
        raise ReleaseError(f"{source}: {pinned!r} is not a sha256 (64 hex digits)")
    if sums_url_template:
        sums_url = _fill(sums_url_template, "ollama_sha256sum_url", version, arch)
    else:
        path, _, query = url.partition("?")
        sums_url = path.rsplit("/", 1)[0] + "/sha256sum.txt" + (f"?{query}" if query else "")
    return Release(
        version=version,
        arch=arch,
        url=url,
        sha256=pinned,
        format=fmt,
        sha256_source=source,
        sums_url=sums_url,
    )
