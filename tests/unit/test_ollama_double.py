"""The stand-in Ollama (tests/doubles/ollama/): server API, pulls, store, client, release, pushes.

Everything runs on loopback: the double as a subprocess on a free port with its own model
store, an in-process Docker v2 registry whose blob answers can be switched between the
behaviours real registries show, and (when Debian's docker-registry is installed) the real
CNCF Distribution registry.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"
VERSION = "0.32.15"
# The interpreter that runs the double (lab hosts have Debian's python3: 3.11 or 3.13).
PYTHON = os.environ.get("OLLAMA_DOUBLE_PYTHON", sys.executable)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


od = _load("ollama_double", DOUBLES / "ollama" / "ollama_double.py")
release = _load("ollama_release", DOUBLES / "ollama" / "release.py")
registry = _load("ollama_registry", DOUBLES / "ollama" / "registry.py")
nvidia_smi = _load("nvidia_smi_double", DOUBLES / "nvidia_smi.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.body.splitlines() if x.strip()]


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# an in-process Docker v2 registry with switchable blob behaviour
# --------------------------------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A threaded loopback server that does not print a traceback when a client hangs up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeRegistry:
    """Serves manifests and blobs. ``mode`` picks what a blob GET answers:

    * ``redirect``: 307 to ``localhost`` (another hostname), as object-storage back ends do
    * ``same-host-redirect``: 307 to the same hostname, whose target answers a plain 200
    * ``plain``: 200 with the blob and no Location (CNCF Distribution, filesystem storage)
    * ``location``: 200 with the blob and ``Location`` naming the request path
    """

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.mode = "redirect"
        self.corrupt: set[str] = set()
        self.cut: dict[str, list[int]] = {}  # digest -> [bytes per answer, answers left]
        self.requests: list[tuple[str, str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                outer.handle(self)

            do_GET = do_HEAD

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, repo: str, tag: str, model: Any) -> None:
        self.manifests[(repo, tag)] = model.manifest
        self.blobs.update(model.blobs)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append((h.command, h.path, h.headers.get("Range") or ""))
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", h.path)
        if h.path.startswith("/_data/"):
            self.send_blob(h, h.path[len("/_data/") :], location=None)
        elif m and m.group(2) == "manifests":
            data = self.manifests.get((m.group(1), m.group(3)))
            if data is None:
                self.send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', {})
            else:
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                ctype = "application/vnd.docker.distribution.manifest.v2+json"
                self.send(h, 200, data, {"Content-Type": ctype, "Docker-Content-Digest": digest})
        elif m:
            digest = m.group(3)
            if digest not in self.blobs:
                self.send(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', {})
            elif h.command == "HEAD":
                self.send(h, 200, self.blobs[digest], {"Docker-Content-Digest": digest})
            elif self.mode == "redirect" and not h.headers.get("Range"):
                target = f"http://localhost:{self.port}/_data/{digest}"
                self.send(h, 307, b"", {"Location": target})
            elif self.mode == "same-host-redirect" and not h.headers.get("Range"):
                target = f"http://127.0.0.1:{self.port}/_data/{digest}"
                self.send(h, 307, b"", {"Location": target})
            else:
                self.send_blob(h, digest, location=h.path if self.mode == "location" else None)
        else:
            self.send(h, 404, b"404 page not found", {})

    def send_blob(self, h: BaseHTTPRequestHandler, digest: str, location: str | None) -> None:
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        headers = {"Location": location} if location else {}
        rng = re.fullmatch(r"bytes=(\d+)-(\d+)", h.headers.get("Range") or "")
        status = 200
        if rng:
            start, end = int(rng.group(1)), int(rng.group(2))
            data = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(self.blobs[digest])}"
        cut = self.cut.get(digest)
        if rng and cut and cut[1] > 0:
            cut[1] -= 1
            h.send_response(status)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: cut[0]])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send(h, status, data, headers)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            try:
                h.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                h.close_connection = True


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    yield reg
    reg.close()


# --------------------------------------------------------------------------------------------
# the double as a subprocess
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release.install_program(tmp_path_factory.mktemp("dist") / "bin" / "ollama", VERSION)


@dataclass
class Double:
    port: int
    models: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        return call(self.port, method, path, body)

    def pull(self, model: str, **extra: Any) -> Reply:
        return self.call("POST", "/api/pull", {"model": model, **extra})

    def cli(self, program: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(program), *args], env=self.env, capture_output=True, text=True, timeout=60
        )


StartDouble = Callable[..., Double]


@pytest.fixture
def start_double(program: Path, tmp_path: Path) -> Iterator[StartDouble]:
    started: list[subprocess.Popen[bytes]] = []

    def start(
        models: Path | None = None,
        gpu_path: Path | None = None,
        version: str | None = None,
        **env: str,
    ) -> Double:
        """Serve ``models``; ``version``: play that release instead of VERSION."""
        models = models or tmp_path / f"models{len(started)}"
        binary = program
        if version is not None:
            binary = release.install_program(
                tmp_path / f"dist-{version}" / "bin" / "ollama", version
            )
        port = free_port()
        path_dirs = [str(gpu_path)] if gpu_path else []
        path_dirs += [str(Path(PYTHON).parent), "/usr/bin", "/bin"]
        full_env = {
            "PATH": os.pathsep.join(path_dirs),
            "HOME": str(tmp_path),
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(models),
            "OLLAMA_DOUBLE_RETRY_SCALE": "0.001",
            **env,
        }
        log = tmp_path / f"serve{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, str(binary), "serve"], env=full_env, stdout=out, stderr=out
            )
        started.append(proc)
        wait_port(port, proc)
        return Double(port, models, proc, full_env, log)

    yield start
    for proc in started:
        stop(proc)


def place_model(models: Path, name: tuple[str, str, str, str], model: Any) -> None:
    """The offline copy: a manifest under manifests/<host>/<ns>/<model>/<tag> plus its blobs."""
    path = models.joinpath("manifests", *name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.manifest)
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    for digest, data in model.blobs.items():
        (models / "blobs" / digest.replace(":", "-")).write_bytes(data)


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    return [x.get("status") or f"error: {x.get('error')}" for x in lines]


# --------------------------------------------------------------------------------------------
# pure functions: names, OLLAMA_HOST, durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("0.0.0.0:8080", "http://0.0.0.0:8080"),
        ("http://10.0.0.5:11434", "http://10.0.0.5:11434"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ('"127.0.0.1:9999"', "http://127.0.0.1:9999"),
        ("[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_parsed_like_envconfig(value: str, expected: str) -> None:
    assert od.parse_host(value).url() == expected


@pytest.mark.parametrize(
    ("raw", "full", "short"),
    [
        ("qwen2.5-coder:14b", "registry.ollama.ai/library/qwen2.5-coder:14b", "qwen2.5-coder:14b"),
        ("llama3", "registry.ollama.ai/library/llama3:latest", "llama3:latest"),
        ("me/mine:1", "registry.ollama.ai/me/mine:1", "me/mine:1"),
        ("reg:5000/library/m:7b", "reg:5000/library/m:7b", "reg:5000/library/m:7b"),
        ("http://10.0.0.1:5000/ns/m", "10.0.0.1:5000/ns/m:latest", "10.0.0.1:5000/ns/m:latest"),
    ],
)
def test_model_names_follow_the_real_grammar(raw: str, full: str, short: str) -> None:
    name = od.parse_name(raw)
    assert name is not None
    assert name.full() == full
    assert name.display_shortest() == short
    assert name.scheme == ("http" if raw.startswith("http://") else "https")


@pytest.mark.parametrize("raw", ["", "a/b/c/d", "bad name", "x:", "ns./m"])
def test_invalid_model_names_are_rejected(raw: str) -> None:
    assert od.parse_name(raw) is None


def test_durations_and_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert od.parse_go_duration("1h30m") == 5400 * 10**9
    assert od.parse_go_duration("300ms") == 300 * 10**6
    assert od.parse_go_duration("5") is None
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "-1")
    assert od.keep_alive_default_ns() == od.FOREVER_NS
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "120")
    assert od.keep_alive_default_ns() == 120 * 10**9
    assert od.request_keep_alive_ns("10m") == 600 * 10**9
    assert od.request_keep_alive_ns(0) == 0
    assert od.request_keep_alive_ns(-5) == od.FOREVER_NS


# --------------------------------------------------------------------------------------------
# server basics
# --------------------------------------------------------------------------------------------


def test_root_version_and_routing(start_double: StartDouble) -> None:
    d = start_double()
    root = d.call("GET", "/")
    assert (root.status, root.body) == (200, b"Ollama is running")
    assert d.call("HEAD", "/").status == 200
    assert d.call("GET", "/api/version").json() == {"version": VERSION}
    missing = d.call("GET", "/api/nothing")
    assert (missing.status, missing.body) == (404, b"404 page not found")
    assert d.call("GET", "/api/pull").status == 405
    assert d.call("GET", "/api/tags").json() == {"models": []}
    bad = d.call("POST", "/api/pull")
    assert (bad.status, bad.json()) == (400, {"error": "missing request body"})
    assert d.call("POST", "/api/pull", {"model": "a/b/c/d"}).json() == {
        "error": "invalid model name"
    }
    assert "Listening on 127.0.0.1:" in d.log.read_text()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:11434", 200),
        ("10.1.2.3", 200),
        ("gpu1.lab.internal", 200),
        ("ollama.example.com", 403),
        ("169.254.100.2:11434", 403),
    ],
)
def test_a_loopback_listener_refuses_foreign_host_headers(
    start_double: StartDouble, host: str, status: int
) -> None:
    d = start_double()
    assert call(d.port, "GET", "/api/version", headers={"Host": host}).status == status


def test_client_version_talks_to_the_server(start_double: StartDouble, program: Path) -> None:
    d = start_double()
    out = d.cli(program, "--version")
    assert (out.returncode, out.stdout) == (0, f"ollama version is {VERSION}\n")
    stop(d.proc)
    out = d.cli(program, "-v")
    assert out.stdout == (
        f"Warning: could not connect to a running Ollama instance\n"
        f"Warning: client version is {VERSION}\n"
    )


# --------------------------------------------------------------------------------------------
# pulls over the Docker v2 protocol
# --------------------------------------------------------------------------------------------


def test_pull_follows_a_307_and_writes_the_real_store(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    model = registry.build_model("seed-a")
    fake_registry.add("library/tiny", "1", model)
    d = start_double()
    name = f"{fake_registry.host}/library/tiny:1"
    reply = d.pull(name, insecure=True)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    lines = reply.lines()
    steps = [s for s in statuses(lines) if not s.startswith("pulling ") or s == "pulling manifest"]
    assert steps == ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
    manifest = json.loads(model.manifest)
    for layer in [*manifest["layers"], manifest["config"]]:
        done = [x for x in lines if x.get("digest") == layer["digest"]]
        assert done[-1] == {
            "status": f"pulling {layer['digest'][7:19]}",
            "digest": layer["digest"],
            "total": layer["size"],
            "completed": layer["size"],
        }
        blob = d.models / "blobs" / layer["digest"].replace(":", "-")
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]
    stored = d.models / "manifests" / fake_registry.host / "library" / "tiny" / "1"
    assert stored.read_bytes() == model.manifest
    assert not [p for p in (d.models / "blobs").iterdir() if "partial" in p.name]
    weights = manifest["layers"][0]["digest"]
    blob_requests = [r for r in fake_registry.requests if r[1].endswith(weights)]
    assert blob_requests == [  # the client stops at the 307 to another host, then fetches there
        ("HEAD", f"/v2/library/tiny/blobs/{weights}", ""),
        ("GET", f"/v2/library/tiny/blobs/{weights}", ""),
        ("GET", f"/_data/{weights}", "bytes=0-4095"),
    ]

    (entry,) = d.call("GET", "/api/tags").json()["models"]
    assert entry["name"] == entry["model"] == name
    assert entry["digest"] == model.digest.removeprefix("sha256:")
    assert entry["size"] == sum(x["size"] for x in [*manifest["layers"], manifest["config"]])
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "494.03M",
        "quantization_level": "Q4_K_M",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)", entry["modified_at"])

    again = d.pull(name, insecure=True, stream=False)
    assert (again.status, again.json()) == (200, {"status": "success"})


@pytest.mark.parametrize("mode", ["plain", "same-host-redirect"])
def test_a_200_blob_answer_without_location_fails_like_the_real_client(
    start_double: StartDouble, fake_registry: FakeRegistry, mode: str
) -> None:
    fake_registry.add("library/tiny", "1", registry.build_model("seed-a"))
    fake_registry.mode = mode
    d = start_double()
    reply = d.pull(f"{fake_registry.host}/library/tiny:1", insecure=True)
    assert reply.status == 200
    assert reply.lines() == [
        {"status": "pulling manifest"},
        {"error": "http: no Location header in response"},
    ]
    assert not (d.models / "manifests" / fake_registry.host).exists()
    assert d.call("GET", "/api/tags").json() == {"models": []}


def test_a_200_blob_answer_with_location_works(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    model = registry.build_model("seed-a")
    fake_registry.add("library/tiny", "1", model)
    fake_registry.mode = "location"
    d = start_double()
    reply = d.pull(f"{fake_registry.host}/library/tiny:1", insecure=True)
    assert reply.lines()[-1] == {"status": "success"}
    digest = json.loads(model.manifest)["layers"][0]["digest"]
    ranged = [r for r in fake_registry.requests if r[1].endswith(digest) and r[2]]
    assert ranged == [("GET", f"/v2/library/tiny/blobs/{digest}", "bytes=0-4095")]


def test_plain_http_needs_insecure(start_double: StartDouble, fake_registry: FakeRegistry) -> None:
    fake_registry.add("library/tiny", "1", registry.build_model("seed-a"))
    d = start_double()
    https_error = {
        "error": f'pull model manifest: Get "https://{fake_registry.host}/v2/library/tiny/'
        'manifests/1": http: server gave HTTP response to HTTPS client'
    }
    # the API re-parses the name without its scheme: http:// alone does not select http
    for name in (
        f"http://{fake_registry.host}/library/tiny:1",
        f"{fake_registry.host}/library/tiny:1",
    ):
        reply = d.pull(name)
        assert reply.status == 200
        assert reply.lines() == [{"status": "pulling manifest"}, https_error]
    ok = d.pull(f"http://{fake_registry.host}/library/tiny:1", insecure=True, stream=False)
    assert ok.json() == {"status": "success"}
    assert [m["name"] for m in d.call("GET", "/api/tags").json()["models"]] == [
        f"{fake_registry.host}/library/tiny:1"
    ]


def test_errors_mid_stream_arrive_as_error_lines(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    model = registry.build_model("seed-a")
    fake_registry.add("library/tiny", "1", model)
    d = start_double()
    missing = d.pull(f"{fake_registry.host}/library/none:1", insecure=True)
    assert missing.status == 200
    assert missing.lines() == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    not_streamed = d.pull(f"{fake_registry.host}/library/none:1", insecure=True, stream=False)
    assert (not_streamed.status, not_streamed.json()) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    port = free_port()
    refused = d.pull(f"127.0.0.1:{port}/library/tiny:1", insecure=True).lines()[-1]
    assert refused == {
        "error": f'pull model manifest: Get "http://127.0.0.1:{port}/v2/library/tiny/manifests/1"'
        f": dial tcp 127.0.0.1:{port}: connect: connection refused"
    }


def test_a_blob_whose_sha256_differs_is_refused_and_removed(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    model = registry.build_model("seed-a")
    fake_registry.add("library/tiny", "1", model)
    digest = json.loads(model.manifest)["layers"][1]["digest"]
    fake_registry.corrupt.add(digest)
    d = start_double()
    lines = d.pull(f"{fake_registry.host}/library/tiny:1", insecure=True).lines()
    assert statuses(lines)[-2] == "verifying sha256 digest"
    bad = bytes(b ^ 0xFF for b in model.blobs[digest])
    got = "sha256:" + hashlib.sha256(bad).hexdigest()
    assert lines[-1] == {
        "error": f"digest mismatch, file must be downloaded again: want {digest}, got {got}"
    }
    assert not (d.models / "blobs" / digest.replace(":", "-")).exists()
    assert d.call("GET", "/api/tags").json() == {"models": []}


def test_an_interrupted_pull_resumes_with_range(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    size = 64 * 1024
    model = registry.build_model("seed-big", size)
    fake_registry.add("library/big", "1", model)
    digest = json.loads(model.manifest)["layers"][0]["digest"]
    fake_registry.cut[digest] = [1000, 6]  # six answers cut after 1000 bytes each
    d = start_double()
    name = f"{fake_registry.host}/library/big:1"
    first = d.pull(name, insecure=True).lines()
    assert first[-1] == {"error": "max retries exceeded: unexpected EOF"}
    blob = d.models / "blobs" / digest.replace(":", "-")
    part = json.loads(Path(f"{blob}-partial-0").read_bytes())
    assert part == {"N": 0, "Offset": 0, "Size": size, "Completed": 6000}
    assert Path(f"{blob}-partial").stat().st_size == size

    before = len(fake_registry.requests)
    second = d.pull(name, insecure=True).lines()
    assert second[-1] == {"status": "success"}
    ranges = [r[2] for r in fake_registry.requests[before:] if r[1].endswith(digest) and r[2]]
    assert ranges == [f"bytes=6000-{size - 1}"]
    assert blob.read_bytes() == model.blobs[digest]
    assert not Path(f"{blob}-partial").exists() and not Path(f"{blob}-partial-0").exists()


def test_repull_of_a_changed_tag_drops_the_old_layers(
    start_double: StartDouble, fake_registry: FakeRegistry
) -> None:
    old, new = registry.build_model("seed-a"), registry.build_model("seed-b")
    fake_registry.add("library/tiny", "1", old)
    d = start_double()
    name = f"{fake_registry.host}/library/tiny:1"
    d.pull(name, insecure=True)
    fake_registry.add("library/tiny", "1", new)
    lines = d.pull(name, insecure=True).lines()
    assert statuses(lines)[-2:] == ["removing unused layers", "success"]
    (entry,) = d.call("GET", "/api/tags").json()["models"]
    assert entry["digest"] == new.digest.removeprefix("sha256:")
    old_weights = json.loads(old.manifest)["layers"][0]["digest"]
    assert not (d.models / "blobs" / old_weights.replace(":", "-")).exists()


# --------------------------------------------------------------------------------------------
# the store: prune at start, delete, copy, show
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noprune", [False, True])
def test_start_prunes_unreferenced_blobs_and_partials(
    start_double: StartDouble, tmp_path: Path, noprune: bool
) -> None:
    models = tmp_path / "store"
    model = registry.build_model("kept")
    place_model(models, ("registry.ollama.ai", "library", "kept", "1"), model)
    blobs = models / "blobs"
    old = time.time() - 2 * 3600
    files = {
        "orphan-old": blobs / ("sha256-" + "a" * 64),
        "orphan-new": blobs / ("sha256-" + "b" * 64),
        "partial-old": blobs / ("sha256-" + "c" * 64 + "-partial"),
        "part-old": blobs / ("sha256-" + "c" * 64 + "-partial-0"),
        "partial-new": blobs / ("sha256-" + "d" * 64 + "-partial"),
    }
    for key, path in files.items():
        path.write_bytes(b"x")
        if key.endswith("old"):
            os.utime(path, (old, old))
    for digest in model.blobs:
        os.utime(blobs / digest.replace(":", "-"), (old, old))
    empty = models / "manifests" / "gone.example" / "ns" / "m"
    empty.mkdir(parents=True)

    d = start_double(models, **({"OLLAMA_NOPRUNE": "1"} if noprune else {}))
    left = {key for key, path in files.items() if path.exists()}
    if noprune:
        assert left == set(files)
        assert empty.exists()
    else:
        assert left == {"orphan-new", "partial-new"}
        assert not (models / "manifests" / "gone.example").exists()
        assert "total unused blobs removed: 1" in d.log.read_text()
    assert all((blobs / x.replace(":", "-")).exists() for x in model.blobs)
    (entry,) = d.call("GET", "/api/tags").json()["models"]
    assert entry["name"] == "kept:1"


def test_no_release_reads_a_manifests_v2_tree(start_double: StartDouble, tmp_path: Path) -> None:
    """manifest/paths.go (v0.20.3 .. v0.32.15): manifests/ is the only manifest tree."""
    models = tmp_path / "store"
    model = registry.build_model("v2")
    place_model(models, ("registry.ollama.ai", "library", "m", "1"), model)
    (models / "manifests").rename(models / "manifests-v2")
    d = start_double(models, OLLAMA_NOPRUNE="1")
    assert d.call("GET", "/api/tags").json() == {"models": []}


@pytest.mark.parametrize(("version", "grace"), [("0.20.3", False), ("0.21.0", True)])
def test_prune_at_start_has_a_grace_period_only_from_0_21(
    start_double: StartDouble, tmp_path: Path, version: str, grace: bool
) -> None:
    """images.go PruneLayers: before v0.21.0 a restart deletes every partial download and every
    unreferenced blob, however fresh; from v0.21.0 only those older than an hour."""
    models = tmp_path / "store"
    place_model(models, ("registry.ollama.ai", "library", "kept", "1"), registry.build_model("k"))
    blobs = models / "blobs"
    fresh = {
        "orphan": blobs / ("sha256-" + "b" * 64),
        "partial": blobs / ("sha256-" + "d" * 64 + "-partial"),
        "part": blobs / ("sha256-" + "d" * 64 + "-partial-0"),
    }
    for path in fresh.values():
        path.write_bytes(b"x")
    start_double(models, version=version)
    left = {key for key, path in fresh.items() if path.exists()}
    assert left == (set(fresh) if grace else set())


@pytest.mark.parametrize(("version", "raw"), [("0.17.1", False), ("0.19.0", True), (VERSION, True)])
def test_the_stored_manifest_is_the_registrys_bytes_only_from_0_19(
    start_double: StartDouble, fake_registry: FakeRegistry, version: str, raw: bool
) -> None:
    """images.go PullModel: json.Marshal(mf) before v0.19.0, os.WriteFile(manifestData) from
    it; /api/tags shows the sha256 of the stored file."""
    built = registry.build_model("bytes")
    # bytes as another pushing tool writes them (indented): Go's Marshal would not
    pretty = json.dumps(json.loads(built.manifest), indent=3).encode()
    model = registry.Model(pretty, built.blobs)
    fake_registry.add("library/tiny", "1", model)
    d = start_double(version=version)
    name = f"{fake_registry.host}/library/tiny:1"
    assert d.pull(name, insecure=True).lines()[-1] == {"status": "success"}
    (entry,) = d.call("GET", "/api/tags").json()["models"]
    assert (entry["digest"] == model.digest.removeprefix("sha256:")) is raw
    stored = d.models.joinpath("manifests", fake_registry.host, "library", "tiny", "1").read_bytes()
    assert json.loads(stored) == json.loads(model.manifest)
    if not raw:
        assert stored.startswith(b'{"schemaVersion":2,"mediaType":')


@pytest.mark.parametrize(
    ("env", "params", "request_ctx", "want"),
    [
        ({}, None, None, 4096),  # no GPU: the VRAM tier's 4096
        ({"OLLAMA_CONTEXT_LENGTH": "8192"}, None, None, 8192),
        ({"OLLAMA_CONTEXT_LENGTH": "8192"}, 16384, None, 16384),  # the model's params win
        ({"OLLAMA_CONTEXT_LENGTH": "8192"}, 16384, 2048, 2048),  # the request wins over both
        # above the trained context (32768 here): capped (llm/server.go, "requested context size
        # too large for model"; not re-checked against a tagged commit this round)
        ({"OLLAMA_CONTEXT_LENGTH": "8192"}, None, 65536, 32768),
    ],
)
def test_context_precedence_is_request_then_model_then_server(
    start_double: StartDouble,
    tmp_path: Path,
    env: dict[str, str],
    params: int | None,
    request_ctx: int | None,
    want: int,
) -> None:
    """routes.go modelOptions: DefaultOptions (OLLAMA_CONTEXT_LENGTH or the VRAM default),
    then the params layer, then the request's options; /api/ps reports the result."""
    models = tmp_path / "store"
    model = registry.build_model("ctx", num_ctx=params)
    place_model(models, ("registry.ollama.ai", "library", "m", "1"), model)
    d = start_double(models, **env)
    body: dict[str, Any] = {"model": "m:1", "prompt": "hi", "stream": False}
    if request_ctx is not None:
        body["options"] = {"num_ctx": request_ctx}
    assert d.call("POST", "/api/generate", body).status == 200
    (ps,) = d.call("GET", "/api/ps").json()["models"]
    assert ps["context_length"] == want


