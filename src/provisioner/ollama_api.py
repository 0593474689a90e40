"""Ollama's model names, manifests, pull stream and registry protocol, on the control side.

Pure helpers shared by the facts, the operations and ``provision models``:

* :class:`ModelName` (defined in :mod:`provisioner.model_name`, the one grammar) and
  :func:`site_name`: where a planned model lives in a site registry;
* :func:`parse_manifest`: a Docker v2 manifest as Ollama writes and reads it, with every digest
  checked (a digest is a file name in the store: CVE-2024-37032 came from trusting it);
* :class:`PullStream`: the NDJSON stream of ``/api/pull``, where an error can arrive as a
  ``{"error": ...}`` line on an HTTP 200 response, so every line is checked;
* :class:`Registry`: a Docker v2 registry client (urllib, no extra dependency) for
  ``provision models mirror``: manifests, blobs checked against their digest, uploads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.model_name import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    ModelName,
    canonical,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "MANIFEST_MEDIA_TYPE",
    "Blob",
    "Manifest",
    "ManifestError",
    "ModelName",
    "PullError",
    "PullStream",
    "Registry",
    "RegistryError",
    "parse_manifest",
    "site_name",
]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that cannot be trusted or used."""


class PullError(RuntimeError):
    """A pull that failed; the message is Ollama's (or the helper's) own error text."""


class RegistryError(RuntimeError):
    """A registry request that failed."""


# --- names ------------------------------------------------------------------------------------


def normalise(name: str) -> str:
    """``"llama3"`` -> ``"llama3:latest"``: the canonical form of any model name."""
    return canonical(name)


def site_name(name: str, registry: str, namespace: str = DEFAULT_NAMESPACE) -> ModelName:
    """Where a planned model lives in the site registry ``registry`` (``http://host:port``).

    Library models go to ``<namespace>/<model>``; models of other namespaces of the public
    registry keep their namespace; models of any other registry are not rewritten.
    """
    wanted = ModelName.parse(name)
    if not wanted.is_default_host:
        return wanted
    parsed = urllib.parse.urlsplit(registry if "://" in registry else f"https://{registry}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"ollama_registry {registry!r} is not a registry URL (http://host:port)")
    if parsed.path.strip("/"):
        raise ValueError(
            f"ollama_registry {registry!r}: give the namespace in ollama_registry_namespace"
        )
    site_namespace = (
        namespace if wanted.namespace.lower() == DEFAULT_NAMESPACE else wanted.namespace
    )
    return ModelName.parse(
        f"{parsed.scheme}://{parsed.netloc}/{site_namespace}/{wanted.model}:{wanted.tag}"
    )


# --- manifests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str = ""

    @property
    def file_name(self) -> str:
        """The blob's file name in ``$OLLAMA_MODELS/blobs/``."""
        return self.digest.replace(":", "-")


@dataclass(frozen=True)
class Manifest:
    """A model manifest: its exact bytes, their digest and the blobs it references."""

    raw: bytes
    digest: str
    config: Blob
    layers: tuple[Blob, ...]
    media_type: str = MANIFEST_MEDIA_TYPE

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    @property
    def content(self) -> tuple[str, ...]:
        """What the model *is*: its config and layer digests, in order.

        Two manifests with equal content are the same model even when their bytes differ
        (Ollama re-serialises a pulled manifest before writing it to the store).
        """
        return tuple(blob.digest for blob in self.blobs)

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)


def _blob(entry: Any, where: str) -> Blob:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} is not an object")
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ManifestError(f"{where} has an invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where} has an invalid size {size!r}")
    return Blob(digest=digest, size=size, media_type=str(entry.get("mediaType", "")))


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and check a manifest; raise :class:`ManifestError` when it cannot be used."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ManifestError("manifest has no layers")
    return Manifest(
        raw=raw,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        config=_blob(data.get("config"), "config"),
        layers=tuple(_blob(layer, f"layer {i}") for i, layer in enumerate(layers)),
        media_type=str(data.get("mediaType") or MANIFEST_MEDIA_TYPE),
    )


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ManifestError(f"invalid digest {digest!r}")
    return digest


# --- the /api/pull stream ---------------------------------------------------------------------


@dataclass
class PullStream:
    """Follow one ``/api/pull`` NDJSON stream; every line goes through :meth:`feed`.

    ``feed`` raises :class:`PullError` on an ``{"error": ...}`` line (Ollama sends mid-stream
    errors that way, on an HTTP 200 response); :meth:`finish` raises when the stream ended
    without ``{"status": "success"}``. Lines that are not JSON (curl's own messages) are kept
    for the error message.
    """

    model: str
    status: str = ""
    succeeded: bool = False
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(done for done, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total in self.layers.values())

    def feed(self, line: str) -> dict[str, Any] | None:
        text = line.strip()
        if not text:
            return None
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            self.other.append(text)
            return None
        if not isinstance(event, dict):
            self.other.append(text)
            return None
        if "error" in event:
            raise PullError(f"{self.model}: {event['error']}")
        status = str(event.get("status", ""))
        self.status = status
        digest = event.get("digest")
        if isinstance(digest, str) and digest:
            total = int(event.get("total") or 0)
            done = int(event.get("completed") or 0)
            old_done, old_total = self.layers.get(digest, (0, 0))
            self.layers[digest] = (max(done, old_done), max(total, old_total))
        if status == "success":
            self.succeeded = True
        return event

    def finish(self, returncode: int = 0) -> None:
        if self.succeeded and returncode == 0:
            return
        detail = "; ".join(self.other[-5:])
        if returncode:
            raise PullError(
                f"{self.model}: the pull command failed (exit {returncode})"
                + (f": {detail}" if detail else "")
            )
        raise PullError(
            f"{self.model}: the pull stream ended without success (last status {self.status!r})"
            + (f": {detail}" if detail else "")
        )


