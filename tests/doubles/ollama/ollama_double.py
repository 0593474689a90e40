#!/usr/bin/env python3
# TEST DOUBLE of the Ollama binary (server + client). Not Ollama. Lives in provisioner's tests/.
"""Stand-in for ``ollama`` in provisioner's unit tests and lab hosts.

It speaks the real server's HTTP API for everything the toolkit touches and keeps the real
on-disk model store, and it reproduces the real client's known limits (see README.md next to
this file). Python 3.11+ standard library only: it runs on minimal Debian hosts.

The behaviour follows the Ollama sources (server/routes.go, server/images.go,
server/download.go, manifest/, envconfig/, types/model/name.go); the comments name the
function each part mirrors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VERSION = "0.0.0"  # release.py bakes the release version in here

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_PRUNE_GRACE_S = 3600.0  # server/images.go layerPruneGracePeriod, from v0.21.0
MIN_PART = 100 * 1000 * 1000  # server/download.go minDownloadPartSize
MAX_PART = 1000 * 1000 * 1000
NUM_PARTS = 16
MAX_RETRIES = 6
MIB = 1024 * 1024
GIB = 1024 * MIB
GPU_RESERVE = 457 * MIB  # ml/device.go: per-GPU minimum kept free
FOREVER_NS = 2**63 - 1  # time.Duration(math.MaxInt64)
USER_AGENT = f"ollama/{VERSION} (amd64 linux) Go/go1.24.6"


def vram_default_ctx(total_vram: int) -> int:
    """The context used when nothing sets one: routes.go's VRAM tiers from v0.15.5
    (< 23 GiB: 4k, >= 23 GiB: 32k, >= 47 GiB: 256k), envconfig's 4096 before."""
    if not since(VRAM_TIERS_FROM):
        return 4096
    if total_vram >= 47 * GIB:
        return 262144
    if total_vram >= 23 * GIB:
        return 32768
    return 4096


def effective_num_ctx(request: dict[str, Any], model: dict[str, Any], default: int) -> int:
    """routes.go modelOptions: api.DefaultOptions() (OLLAMA_CONTEXT_LENGTH, else the VRAM
    default), then FromMap(model.Options) (the params layer), then FromMap(request options):
    the request wins over the model, the model over the server's setting. sched.go raises
    anything below 4 to 4."""
    num_ctx = default
    for source in (model, request):
        if "num_ctx" in source:
            with contextlib.suppress(TypeError, ValueError):
                num_ctx = int(source["num_ctx"])
    return max(4, num_ctx)


def version_tuple(version: str = "") -> tuple[int, int, int]:
    """``"0.32.15"`` -> ``(0, 32, 15)``; a pre-release counts as its release (the double is
    only built for releases). An unparsable version (the unbaked ``0.0.0``) is the newest."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version or VERSION)
    if not match or (version or VERSION) == "0.0.0":
        return (999, 0, 0)
    major, minor, patch = (int(x) for x in match.groups())
    return (major, minor, patch)


def since(version: str) -> bool:
    """Whether the version this double plays has the behaviour that ``version`` introduced
    (records in tests/conformance/ollama/records.toml name the version of each)."""
    return version_tuple() >= version_tuple(version)


# behaviours that changed inside the versions the double can play (records.toml)
PRUNE_GRACE_FROM = "0.21.0"  # images.go: layerPruneGracePeriod = time.Hour (none before)
VRAM_TIERS_FROM = "0.15.5"  # routes.go: defaultNumCtx 4k/32k/256k by VRAM (4096 before)
RAW_MANIFEST_FROM = "0.19.0"  # images.go PullModel: os.WriteFile(fp, manifestData) (Marshal before)

# --------------------------------------------------------------------------------------------
# environment (envconfig/config.go)
# --------------------------------------------------------------------------------------------


def env_var(key: str) -> str:
    """envconfig.Var: the value with surrounding spaces and quotes removed."""
    return os.environ.get(key, "").strip().strip("\"'").strip()


def env_bool(key: str) -> bool:
    """envconfig.Bool: unset or empty is false, an unparsable value is true."""
    s = env_var(key)
    if not s:
        return False
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return True


def env_uint(key: str, default: int) -> int:
    s = env_var(key)
    if not s:
        return default
    try:
        n = int(s)
    except ValueError:
        log(
            "WARN", "invalid environment variable, using default", key=key, value=s, default=default
        )
        return default
    return n if n >= 0 else default


@dataclass(frozen=True)
class HostURL:
    scheme: str
    host: str
    port: str
    path: str = ""

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self) -> str:
        return f"{self.scheme}://{self.hostport}" + (f"/{self.path}" if self.path else "")


def parse_host(value: str) -> HostURL:
    """envconfig.Host: OLLAMA_HOST as a URL; defaults 127.0.0.1 and port 11434."""
    default_port = "11434"
    s = value.strip().strip("\"'").strip()
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport)
    if host is None:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        if bare:
            host = bare
    try:
        n = int(port)
        if not 0 <= n <= 65535:
            raise ValueError
    except ValueError:
        log("WARN", "invalid port, using default", port=port, default=default_port)
        port = default_port
    return HostURL(scheme, host, port, path)


def _split_host_port(hostport: str) -> tuple[str | None, str]:
    """net.SplitHostPort: (None, '') when there is no port."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None, ""
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None, ""
    host, _, port = hostport.partition(":")
    return host, port


def models_dir() -> Path:
    s = env_var("OLLAMA_MODELS")
    return Path(s) if s else Path.home() / ".ollama" / "models"


_DURATION_RE = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9}
_UNIT_NS.update({"m": 60 * 10**9, "h": 3600 * 10**9})


def parse_go_duration(s: str) -> int | None:
    """time.ParseDuration, in nanoseconds; None when s is not a Go duration."""
    if s in ("0", "+0", "-0"):
        return 0
    sign = -1 if s.startswith("-") else 1
    body = s.lstrip("+-")
    if not body:
        return None
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(body):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(body):
        return None
    return sign * int(total)


def keep_alive_default_ns() -> int:
    """envconfig.KeepAlive: 5m; a Go duration or whole seconds; negative means forever."""
    s = env_var("OLLAMA_KEEP_ALIVE")
    ns = 5 * 60 * 10**9
    if s:
        d = parse_go_duration(s)
        if d is None:
            try:
                d = int(s) * 10**9
            except ValueError:
                d = ns
        ns = d
    return FOREVER_NS if ns < 0 else ns


def request_keep_alive_ns(value: Any) -> int | None:
    """api.Duration.UnmarshalJSON: numbers are seconds, strings Go durations; <0 is forever."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("unsupported type: 'bool'")
    if isinstance(value, int | float):
        ns = int(value * 10**9)
    elif isinstance(value, str):
        d = parse_go_duration(value)
        if d is None:
            raise ValueError(f'time: invalid duration "{value}"')
        ns = d
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    return FOREVER_NS if ns < 0 else ns


# --------------------------------------------------------------------------------------------
# logging (slog text handler + gin request log), to stderr like the real server
# --------------------------------------------------------------------------------------------

_log_lock = threading.Lock()


def _log_value(v: Any) -> str:
    s = str(v).lower() if isinstance(v, bool) else str(v)
    if s == "" or re.search(r'[\s"=]', s):
        return json.dumps(s)
    return s


def log(level: str, msg: str, source: str = "routes.go:1", **attrs: Any) -> None:
    now = dt.datetime.now().astimezone()
    stamp = now.isoformat(timespec="milliseconds")
    line = f"time={stamp} level={level} source={source} msg={_log_value(msg)}"
    for k, v in attrs.items():
        line += f" {k}={_log_value(v)}"
    with _log_lock:
        print(line, file=sys.stderr, flush=True)


def gin_log(status: int, elapsed_s: float, client: str, method: str, path: str) -> None:
    now = dt.datetime.now().strftime("%Y/%m/%d - %H:%M:%S")
    if elapsed_s < 1e-3:
        took = f"{elapsed_s * 1e6:.3f}µs"
    elif elapsed_s < 1:
        took = f"{elapsed_s * 1e3:.6f}ms"
    else:
        took = f"{elapsed_s:.9f}s"
    line = f'[GIN] {now} | {status:3d} | {took:>13} | {client:>15} | {method:<7} "{path}"'
    with _log_lock:
        print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# JSON and times as Go writes them
# --------------------------------------------------------------------------------------------


def go_json(obj: Any) -> bytes:
    """encoding/json: compact, HTML characters escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    s = s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return s.encode()