def test_delete_removes_the_manifest_and_blobs_nothing_else_uses(
    start_double: StartDouble, tmp_path: Path
) -> None:
    models = tmp_path / "store"
    model = registry.build_model("a")
    place_model(models, ("registry.ollama.ai", "library", "a", "1"), model)
    d = start_double(models)
    assert d.call("POST", "/api/copy", {"source": "a:1", "destination": "alias"}).status == 200
    assert d.call("DELETE", "/api/delete", {"model": "a:1"}).status == 200
    assert all((models / "blobs" / x.replace(":", "-")).exists() for x in model.blobs)
    assert [m["name"] for m in d.call("GET", "/api/tags").json()["models"]] == ["alias:latest"]
    assert d.call("DELETE", "/api/delete", {"model": "alias"}).status == 200
    assert list((models / "blobs").iterdir()) == []
    gone = d.call("DELETE", "/api/delete", {"model": "alias"})
    assert (gone.status, gone.json()) == (404, {"error": "model 'alias' not found"})


def test_copy_gives_an_alias_with_the_same_digest(
    start_double: StartDouble, tmp_path: Path
) -> None:
    models = tmp_path / "store"
    model = registry.build_model("a")
    place_model(models, ("10.0.0.9:5000", "library", "qwen2.5-coder", "14b"), model)
    d = start_double(models)
    src = "10.0.0.9:5000/library/qwen2.5-coder:14b"
    ok = d.call("POST", "/api/copy", {"source": src, "destination": "qwen2.5-coder:14b"})
    assert (ok.status, ok.body) == (200, b"")
    tags = {m["name"]: m["digest"] for m in d.call("GET", "/api/tags").json()["models"]}
    assert tags == {src: model.digest[7:], "qwen2.5-coder:14b": model.digest[7:]}
    assert (models / "manifests/registry.ollama.ai/library/qwen2.5-coder/14b").is_file()
    missing = d.call("POST", "/api/copy", {"source": "nope:1", "destination": "x"})
    assert (missing.status, missing.json()) == (404, {"error": 'model "nope:1" not found'})


