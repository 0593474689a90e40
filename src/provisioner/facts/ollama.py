"""
Facts about Ollama on a host: the installed releases and the service, the model store, a
registry's manifest as the host sees it, and the directories above the store.

None of them raises from ``process()``: a value that cannot be read is reported as such.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import shlex
from typing import Any

from pyinfra.api import FactBase

from provisioner.ollama_api import (
    MANIFEST_MEDIA_TYPE,
    ManifestError,
    ModelName,
    parse_manifest,
)

__all__ = ["OllamaInstall", "OllamaModels", "OllamaRegistryManifest", "PathChain"]

INSTALL_DIR = "/opt/ollama"
MODELS_DIR = "/var/lib/ollama/models"
RELEASE_MARKER = ".provisioner-sha256"
APPLIED_STAMP = ".applied"
# Where servers keep manifests: manifest/paths.go (v0.20.3 .. v0.32.15) has manifests/ only
# (tests/conformance/ollama/records.toml, store.manifest_path).
MANIFEST_ROOTS = ("manifests",)


# output line keys -> the fact's keys (systemctl show's ActiveState is what is-active prints,
# UnitFileState what is-enabled prints)
_KEYS = {"bin": "bin", "applied": "applied", "ActiveState": "active", "UnitFileState": "enabled"}


class OllamaInstall(FactBase[dict[str, Any]]):
    """
    Returns the Ollama releases unpacked under ``install_dir``, the one ``current`` points to,
    the ``/usr/local/bin/ollama`` link, what the toolkit last applied and the service's state:

    .. code:: python

        {
            "current": "0.32.15",  # target of install_dir/current, None when absent
            "bin": "/opt/ollama/current/bin/ollama",  # target of /usr/local/bin/ollama
            "releases": {"0.32.14": "<sha256>", "0.32.15": "<sha256>"},  # verified unpacks
            "applied": "0.32.15 <release sha256> <config sha256>",  # None before the first
            "active": "active",  # ActiveState (what systemctl is-active prints)
            "enabled": "enabled",  # UnitFileState (what systemctl is-enabled prints)
        }
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {
            "current": None,
            "bin": None,
            "releases": {},
            "applied": None,
            "active": None,
            "enabled": None,
        }

    def command(self, install_dir: str = INSTALL_DIR, service: str = "ollama") -> str:
        # shell builtins where they do (read, ${f%/*}): four processes, not 3 + 3 per release
        d = shlex.quote(install_dir)
        s = shlex.quote(service)
        return (
            f"d={d}; "
            'echo "current=$(readlink "$d/current" 2>/dev/null)"; '
            'echo "bin=$(readlink /usr/local/bin/ollama 2>/dev/null)"; '
            f'a=; [ -r "$d/{APPLIED_STAMP}" ] && {{ read -r a || :; }} < "$d/{APPLIED_STAMP}"; '
            'echo "applied=$a"; '
            f"systemctl show -p ActiveState -p UnitFileState {s} 2>/dev/null; "
            f'for f in "$d"/*/{RELEASE_MARKER}; do [ -f "$f" ] || continue; '
            'r=${f%/*}; s=; { read -r s || :; } < "$f"; echo "release=${r##*/} $s"; '
            "done; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        info = self.default()
        for line in output:
            key, sep, value = line.partition("=")
            if not sep:
                continue
            value = value.strip()
            if key == "release":
                version, _, sha = value.partition(" ")
                if version:
                    info["releases"][version] = sha.strip() or None
            elif key == "current":
                info["current"] = value.rstrip("/").rsplit("/", 1)[-1] or None
            elif key in _KEYS:
                info[_KEYS[key]] = value or None
        return info


class OllamaModels(FactBase[dict[str, dict[str, Any]]]):
    """
    Returns the models in an Ollama store, read from the files (the server need not run),
    by canonical name (``/api/tags``'s name in lower case, :mod:`provisioner.model_name`):

    .. code:: python

        {
            "qwen2.5:7b": {
                "path": "manifests/registry.ollama.ai/library/qwen2.5/7b",
                "digest": "sha256:...",  # of the manifest file, as /api/tags shows it
                "content": ["sha256:<config>", "sha256:<layer>", ...],
                "size": 4683087332,
                "complete": True,  # every blob present with its size
                "missing": [],
            },
        }

    A manifest that cannot be parsed is listed with ``"error"`` and ``"complete": False``.
    """

    @staticmethod
    def default() -> dict[str, dict[str, Any]]:
        return {}

    def command(self, models_dir: str = MODELS_DIR) -> str:
        # Every manifest in one ``head -v`` (its ``==> PATH <==`` header before each file) and
        # one base64, whatever the number of models: a base64 per file cost a fork and an exec
        # each (``split_head_output``). -size -1024k: head's -c never cuts a file.
        d = shlex.quote(models_dir.rstrip("/") or "/")
        return (
            f"if cd {d} 2>/dev/null; then for r in {' '.join(MANIFEST_ROOTS)}; do "
            'if [ -d "$r" ]; then printf "manifests %s " "$r"; '
            'find "$r" -type f -size -1024k -exec head -v -c 1048576 -- {} + | base64 -w0; '
            "echo; fi; done; "
            "if [ -d blobs ]; then "
            "find blobs -maxdepth 1 -type f -name 'sha256-*' -printf 'blob %f %s\\n'; fi; fi; "
            "true"
        )

    def process(self, output: list[str]) -> dict[str, dict[str, Any]]:
        blobs: dict[str, int] = {}
        manifests: list[tuple[str, bytes]] = []
        for line in output:
            kind, _, rest = line.strip().partition(" ")
            if kind == "blob":
                name, _, size = rest.partition(" ")
                if name.startswith("sha256-") and len(name) == 71 and size.isdigit():
                    blobs[name.replace("-", ":", 1)] = int(size)
            elif kind == "manifests":
                encoded = rest.partition(" ")[2]  # after the root folder listed
                try:
                    manifests += split_head_output(base64.b64decode(encoded, validate=True))
                except (binascii.Error, ValueError):
                    continue  # not read: as if the store had no manifest there
        models: dict[str, dict[str, Any]] = {}
        order = {root: i for i, root in enumerate(MANIFEST_ROOTS)}
        manifests.sort(key=lambda item: (order.get(item[0].split("/", 1)[0], 9), item[0]))
        for path, data in manifests:
            root, _, relative = path.partition("/")
            if root not in order or relative.rsplit("/", 1)[-1].startswith("."):
                continue
            try:
                name = ModelName.from_manifest_path(relative)
            except ValueError:
                continue
            if name.canonical in models:
                continue
            try:
                manifest = parse_manifest(data)
            except (ManifestError, ValueError) as exc:
                models[name.canonical] = {"path": path, "error": str(exc), "complete": False}
                continue
            missing = [b.digest for b in manifest.blobs if blobs.get(b.digest) != b.size]
            models[name.canonical] = {
                "path": path,
                "digest": manifest.digest,
                "content": list(manifest.content),
                "size": manifest.size,
                "complete": not missing,
                "missing": missing,
            }
        return models


_HEAD_HEADER = b"==> "
_HEAD_HEADER_END = b" <==\n"


def split_head_output(data: bytes) -> list[tuple[str, bytes]]:
    """The files of ``head -v FILE...``: GNU coreutils' and BusyBox's ``head`` write
    ``==> NAME <==`` and a newline before each file, and one more newline before every header
    but the first (tests/conformance/gpu_stack/records.toml, head.verbose_headers). Split at the
    next ``\\n==> ``, which a JSON manifest cannot hold (a raw newline is not allowed inside a
    JSON string, and ``=`` not outside one): a file that is not JSON may be cut wrong, and
    is reported as a manifest that does not parse either way. Raises ValueError when ``data``
    does not start with a header."""
    files: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        if not data.startswith(_HEAD_HEADER, pos):
            raise ValueError("not head -v output")
        end = data.index(_HEAD_HEADER_END, pos)
        name = _header_name(data[pos + len(_HEAD_HEADER) : end].decode("utf-8", "replace"))
        start = end + len(_HEAD_HEADER_END)
        following = data.find(b"\n" + _HEAD_HEADER, start)
        if following < 0:
            files.append((name, data[start:]))
            break
        files.append((name, data[start:following]))
        pos = following + 1
    return files


def _header_name(text: str) -> str:
    """A header's file name: as given (coreutils before 9.12, BusyBox), or in single quotes
    when the name needs them (coreutils 9.12 quotes a name with ``:``, a registry's port)."""
    if not text.startswith("'"):
        return text
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


class OllamaRegistryManifest(FactBase[dict[str, Any]]):
    """
    Returns a model's manifest as the host fetches it from a registry (``curl``), or why not:

    .. code:: python

        {
            "digest": "sha256:...",  # of the bytes the registry sent (Docker-Content-Digest)
            "content": ["sha256:<config>", "sha256:<layer>", ...],
            "blobs": [["sha256:...", 487], ...],
            "size": 4683087332,
            "raw": "<base64 of the manifest>",
        }
        # or
        {"error": "curl: (7) Failed to connect to 10.0.0.5 port 5000 ..."}
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"error": "curl is not installed on the host"}

    def requires_command(self, url: str) -> str:
        return "curl"

    def command(self, url: str) -> str:
        accept = shlex.quote(f"Accept: {MANIFEST_MEDIA_TYPE}")
        return (
            "t=$(mktemp) || exit 0; "
            f'if curl -fsSL --max-time 60 -H {accept} -o "$t" {shlex.quote(url)} 2>"$t.err"; '
            'then echo "ok $(base64 -w0 "$t")"; '
            "else echo \"error $(tr '\\n' ' ' <\"$t.err\")\"; fi; "
            'rm -f "$t" "$t.err"'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        text = "\n".join(output).strip()
        kind, _, rest = text.partition(" ")
        if kind == "error":
            return {"error": rest.strip() or "the registry request failed"}
        if kind != "ok":
            return {"error": f"unexpected output: {text[:200]}"}
        try:
            raw = base64.b64decode(rest.strip(), validate=True)
            manifest = parse_manifest(raw)
        except (ManifestError, binascii.Error, ValueError) as exc:
            return {"error": f"unusable manifest: {exc}"}
        return {
            "digest": manifest.digest,
            "content": list(manifest.content),
            "blobs": [[blob.digest, blob.size] for blob in manifest.blobs],
            "size": manifest.size,
            "raw": rest.strip(),
        }


class PathChain(FactBase[list[dict[str, Any]]]):
    """
    Returns every directory from ``/`` down to ``path`` with its owner and mode, so that a
    store whose parent the service user cannot traverse is found before Ollama fails on it:

    .. code:: python

        [
            {"path": "/", "exists": True, "mode": 0o755, "user": "root", "group": "root"},
            {"path": "/srv", "exists": True, "mode": 0o700, "user": "root", "group": "root"},
            {"path": "/srv/models", "exists": False, "mode": None, "user": None, "group": None},
        ]
    """

    @staticmethod
    def default() -> list[dict[str, Any]]:
        return []

    def command(self, path: str) -> str:
        # the directories from the leaf up, named on the control host; one ``stat`` for those
        # that exist (a missing one is always deeper than one that exists): two processes in
        # all rather than two per directory
        levels = [path]
        while levels[-1] not in ("/", ""):
            levels.append(posixpath.dirname(levels[-1]))
        names = " ".join(shlex.quote(level) for level in levels if level)
        return (
            f"set --; for p in {names}; do "
            'if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; '
            'else echo "missing - - $p"; fi; done; '
            "[ $# -eq 0 ] || stat -c '%a %U %G %n' \"$@\" 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> list[dict[str, Any]]:
        chain = []
        for line in output:
            parts = line.strip().split(" ", 3)
            if len(parts) != 4:
                continue
            mode, user, group, path = parts
            if mode == "missing":
                chain.append(
                    {"path": path, "exists": False, "mode": None, "user": None, "group": None}
                )
                continue
            try:
                chain.append(
                    {
                        "path": path,
                        "exists": True,
                        "mode": int(mode, 8),
                        "user": user,
                        "group": group,
                    }
                )
            except ValueError:
                continue
        return list(reversed(chain))
