# TEST DOUBLE helper: builds stand-in models in Ollama's format and pushes them to an OCI registry.
"""Stand-in Ollama models for a Docker v2 / OCI registry (CNCF Distribution in the lab).

A model is what ``ollama push`` uploads: a Docker schema-2 manifest whose config blob is
``application/vnd.docker.container.image.v1+json`` (Ollama's ConfigV2: model_format,
model_family, ...) and whose layers carry ``application/vnd.ollama.image.*`` media types. The
model layer is a small but well-formed GGUF file (header and metadata, no tensors) padded
with seed-derived bytes, so two seeds never give the same digest.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
MT_MODEL = "application/vnd.ollama.image.model"
MT_TEMPLATE = "application/vnd.ollama.image.template"
MT_PARAMS = "application/vnd.ollama.image.params"
MT_LICENSE = "application/vnd.ollama.image.license"

TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)
LICENSE = "Test model for provisioner's lab: random bytes, no weights, no license terms.\n"


class RegistryError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# GGUF (v3) metadata writer
# --------------------------------------------------------------------------------------------


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf_kv(key: str, value: Any) -> bytes:
    out = _gguf_str(key)
    if isinstance(value, bool):
        return out + struct.pack("<I?", 7, value)
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return out + struct.pack("<II", 4, value)
        return out + struct.pack("<Iq", 11, value)
    if isinstance(value, float):
        return out + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return out + struct.pack("<I", 8) + _gguf_str(value)
    raise TypeError(f"unsupported GGUF value for {key}: {value!r}")


def gguf_bytes(metadata: dict[str, Any], size: int, seed: str) -> bytes:
    """A GGUF file with ``metadata`` and no tensors, padded to exactly ``size`` bytes."""
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    body += b"".join(_gguf_kv(k, v) for k, v in metadata.items())
    if len(body) > size:
        raise ValueError(f"size {size} is smaller than the GGUF header ({len(body)} bytes)")
    pad = random.Random(f"gguf:{seed}").randbytes(size - len(body))
    return body + pad


# --------------------------------------------------------------------------------------------
# a model in Ollama's manifest format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    manifest: bytes
    blobs: dict[str, bytes]  # digest -> content, config included

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_model(
    seed: str,
    size: int = 4096,
    *,
    family: str = "qwen2",
    parameter_size: str = "494.03M",
    quantization: str = "Q4_K_M",
    context_length: int = 32768,
    embedding: bool = False,
    num_ctx: int | None = None,
) -> Model:
    """Blobs and manifest of a stand-in model; ``seed`` makes its bytes (and digest) unique.
    ``num_ctx`` goes into the params layer, as a Modelfile's ``PARAMETER num_ctx`` does."""
    meta: dict[str, Any] = {
        "general.architecture": family,
        "general.name": f"provisioner test model {seed}",
        "general.parameter_count": 494032768,
        "general.file_type": 15,
        "general.quantization_version": 2,
        f"{family}.context_length": context_length,
        f"{family}.embedding_length": 64,
        f"{family}.block_count": 4,
        f"{family}.attention.head_count": 4,
        f"{family}.attention.head_count_kv": 2,
        "tokenizer.ggml.model": "gpt2",
    }
    if embedding:
        meta[f"{family}.pooling_type"] = 1
    weights = gguf_bytes(meta, size, seed)
    options: dict[str, Any] = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7}
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    params = json.dumps(options).encode()
    layers = [
        (MT_MODEL, weights),
        (MT_TEMPLATE, TEMPLATE.encode()),
        (MT_LICENSE, LICENSE.encode()),
        (MT_PARAMS, params),
    ]
    config = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": parameter_size,
        "file_type": quantization,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [_digest(data) for _, data in layers]},
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {
            "mediaType": CONFIG_V1,
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": mt, "digest": _digest(data), "size": len(data)} for mt, data in layers
        ],
    }
    blobs = {_digest(data): data for _, data in layers}
    blobs[_digest(config_bytes)] = config_bytes
    return Model(json.dumps(manifest, separators=(",", ":")).encode(), blobs)


# --------------------------------------------------------------------------------------------
# Docker registry v2 client (blob uploads, manifests)
# --------------------------------------------------------------------------------------------


def _split(registry: str) -> tuple[str, str, int]:
    if "://" not in registry:
        registry = "http://" + registry
    u = urllib.parse.urlsplit(registry)
    scheme = u.scheme or "http"
    return scheme, u.hostname or "", u.port or (443 if scheme == "https" else 80)


def _repo(name: str) -> str:
    return name if "/" in name else f"library/{name}"