def go_time(ns: int, utc: bool = False) -> str:
    """time.Time MarshalJSON (RFC 3339 with nanoseconds, trailing zeros trimmed)."""
    sec, frac = divmod(ns, 10**9)
    tz = dt.UTC if utc else None
    t = dt.datetime.fromtimestamp(sec, tz=tz) if utc else dt.datetime.fromtimestamp(sec)
    t = t.astimezone(tz) if utc else t.astimezone()
    out = t.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        out += f".{frac:09d}".rstrip("0")
    off = t.utcoffset() or dt.timedelta(0)
    if off == dt.timedelta(0):
        return out + "Z"
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{out}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def go_json_error(data: bytes, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(data):
        return "unexpected end of JSON input"
    ch = chr(data[exc.pos]) if exc.pos < len(data) else ""
    return f"invalid character {ch!r} looking for beginning of value"


# --------------------------------------------------------------------------------------------
# model names (types/model/name.go)
# --------------------------------------------------------------------------------------------

_PART_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


def _valid_part(kind: str, s: str) -> bool:
    if not s or len(s) > _PART_LIMITS[kind]:
        return False
    for i, c in enumerate(s):
        ok = c.isascii() and (c.isalnum() or c == "_")
        if i > 0 or kind == "host":
            ok = ok or c == "-" or (c == "." and kind != "namespace")
            if kind == "host" and c == ":":
                ok = True
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = "https"

    def display_shortest(self) -> str:
        out = ""
        if self.host.lower() != DEFAULT_HOST:
            out = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            out = f"{self.namespace}/"
        return f"{out}{self.model}:{self.tag}"

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, ...]:
        host = self.host.lower()  # name.go EqualFold: ollama.com is not registry.ollama.ai
        return (host, self.namespace.lower(), self.model.lower(), self.tag.lower())

    def base_url(self, insecure: bool) -> str:
        scheme = "http" if insecure else self.scheme
        return f"{scheme}://{self.host}"


def parse_name(s: str) -> Name | None:
    """model.ParseName: [scheme://][host/][namespace/]model[:tag], filled with defaults."""
    scheme = "https"
    if s.startswith("http://"):
        scheme, s = "http", s[len("http://") :]
    elif s.startswith("https://"):
        s = s[len("https://") :]
    tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        if not tag:
            return None
    pieces = s.split("/")
    if len(pieces) == 1:
        host, ns, model = "", "", pieces[0]
    elif len(pieces) == 2:
        host, (ns, model) = "", pieces
    elif len(pieces) == 3:
        host, ns, model = pieces
    else:
        return None
    if len(pieces) >= 2 and not ns or len(pieces) == 3 and not host:
        return None
    name = Name(host or DEFAULT_HOST, ns or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG, scheme)
    for kind, part in zip(("host", "namespace", "model", "tag"), name.parts(), strict=True):
        if not _valid_part(kind, part):
            return None
    return name


# --------------------------------------------------------------------------------------------
# the model store (manifest/paths.go, manifest/manifest.go, server/images.go)
# --------------------------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


class StoreError(Exception):
    pass


@dataclass
class Entry:
    name: Name
    path: Path
    data: bytes
    manifest: dict[str, Any]
    digest: str  # sha256 hex of the manifest file, as /api/tags shows it
    mtime_ns: int

    def layer_digests(self) -> list[str]:
        out = [str(x.get("digest", "")) for x in self.manifest.get("layers") or []]
        cfg = (self.manifest.get("config") or {}).get("digest")
        if cfg:
            out.append(str(cfg))
        return [d for d in out if d]

    def total_size(self) -> int:
        seen: set[str] = set()
        total = 0
        layers = list(self.manifest.get("layers") or [])
        layers.append(self.manifest.get("config") or {})
        for layer in layers:
            d = layer.get("digest")
            if d and d not in seen:
                seen.add(d)
                total += int(layer.get("size") or 0)
        return total


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def blobs(self) -> Path:
        p = self.root / "blobs"
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"{_os_err('mkdir', p, e)}: ensure path elements are traversable"
            ) from e
        return p

    def manifest_root(self) -> Path:
        """manifest.Path: ``$OLLAMA_MODELS/manifests`` (the only manifest tree in 0.x)."""
        p = self.root / "manifests"
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"{_os_err('mkdir', p, e)}: ensure path elements are traversable"
            ) from e
        return p

    def blob_path(self, digest: str) -> Path:
        if not _DIGEST_RE.match(digest):
            raise StoreError("invalid digest format")
        return self.blobs / digest.replace(":", "-")

    def legacy_path(self, name: Name) -> Path:
        """manifest.PathForName: ``manifests/<host>/<namespace>/<model>/<tag>``."""
        return self.manifest_root().joinpath(*name.parts())

    def resolve(self, name: Name) -> Path | None:
        path = self.legacy_path(name)
        return path if path.is_file() else None

    def _read(self, name: Name, path: Path) -> Entry:
        data = path.read_bytes()
        try:
            manifest = json.loads(data)
        except json.JSONDecodeError as e:
            raise StoreError(go_json_error(data, e)) from e
        if not isinstance(manifest, dict):
            raise StoreError("json: cannot unmarshal into Go value of type manifest.Manifest")
        digest = hashlib.sha256(data).hexdigest()
        return Entry(name, path, data, manifest, digest, path.stat().st_mtime_ns)

    def read_named(self, name: Name) -> Entry | None:
        path = self.resolve(name)
        return self._read(name, path) if path else None

    def manifests(self, continue_on_error: bool = True) -> dict[tuple[str, ...], Entry]:
        """manifest.Manifests: every named manifest under ``manifests/<h>/<n>/<m>/<t>``."""
        out: dict[tuple[str, ...], Entry] = {}
        root = self.manifest_root()
        for path in sorted(root.glob("*/*/*/*")):
            if not path.is_file():
                continue
            host, ns, model, tag = path.relative_to(root).parts
            name = parse_name(f"{host}/{ns}/{model}:{tag}")
            if name is None:
                log("WARN", "bad manifest name", source="manifest.go:1", path=str(path))
                continue
            if name.key() in out:
                continue
            try:
                out[name.key()] = self._read(name, path)
            except (OSError, StoreError) as e:
                if not continue_on_error:
                    raise StoreError(f"{name.full()}: {e}") from e
                log("WARN", "bad manifest", source="manifest.go:1", name=name.full(), error=e)
        return out

    def existing_name(self, name: Name) -> Name:
        """routes.go getExistingName: adopt the case of parts already in the store."""
        host, ns, model, tag = name.parts()
        for entry in self.manifests().values():
            e = entry.name
            host = e.host if e.host.lower() == host.lower() else host
            ns = e.namespace if e.namespace.lower() == ns.lower() else ns
            model = e.model if e.model.lower() == model.lower() else model
            tag = e.tag if e.tag.lower() == tag.lower() else tag
        return Name(host, ns, model, tag, name.scheme)

    def retained(self) -> set[str]:
        keep: set[str] = set()
        for entry in self.manifests().values():
            keep.update(entry.layer_digests())
        return keep

    def remove_unreferenced(self, candidates: set[str]) -> int:
        keep = self.retained()
        removed = 0
        for d in sorted(candidates - keep):
            try:
                self.blob_path(d).unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except (OSError, StoreError) as e:
                log("INFO", f"couldn't remove file '{d}': {e}", source="images.go:1")
        return removed

    def remove_named(self, name: Name) -> None:
        """manifest.RemoveNamed: drop the manifest, then blobs nothing else references."""
        entry = self.read_named(name)
        if entry is None:
            raise FileNotFoundError(name.full())
        candidates = set(entry.layer_digests())
        with contextlib.suppress(FileNotFoundError):
            self.legacy_path(name).unlink()
        self.prune_dirs()
        self.remove_unreferenced(candidates)

    def prune_dirs(self) -> None:
        root = self.manifest_root()
        _prune_directory(root)
        root.mkdir(parents=True, exist_ok=True)

    def write_manifest(self, name: Name, data: bytes) -> None:
        """The registry's bytes from v0.19.0; before, ``json.Marshal(mf)`` of the parsed
        manifest (Go struct order, compact), so the file's digest is not the registry's."""
        if not since(RAW_MANIFEST_FROM):
            data = go_json(_marshal_manifest(json.loads(data)))
        path = self.legacy_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def fix_blobs(self) -> None:
        """server/fixblobs.go: rename blobs stored as sha256:<hex> to sha256-<hex>."""
        for p in self.blobs.iterdir():
            if p.name.startswith("sha256:"):
                p.rename(p.with_name(p.name.replace(":", "-", 1)))

    def prune_layers(self) -> None:
        """images.go PruneLayers: remove unreferenced blobs and partial files; from v0.21.0
        only those older than the one-hour grace period, before it every one of them."""
        now = time.time()
        grace = LAYER_PRUNE_GRACE_S if since(PRUNE_GRACE_FROM) else 0.0
        candidates: set[str] = set()
        for p in self.blobs.iterdir():
            if p.is_dir():
                continue
            try:
                if grace and now - p.stat().st_mtime < grace:
                    continue
            except OSError as e:
                log("ERROR", "couldn't stat blob", source="images.go:1", blob=p.name, error=e)
                continue
            digest = p.name.replace("-", ":")
            if not _DIGEST_RE.match(digest):
                try:
                    p.unlink()  # invalid blobs, e.g. partial downloads
                except OSError as e:
                    log("ERROR", "couldn't remove blob", source="images.go:1", blob=p.name, error=e)
                continue
            candidates.add(digest)
        log("INFO", f"total blobs: {len(candidates)}", source="images.go:1")
        removed = self.remove_unreferenced(candidates)
        log("INFO", f"total unused blobs removed: {removed}", source="images.go:1")


