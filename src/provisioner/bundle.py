"""``provision bundle export|import``: exactly the locked artefacts in one checksummed,
content-addressed archive, for a site that reaches none of the sources (docs/lock.md).

An export reads the fleet's lock and fetches every locked artefact from the source the lock
names, each checked against the lock's sum or digest before it is kept:

* the driver, Fabric Manager and toolkit ``.deb`` files of the locked versions, and the packages
  of the same repository they depend on (``Depends``, first alternative the repository has;
  an exact ``(= V)`` taken as written, otherwise the newest), each checked against its
  ``SHA256`` in the repository's ``Packages`` index;
* the Ollama archive (the lock's sha256), the torch wheel (the lock's sha256);
* each model's manifest (by its locked digest) and its blobs (each by its digest).

The archive is a tar of ``manifest.json`` (every file: its name in the site, sha256, size,
kind and source), the lock, and the files themselves under ``sha256/<hex>`` (one copy of
each content). An import checks every file against the manifest, then lays them out as a site
mirror (``cuda/<distro>/x86_64/`` with a ``Packages`` index, ``ollama/v<version>/`` with a
``sha256sum.txt``, ``whl/<tag>/`` with a PEP 503 page) and pushes the models to the site's
registry. Each apt folder gets a ``Release`` (the SHA256 of its indexes); with ``sign_key`` the
import signs it with that GnuPG key of the site (``InRelease``, ``Release.gpg``) and publishes the
public key next to it as ``<last 8 hex of the fingerprint>.pub``, NVIDIA's layout (docs/lock.md).
Secrets never enter a bundle (the lock holds none; sources are fetched with the URLs it holds).
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import lock as lockfile
from provisioner import lock_sources as src

__all__ = [
    "BundleError",
    "Export",
    "Import",
    "SigningKeyError",
    "apt_release",
    "apt_stanzas",
    "companions",
    "export",
    "import_bundle",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "lock.toml"
_CHUNK = 1 << 20


class BundleError(RuntimeError):
    """An artefact that could not be fetched, or does not match its sum; names what and where."""


class SigningKeyError(BundleError):
    """The site's signing key cannot be used (bad input: nothing was written)."""


@dataclass
class Entry:
    """One file of a bundle: where it goes in the site, its content and where it came from."""

    path: str
    sha256: str
    size: int
    kind: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "sha256": self.sha256, "size": self.size, "kind": self.kind}
        return {**out, "source": self.source, **({"meta": self.meta} if self.meta else {})}


@dataclass
class Export:
    """What an export wrote."""

    path: str
    entries: list[Entry]
    sha256: str

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "files": [e.to_json() for e in self.entries],
        }


@dataclass
class Import:
    """What an import laid out and pushed."""

    site: str
    files: list[str]
    models: list[str]
    signed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"site": self.site, "files": self.files, "models": self.models}
        return {**out, "signed_by": self.signed_by}


# --- fetching, checked ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, what: str) -> Path:
    """Stream ``url`` to ``dest`` and check it against ``sha256``; :class:`BundleError`."""
    try:
        with urllib.request.urlopen(url, timeout=src.FETCH_TIMEOUT_S) as response:  # noqa: S310
            with dest.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{what}: {src.public_url(url)}: {exc}") from None
    actual = _sha256(dest)
    if actual != sha256:
        dest.unlink()
        raise BundleError(f"{what}: {src.public_url(url)} is {actual}, the lock holds {sha256}")
    return dest