class _Conn:
    def __init__(self, registry: str, timeout: float) -> None:
        self.scheme, self.host, self.port = _split(registry)
        self.timeout = timeout

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        u = urllib.parse.urlsplit(target)
        if u.netloc:  # an absolute Location from the registry
            scheme, host, port = _split(f"{u.scheme}://{u.netloc}")
            path = u.path + (f"?{u.query}" if u.query else "")
        else:
            scheme, host, port, path = self.scheme, self.host, self.port, target
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = cls(host, port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        except OSError as e:
            raise RegistryError(f"{method} {scheme}://{host}:{port}{path}: {e}") from e
        finally:
            conn.close()


def _with_query(location: str, **params: str) -> str:
    u = urllib.parse.urlsplit(location)
    query = urllib.parse.parse_qsl(u.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(query)))


def _check(status: int, want: tuple[int, ...], what: str, body: bytes) -> None:
    if status not in want:
        raise RegistryError(f"{what}: HTTP {status}: {body.decode('utf-8', 'replace')[:300]}")


def upload_blob(
    registry: str, name: str, data: bytes, *, chunk_size: int | None = None, timeout: float = 30
) -> str:
    """Upload one blob (monolithic PUT, or PATCH chunks then PUT); skip it if present."""
    conn = _Conn(registry, timeout)
    repo = _repo(name)
    digest = _digest(data)
    status, _, _ = conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    if status == 200:
        return digest
    status, headers, body = conn.request(
        "POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"}
    )
    _check(status, (202,), f"start upload of {digest}", body)
    location = headers.get("Location") or ""
    if chunk_size:
        offset = 0
        while offset < len(data):
            chunk = data[offset : offset + chunk_size]
            end = offset + len(chunk) - 1
            status, headers, body = conn.request(
                "PATCH",
                location,
                chunk,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end}",
                    "Content-Length": str(len(chunk)),
                },
            )
            _check(status, (202,), f"upload chunk {offset}-{end} of {digest}", body)
            location = headers.get("Location") or location
            offset += len(chunk)
        status, _, body = conn.request(
            "PUT", _with_query(location, digest=digest), b"", {"Content-Length": "0"}
        )
    else:
        status, _, body = conn.request(
            "PUT",
            _with_query(location, digest=digest),
            data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
    _check(status, (201,), f"finish upload of {digest}", body)
    return digest


def push_model(
    registry: str,
    name: str,
    tag: str,
    *,
    seed: str,
    size: int = 4096,
    chunk_size: int | None = 1536,
    timeout: float = 30,
    **model_options: Any,
) -> str:
    """Push a stand-in model as ``<registry>/<name>:<tag>``; return the manifest digest.

    ``name`` is ``namespace/model`` (``library/`` is assumed without a namespace). The model
    blob goes up in chunks of ``chunk_size`` bytes (None: in one PUT), the small blobs in one
    PUT each. A different ``seed`` gives different bytes and so a new digest for the tag.
    """
    model = build_model(seed, size, **model_options)
    manifest = json.loads(model.manifest)
    model_digest = manifest["layers"][0]["digest"]
    for digest, data in model.blobs.items():
        chunked = chunk_size if digest == model_digest else None
        upload_blob(registry, name, data, chunk_size=chunked, timeout=timeout)
    conn = _Conn(registry, timeout)
    status, headers, body = conn.request(
        "PUT",
        f"/v2/{_repo(name)}/manifests/{tag}",
        model.manifest,
        {"Content-Type": MANIFEST_V2, "Content-Length": str(len(model.manifest))},
    )
    _check(status, (201,), f"put manifest {name}:{tag}", body)
    digest = headers.get("Docker-Content-Digest") or model.digest
    if digest != model.digest:
        raise RegistryError(
            f"registry stored {digest} for a manifest whose sha256 is {model.digest}"
        )
    return digest


def fetch_manifest(
    registry: str, name: str, tag: str, *, timeout: float = 30
) -> tuple[str, dict[str, Any]]:
    """GET a manifest as Ollama asks for it; return (digest, manifest)."""
    conn = _Conn(registry, timeout)
    status, headers, body = conn.request(
        "GET", f"/v2/{_repo(name)}/manifests/{tag}", headers={"Accept": MANIFEST_V2}
    )
    _check(status, (200,), f"get manifest {name}:{tag}", body)
    digest = _digest(body)
    served = headers.get("Docker-Content-Digest")
    if served and served != digest:
        raise RegistryError(f"manifest {name}:{tag}: header says {served}, body hashes to {digest}")
    return digest, json.loads(body)
