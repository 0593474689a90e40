"""The stand-in Ollama (and the product where it copies a fact) against every conformance record.

``records.toml`` lists each fact about real Ollama that the Ollama layer relies on, with the
versions and the source (file and commit of ollama/ollama). Every record has exactly one
check here, named by its id; a record without a check, or a check without a record, fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import ollama_release, settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DOUBLES = ROOT / "tests" / "doubles" / "ollama"
RECORDS = tomllib.loads((HERE / "records.toml").read_text(encoding="utf-8"))
SUPPORTED = (ollama_release.cve_floor(), ollama_release.newest_verified())


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


od = _load("conformance_ollama_double", DOUBLES / "ollama_double.py")
release = _load("conformance_ollama_release", DOUBLES / "release.py")
registry = _load("conformance_ollama_registry", DOUBLES / "registry.py")


@contextlib.contextmanager
def playing(version: str) -> Iterator[None]:
    """The in-process double behaves as ``version`` (its baked-in VERSION line)."""
    saved = od.VERSION
    od.VERSION = version
    try:
        yield
    finally:
        od.VERSION = saved


def _record(record_id: str) -> dict[str, Any]:
    (record,) = [r for r in RECORDS["record"] if r["id"] == record_id]
    return record


# --- checks, one per record id -----------------------------------------------------------------

CHECKS: dict[str, Callable[[dict[str, Any], Path], None]] = {}


def check(record_id: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        CHECKS[record_id] = fn
        return fn

    return register


@check("release.archive_name")
def _archive_name(record: dict[str, Any], tmp: Path) -> None:
    url = settings.defaults("ollama")["ollama_release_url"]
    for version, asset in record["expect"].items():
        assert release.archive_name(version) == asset, version
        product = ollama_release.resolve(version, "x86_64", url, allow_vulnerable=True)
        assert product.asset == asset, version


@check("release.members")
def _members(record: dict[str, Any], tmp: Path) -> None:
    expect = record["expect"]
    for version in ("0.13.5", "0.20.3", "0.29.0", "0.30.0", *SUPPORTED):
        names = [name for name, _, _ in release.members(version)]
        assert names[0] == expect["first"]
        assert set(expect["required"]) <= set(names)
        assert not [n for n in names if n.startswith(tuple(expect["forbidden_prefixes"]))]
        assert not {"bin", "bin/", "lib", "lib/", "lib/ollama", "lib/ollama/"} & set(names)
        has_server = "lib/ollama/llama-server" in names
        assert has_server == (od.version_tuple(version) >= od.version_tuple("0.30.0")), version
    # and the archive itself: owner 0, the same names
    built = release.build_release(tmp / "rel", SUPPORTED[0])
    raw = subprocess.run(
        ["zstd", "-dcq"], input=built.read_bytes(), capture_output=True, check=True
    ).stdout
    listing = subprocess.run(
        ["tar", "-tv", "--numeric-owner", "-f", "-"], input=raw, capture_output=True, check=True
    ).stdout.decode()
    assert all(" 0/0 " in line for line in listing.splitlines()), listing


@check("release.sha256sum")
def _sha256sum(record: dict[str, Any], tmp: Path) -> None:
    pattern = re.compile(record["expect"]["line"])
    for version in ("0.13.5", *SUPPORTED):
        folder = tmp / version
        archive = release.build_release(folder, version)
        text = (folder / "sha256sum.txt").read_text()
        assert all(pattern.match(line) for line in text.splitlines()), text
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert ollama_release.sums_line(text, archive.name) == sha


@check("release.install_sh")
def _install_sh(record: dict[str, Any], tmp: Path) -> None:
    # nothing copies install.sh; the docs say why the toolkit installs the archive itself
    docs = (ROOT / "docs" / "ollama.md").read_text()
    assert "install.sh" in docs and "sha256sum.txt" in docs


@check("store.manifest_path")
def _manifest_path(record: dict[str, Any], tmp: Path) -> None:
    store = od.Store(tmp / "models")
    assert store.manifest_root().name == record["expect"]["root"]
    name = od.parse_name("registry.ollama.ai/library/m:1")
    assert store.legacy_path(name) == tmp / "models/manifests/registry.ollama.ai/library/m/1"
    v2 = tmp / "models/manifests-v2/registry.ollama.ai/library/m/1"
    v2.parent.mkdir(parents=True)
    v2.write_text("{}")
    assert store.resolve(name) is None and store.manifests() == {}
    assert od.parse_name("ollama.com/library/m:1").key() != name.key()
    assert od.parse_name("REGISTRY.ollama.ai/library/M:1").key() == name.key()


@check("store.prune_at_start")
def _prune(record: dict[str, Any], tmp: Path) -> None:
    grace_from = record["expect"]["grace_from"]
    old = time.time() - record["expect"]["grace_s"] - 60
    cases = (("0.20.3", False), ("0.20.7", False), (grace_from, True), ("0.32.15", True))
    for version, grace in cases:
        store = od.Store(tmp / version)
        blobs = store.blobs
        fresh = [blobs / ("sha256-" + "b" * 64), blobs / ("sha256-" + "c" * 64 + "-partial")]
        stale = [blobs / ("sha256-" + "d" * 64), blobs / ("sha256-" + "e" * 64 + "-partial-0")]
        outside = tmp / version / ".provisioner-tmp" / ("sha256-" + "f" * 64)
        outside.parent.mkdir()
        for path in (*fresh, *stale, outside):
            path.write_bytes(b"x")
        for path in stale:
            os.utime(path, (old, old))
        with playing(version):
            store.prune_layers()
        assert [p.exists() for p in fresh] == [grace, grace], version
        assert not any(p.exists() for p in stale), version
        assert outside.exists()  # only blobs/ is pruned


@check("store.manifest_bytes")
def _manifest_bytes(record: dict[str, Any], tmp: Path) -> None:
    model = registry.build_model("conformance")
    pretty = json.dumps(json.loads(model.manifest), indent=2).encode()
    name = od.parse_name("10.0.0.5:5000/library/m:1")
    raw_from = od.version_tuple(record["expect"]["raw_from"])
    for version in ("0.17.7", record["expect"]["raw_from"], *SUPPORTED):
        store = od.Store(tmp / version)
        with playing(version):
            store.write_manifest(name, pretty)
        stored = store.legacy_path(name).read_bytes()
        if od.version_tuple(version) >= raw_from:
            assert stored == pretty, version
        else:
            assert stored != pretty and json.loads(stored) == json.loads(pretty)
            assert list(json.loads(stored)) == ["schemaVersion", "mediaType", "config", "layers"]
            assert b" " not in stored and b"\n" not in stored


@check("context.precedence")
def _precedence(record: dict[str, Any], tmp: Path) -> None:
    for version in SUPPORTED:
        with playing(version):
            for case in record["expect"]["cases"]:
                default = case["env"] or od.vram_default_ctx(0)
                model = {"num_ctx": case["model"]} if case["model"] else {}
                request = {"num_ctx": case["request"]} if case["request"] else {}
                assert od.effective_num_ctx(request, model, default) == case["want"], case
            assert od.effective_num_ctx({"num_ctx": 1}, {}, 8192) == 4


@check("context.default")
def _default(record: dict[str, Any], tmp: Path) -> None:
    gib = 1024**3
    with playing("0.15.4"):
        assert od.vram_default_ctx(80 * gib) == 4096
    for version in (record["expect"]["tiers_from"], *SUPPORTED):
        with playing(version):
            for case in record["expect"]["cases"]:
                assert od.vram_default_ctx(case["vram_gib"] * gib) == case["want"], (version, case)


# --- checks against a running stand-in -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture(scope="module", params=SUPPORTED)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The stand-in of each end of the supported range, serving one model."""
    version = request.param
    tmp = tmp_path_factory.mktemp(f"served-{version}")
    program = release.install_program(tmp / "bin" / "ollama", version)
    models = tmp / "models"
    model = registry.build_model("served")
    trained = _record("context.trained_cap")["expect"]["trained"]
    short = registry.build_model("short", context_length=trained)  # a small trained context
    (models / "blobs").mkdir(parents=True)
    for name, built in (("m", model), ("short", short)):
        manifest = models / "manifests" / "registry.ollama.ai" / "library" / name / "1"
        manifest.parent.mkdir(parents=True)
        manifest.write_bytes(built.manifest)
        for digest, data in built.blobs.items():
            (models / "blobs" / digest.replace(":", "-")).write_bytes(data)
    port = _free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models),
        "OLLAMA_CONTEXT_LENGTH": "8192",
        "OLLAMA_DOUBLE_RETRY_SCALE": "0.001",  # not Ollama's: shortens the double's retries
    }
    with (tmp / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(program), "serve"], env=env, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.1)
    yield version, port
    proc.terminate()
    proc.wait(timeout=10)


