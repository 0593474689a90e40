"""``OllamaModels`` reads every manifest of a store with one ``head -v`` (the real head and
shell here): the same models, digests and errors as reading each file alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from provisioner.facts.ollama import OllamaModels, split_head_output

BLOB = "sha256:" + "a" * 64
CONFIG = "sha256:" + "b" * 64


def _manifest(indent: int | None = None) -> bytes:
    data = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": CONFIG, "size": 3},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": BLOB,
                    "size": 5}],
    }  # fmt: skip
    return json.dumps(data, indent=indent).encode()


def _read(store: Path) -> dict:
    command = OllamaModels().command(str(store))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return OllamaModels().process(out.stdout.splitlines())


def _write(store: Path, path: str, content: bytes) -> None:
    (store / path).parent.mkdir(parents=True, exist_ok=True)
    (store / path).write_bytes(content)


def test_every_manifest_is_read_with_its_exact_digest(tmp_path: Path):
    store = tmp_path / "models"
    compact, pretty = _manifest(), _manifest(indent=2) + b"\n"
    _write(store, "manifests/registry.ollama.ai/library/a/1b", compact)
    _write(store, "manifests/10.0.0.5:5000/library/b/latest", pretty)
    _write(store, "manifests/registry.ollama.ai/library/broken/x", b"not json\n==> y <==\n")
    _write(store, "manifests/registry.ollama.ai/library/empty/x", b"")
    _write(store, "blobs/sha256-" + "a" * 64, b"12345")
    _write(store, "blobs/sha256-" + "b" * 64, b"123")
    models = _read(store)
    assert models["a:1b"]["digest"] == "sha256:" + hashlib.sha256(compact).hexdigest()
    assert models["10.0.0.5:5000/library/b:latest"]["digest"] == (
        "sha256:" + hashlib.sha256(pretty).hexdigest()
    )
    assert models["a:1b"]["complete"] and models["10.0.0.5:5000/library/b:latest"]["complete"]
    assert "error" in models["broken:x"] and "error" in models["empty:x"]
    assert set(models) == {"a:1b", "10.0.0.5:5000/library/b:latest", "broken:x", "empty:x"}


def test_a_store_without_manifests_or_without_a_folder(tmp_path: Path):
    assert _read(tmp_path / "absent") == {}
    (tmp_path / "models" / "manifests").mkdir(parents=True)
    (tmp_path / "blobs").mkdir()  # a blobs/ outside the store is not read
    (tmp_path / "blobs" / ("sha256-" + "a" * 64)).write_bytes(b"x")
    assert _read(tmp_path / "models") == {}


def test_a_header_in_quotes_is_read_as_the_name():
    # coreutils 9.12 quotes a name with ':' (records.toml, head.verbose_headers)
    data = b"==> 'manifests/10.0.0.5:5000/library/b/latest' <==\n{}\n==> plain <==\n{\"x\":1}"
    assert split_head_output(data) == [
        ("manifests/10.0.0.5:5000/library/b/latest", b"{}"),
        ("plain", b'{"x":1}'),
    ]


@pytest.mark.parametrize("data", [b"{}", b"==> no end of header"])
def test_output_that_is_not_head_s_is_refused(data: bytes):
    with pytest.raises(ValueError):
        split_head_output(data)