def test_show_reports_details_model_info_and_capabilities(
    start_double: StartDouble, tmp_path: Path
) -> None:
    models = tmp_path / "store"
    place_model(models, ("registry.ollama.ai", "library", "m", "1"), registry.build_model("a"))
    d = start_double(models)
    show = d.call("POST", "/api/show", {"model": "m:1"}).json()
    assert show["details"]["family"] == "qwen2"
    assert show["model_info"]["general.architecture"] == "qwen2"
    assert show["model_info"]["qwen2.context_length"] == 32768
    assert "general.name" not in show["model_info"]
    assert show["capabilities"] == ["completion"]
    assert show["template"] == registry.TEMPLATE
    assert show["license"] == registry.LICENSE
    assert re.search(r'^stop {27}"<\|im_start\|>"$', show["parameters"], re.MULTILINE)
    assert show["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert "modified_at" in show
    missing = d.call("POST", "/api/show", {"model": "other"})
    assert (missing.status, missing.json()) == (404, {"error": "model 'other' not found"})


# --------------------------------------------------------------------------------------------
# inference: generate, embed, ps and GPU residency
# --------------------------------------------------------------------------------------------


def test_generate_loads_the_model_into_ps(start_double: StartDouble, tmp_path: Path) -> None:
    models = tmp_path / "store"
    place_model(models, ("registry.ollama.ai", "library", "m", "1"), registry.build_model("a"))
    d = start_double(models, OLLAMA_CONTEXT_LENGTH="8192", OLLAMA_KEEP_ALIVE="-1")
    missing = d.call("POST", "/api/generate", {"model": "nope", "prompt": "hi"})
    assert (missing.status, missing.json()) == (404, {"error": "model 'nope' not found"})

    one = d.call("POST", "/api/generate", {"model": "m:1", "prompt": "hi", "stream": False})
    answer = one.json()
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert (
        answer["response"]
        == d.call(
            "POST", "/api/generate", {"model": "m:1", "prompt": "hi", "stream": False}
        ).json()["response"]
    )
    streamed = d.call("POST", "/api/generate", {"model": "m:1", "prompt": "hi"}).lines()
    assert [x["done"] for x in streamed] == [False] * (len(streamed) - 1) + [True]
    assert "".join(x["response"] for x in streamed) == answer["response"]

    (ps,) = d.call("GET", "/api/ps").json()["models"]
    assert ps["name"] == ps["model"] == "m:1"
    assert ps["context_length"] == 8192
    assert ps["size"] > 4096 and ps["size_vram"] == 0
    assert ps["expires_at"].startswith("2") and int(ps["expires_at"][:4]) > 2200  # forever

    embed = d.call("POST", "/api/embed", {"model": "m:1", "input": "text"}).json()
    assert len(embed["embeddings"]) == 1 and len(embed["embeddings"][0]) == 64

    unload = d.call("POST", "/api/generate", {"model": "m:1", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"
    assert d.call("GET", "/api/ps").json() == {"models": []}


@pytest.mark.parametrize(
    ("state", "visible", "on_gpu"),
    [
        (None, None, True),
        (None, "-1", False),
        (None, "GPU-71d1acc2-662d-2166-bf9f-65272d2fc437", True),
        ("no-driver", None, False),
        ("absent", None, False),
    ],
)
def test_ps_shows_gpu_residency_only_when_a_gpu_is_visible(
    start_double: StartDouble, tmp_path: Path, state: str | None, visible: str | None, on_gpu: bool
) -> None:
    models = tmp_path / "store"
    place_model(models, ("registry.ollama.ai", "library", "m", "1"), registry.build_model("a"))
    env: dict[str, str] = {}
    gpu_bin = None
    if state != "absent":
        gpu_bin = tmp_path / "gpu-bin"
        nvidia_smi.install_nvidia_smi_double(
            gpu_bin, tmp_path / "gpu-conf", [nvidia_smi.RTX_4090], state=state
        )
        env["NVIDIA_SMI_DOUBLE_DIR"] = str(tmp_path / "gpu-conf")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    d = start_double(models, gpu_bin, **env)
    d.call("POST", "/api/generate", {"model": "m", "prompt": "", "keep_alive": "1m"})
    d.call("POST", "/api/generate", {"model": "m:1", "prompt": ""})
    (ps,) = d.call("GET", "/api/ps").json()["models"]
    assert ps["size_vram"] == (ps["size"] if on_gpu else 0)
    assert ps["context_length"] == (32768 if on_gpu else 4096)  # the VRAM-tiered default


def test_client_commands(
    start_double: StartDouble, fake_registry: FakeRegistry, program: Path
) -> None:
    model = registry.build_model("a")
    fake_registry.add("library/tiny", "1", model)
    d = start_double()
    name = f"{fake_registry.host}/library/tiny:1"
    pulled = d.cli(program, "pull", "--insecure", name)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.splitlines()[-1] == "success"
    failed = d.cli(program, "pull", "--insecure", f"{fake_registry.host}/library/none:1")
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        "pulling manifest",
        "Error: pull model manifest: file does not exist",
    ]

    listed = d.cli(program, "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert listed[1].split()[:3] == [name, model.digest[7:19], "4.9"]
    assert d.cli(program, "run", name, "hello").returncode == 0
    ps = d.cli(program, "ps").stdout.splitlines()
    assert ps[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert "100% CPU" in ps[1]
    assert "architecture        qwen2" in d.cli(program, "show", name).stdout
    assert d.cli(program, "rm", name).stdout == f"deleted '{name}'\n"
    again = d.cli(program, "rm", name)
    assert (again.returncode, again.stderr) == (1, f"Error: model '{name}' not found\n")
    stop(d.proc)
    down = d.cli(program, "list")
    assert down.returncode == 1
    assert down.stderr == (
        "Error: could not connect to ollama server, run 'ollama serve' to start it\n"
    )


# --------------------------------------------------------------------------------------------
# release tarball and registry pushes
# --------------------------------------------------------------------------------------------


def _tar_members(archive: Path) -> tuple[list[tarfile.TarInfo], bytes]:
    data = archive.read_bytes()
    if archive.name.endswith(".tar.zst"):
        data = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    else:
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers(), data


@pytest.mark.parametrize(
    ("version", "asset"),
    [("0.13.5", "ollama-linux-amd64.tgz"), (VERSION, "ollama-linux-amd64.tar.zst")],
)
def test_release_archive_has_the_workflows_layout_and_a_stable_checksum(
    tmp_path: Path, version: str, asset: str
) -> None:
    """release.yaml: .tgz before v0.14.0, .tar.zst from it; `tar c -T list` members without
    ./ and without bin/ or lib/ entries; sha256sum.txt lines `<sha>  ./<file>`."""
    archive = release.build_release(tmp_path / "a", version)
    assert archive.name == asset
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    sums = (tmp_path / "a" / "sha256sum.txt").read_text().splitlines()
    assert f"{digest}  ./{asset}" in sums
    assert any(line.endswith(f"  ./{asset.replace('amd64', 'arm64')}") for line in sums)
    again = release.build_release(tmp_path / "b", version)
    assert again.read_bytes() == archive.read_bytes()
    other = release.build_release(tmp_path / "c", "0.21.0")
    assert hashlib.sha256(other.read_bytes()).hexdigest() != digest

    members, raw = _tar_members(archive)
    names = [m.name for m in members]
    assert names[0] == "bin/ollama"
    assert {"lib/ollama/libggml-base.so", "lib/ollama/cuda_v13/libggml-cuda.so"} <= set(names)
    assert not any(n.startswith(("./", "/")) or n in ("bin", "lib", "lib/ollama") for n in names)
    assert all(m.uid == 0 and m.gid == 0 for m in members)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getmember("bin/ollama").mode == 0o755
        program = tar.extractfile("bin/ollama").read().decode()  # type: ignore[union-attr]
        tar.extractall(tmp_path / "x", filter="data")
    first, second = program.splitlines()[:2]
    assert first == "#!/usr/bin/env python3"
    assert second.startswith("# TEST DOUBLE")
    assert f'VERSION = "{version}"' in program
    env = {"PATH": f"{Path(PYTHON).parent}:/usr/bin:/bin"}
    env["OLLAMA_HOST"] = f"127.0.0.1:{free_port()}"
    run = subprocess.run(
        [str(tmp_path / "x" / "bin" / "ollama"), "-v"], env=env, capture_output=True, text=True
    )
    assert run.stdout.endswith(f"Warning: client version is {version}\n")


def test_models_differ_by_seed_and_carry_ollama_media_types() -> None:
    a, b = registry.build_model("a"), registry.build_model("b")
    assert a.digest != b.digest
    assert registry.build_model("a").manifest == a.manifest
    manifest = json.loads(a.manifest)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [x["mediaType"].rsplit(".", 1)[1] for x in manifest["layers"]] == [
        "model",
        "template",
        "license",
        "params",
    ]
    weights = a.blobs[manifest["layers"][0]["digest"]]
    assert weights[:4] == b"GGUF" and len(weights) == 4096
    config = json.loads(a.blobs[manifest["config"]["digest"]])
    assert config["model_format"] == "gguf" and config["model_family"] == "qwen2"


class LocationProxy:
    """Forwards GET/HEAD to a registry and adds ``Location: <request path>`` to 200 blob
    answers: the fix that lets the real client pull from CNCF Distribution."""

    def __init__(self, upstream: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                keep = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
                conn.request(self.command, self.path, headers=keep)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response_only(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") or str(len(body))
                self.send_header("Content-Length", length)
                if resp.status == 200 and "/blobs/sha256:" in self.path:
                    if not resp.getheader("Location"):
                        self.send_header("Location", self.path)
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_GET = do_HEAD

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")
def test_real_distribution_registry_needs_a_location_proxy(
    start_double: StartDouble, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with (tmp_path / "registry.log").open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    proxy = None
    try:
        wait_port(port, proc)
        reg = f"127.0.0.1:{port}"
        first = registry.push_model(reg, "library/tiny", "1", seed="a", size=8192)
        digest, manifest = registry.fetch_manifest(reg, "library/tiny", "1")
        assert digest == first and manifest["layers"][0]["size"] == 8192
        assert registry.push_model(reg, "library/tiny", "1", seed="b") != first
        digest, _ = registry.fetch_manifest(reg, "library/tiny", "1")

        d = start_double()
        direct = d.pull(f"{reg}/library/tiny:1", insecure=True).lines()
        assert direct[-1] == {"error": "http: no Location header in response"}

        proxy = LocationProxy(port)
        via = f"127.0.0.1:{proxy.port}/library/tiny:1"
        assert d.pull(via, insecure=True).lines()[-1] == {"status": "success"}
        (entry,) = d.call("GET", "/api/tags").json()["models"]
        assert (entry["name"], entry["digest"]) == (via, digest.removeprefix("sha256:"))
    finally:
        if proxy is not None:
            proxy.close()
        stop(proc)