@check("api.ps_fields")
def _ps_fields(record: dict[str, Any], served: tuple[str, int]) -> None:
    _, port = served
    load = {"model": "m:1", "prompt": "", "stream": False}
    status, _ = _call(port, "POST", "/api/generate", load)
    assert status == 200
    status, body = _call(port, "GET", "/api/ps")
    (loaded,) = [m for m in body["models"] if m["name"] == "m:1"]
    assert list(loaded) == record["expect"]["fields"]
    assert loaded["context_length"] == 8192


@check("context.trained_cap")
def _trained_cap(record: dict[str, Any], served: tuple[str, int]) -> None:
    _, port = served
    expect = record["expect"]
    for case in expect["cases"]:
        options = {"num_ctx": case["request"]}
        load = {"model": "short:1", "prompt": "", "stream": False, "options": options}
        status, _ = _call(port, "POST", "/api/generate", load)
        assert status == 200
        status, body = _call(port, "GET", "/api/ps")
        (loaded,) = [m for m in body["models"] if m["name"] == "short:1"]
        assert loaded["context_length"] == case["want"], case


@check("api.not_found")
def _not_found(record: dict[str, Any], served: tuple[str, int]) -> None:
    _, port = served
    expect = record["expect"]
    routes = (("DELETE", "/api/delete"), ("POST", "/api/show"), ("POST", "/api/generate"))
    for method, path in routes:
        status, body = _call(port, method, path, {"model": "nope"})
        assert (status, body) == (expect["status"], {"error": expect["error"].format(name="nope")})