def _marshal_manifest(m: dict[str, Any]) -> dict[str, Any]:
    """manifest.Manifest as Go's json.Marshal writes it: schemaVersion, mediaType, config,
    layers; each layer mediaType, digest, size, then from/name only when set (omitempty)."""

    def layer(x: dict[str, Any]) -> dict[str, Any]:
        out = {
            "mediaType": str(x.get("mediaType", "")),
            "digest": str(x.get("digest", "")),
            "size": int(x.get("size") or 0),
        }
        for key in ("from", "name"):
            if x.get(key):
                out[key] = str(x[key])
        return out

    return {
        "schemaVersion": int(m.get("schemaVersion") or 0),
        "mediaType": str(m.get("mediaType", "")),
        "config": layer(m.get("config") or {}),
        "layers": [layer(x) for x in m.get("layers") or []],
    }


def _prune_directory(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for child in path.iterdir():
        _prune_directory(child)
    if not any(path.iterdir()):
        path.rmdir()


def _os_err(op: str, path: Path, e: OSError) -> str:
    reason = {
        13: "permission denied",
        2: "no such file or directory",
        28: "no space left on device",
    }
    return f"{op} {path}: {reason.get(e.errno or 0, e.strerror or str(e))}"


# --------------------------------------------------------------------------------------------
# GGUF metadata (fs/ggml): enough to fill /api/show model_info and capabilities
# --------------------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_GGUF_SCALARS.update({10: "<Q", 11: "<q", 12: "<d"})


class GGUFError(Exception):
    pass


def read_gguf_kv(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError("invalid file magic")
        (version,) = struct.unpack("<I", f.read(4))
        if version not in (2, 3):
            raise GGUFError(f"unsupported gguf version {version}")
        _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))

        def rstr() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def rval(t: int) -> Any:
            if t in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[t]
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            if t == 8:
                return rstr()
            if t == 9:
                (et,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                return [rval(et) for _ in range(n)]
            raise GGUFError(f"invalid type: {t}")

        kv: dict[str, Any] = {}
        try:
            for _ in range(n_kv):
                key = rstr()
                (t,) = struct.unpack("<I", f.read(4))
                kv[key] = rval(t)
        except struct.error as e:
            raise GGUFError("unexpected EOF") from e
        return kv


# --------------------------------------------------------------------------------------------
# a model as the server sees it (server/images.go GetModel)
# --------------------------------------------------------------------------------------------


@dataclass
class Model:
    entry: Entry
    config: dict[str, Any]
    model_path: Path | None = None
    template: str = "{{ .Prompt }}"
    system: str = ""
    license: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    kv: dict[str, Any] = field(default_factory=dict)
    kv_error: str = ""

    @property
    def short_name(self) -> str:
        return self.entry.name.display_shortest()

    def details(self) -> dict[str, Any]:
        c = self.config
        return {
            "parent_model": "",
            "format": c.get("model_format", ""),
            "family": c.get("model_family", ""),
            "families": c.get("model_families"),
            "parameter_size": c.get("model_type", ""),
            "quantization_level": c.get("file_type", ""),
        }

    def capabilities(self) -> list[str]:
        caps: list[str] = []
        if self.model_path is not None:
            if not self.kv_error:
                caps.append("embedding" if "pooling_type" in self._arch_keys() else "completion")
                if "vision.block_count" in self._arch_keys():
                    caps.append("vision")
        elif self.config.get("capabilities"):
            caps.extend(str(c) for c in self.config["capabilities"])
        if ".Tools" in self.template:
            caps.append("tools")
        if ".Suffix" in self.template:
            caps.append("insert")
        if "<think>" in self.template and "</think>" in self.template:
            caps.append("thinking")
        return caps

    def _arch_keys(self) -> set[str]:
        arch = str(self.kv.get("general.architecture", ""))
        return {k[len(arch) + 1 :] for k in self.kv if arch and k.startswith(arch + ".")}

    def arch_value(self, key: str, default: int = 0) -> int:
        arch = str(self.kv.get("general.architecture", ""))
        v = self.kv.get(f"{arch}.{key}", default)
        if isinstance(v, list):
            v = max((int(x) for x in v), default=default)
        try:
            return int(v)
        except (TypeError, ValueError):
            return default


def load_model(store: Store, name: Name) -> Model | None:
    entry = store.read_named(name)
    if entry is None:
        return None
    config: dict[str, Any] = {}
    cfg_digest = (entry.manifest.get("config") or {}).get("digest")
    if cfg_digest:
        config = json.loads(store.blob_path(cfg_digest).read_bytes())
    m = Model(entry=entry, config=config)
    for layer in entry.manifest.get("layers") or []:
        path = store.blob_path(str(layer.get("digest", "")))
        mt = layer.get("mediaType", "")
        if mt == "application/vnd.ollama.image.model":
            m.model_path = path
        elif mt in ("application/vnd.ollama.image.prompt", "application/vnd.ollama.image.template"):
            m.template = path.read_text()
        elif mt == "application/vnd.ollama.image.system":
            m.system = path.read_text()
        elif mt == "application/vnd.ollama.image.params":
            m.options = json.loads(path.read_bytes())
        elif mt == "application/vnd.ollama.image.license":
            m.license.append(path.read_text())
    if m.model_path is not None:
        try:
            m.kv = read_gguf_kv(m.model_path)
        except (OSError, GGUFError) as e:
            m.kv_error = str(e)
    return m


# --------------------------------------------------------------------------------------------
# a Go-like HTTP client for the registry (net/http semantics the real client relies on)
# --------------------------------------------------------------------------------------------


class GoError(Exception):
    """An error whose text is what the Go code would print."""


USE_LAST_RESPONSE = object()


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    url: str
    raw: http.client.HTTPResponse
    conn: http.client.HTTPConnection

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        with contextlib.suppress(Exception):
            self.conn.close()

    def location(self) -> str:
        """http.Response.Location."""
        loc = self.headers.get("Location")
        if not loc:
            raise GoError("http: no Location header in response")
        return urllib.parse.urljoin(self.url, loc)


def _op(method: str) -> str:
    return method[:1] + method[1:].lower()


def _dial_error(e: BaseException, host: str, port: int) -> str:
    hp = f"{host}:{port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    if isinstance(e, ssl.SSLError):
        return "http: server gave HTTP response to HTTPS client"
    if isinstance(e, socket.gaierror):
        return f"dial tcp: lookup {host}: no such host"
    if isinstance(e, ConnectionRefusedError):
        return f"dial tcp {hp}: connect: connection refused"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"dial tcp {hp}: i/o timeout"
    if isinstance(e, http.client.RemoteDisconnected | ConnectionResetError):
        return "EOF"
    if isinstance(e, OSError) and e.errno == 101:
        return f"dial tcp {hp}: connect: network is unreachable"
    return str(e)


def _send_once(
    method: str, url: str, headers: dict[str, str], timeout: float, body: bytes | None = None
) -> Response:
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    elif u.scheme == "http":
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        raise GoError(f'{_op(method)} "{url}": unsupported protocol scheme "{u.scheme}"')
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.request(method, path, body=body, headers={"User-Agent": USER_AGENT, **headers})
        raw = conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise GoError(f'{_op(method)} "{url}": {_dial_error(e, host, port)}') from e
    return Response(raw.status, raw.headers, url, raw, conn)


RedirectCheck = Callable[[str, list[str]], object]


def _default_check(_url: str, via: list[str]) -> object:
    return "stopped after 10 redirects" if len(via) >= 10 else None


def go_do(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    check_redirect: RedirectCheck = _default_check,
    timeout: float = 30.0,
) -> Response:
    """http.Client.Do: follows redirects as Go does, asking check_redirect before each."""
    via: list[str] = []
    cur_method, cur_url = method, url
    while True:
        resp = _send_once(cur_method, cur_url, headers or {}, timeout)
        loc = resp.headers.get("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not loc:
            return resp
        target = urllib.parse.urljoin(cur_url, loc)
        via.append(cur_url)
        verdict = check_redirect(target, via)
        if verdict is USE_LAST_RESPONSE:
            return resp
        resp.close()
        if verdict:
            raise GoError(f'{_op(cur_method)} "{target}": {verdict}')
        if resp.status in (301, 302, 303) and cur_method not in ("GET", "HEAD"):
            cur_method = "GET"
        cur_url = target


def make_request_with_retry(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    check_redirect: RedirectCheck = _default_check,
) -> Response:
    """images.go makeRequestWithRetry: 404 is 'file does not exist', >=400 is '<code>: <body>'."""
    resp = go_do(method, url, headers, check_redirect)
    if resp.status == 401:
        resp.close()
        raise GoError("unauthorized: access denied")
    if resp.status == 404:
        resp.close()
        raise GoError("file does not exist")
    if resp.status >= 400:
        try:
            body = resp.raw.read().decode("utf-8", "replace")
        finally:
            resp.close()
        raise GoError(f"{resp.status}: {body}")
    return resp


def retry_scale() -> float:
    """Test-double knob (not an Ollama setting): scales the real client's retry waits."""
    try:
        return max(0.0, float(os.environ.get("OLLAMA_DOUBLE_RETRY_SCALE", "1")))
    except ValueError:
        return 1.0


# --------------------------------------------------------------------------------------------
# pulling (server/images.go PullModel, server/download.go)
# --------------------------------------------------------------------------------------------


class PullError(Exception):
    pass


class ClientGone(Exception):
    pass


Emit = Callable[[dict[str, Any]], None]


def progress(status: str, digest: str = "", total: int = 0, completed: int = 0) -> dict[str, Any]:
    """api.ProgressResponse: digest, total and completed are omitted when empty."""
    out: dict[str, Any] = {"status": status}
    if digest:
        out["digest"] = digest
    if total:
        out["total"] = total
    if completed:
        out["completed"] = completed
    return out


_download_locks: dict[str, threading.Lock] = {}
_download_locks_guard = threading.Lock()


def _download_lock(digest: str) -> threading.Lock:
    with _download_locks_guard:
        return _download_locks.setdefault(digest, threading.Lock())


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    def to_json(self) -> bytes:
        return (
            json.dumps(
                {
                    "N": self.n,
                    "Offset": self.offset,
                    "Size": self.size,
                    "Completed": self.completed,
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )


class BlobDownload:
    def __init__(self, path: Path, digest: str, emit: Emit) -> None:
        self.path = path
        self.digest = digest
        self.emit = emit
        self.total = 0
        self.completed = 0
        self.parts: list[Part] = []
        self._last_emit = 0.0

    def part_path(self, part: Part) -> Path:
        return Path(f"{self.path}-partial-{part.n}")

    def write_part(self, part: Part) -> None:
        self.part_path(part).write_bytes(part.to_json())

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_emit >= 0.06:
            self._last_emit = now
            self.emit(
                progress(f"pulling {self.digest[7:19]}", self.digest, self.total, self.completed)
            )

    def prepare(self, request_url: str) -> None:
        for pp in sorted(self.path.parent.glob(self.path.name + "-partial-*")):
            try:
                j = json.loads(pp.read_bytes())
                part = Part(int(j["N"]), int(j["Offset"]), int(j["Size"]), int(j["Completed"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise PullError(str(e)) from e
            self.total += part.size
            self.completed += part.completed
            self.parts.append(part)
        if not self.parts:
            try:
                resp = make_request_with_retry("HEAD", request_url)
            except GoError as e:
                raise PullError(str(e)) from e
            resp.close()
            try:
                self.total = int(resp.headers.get("Content-Length") or 0)
            except ValueError:
                self.total = 0
            size = min(max(self.total // NUM_PARTS, MIN_PART), MAX_PART)
            offset = 0
            while offset < self.total:
                size = min(size, self.total - offset)
                part = Part(len(self.parts), offset, size)
                self.write_part(part)
                self.parts.append(part)
                offset += size
        if self.parts:
            log(
                "INFO",
                f"downloading {self.digest[7:19]} in {len(self.parts)} "
                f"{human_bytes(self.parts[0].size)} part(s)",
                source="download.go:1",
            )

    def direct_url(self, request_url: str) -> str:
        """The GET that learns where the blob really is: a 307 to another host, or a 200
        that names itself in Location. Anything else fails as it does in the real client."""
        req_host = urllib.parse.urlsplit(request_url).hostname

        def check(target: str, via: list[str]) -> object:
            if len(via) > 10:
                return "maximum redirects exceeded (10) for directURL"
            if urllib.parse.urlsplit(target).hostname == req_host:
                return None
            return USE_LAST_RESPONSE

        scale = retry_scale()
        deadline = time.monotonic() + max(30.0 * scale, 0.05)
        n = 0
        while True:
            try:
                resp = make_request_with_retry("GET", request_url, None, check)
            except GoError as e:
                log(
                    "WARN",
                    "failed to get direct URL; backing off and retrying",
                    "download.go:1",
                    err=e,
                )
                n += 1
                delay = min(n * n * 0.01, 10.0) * (random.random() + 0.5) * scale
                if time.monotonic() + delay >= deadline:
                    raise PullError("context deadline exceeded") from e
                time.sleep(delay)
                continue
            try:
                if resp.status not in (307, 200):
                    raise PullError(f"unexpected status code {resp.status}")
                try:
                    return resp.location()
                except GoError as e:
                    raise PullError(str(e)) from e
            finally:
                resp.close()

    def run(self, request_url: str) -> None:
        partial = Path(f"{self.path}-partial")
        fd = os.open(partial, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.ftruncate(fd, self.total)
            direct = self.direct_url(request_url)
            self.report(force=True)
            for part in self.parts:
                if part.completed == part.size:
                    continue
                self._download_part(fd, direct, part)
            self.report(force=True)
        finally:
            os.close(fd)
        for part in self.parts:
            try:
                self.part_path(part).unlink()
            except OSError as e:
                raise PullError(str(e)) from e
        partial.rename(self.path)

    def _download_part(self, fd: int, url: str, part: Part) -> None:
        scale = retry_scale()
        err = ""
        tries = stalls = 0
        while tries < MAX_RETRIES:
            try:
                self._download_chunk(fd, url, part)
                return
            except TimeoutError:
                stalls += 1
                log(
                    "INFO",
                    f"{self.digest[7:19]} part {part.n} stalled; retrying. If this persists, "
                    "press ctrl-c to exit, then 'ollama pull' to find a faster connection.",
                    source="download.go:1",
                )
                if stalls < 100:
                    continue
                err = "part stalled"
            except GoError as e:
                err = str(e)
            sleep = 2**tries
            log(
                "INFO",
                f"{self.digest[7:19]} part {part.n} attempt {tries} failed: {err}, "
                f"retrying in {sleep}s",
                source="download.go:1",
            )
            time.sleep(sleep * scale)
            tries += 1
        raise PullError(f"max retries exceeded: {err}")

    def _download_chunk(self, fd: int, url: str, part: Part) -> None:
        start, stop = part.offset + part.completed, part.offset + part.size - 1
        resp = go_do("GET", url, {"Range": f"bytes={start}-{stop}"}, timeout=30.0)
        want = part.size - part.completed
        n, failure = 0, ""
        try:
            while n < want:
                try:
                    chunk = resp.raw.read(min(64 * 1024, want - n))
                except http.client.IncompleteRead as e:
                    if e.partial:
                        os.pwrite(fd, e.partial, start + n)
                        n += len(e.partial)
                        self.completed += len(e.partial)
                    failure = "unexpected EOF"
                    break
                except TimeoutError:
                    self.completed -= n
                    raise TimeoutError from None
                except (OSError, http.client.HTTPException) as e:
                    failure = "unexpected EOF" if isinstance(e, ConnectionError) else str(e)
                    break
                if not chunk:
                    # a body that ends at its own length is short (EOF); one that ends before
                    # it is truncated (unexpected EOF) and keeps its progress
                    length = resp.raw.length
                    failure = "unexpected EOF" if length else "EOF"
                    break
                os.pwrite(fd, chunk, start + n)
                n += len(chunk)
                self.completed += len(chunk)
                try:
                    self.report()
                except ClientGone:
                    part.completed += n
                    self.write_part(part)
                    raise
        finally:
            resp.close()
        if failure and failure != "unexpected EOF":
            self.completed -= n  # rollback progress
            raise GoError(failure)
        part.completed += n
        self.write_part(part)
        if failure:
            raise GoError(failure)


@dataclass
class Server:
    store: Store
    gpus: list[dict[str, Any]]
    default_num_ctx: int
    sched: Scheduler
    bound: HostURL


def download_blob(store: Store, name: Name, digest: str, insecure: bool, emit: Emit) -> bool:
    """download.go downloadBlob: True for a cache hit (the blob is already in the store)."""
    try:
        fp = store.blob_path(digest)
    except StoreError as e:
        raise PullError(str(e)) from e
    if fp.is_file():
        size = fp.stat().st_size
        emit(progress(f"pulling {digest[7:19]}", digest, size, size))
        return True
    with _download_lock(digest):
        if fp.is_file():
            size = fp.stat().st_size
            emit(progress(f"pulling {digest[7:19]}", digest, size, size))
            return False
        request_url = f"{name.base_url(insecure)}/v2/{name.namespace}/{name.model}/blobs/{digest}"
        dl = BlobDownload(fp, digest, emit)
        dl.prepare(request_url)
        dl.run(request_url)
    return False


def _existing_layers(store: Store, name: Name) -> set[str]:
    try:
        existing = store.read_named(name)
    except (OSError, StoreError) as e:
        log("WARN", "pulling model with bad existing manifest", "images.go:1", name=name, error=e)
        return set()
    return set(existing.layer_digests()) if existing is not None else set()


def pull_manifest(name: Name, insecure: bool) -> tuple[bytes, dict[str, Any]]:
    """images.go pullModelManifest: GET the manifest; its bytes and the parsed object."""
    url = f"{name.base_url(insecure)}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
    try:
        resp = make_request_with_retry("GET", url, {"Accept": MEDIA_TYPE_MANIFEST})
        try:
            data = resp.raw.read()
        finally:
            resp.close()
        try:
            manifest = json.loads(data)
        except json.JSONDecodeError as e:
            raise GoError(go_json_error(data, e)) from e
        if not isinstance(manifest, dict):
            raise GoError("json: cannot unmarshal array into Go value of type manifest.Manifest")
    except (GoError, OSError, http.client.HTTPException) as e:
        raise PullError(f"pull model manifest: {e}") from e
    return data, manifest


def _verify_layers(store: Store, layers: list[dict[str, Any]], skip: dict[str, bool]) -> None:
    """images.go verifyBlob for every layer not already present before the pull."""
    for layer in layers:
        digest = str(layer.get("digest", ""))
        if skip.get(digest):
            continue
        fp = store.blob_path(digest)
        got = "sha256:" + sha256_file(fp)
        if got != digest:
            try:
                fp.unlink()
            except OSError as e:
                log("INFO", f"couldn't remove file with digest mismatch '{fp}': {e}", "images.go:1")
            raise PullError(
                f"digest mismatch, file must be downloaded again: want {digest}, got {got}"
            )


def pull_model(server: Server, name: Name, insecure: bool, emit: Emit) -> None:
    """images.go PullModel: manifest, blobs, verification, the manifest file, old layers."""
    store = server.store
    delete = _existing_layers(store, name)
    if name.scheme == "http" and not insecure:
        raise PullError("insecure protocol http")

    emit(progress("pulling manifest"))
    data, manifest = pull_manifest(name, insecure)
    layers = list(manifest.get("layers") or [])
    cfg = manifest.get("config") or {}
    if cfg.get("digest"):
        layers.append(cfg)

    skip_verify: dict[str, bool] = {}
    for layer in layers:
        digest = str(layer.get("digest", ""))
        hit = download_blob(store, name, digest, insecure, emit)
        skip_verify[digest] = skip_verify.get(digest, True) and hit

    emit(progress("verifying sha256 digest"))
    _verify_layers(store, layers, skip_verify)
    delete -= {str(layer.get("digest", "")) for layer in layers}

    emit(progress("writing manifest"))
    try:
        store.write_manifest(name, data)
    except OSError as e:
        raise PullError(_os_err("open", store.legacy_path(name), e)) from e

    if not env_bool("OLLAMA_NOPRUNE") and delete:
        emit(progress("removing unused layers"))
        store.remove_unreferenced(delete)

    emit(progress("success"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# GPUs (discover/) and the scheduler (server/sched.go), as far as /api/ps shows them
# --------------------------------------------------------------------------------------------


def discover_gpus() -> list[dict[str, Any]]:
    """GPUs the runner would see: those nvidia-smi reports, filtered by CUDA_VISIBLE_DEVICES."""
    visible = env_var("CUDA_VISIBLE_DEVICES")
    if visible == "-1":
        return []
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log("WARN", "unable to query GPUs", source="discover.go:1", error=e)
        return []
    if proc.returncode != 0:
        return []
    gpus = []
    for line in proc.stdout.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 4:
            continue
        try:
            total = int(float(cols[3])) * MIB
        except ValueError:
            continue
        gpus.append({"index": cols[0], "uuid": cols[1], "name": cols[2], "total": total})
    if visible:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        picked = []
        for w in wanted:
            match = [g for g in gpus if w in (g["index"], g["uuid"])]
            if not match:
                break  # CUDA stops at the first entry it cannot resolve
            picked.extend(m for m in match if m not in picked)
        gpus = picked
    return gpus


@dataclass
class Loaded:
    model: Model
    size: int
    size_vram: int
    num_ctx: int
    expires_ns: int
    loaded_ns: int


class Scheduler:
    def __init__(self, gpus: list[dict[str, Any]], default_num_ctx: int) -> None:
        self.gpus = gpus
        self.default_num_ctx = default_num_ctx
        self.loaded: dict[tuple[str, ...], Loaded] = {}
        self.lock = threading.Lock()

    def _expire(self, now: int) -> None:
        for k in [k for k, v in self.loaded.items() if v.expires_ns <= now]:
            del self.loaded[k]

    def vram_available(self) -> int:
        overhead = env_uint("OLLAMA_GPU_OVERHEAD", 0)
        return sum(max(0, g["total"] - overhead - GPU_RESERVE) for g in self.gpus)

    def estimate(self, m: Model, num_ctx: int) -> int:
        """Weights plus KV cache (llm.PredictServerVRAM, older engine's shape)."""
        weights = m.model_path.stat().st_size if m.model_path and m.model_path.exists() else 0
        blocks = m.arch_value("block_count")
        embd = m.arch_value("embedding_length")
        heads = m.arch_value("attention.head_count") or 1
        kv_heads = m.arch_value("attention.head_count_kv") or heads
        trained = m.arch_value("context_length") or num_ctx
        ctx = min(num_ctx, trained) * max(1, env_uint("OLLAMA_NUM_PARALLEL", 1))
        per_elem = {"q8_0": 1.0, "q4_0": 0.5}.get(env_var("OLLAMA_KV_CACHE_TYPE"), 2.0)
        if env_var("OLLAMA_FLASH_ATTENTION") and not env_bool("OLLAMA_FLASH_ATTENTION"):
            per_elem = 2.0  # a quantized KV cache needs flash attention
        kv = int(2 * blocks * kv_heads * (embd // heads) * ctx * per_elem)
        return weights + kv

    def load(self, m: Model, options: dict[str, Any], keep_alive_ns: int | None) -> Loaded:
        now = time.time_ns()
        ka = keep_alive_default_ns() if keep_alive_ns is None else keep_alive_ns
        key = m.entry.name.key()
        with self.lock:
            self._expire(now)
            num_ctx = effective_num_ctx(options, m.options, self.default_num_ctx)
            trained = m.arch_value("context_length")
            if trained and num_ctx > trained:  # llm/server.go: "requested context size too
                num_ctx = int(trained)  # large for model" caps it at the trained context
            current = self.loaded.get(key)
            if (
                current is None
                or current.num_ctx != num_ctx
                or current.model.entry.digest != m.entry.digest
            ):
                self.loaded.pop(key, None)
                limit = env_uint("OLLAMA_MAX_LOADED_MODELS", 0) or 3 * max(1, len(self.gpus))
                while len(self.loaded) >= limit:
                    victim = min(self.loaded, key=lambda k: self.loaded[k].expires_ns)
                    del self.loaded[victim]
                size = self.estimate(m, num_ctx)
                vram = 0
                if self.gpus:
                    free = self.vram_available() - sum(v.size_vram for v in self.loaded.values())
                    if size > free and self.loaded:
                        self.loaded.clear()  # evict the others, as the scheduler does
                        free = self.vram_available()
                    vram = max(0, min(size, free))
                current = Loaded(m, size, vram, num_ctx, now, now)
                self.loaded[key] = current
                log(
                    "INFO",
                    "loaded model",
                    source="sched.go:1",
                    model=str(m.model_path),
                    size=size,
                    size_vram=vram,
                    num_ctx=num_ctx,
                )
            current.expires_ns = now + ka
            current.model = m
            return current

    def unload(self, m: Model) -> None:
        with self.lock:
            self.loaded.pop(m.entry.name.key(), None)

    def running(self) -> list[Loaded]:
        with self.lock:
            self._expire(time.time_ns())
            return sorted(self.loaded.values(), key=lambda v: -v.expires_ns)


# --------------------------------------------------------------------------------------------
# HTTP API (server/routes.go)
# --------------------------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: APIServer  # type: ignore[assignment]

    # -- plumbing ------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._status = 0
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length > 0 else b""
        try:
            if not self._host_allowed():
                self._send(403, b"", "text/plain; charset=utf-8")
                return
            routes = ROUTES.get(path)
            if routes is None:
                self._send(404, b"404 page not found", "text/plain")
            elif self.command not in routes:
                self._send(405, b"405 method not allowed", "text/plain")
            else:
                routes[self.command](self)
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            gin_log(
                self._status, time.monotonic() - started, self.client_address[0], self.command, path
            )

    do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = _dispatch

    def _host_allowed(self) -> bool:
        """routes.go allowedHostsMiddleware: on a loopback listener only local Host headers."""
        try:
            if not ipaddress.ip_address(self.server.server_address[0]).is_loopback:
                return True
        except ValueError:
            return True
        host = (self.headers.get("Host") or "").lower()
        h, _port = _split_host_port(host)
        host = (h if h is not None else host).strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return ip.is_loopback or ip.is_unspecified or _go_is_private(ip) or _is_local_ip(ip)
        if host in ("", "localhost", socket.gethostname().lower()):
            return True
        return any(host.endswith("." + tld) for tld in ("localhost", "local", "internal"))

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self._send(status, go_json(obj), "application/json; charset=utf-8")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def send_empty(self) -> None:
        self._send(200, b"", "")

    def read_json(self) -> dict[str, Any]:
        """gin ShouldBindJSON: an empty body is 'missing request body'."""
        data = self._body
        if not data.strip():
            raise BadRequest(400, "missing request body")
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as e:
            raise BadRequest(400, go_json_error(data, e)) from e
        if not isinstance(obj, dict):
            raise BadRequest(400, "json: cannot unmarshal array into Go value of type api.Request")
        return obj

    def stream(self, content_type: str = "application/x-ndjson") -> Stream:
        return Stream(self, content_type)

    @property
    def api(self) -> Server:
        return self.server.api

    # -- handlers ------------------------------------------------------------------------------
    def h_root(self) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def h_version(self) -> None:
        self.send_json(200, {"version": VERSION})

    def h_tags(self) -> None:
        models = []
        for entry in self.api.store.manifests().values():
            cfg: dict[str, Any] = {}
            cfg_digest = (entry.manifest.get("config") or {}).get("digest")
            if cfg_digest:
                try:
                    cfg = json.loads(self.api.store.blob_path(cfg_digest).read_bytes())
                except (OSError, ValueError, StoreError) as e:
                    log("WARN", "bad manifest config", name=entry.name.full(), error=e)
                    continue
            short = entry.name.display_shortest()
            models.append(
                {
                    "name": short,
                    "model": short,
                    "modified_at": go_time(entry.mtime_ns),
                    "size": entry.total_size(),
                    "digest": entry.digest,
                    "details": {
                        "parent_model": "",
                        "format": cfg.get("model_format", ""),
                        "family": cfg.get("model_family", ""),
                        "families": cfg.get("model_families"),
                        "parameter_size": cfg.get("model_type", ""),
                        "quantization_level": cfg.get("file_type", ""),
                    },
                    "_mtime": entry.mtime_ns // 10**9,
                }
            )
        models.sort(key=lambda m: -m["_mtime"])
        for m in models:
            del m["_mtime"]
        self.send_json(200, {"models": models})

    def _model_name(self, body: dict[str, Any]) -> str:
        value = body.get("model") or body.get("name") or ""
        if not isinstance(value, str):
            raise BadRequest(400, "json: cannot unmarshal into Go struct field of type string")
        return value

    def h_pull(self) -> None:
        try:
            body = self.read_json()
            raw = self._model_name(body)
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
            return
        name = parse_name(raw)
        if name is None:
            self.send_error_json(400, "invalid model name")
            return
        # routes.go PullHandler hands PullModel name.DisplayShortest(), which has no scheme:
        # an http:// prefix is dropped here and only "insecure" selects plain http.
        name = self.api.store.existing_name(Name(*name.parts()))
        insecure = bool(body.get("insecure"))
        log(
            "INFO",
            "pulling",
            source="routes.go:1",
            model=name.display_shortest(),
            insecure=insecure,
        )
        if body.get("stream") is False:
            latest: dict[str, Any] = {}

            def keep(r: dict[str, Any]) -> None:
                latest.clear()
                latest.update(r)

            try:
                pull_model(self.api, name, insecure, keep)
            except (PullError, StoreError, OSError) as e:
                self.send_error_json(500, str(e))
                return
            self.send_json(200, latest or {"status": ""})
            return
        s = self.stream()
        try:
            pull_model(self.api, name, insecure, s.send)
        except (PullError, StoreError, OSError) as e:
            log("INFO", f"pull failed: {e}", source="routes.go:1")
            s.error(str(e))
        s.close()

    def h_delete(self) -> None:
        try:
            body = self.read_json()
            raw = self._model_name(body)
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
            return
        name = parse_name(raw)
        if name is None:
            self.send_error_json(400, f"name {json.dumps(raw)} is invalid")
            return
        name = self.api.store.existing_name(name)
        try:
            self.api.store.remove_named(name)
        except FileNotFoundError:
            self.send_error_json(404, f"model '{raw}' not found")
            return
        except (OSError, StoreError) as e:
            self.send_error_json(500, str(e))
            return
        self.send_empty()

    def h_copy(self) -> None:
        try:
            body = self.read_json()
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
            return
        src_raw, dst_raw = str(body.get("source") or ""), str(body.get("destination") or "")
        src = parse_name(src_raw)
        if src is None:
            self.send_error_json(400, f"source {json.dumps(src_raw)} is invalid")
            return
        dst = parse_name(dst_raw)
        if dst is None:
            self.send_error_json(400, f"destination {json.dumps(dst_raw)} is invalid")
            return
        store = self.api.store
        src, dst = store.existing_name(src), store.existing_name(dst)
        path = store.resolve(src)
        if path is None:
            self.send_error_json(404, f"model {json.dumps(src_raw)} not found")
            return
        if path != store.legacy_path(dst):
            store.write_manifest(dst, path.read_bytes())
        self.send_empty()

    def _load(self, raw: str) -> Model | None:
        name = parse_name(raw)
        if name is None:
            raise BadRequest(400, "invalid model name")
        try:
            return load_model(self.api.store, self.api.store.existing_name(name))
        except (OSError, ValueError, StoreError) as e:
            raise BadRequest(500, str(e)) from e

    def h_show(self) -> None:
        try:
            body = self.read_json()
            raw = self._model_name(body)
            if not raw:
                raise BadRequest(400, "model is required")
            m = self._load(raw)
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
            return
        if m is None:
            self.send_error_json(404, f"model '{raw}' not found")
            return
        if m.kv_error:
            self.send_error_json(500, m.kv_error)
            return
        params = []
        for k in sorted(m.options):
            values = m.options[k] if isinstance(m.options[k], list) else [m.options[k]]
            params.extend(f"{k:<30} {_go_sharp_v(v)}" for v in values)
        info = {
            k: v for k, v in m.kv.items() if k not in ("general.name", "tokenizer.chat_template")
        }
        info = {k: ([] if isinstance(v, list) and len(v) > 5 else v) for k, v in info.items()}
        resp: dict[str, Any] = {}
        if m.license:
            resp["license"] = "\n".join(m.license)
        resp["modelfile"] = _modelfile(m)
        if params:
            resp["parameters"] = "\n".join(params)
        resp["template"] = m.template
        if m.system:
            resp["system"] = m.system
        resp["details"] = m.details()
        resp["model_info"] = info
        resp["capabilities"] = m.capabilities()
        resp["modified_at"] = go_time(m.entry.mtime_ns)
        self.send_json(200, resp)

    def h_ps(self) -> None:
        models = []
        for v in self.api.sched.running():
            m = v.model
            models.append(
                {
                    "name": m.short_name,
                    "model": m.short_name,
                    "size": v.size,
                    "digest": m.entry.digest,
                    "details": m.details(),
                    "expires_at": go_time(v.expires_ns),
                    "size_vram": v.size_vram,
                    "context_length": v.num_ctx,
                }
            )
        self.send_json(200, {"models": models})

    def _inference_request(self, need: str) -> tuple[dict[str, Any], Model, int | None] | None:
        try:
            body = self.read_json()
            raw = body.get("model") or ""
            if not isinstance(raw, str):
                raise BadRequest(400, "json: cannot unmarshal into Go struct field of type string")
            try:
                keep_alive = request_keep_alive_ns(body.get("keep_alive"))
            except ValueError as e:
                raise BadRequest(400, str(e)) from e
            m = self._load(raw) if raw else None
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
            return None
        if m is None:
            self.send_error_json(404, f"model '{raw}' not found")
            return None
        if m.kv_error:
            self.send_error_json(500, m.kv_error)
            return None
        if need not in m.capabilities() and need != "embedding":
            verb = "generate" if self.path.startswith("/api/generate") else "chat"
            self.send_error_json(400, f'"{raw}" does not support {verb}')
            return None
        return body, m, keep_alive

    def h_generate(self) -> None:
        self._complete(chat=False)

    def h_chat(self) -> None:
        self._complete(chat=True)

    def _complete(self, chat: bool) -> None:
        req = self._inference_request("completion")
        if req is None:
            return
        body, m, keep_alive = req
        started = time.monotonic_ns()
        prompt, empty = _prompt_of(body, chat)

        def frame(text: str, done: bool, reason: str = "") -> dict[str, Any]:
            return _frame(body["model"], chat, text, done, reason)

        if empty and keep_alive == 0:
            self.api.sched.unload(m)
            self.send_json(200, frame("", True, "unload"))
            return
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        self.api.sched.load(m, options or {}, keep_alive)
        loaded = time.monotonic_ns()
        if empty:
            self.send_json(200, frame("", True, "load"))
            return
        words = _reply_words(m.short_name, prompt)
        s = None if body.get("stream") is False else self.stream()
        if s is not None:
            for w in words:
                s.send(frame(w, False))
        final = frame("", True, "stop")
        if not chat:
            final["context"] = list(range(1, len(words) + len(prompt.split()) + 1))
        final.update(_timings(started, loaded, prompt, words))
        if s is None:
            final["message" if chat else "response"] = (
                {"role": "assistant", "content": "".join(words)} if chat else "".join(words)
            )
            self.send_json(200, final)
        else:
            s.send(final)
            s.close()
        if keep_alive == 0:
            self.api.sched.unload(m)

    def h_embed(self) -> None:
        req = self._inference_request("embedding")
        if req is None:
            return
        body, m, keep_alive = req
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
            inputs = list(raw_input)
        elif raw_input is None:
            inputs = []
        else:
            self.send_error_json(400, "invalid input type")
            return
        started = time.monotonic_ns()
        self.api.sched.load(m, {}, keep_alive)
        dim = m.arch_value("embedding_length") or 16
        vectors = [_embedding(m.short_name, text, min(dim, 4096)) for text in inputs]
        self.send_json(
            200,
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(t.split()) for t in inputs),
            },
        )


_GO_PRIVATE = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]


def _go_is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """netip.Addr.IsPrivate (RFC 1918 and RFC 4193 only, unlike Python's is_private)."""
    return any(ip.version == n.version and ip in n for n in _GO_PRIVATE)


def _is_local_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """routes.go isLocalIP: an address of this machine (as far as name lookup tells)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return False
    return any(info[4][0] == str(ip) for info in infos)


def _go_sharp_v(v: Any) -> str:
    """fmt %#v for the JSON values a params blob holds."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _modelfile(m: Model) -> str:
    out = ['# Modelfile generated by "ollama show"']
    out.append("# To build a new Modelfile based on this, replace FROM with:")
    out.append(f"# FROM {m.short_name}")
    out.append("")
    out.append(f"FROM {m.model_path}")
    out.append(f'TEMPLATE """{m.template}"""')
    if m.system:
        out.append(f'SYSTEM """{m.system}"""')
    for k in sorted(m.options):
        values = m.options[k] if isinstance(m.options[k], list) else [m.options[k]]
        out.extend(f"PARAMETER {k} {v}" for v in values)
    out.extend(f'LICENSE """{lic}"""' for lic in m.license)
    return "\n".join(out) + "\n"


def _prompt_of(body: dict[str, Any], chat: bool) -> tuple[str, bool]:
    """The text a completion answers, and whether the request only loads or unloads."""
    if chat:
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
        return str(last.get("content", "")), not msgs
    prompt = str(body.get("prompt") or "")
    return prompt, prompt == ""


def _frame(model: str, chat: bool, text: str, done: bool, reason: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": go_time(time.time_ns(), utc=True)}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["done"] = done
    if reason:
        out["done_reason"] = reason
    return out


def _timings(started: int, loaded: int, prompt: str, words: list[str]) -> dict[str, int]:
    return {
        "total_duration": time.monotonic_ns() - started,
        "load_duration": loaded - started,
        "prompt_eval_count": max(1, len(prompt.split())),
        "prompt_eval_duration": 1_000_000,
        "eval_count": len(words),
        "eval_duration": 1_000_000 * len(words),
    }


def _reply_words(model: str, prompt: str) -> list[str]:
    h = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()[:8]
    text = f"This is a reply from the Ollama test double ({model}, {h})."
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


def _embedding(model: str, text: str, dim: int) -> list[float]:
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    rng = random.Random(seed)
    vec = [rng.uniform(-1, 1) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


class Stream:
    """gin c.Stream over chunked transfer encoding; errors before any line become a JSON 500."""

    def __init__(self, handler: Handler, content_type: str) -> None:
        self.h = handler
        self.content_type = content_type
        self.started = False

    def _write(self, data: bytes) -> None:
        try:
            self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ClientGone from e

    def send(self, obj: dict[str, Any]) -> None:
        if not self.started:
            self.started = True
            self.h.send_response(200)
            self.h.send_header("Content-Type", self.content_type)
            self.h.send_header("Transfer-Encoding", "chunked")
            self.h.end_headers()
        self._write(go_json(obj) + b"\n")

    def error(self, message: str) -> None:
        if not self.started:
            self.h.send_error_json(500, message)
            return
        self._write(go_json({"error": message}) + b"\n")

    def close(self) -> None:
        if self.started:
            try:
                self.h.wfile.write(b"0\r\n\r\n")
                self.h.wfile.flush()
            except OSError as e:
                raise ClientGone from e


ROUTES: dict[str, dict[str, Callable[[Handler], None]]] = {
    "/": {"GET": Handler.h_root, "HEAD": Handler.h_root},
    "/api/version": {"GET": Handler.h_version, "HEAD": Handler.h_version},
    "/api/tags": {"GET": Handler.h_tags, "HEAD": Handler.h_tags},
    "/api/pull": {"POST": Handler.h_pull},
    "/api/delete": {"DELETE": Handler.h_delete},
    "/api/copy": {"POST": Handler.h_copy},
    "/api/show": {"POST": Handler.h_show},
    "/api/ps": {"GET": Handler.h_ps},
    "/api/generate": {"POST": Handler.h_generate},
    "/api/chat": {"POST": Handler.h_chat},
    "/api/embed": {"POST": Handler.h_embed},
}


class APIServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: Server

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve() -> int:
    host = parse_host(env_var("OLLAMA_HOST"))
    store = Store(models_dir())
    config_keys = [
        "CUDA_VISIBLE_DEVICES",
        "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_FLASH_ATTENTION",
        "OLLAMA_GPU_OVERHEAD",
        "OLLAMA_HOST",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_KV_CACHE_TYPE",
        "OLLAMA_MAX_LOADED_MODELS",
        "OLLAMA_MODELS",
        "OLLAMA_NOPRUNE",
        "OLLAMA_NUM_PARALLEL",
    ]
    values = {k: env_var(k) for k in config_keys}
    values["OLLAMA_HOST"] = host.url()
    values["OLLAMA_MODELS"] = str(store.root)
    values["OLLAMA_KEEP_ALIVE"] = _fmt_duration(keep_alive_default_ns())
    values["OLLAMA_NUM_PARALLEL"] = str(env_uint("OLLAMA_NUM_PARALLEL", 1))
    log("INFO", "server config", env="map[" + " ".join(f"{k}:{v}" for k, v in values.items()) + "]")
    log("INFO", "TEST DOUBLE: this is not Ollama", source="ollama_double.py:1")

    try:
        store.blobs  # noqa: B018 - creates the directory, as BlobsPath("") does
        store.fix_blobs()
        if not env_bool("OLLAMA_NOPRUNE"):
            try:
                store.manifests(continue_on_error=False)
            except StoreError as e:
                log(
                    "WARN",
                    "corrupt manifests detected, skipping prune operation.  "
                    "Re-pull or delete to clear",
                    error=e,
                )
            else:
                store.prune_layers()
                store.prune_dirs()
    except (OSError, StoreError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1

    family = socket.AF_INET6 if ":" in host.host else socket.AF_INET
    server_class = type("APIServer", (APIServer,), {"address_family": family})
    try:
        httpd = server_class((host.host, int(host.port)), Handler)
    except OSError as e:
        reason = {98: "bind: address already in use", 99: "bind: cannot assign requested address"}
        text = reason.get(e.errno or 0, str(e))
        print(f"Error: listen tcp {host.hostport}: {text}", file=sys.stderr)
        return 1

    gpus = discover_gpus()
    total_vram = 0
    for g in gpus:
        total_vram += g["total"] - env_uint("OLLAMA_GPU_OVERHEAD", 0)
        log(
            "INFO",
            "inference compute",
            source="types.go:1",
            id=g["uuid"],
            library="CUDA",
            name=f"CUDA{g['index']}",
            description=g["name"],
            total=human_bytes2(g["total"]),
            available=human_bytes2(g["total"] - GPU_RESERVE),
        )
    if not gpus:
        log("INFO", "no compatible GPUs were discovered", source="types.go:1")
        log("INFO", "inference compute", source="types.go:1", id="cpu", library="cpu")
    default_ctx = vram_default_ctx(total_vram)
    if since(VRAM_TIERS_FROM):
        log(
            "INFO",
            "vram-based default context",
            total_vram=human_bytes2(total_vram),
            default_num_ctx=default_ctx,
        )
    # envconfig.ContextLength: OLLAMA_CONTEXT_LENGTH (default 0 from v0.15.5, 4096 before)
    num_ctx = env_uint("OLLAMA_CONTEXT_LENGTH", 0) or default_ctx
    httpd.api = Server(store, gpus, num_ctx, Scheduler(gpus, num_ctx), host)
    addr, port = httpd.server_address[:2]
    shown = f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"
    log("INFO", f"Listening on {shown} (version {VERSION})")

    def stop(_sig: int, _frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        httpd.serve_forever(poll_interval=0.1)
    finally:
        httpd.server_close()
    return 0


def _fmt_duration(ns: int) -> str:
    if ns >= FOREVER_NS:
        return "2562047h47m16.854775807s"
    s = ns / 10**9
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    return out + f"{sec}s"


# --------------------------------------------------------------------------------------------
# human formats (format/bytes.go, format/time.go)
# --------------------------------------------------------------------------------------------


def human_bytes(b: int) -> str:
    """format/bytes.go HumanBytes: decimal units."""
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if b >= size:
            value = b / size
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{b} B"


def human_bytes2(b: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b} B"


def human_duration(seconds: float) -> str:
    """format/time.go humanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"


def human_time(ns: int, future: bool = False) -> str:
    """format/time.go HumanTime: '3 minutes ago', '4 minutes from now', 'Forever'."""
    delta = (ns - time.time_ns()) / 10**9
    if delta > 100 * 365 * 86400:
        return "Forever"
    if future or delta > 0:
        return human_duration(max(delta, 0)) + " from now"
    return human_duration(-delta) + " ago"


# --------------------------------------------------------------------------------------------
# the client (cmd/cmd.go)
# --------------------------------------------------------------------------------------------

CONNECT_ERROR = "could not connect to ollama server, run 'ollama serve' to start it"


class ClientError(Exception):
    pass


class Client:
    def __init__(self) -> None:
        self.host = parse_host(env_var("OLLAMA_HOST"))

    def request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, http.client.HTTPResponse, http.client.HTTPConnection]:
        cls = (
            http.client.HTTPSConnection
            if self.host.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = cls(self.host.host, int(self.host.port), timeout=None)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        headers["User-Agent"] = f"ollama/{VERSION} (amd64 linux) Go/go1.24.6"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise ClientError(CONNECT_ERROR) from e
        return resp.status, resp, conn

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, resp, conn = self.request(method, path, body)
        try:
            data = resp.read()
        finally:
            conn.close()
        if status >= 400:
            raise ClientError(_error_text(status, data))
        return json.loads(data) if data.strip() else None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        status, resp, conn = self.request("POST", path, body)
        try:
            if status >= 400:
                raise ClientError(_error_text(status, resp.read()))
            for line in resp:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if obj.get("error"):
                    raise ClientError(obj["error"])
                yield obj
        finally:
            conn.close()


def _error_text(status: int, data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        text = data.decode("utf-8", "replace").strip()
        return text or f"{status} {http.client.responses.get(status, '')}".strip()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) + "    " for i, c in enumerate(r)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def cmd_version(client: Client) -> int:
    try:
        server_version = client.json("GET", "/api/version")["version"]
    except (ClientError, KeyError, TypeError, ValueError):
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {VERSION}")
        return 0
    print(f"ollama version is {server_version}")
    if server_version != VERSION:
        print(f"Warning: client version is {VERSION}")
    return 0


def cmd_list(client: Client, _args: list[str]) -> int:
    models = client.json("GET", "/api/tags")["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        ns = _parse_go_time(m["modified_at"])
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_time(ns)])
    print(_table(rows))
    return 0


def _parse_go_time(s: str) -> int:
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return time.time_ns()
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = dt.datetime.fromisoformat(m.group(1) + tz)
    frac = int((m.group(2) or "0").ljust(9, "0")[:9])
    return int(base.timestamp()) * 10**9 + frac


def cmd_ps(client: Client, _args: list[str]) -> int:
    models = client.json("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        size, vram = m["size"], m["size_vram"]
        if vram == 0:
            proc = "100% CPU"
        elif vram == size:
            proc = "100% GPU"
        else:
            gpu = round(vram * 100 / size)
            proc = f"{100 - gpu}%/{gpu}% CPU/GPU"
        when = human_time(_parse_go_time(m["expires_at"]), future=True)
        rows.append(
            [m["name"], m["digest"][:12], human_bytes(size), proc, str(m["context_length"]), when]
        )
    print(_table(rows))
    return 0


def cmd_pull(client: Client, args: list[str]) -> int:
    insecure = "--insecure" in args
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1:
        raise ClientError(f"accepts 1 arg(s), received {len(names)}")
    shown: set[str] = set()
    for p in client.stream("/api/pull", {"model": names[0], "insecure": insecure}):
        status = p.get("status", "")
        if p.get("digest"):
            total, done = p.get("total", 0), p.get("completed", 0)
            if total and done >= total and status not in shown:
                shown.add(status)
                print(f"{status}: 100% {human_bytes(total)}", file=sys.stderr)
            continue
        print(status, file=sys.stderr)
    return 0


def cmd_rm(client: Client, args: list[str]) -> int:
    if not args:
        raise ClientError("requires at least 1 arg(s), only received 0")
    for name in args:
        client.json("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_cp(client: Client, args: list[str]) -> int:
    if len(args) != 2:
        raise ClientError(f"accepts 2 arg(s), received {len(args)}")
    client.json("POST", "/api/copy", {"source": args[0], "destination": args[1]})
    print(f"copied '{args[0]}' to '{args[1]}'")
    return 0


def cmd_show(client: Client, args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1:
        raise ClientError(f"accepts 1 arg(s), received {len(names)}")
    resp = client.json("POST", "/api/show", {"model": names[0]})
    for flag, key in (
        ("--modelfile", "modelfile"),
        ("--parameters", "parameters"),
        ("--template", "template"),
        ("--license", "license"),
        ("--system", "system"),
    ):
        if flag in args:
            print(resp.get(key, ""))
            return 0
    info, details = resp.get("model_info") or {}, resp.get("details") or {}
    arch = str(info.get("general.architecture", details.get("family", "")))
    rows = [("architecture", arch), ("parameters", details.get("parameter_size", ""))]
    if f"{arch}.context_length" in info:
        rows.append(("context length", str(info[f"{arch}.context_length"])))
    if f"{arch}.embedding_length" in info:
        rows.append(("embedding length", str(info[f"{arch}.embedding_length"])))
    rows.append(("quantization", details.get("quantization_level", "")))
    print("  Model")
    for k, v in rows:
        print(f"    {k:<20}{v}")
    print("\n  Capabilities")
    for c in resp.get("capabilities") or []:
        print(f"    {c}")
    if resp.get("parameters"):
        print("\n  Parameters")
        for line in resp["parameters"].splitlines():
            print("    " + " ".join(line.split(None, 1)))
    if resp.get("license"):
        print("\n  License")
        for line in resp["license"].splitlines()[:2]:
            print(f"    {line}")
    print()
    return 0


def cmd_run(client: Client, args: list[str]) -> int:
    if not args:
        raise ClientError("requires at least 1 arg(s), only received 0")
    prompt = " ".join(args[1:])
    for p in client.stream("/api/generate", {"model": args[0], "prompt": prompt}):
        sys.stdout.write(p.get("response", ""))
    sys.stdout.write("\n\n" if prompt else "")
    return 0


def cmd_stop(client: Client, args: list[str]) -> int:
    if len(args) != 1:
        raise ClientError(f"accepts 1 arg(s), received {len(args)}")
    client.json("POST", "/api/generate", {"model": args[0], "keep_alive": 0})
    return 0


USAGE = """Large language model runner (TEST DOUBLE)

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""

COMMANDS: dict[str, Callable[[Client, list[str]], int]] = {
    "list": cmd_list,
    "ls": cmd_list,
    "ps": cmd_ps,
    "pull": cmd_pull,
    "rm": cmd_rm,
    "cp": cmd_cp,
    "show": cmd_show,
    "run": cmd_run,
    "stop": cmd_stop,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-v", "--version"):
        return cmd_version(Client())
    if args[0] == "serve":
        return serve()
    handler = COMMANDS.get(args[0])
    if handler is None:
        print(f'Error: unknown command "{args[0]}" for "ollama"', file=sys.stderr)
        return 1
    try:
        return handler(Client(), args[1:])
    except ClientError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