class Staging:
    """The bundle's files while it is made: content-addressed under ``sha256/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Entry] = {}

    def keep(self, tmp: Path, entry_path: str, kind: str, source: str, **meta: Any) -> Entry:
        sha = _sha256(tmp)
        target = self.root / "sha256" / sha
        if target.exists():
            tmp.unlink()
        else:
            os.replace(tmp, target)
        entry = Entry(entry_path, sha, target.stat().st_size, kind, source, dict(meta))
        self.entries.setdefault(entry_path, entry)
        return entry

    def tmp(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.root, prefix=".part-")
        os.close(handle)
        return Path(name)


# --- apt --------------------------------------------------------------------------------------


def apt_stanzas(text: str) -> list[dict[str, str]]:
    """Every stanza of a ``Packages`` index as a field -> value mapping (continuation lines kept,
    joined with newlines)."""
    stanzas, current, last = [], {}, None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, None
        elif line[0] in " \t" and last:
            current[last] += "\n" + line
        elif ":" in line:
            last, _, value = line.partition(":")
            current[last] = value.strip()
    return stanzas


def _depends(stanza: Mapping[str, str]) -> list[list[tuple[str, str | None]]]:
    """``Depends`` (and ``Pre-Depends``) as groups of alternatives: ``[(name, exact or None)]``."""
    groups = []
    for field_name in ("Pre-Depends", "Depends"):
        for group in filter(None, (g.strip() for g in stanza.get(field_name, "").split(","))):
            alternatives = []
            for alt in group.split("|"):
                match = re.match(
                    r"\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", alt
                )
                if match:
                    exact = match.group(3) if match.group(2) == "=" else None
                    alternatives.append((match.group(1), exact))
            groups.append(alternatives)
    return groups


def package_closure(
    stanzas: Iterable[Mapping[str, str]], wanted: Iterable[tuple[str, str]]
) -> list[Mapping[str, str]]:
    """The stanzas of ``wanted`` ((name, version) pairs) and of every package of the same index
    they depend on, in a stable order; dependencies the index does not hold are left to the
    distribution's own mirror."""
    by_name: dict[str, list[Mapping[str, str]]] = {}
    for stanza in stanzas:
        by_name.setdefault(stanza.get("Package", ""), []).append(stanza)
    chosen: dict[tuple[str, str], Mapping[str, str]] = {}
    todo = list(wanted)
    while todo:
        name, version = todo.pop()
        candidates = [s for s in by_name.get(name, []) if not version or s["Version"] == version]
        if not candidates:
            if version:
                raise BundleError(f"the index holds no {name} {version}")
            continue
        stanza = max(candidates, key=lambda s: src.debian_version_key(s["Version"]))
        key = (name, stanza["Version"])
        if key in chosen:
            continue
        chosen[key] = stanza
        for group in _depends(stanza):
            present = next((alt for alt in group if alt[0] in by_name), None)
            if present:
                todo.append((present[0], present[1] or ""))
    return [chosen[k] for k in sorted(chosen)]


def companions(
    items: Iterable[lockfile.Item], stanzas: Iterable[Mapping[str, str]]
) -> list[tuple[str, str]]:
    """The packages the driver deploy installs beside a locked driver that no ``Depends`` names:
    the branch's pinning package (``pinning_package`` of ``data/distros.toml``, apt), at the
    driver's version when the index has it (NVIDIA's repository versions it so), else the
    newest (the deploy installs it unversioned); none when the index does not offer it."""
    from provisioner.gpu_data import distro

    offered: dict[str, set[str]] = {}
    for stanza in stanzas:
        offered.setdefault(stanza.get("Package", ""), set()).add(stanza.get("Version", ""))
    found = []
    for item in items:
        if item.kind != "driver":
            continue
        try:
            pin = distro(str(item.fields.get("distro"))).pinning(str(item.fields.get("branch")))
        except KeyError:
            continue
        if pin and pin in offered:
            version = str(item.fields["version"])
            found.append((pin, version if version in offered[pin] else ""))
    return found


def _export_packages(items: list[lockfile.Item], staging: Staging, fetch: Callable) -> None:
    by_source: dict[str, list[lockfile.Item]] = {}
    for item in items:
        by_source.setdefault(str(item.fields["source"]), []).append(item)
    for source, group in sorted(by_source.items()):
        if not source.endswith("Packages.gz"):
            raise BundleError(f"{source}: only apt repositories can be bundled yet (not dnf)")
        stanzas = apt_stanzas(fetch(source).decode("utf-8", "replace"))
        wanted = [(str(i.fields["name"]), str(i.fields["version"])) for i in group]
        wanted += companions(group, stanzas)
        base = source.rsplit("/", 1)[0] + "/"
        distro = str(group[0].fields.get("distro", "repo"))
        for stanza in package_closure(stanzas, wanted):
            filename, sha = stanza.get("Filename", ""), stanza.get("SHA256", "")
            if not filename or not sha:
                raise BundleError(f"{source}: {stanza['Package']} has no Filename or SHA256")
            url = urllib.parse.urljoin(base, filename)
            tmp = download(url, staging.tmp(), sha, f"{stanza['Package']} {stanza['Version']}")
            name = filename.rsplit("/", 1)[-1]
            control = "\n".join(f"{k}: {v}" for k, v in stanza.items() if k != "Filename")
            staging.keep(tmp, f"cuda/{distro}/x86_64/{name}", "deb", url, control=control)


# --- the other kinds --------------------------------------------------------------------------


def _export_files(items: list[lockfile.Item], staging: Staging) -> None:
    for item in items:
        url, sha, name = str(item.fields["url"]), str(item.fields["sha256"]), item.fields["name"]
        tmp = download(url, staging.tmp(), sha, f"{item.kind} {name}")
        if item.kind == "ollama":
            path = f"ollama/v{item.fields['version']}/{name}"
        else:  # the index tag: <index>/<tag>/torch/ -> whl/<tag>/<file>
            tag = str(item.fields["source"]).rstrip("/").rsplit("/", 2)[-2]
            path = f"whl/{tag}/{name}"
        staging.keep(tmp, path, item.kind, url)