@check("api.version")
def _version(record: dict[str, Any], served: tuple[str, int]) -> None:
    version, port = served
    assert _call(port, "GET", "/api/version") == (200, {"version": version})


@check("security.transfer_digest")
def _transfer_digest(record: dict[str, Any], tmp: Path) -> None:
    (cve,) = [c for c in ollama_release.known_cves() if c.id == "CVE-2026-7020"]
    assert "#17178" in cve.source and "place" in cve.note
    helper = (ROOT / "src/provisioner/templates/ollama/ollama-fetch-model.sh").read_text()
    assert '*[!0-9a-f]*) fail "bad digest' in helper  # place checks every digest's form


@check("api.pull_stream")
def _pull_stream(record: dict[str, Any], served: tuple[str, int]) -> None:
    _, port = served
    body = json.dumps({"model": f"127.0.0.1:{_free_port()}/library/x:1", "insecure": True})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/pull", data=body.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        lines = [json.loads(line) for line in answer.read().splitlines() if line.strip()]
    assert lines[0] == {"status": record["expect"]["first"]}
    assert list(lines[-1]) == ["error"] and "connection refused" in lines[-1]["error"]


SERVED = {
    "api.ps_fields",
    "api.not_found",
    "api.version",
    "api.pull_stream",
    "context.trained_cap",
}


# --- the tests -----------------------------------------------------------------------------------


def test_every_record_is_complete_and_has_one_check():
    ids = [r["id"] for r in RECORDS["record"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(CHECKS)
    for record in RECORDS["record"]:
        for key in ("fact", "versions", "source", "commits", "expect", "used_by"):
            assert key in record, (record["id"], key)
        assert record["versions"] in ("*", "all"), record["id"]
        assert record["commits"], record["id"]
        for tag in record["commits"]:
            assert re.fullmatch(r"[0-9a-f]{40}", RECORDS["tags"][tag]), (record["id"], tag)


def test_the_records_cover_the_supported_range():
    # the range in the product's table is the range the records were read at
    read_at = {tag.lstrip("v") for r in RECORDS["record"] for tag in r["commits"]}
    assert set(SUPPORTED) <= read_at


@pytest.mark.parametrize(
    "record_id", sorted(i for i in (r["id"] for r in RECORDS["record"]) if i not in SERVED)
)
def test_the_stand_in_follows_the_record(record_id: str, tmp_path: Path) -> None:
    CHECKS[record_id](_record(record_id), tmp_path)


@pytest.mark.parametrize("record_id", sorted(SERVED))
def test_the_running_stand_in_follows_the_record(record_id: str, served: tuple[str, int]) -> None:
    CHECKS[record_id](_record(record_id), served)
