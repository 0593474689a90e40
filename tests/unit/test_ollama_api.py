"""Ollama's name grammar, manifests, the /api/pull stream and the control-side registry client."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioner.ollama_api import (
    Blob,
    ManifestError,
    ModelName,
    PullError,
    PullStream,
    Registry,
    RegistryError,
    normalise,
    parse_manifest,
    site_name,
)
from provisioner.operations import ollama as ollama_ops


@pytest.mark.parametrize(
    ("name", "display", "path"),
    [
        ("llama3", "llama3:latest", "registry.ollama.ai/library/llama3/latest"),
        ("qwen2.5-coder:14b", "qwen2.5-coder:14b", "registry.ollama.ai/library/qwen2.5-coder/14b"),
        ("library/qwen2.5:7b", "qwen2.5:7b", "registry.ollama.ai/library/qwen2.5/7b"),
        ("someone/model:q4", "someone/model:q4", "registry.ollama.ai/someone/model/q4"),
        (
            "http://10.0.0.5:5000/site/qwen2.5:7b",
            "10.0.0.5:5000/site/qwen2.5:7b",
            "10.0.0.5:5000/site/qwen2.5/7b",
        ),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M", "hf.co/org/repo/Q4_K_M"),
    ],
)
def test_names_split_and_display_as_ollama_does(name, display, path):
    parsed = ModelName.parse(name)
    assert parsed.display == display
    assert parsed.manifest_path == path
    assert ModelName.from_manifest_path(path).display == display


@pytest.mark.parametrize(
    "bad", ["", "a/b/c/d", "qwen:x y", "../x", "model@sha256:abc", "ftp://h/n/m:t", "a b"]
)
def test_names_ollama_refuses_are_refused(bad):
    with pytest.raises(ValueError):
        ModelName.parse(bad)


def test_plain_http_registries_are_pulled_with_their_scheme():
    name = ModelName.parse("http://10.0.0.5:5000/library/qwen2.5:7b")
    assert name.pull_name == "http://10.0.0.5:5000/library/qwen2.5:7b"
    assert name.manifest_url == "http://10.0.0.5:5000/v2/library/qwen2.5/manifests/7b"
    assert ModelName.parse("qwen2.5:7b").pull_name == "qwen2.5:7b"
    assert normalise("library/llama3") == "llama3:latest"


def test_site_names_keep_namespaces_and_foreign_registries():
    assert site_name("qwen2.5:7b", "http://10.0.0.5:5000", "site").display == (
        "10.0.0.5:5000/site/qwen2.5:7b"
    )
    assert site_name("someone/model:q4", "http://10.0.0.5:5000", "site").display == (
        "10.0.0.5:5000/someone/model:q4"
    )
    assert site_name("hf.co/org/repo:x", "http://10.0.0.5:5000").display == "hf.co/org/repo:x"
    assert site_name("llama3", "registry.example").scheme == "https"
    with pytest.raises(ValueError, match="ollama_registry_namespace"):
        site_name("llama3", "http://10.0.0.5:5000/site")


def _manifest(**changes):
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"digest": "sha256:" + "1" * 64, "size": 10},
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": "sha256:" + "2" * 64,
                "size": 20,
            }
        ],
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def test_manifests_are_identified_by_their_blobs_not_their_bytes():
    a = parse_manifest(_manifest())
    b = parse_manifest(json.dumps(json.loads(_manifest()), indent=2).encode())
    assert a.digest == "sha256:" + hashlib.sha256(_manifest()).hexdigest()
    assert a.digest != b.digest
    assert a.content == b.content == ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    assert a.size == 30
    assert a.layers[0].file_name == "sha256-" + "2" * 64


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (_manifest(layers=[]), "no layers"),
        (_manifest(config={"digest": "sha256:../../etc/passwd", "size": 1}), "invalid digest"),
        (_manifest(layers=[{"digest": "sha256:" + "2" * 64, "size": -1}]), "invalid size"),
        (_manifest(layers=[{"digest": "md5:" + "2" * 32, "size": 1}]), "invalid digest"),
    ],
)
def test_unusable_manifests_are_refused(raw, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)


STREAM = [
    '{"status":"pulling manifest"}',
    '{"status":"pulling 6a0746a1ec1a","digest":"sha256:6a07","total":4683,"completed":1000}',
    '{"status":"pulling 6a0746a1ec1a","digest":"sha256:6a07","total":4683,"completed":4683}',
    '{"status":"pulling 832dd9e00a68","digest":"sha256:832d","total":11338}',
    '{"status":"verifying sha256 digest"}',
    '{"status":"writing manifest"}',
    '{"status":"success"}',
]


def test_a_complete_pull_stream_succeeds_and_counts_bytes():
    stream = PullStream("qwen2.5:7b")
    for line in STREAM[:3]:
        stream.feed(line)
    assert (stream.completed, stream.total) == (4683, 4683)
    for line in STREAM[3:]:
        stream.feed(line)
    stream.finish(0)
    assert stream.succeeded
    assert stream.total == 4683 + 11338


def test_an_error_line_in_the_middle_of_the_stream_fails_the_pull():
    stream = PullStream("qwen2.5:7b")
    stream.feed(STREAM[0])
    stream.feed(STREAM[1])
    with pytest.raises(PullError, match="qwen2.5:7b: max retries exceeded: unexpected EOF"):
        stream.feed('{"error":"max retries exceeded: unexpected EOF"}')


def test_a_stream_that_stops_before_success_fails():
    stream = PullStream("qwen2.5:7b")
    for line in STREAM[:3]:
        stream.feed(line)
    with pytest.raises(PullError, match="ended without success"):
        stream.finish(0)


def test_curl_messages_are_kept_for_the_error():
    stream = PullStream("m:1")
    stream.feed("curl: (7) Failed to connect to 127.0.0.1 port 11434: Connection refused")
    with pytest.raises(PullError, match=r"exit 7\): curl: \(7\) Failed to connect"):
        stream.finish(7)


def test_an_http_error_body_is_an_error_line_too():
    with pytest.raises(PullError, match="pull model manifest: file does not exist"):
        PullStream("m:1").feed('{"error":"pull model manifest: file does not exist"}')


class _Events:
    """A state callback that records pull progress events."""

    def __init__(self):
        self.events = []

    def ollama_pull_progress(self, state, host, model, event):
        self.events.append((model, event))


def _local_host():
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all

    inventory = Inventory((["@local"], {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    return state, next(iter(inventory))


@pytest.mark.parametrize(
    ("lines", "ok", "last"),
    [
        (STREAM, True, {"status": "success", "completed": 4683 + 11338, "total": 4683 + 11338}),
        (
            STREAM[:2]
            + ['{"error":"digest mismatch, file must be downloaded again"}']
            + STREAM[2:],
            False,
            {"error": "m:1: digest mismatch, file must be downloaded again"},
        ),
        (STREAM[:3], False, None),
    ],
)
def test_a_streamed_command_is_checked_line_by_line(lines, ok, last):
    state, host = _local_host()
    events = _Events()
    state.callback_handlers.append(events)
    command = "printf '%s\\n' " + " ".join("'" + line + "'" for line in lines)
    assert ollama_ops._follow(state, host, "m:1", command) is ok
    if last is not None:
        assert events.events[-1] == ("m:1", last)
    if not ok:
        assert any("error" in event for _, event in events.events)


class _BlobServer:
    def __init__(self, content: bytes):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_registry_client_refuses_a_blob_that_does_not_match_its_digest(tmp_path):
    server = _BlobServer(b"not the blob you asked for")
    try:
        blob = Blob(digest="sha256:" + hashlib.sha256(b"the blob").hexdigest(), size=8)
        with pytest.raises(RegistryError, match="content is sha256:"):
            Registry(server.url).fetch_blob("library/x", blob, tmp_path / "blob")
    finally:
        server.close()
    assert not (tmp_path / "blob").exists()
    assert not (tmp_path / "blob.partial").exists()


def test_the_registry_client_keeps_a_good_blob(tmp_path):
    content = b"the blob" * 1000
    server = _BlobServer(content)
    seen = []
    try:
        blob = Blob(digest="sha256:" + hashlib.sha256(content).hexdigest(), size=len(content))
        path = Registry(server.url).fetch_blob(
            "library/x", blob, tmp_path / "blob", progress=lambda done, total: seen.append(done)
        )
    finally:
        server.close()
    assert path.read_bytes() == content
    assert seen[-1] == len(content)