def _export_models(items: list[lockfile.Item], staging: Staging, registries: dict) -> None:
    from provisioner.ollama_api import ManifestError, Registry, RegistryError

    for item in items:
        source = str(item.fields["source"])
        base, _, rest = source.partition("/v2/")
        repository, _, tag = rest.partition("/manifests/")
        digest = str(item.fields["digest"])
        registry = registries.setdefault(base, Registry(base))
        what = f"model {item.fields['name']}"
        try:
            manifest = registry.manifest(repository, digest)
            if manifest.digest != digest:
                raise BundleError(f"{what}: {source} offers {manifest.digest}, locked {digest}")
            for blob in manifest.blobs:
                tmp = registry.fetch_blob(repository, blob, staging.tmp())
                blob_path = f"models/{repository}/blobs/{blob.digest}"
                staging.keep(tmp, blob_path, "blob", f"{base}/v2/{repository}/blobs/{blob.digest}")
        except (RegistryError, ManifestError) as exc:
            raise BundleError(f"{what}: {exc}") from None
        tmp = staging.tmp()
        tmp.write_bytes(manifest.raw)
        meta = {"repository": repository, "tag": tag, "media_type": manifest.media_type}
        staging.keep(tmp, f"models/{repository}/manifests/{tag}", "manifest", source, **meta)