# --- a Docker v2 registry client --------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass
class Registry:
    """A Docker v2 registry (CNCF Distribution, Harbor, zot, registry.ollama.ai).

    + url: ``scheme://host[:port]``
    + timeout: seconds per request (a blob transfer may take longer; the socket timeout
      applies between reads)
    """

    url: str
    timeout: float = 60.0
    _token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    # low level

    def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        headers = dict(headers or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and not self._token and self._authenticate(exc):
                return self._request(method, url, headers, data)
            raise

    def _authenticate(self, exc: urllib.error.HTTPError) -> bool:
        """Anonymous Docker token flow (``WWW-Authenticate: Bearer realm=...``)."""
        challenge = exc.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        query = urllib.parse.urlencode(
            {k: v for k, v in params.items() if k in ("service", "scope")}
        )
        try:
            with urllib.request.urlopen(f"{realm}?{query}", timeout=self.timeout) as response:
                body = json.loads(response.read())
        except (OSError, json.JSONDecodeError):
            return False
        self._token = body.get("token") or body.get("access_token")
        return bool(self._token)

    def _fail(self, what: str, exc: Exception) -> RegistryError:
        if isinstance(exc, urllib.error.HTTPError):
            detail = exc.read(300).decode("utf-8", "replace").strip()
            return RegistryError(f"{what}: HTTP {exc.code} {detail}".rstrip())
        return RegistryError(f"{what}: {exc}")

    # manifests

    def manifest(self, repository: str, reference: str) -> Manifest:
        url = f"{self.url}/v2/{repository}/manifests/{reference}"
        try:
            with self._request("GET", url, {"Accept": MANIFEST_MEDIA_TYPE}) as response:
                raw = response.read()
        except (OSError, urllib.error.URLError) as exc:
            raise self._fail(f"GET {url}", exc) from None
        return parse_manifest(raw)

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        url = f"{self.url}/v2/{repository}/manifests/{reference}"
        try:
            with self._request(
                "PUT", url, {"Content-Type": manifest.media_type}, manifest.raw
            ) as response:
                digest = response.headers.get("Docker-Content-Digest") or manifest.digest
        except (OSError, urllib.error.URLError) as exc:
            raise self._fail(f"PUT {url}", exc) from None
        if digest != manifest.digest:
            raise RegistryError(f"PUT {url}: stored as {digest}, expected {manifest.digest}")
        return digest

    # blobs

    def has_blob(self, repository: str, blob: Blob) -> bool:
        url = f"{self.url}/v2/{repository}/blobs/{blob.digest}"
        try:
            with self._request("HEAD", url) as response:
                length = response.headers.get("Content-Length")
                return length is None or int(length) == blob.size
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise self._fail(f"HEAD {url}", exc) from None
        except (OSError, urllib.error.URLError) as exc:
            raise self._fail(f"HEAD {url}", exc) from None

    def fetch_blob(
        self,
        repository: str,
        blob: Blob,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download ``blob`` to ``dest`` (resuming ``dest.partial``) and check its digest."""
        check_digest(blob.digest)
        partial = dest.with_name(dest.name + ".partial")
        have = partial.stat().st_size if partial.exists() else 0
        if have > blob.size:
            partial.unlink()
            have = 0
        url = f"{self.url}/v2/{repository}/blobs/{blob.digest}"
        if have < blob.size or blob.size == 0:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self._request("GET", url, headers) as response:
                    if have and response.status != 206:  # no range support: start again
                        have = 0
                    with partial.open("ab" if have else "wb") as out:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            have += len(chunk)
                            if progress:
                                progress(have, blob.size)
            except (OSError, urllib.error.URLError) as exc:
                raise self._fail(f"GET {url}", exc) from None
        actual = _sha256_file(partial)
        if actual != blob.digest:
            partial.unlink()
            raise RegistryError(f"GET {url}: content is {actual}, not {blob.digest}")
        os.replace(partial, dest)
        return dest

    def push_blob(self, repository: str, blob: Blob, path: Path) -> None:
        start = f"{self.url}/v2/{repository}/blobs/uploads/"
        try:
            with self._request("POST", start, {"Content-Length": "0"}, b"") as response:
                location = response.headers["Location"]
        except (OSError, urllib.error.URLError, KeyError) as exc:
            raise self._fail(f"POST {start}", exc) from None
        location = urllib.parse.urljoin(start, location)
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={urllib.parse.quote(blob.digest)}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        try:
            with path.open("rb") as body, self._request("PUT", url, headers, body) as response:
                stored = response.headers.get("Docker-Content-Digest", blob.digest)
        except (OSError, urllib.error.URLError) as exc:
            raise self._fail(f"PUT {location}", exc) from None
        if stored != blob.digest:
            raise RegistryError(f"PUT {location}: stored as {stored}, expected {blob.digest}")