def export(
    lock_path: Path,
    out: Path,
    fetch: Callable[[str], bytes] = src.fetch,
    registries: dict[str, Any] | None = None,
) -> Export:
    """Bundle every artefact of the lock at ``lock_path`` into ``out`` (a tar)."""
    lock = lockfile.read(lock_path)
    if lock is None:
        raise lockfile.LockError(f"{lock_path}: no lock; `provision lock INVENTORY` writes one")
    registries = {} if registries is None else registries
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.parent) as folder:
        staging = Staging(Path(folder))
        packages = [i for i in lock.items if i.kind in ("driver", "fabricmanager", "toolkit")]
        _export_packages(packages, staging, fetch)
        _export_files([i for i in lock.items if i.kind in ("ollama", "torch")], staging)
        _export_models(lock.of_kind("model"), staging, registries)
        entries = sorted(staging.entries.values(), key=lambda e: e.path)
        manifest = {"bundle_version": FORMAT_VERSION, "files": [e.to_json() for e in entries]}
        (staging.root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        shutil.copy(lock_path, staging.root / LOCK)
        _write_tar(staging.root, out, sorted({e.sha256 for e in entries}))
    sha = _sha256(out)
    Path(f"{out}.sha256").write_text(f"{sha}  {out.name}\n")
    return Export(str(out), entries, sha)


def _write_tar(root: Path, out: Path, contents: list[str]) -> None:
    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in (MANIFEST, LOCK, *(f"sha256/{c}" for c in contents)):
            tar.add(root / name, arcname=name, filter=plain)


# --- import -----------------------------------------------------------------------------------


def _read_bundle(bundle: Path, into: Path) -> list[Entry]:
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
    try:
        manifest = json.loads((into / MANIFEST).read_text())
        entries = [Entry(**e) for e in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle}: no usable {MANIFEST} ({exc})") from None
    for entry in entries:
        stored = into / "sha256" / entry.sha256
        if not stored.is_file() or _sha256(stored) != entry.sha256:
            raise BundleError(f"{bundle}: {entry.path} does not match its sha256 {entry.sha256}")
        if ".." in entry.path.split("/") or entry.path.startswith("/"):
            raise BundleError(f"{bundle}: {entry.path!r} is not a path inside the site")
    return entries


def apt_release(folder: Path, date: str | None = None) -> str:
    """The ``Release`` of a flat apt repository folder: the SHA256 and size of its ``Packages``
    and ``Packages.gz`` (the fields ``apt-ftparchive release`` writes that apt checks)."""
    lines = [
        "Origin: provisioner bundle",
        "Label: provisioner bundle (site mirror)",
        "Architectures: amd64 all",
        f"Date: {date or email.utils.formatdate(usegmt=True)}",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (folder / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}")
    return "\n".join(lines) + "\n"


def _gpg(*args: str | Path, what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            ["gpg", "--batch", "--yes", *map(str, args)], capture_output=True, text=True
        )
    except OSError as exc:
        raise BundleError(f"{what}: gpg: {exc}") from None
    if proc.returncode != 0:
        raise BundleError(f"{what}: gpg: {proc.stderr.strip() or proc.returncode}")
    return proc


def signing_fingerprint(key: str) -> str:
    """The fingerprint of the secret key ``key`` (an id, fingerprint or user id) in the
    caller's GnuPG home (``$GNUPGHOME``); :class:`SigningKeyError` when there is none or many."""
    try:
        listing = _gpg("--with-colons", "--list-secret-keys", "--", key, what=f"--sign-key {key}")
    except BundleError as exc:
        raise SigningKeyError(str(exc)) from None
    lines = listing.stdout.splitlines()
    fingerprints = [
        line.split(":")[9]
        for previous, line in zip(["", *lines], lines, strict=False)
        if line.startswith("fpr:") and previous.startswith("sec:")
    ]
    if len(fingerprints) != 1:
        raise SigningKeyError(f"--sign-key {key}: {len(fingerprints)} secret keys match, not one")
    return fingerprints[0]


def _sign(folder: Path, fingerprint: str) -> None:
    """``InRelease`` and ``Release.gpg`` of ``folder``'s Release, and the public key beside it."""
    what = f"signing {folder}/Release"
    user = ("--local-user", fingerprint)
    _gpg(*user, "--clearsign", "-o", folder / "InRelease", folder / "Release", what=what)
    _gpg(*user, "--armor", "--detach-sign", "-o", folder / "Release.gpg", folder / "Release",
         what=what)  # fmt: skip
    public = _gpg("--armor", "--export", fingerprint, what=what).stdout
    (folder / f"{fingerprint[-8:].lower()}.pub").write_text(public)


def _lay_out(entries: list[Entry], store: Path, site: Path) -> list[str]:
    placed = []
    for entry in entries:
        if entry.kind in ("blob", "manifest"):
            continue
        target = site / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store / entry.sha256, target)
        placed.append(entry.path)
    _indexes(entries, site)
    return placed


def _indexes(entries: list[Entry], site: Path) -> None:
    """The indexes a site mirror serves next to the files: apt ``Packages(.gz)``, the Ollama
    release's ``sha256sum.txt``, the PEP 503 ``torch/`` page."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.kind, entry.path.rsplit("/", 1)[0]), []).append(entry)
    for (kind, folder), group in groups.items():
        where = site / folder
        names = [(e, e.path.rsplit("/", 1)[1]) for e in group]
        if kind == "deb":
            text = "".join(
                f"{e.meta['control']}\nFilename: ./{n}\n\n".replace("\n\n\n", "\n\n")
                for e, n in names
            )
            (where / "Packages").write_text(text)
            (where / "Packages.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
            (where / "Release").write_text(apt_release(where))
        elif kind == "ollama":
            (where / "sha256sum.txt").write_text("".join(f"{e.sha256}  ./{n}\n" for e, n in names))
        elif kind == "torch":
            page = "".join(
                f'<a href="../{html.escape(urllib.parse.quote(n))}#sha256={e.sha256}">'
                f"{html.escape(n)}</a><br/>\n"
                for e, n in names
            )
            (where / "torch").mkdir(exist_ok=True)
            (where / "torch" / "index.html").write_text(
                f"<!DOCTYPE html>\n<html><body>\n{page}</body></html>\n"
            )


def _push_models(entries: list[Entry], store: Path, registry_url: str) -> list[str]:
    from provisioner.ollama_api import Registry, RegistryError, parse_manifest

    registry = Registry(registry_url)
    pushed = []
    for entry in (e for e in entries if e.kind == "manifest"):
        manifest = parse_manifest((store / entry.sha256).read_bytes())
        repository, tag = entry.meta["repository"], entry.meta["tag"]
        try:
            for blob in manifest.blobs:
                if not registry.has_blob(repository, blob):
                    registry.push_blob(repository, blob, store / blob.digest.split(":", 1)[1])
            registry.put_manifest(repository, tag, manifest)
        except RegistryError as exc:
            raise BundleError(f"model {repository}:{tag}: {exc}") from None
        pushed.append(f"{repository}:{tag}@{manifest.digest}")
    return pushed


def import_bundle(
    bundle: Path, site: Path, registry_url: str | None, sign_key: str | None = None
) -> Import:
    """Check ``bundle`` and load it into the site mirror folder ``site`` (served over HTTP by
    the site) and, for the models, the registry ``registry_url``; with ``sign_key`` (a GnuPG
    secret key of the site, ``$GNUPGHOME``) each apt folder's ``Release`` is signed."""
    fingerprint = signing_fingerprint(sign_key) if sign_key else None
    site.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=site.parent) as folder:
        store = Path(folder)
        entries = _read_bundle(bundle, store)
        if registry_url is None and any(e.kind == "manifest" for e in entries):
            raise BundleError(f"{bundle} holds models: give the site registry (--registry URL)")
        site.mkdir(parents=True, exist_ok=True)
        placed = _lay_out(entries, store / "sha256", site)
        if fingerprint:
            for folder_name in sorted(
                {e.path.rsplit("/", 1)[0] for e in entries if e.kind == "deb"}
            ):
                _sign(site / folder_name, fingerprint)
        models = _push_models(entries, store / "sha256", registry_url) if registry_url else []
    return Import(str(site), placed, models, fingerprint)
