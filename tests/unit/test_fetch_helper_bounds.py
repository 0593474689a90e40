"""The fetch helper (templates/ollama/ollama-fetch-model.sh) under faults: a full store, a
stalled transfer, an interruption, and two fetches into one store. A small HTTP server in the
test plays the registry's blob endpoint (GET with Range, as the OCI distribution spec's
"Fetch a blob" allows), slow or silent on demand."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner import bounds

HELPER = Path(__file__).parents[2] / "src/provisioner/templates/ollama/ollama-fetch-model.sh"
BLOB = os.urandom(256 * 1024)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "layers": [{"digest": DIGEST}]}).encode()


class Blobs(BaseHTTPRequestHandler):
    """Serves BLOB; ``delay`` seconds between 16 KiB chunks (``stall``: send nothing)."""

    delay = 0.0
    stall = False
    ranges: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        start = 0
        header = self.headers.get("Range")
        type(self).ranges.append(header or "")
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
        body = BLOB[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        self.end_headers()
        try:
            for at in range(0, len(body), 16384):
                while type(self).stall:
                    time.sleep(0.1)
                self.wfile.write(body[at : at + 16384])
                self.wfile.flush()
                time.sleep(type(self).delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    Blobs.delay, Blobs.stall, Blobs.ranges = 0.0, False, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Blobs)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/v2/x/blobs/"
    Blobs.stall = False
    httpd.shutdown()


def _args(store: Path, base: str) -> list[str]:
    return [
        "sh",
        str(HELPER),
        str(store),
        pwd.getpwuid(os.getuid()).pw_name,
        base,
        "sha256:" + hashlib.sha256(MANIFEST).hexdigest(),
        base64.b64encode(MANIFEST).decode(),
        "127.0.0.1/x/m/t",
        f"{DIGEST}:{len(BLOB)}",
    ]


def _error(stdout: str) -> str:
    return json.loads(stdout.splitlines()[-1])["error"]


def _procs_with(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eww" not in line]


def test_a_full_store_gives_the_reason_and_writes_nothing_into_it(tmp_path, server):
    fake = tmp_path / "bin"
    fake.mkdir()
    # df as coreutils prints it (-P -k), for a file system with 12 KiB available
    (fake / "df").write_text(
        "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        "echo '/dev/x 100 88 12 88% /'\n"
    )
    (fake / "df").chmod(0o755)
    store = tmp_path / "store"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    run = subprocess.run(_args(store, server), capture_output=True, text=True, env=env)
    assert run.returncode == 1
    error = _error(run.stdout)
    assert f"no space left in {store} for {DIGEST}" in error
    assert f"{len(BLOB)} more bytes, 12288 are free" in error
    assert not list((store / ".provisioner-tmp").iterdir())  # no error file left in the store
    assert not Blobs.ranges  # nothing was requested


def test_a_stalled_transfer_fails_within_its_bound_and_resumes_next_time(tmp_path, server):
    Blobs.delay = 0.05
    store = tmp_path / "store"
    env = {**os.environ, "PROVISIONER_CURL_BOUNDS": "--speed-limit 100000 --speed-time 1"}
    proc = subprocess.Popen(_args(store, server), stdout=subprocess.PIPE, text=True, env=env)
    part = store / ".provisioner-tmp" / f"sha256-{DIGEST[7:]}"
    while not part.exists() or part.stat().st_size == 0:
        time.sleep(0.05)
    Blobs.stall = True  # the registry stops sending mid-blob
    started = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - started < 10
    assert "(curl exit 28)" in _error(out)
    kept = part.stat().st_size
    assert 0 < kept < len(BLOB)  # what arrived is kept for the next run
    Blobs.stall, Blobs.delay = False, 0.0
    again = subprocess.run(_args(store, server), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout
    assert Blobs.ranges[-1] == f"bytes={kept}-"  # resumed with a Range request
    assert (store / "blobs" / f"sha256-{DIGEST[7:]}").read_bytes() == BLOB


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_interrupted_helper_leaves_no_curl_writing_into_the_store(tmp_path, server, sig):
    Blobs.delay = 0.2
    store = tmp_path / "store"
    proc = subprocess.Popen(
        _args(store, server),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as sshd starts it on a host: no signal ignored (a shell cannot trap one it was
        # started with ignored)
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (sig, signal.SIGPIPE)],
    )
    part = store / ".provisioner-tmp" / f"sha256-{DIGEST[7:]}"
    while not part.exists():
        time.sleep(0.05)
    assert _procs_with(str(part))  # curl is writing the blob
    proc.send_signal(sig)
    proc.communicate(timeout=10)
    assert proc.returncode != 0
    deadline = time.monotonic() + 5
    while _procs_with(str(part)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _procs_with(str(part))
    size = part.stat().st_size
    time.sleep(0.5)
    assert part.stat().st_size == size  # nothing writes into the store any more


def test_a_closed_connection_stops_the_helper_and_its_curl(tmp_path, server):
    """What an SSH channel closed by an interrupted controller looks like: stdout gone."""
    Blobs.delay = 0.2
    store = tmp_path / "store"
    proc = subprocess.Popen(_args(store, server), stdout=subprocess.PIPE, start_new_session=True)
    part = store / ".provisioner-tmp" / f"sha256-{DIGEST[7:]}"
    while not part.exists():
        time.sleep(0.05)
    proc.stdout.close()  # the reader is gone: the next progress line raises SIGPIPE
    assert proc.wait(timeout=5) != 0
    deadline = time.monotonic() + 5
    while _procs_with(str(part)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _procs_with(str(part))


def test_two_fetches_into_one_store_take_turns(tmp_path, server):
    Blobs.delay = 0.01
    store = tmp_path / "store"
    first = subprocess.Popen(_args(store, server), stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen(_args(store, server), stdout=subprocess.PIPE, text=True)
    out1, _ = first.communicate(timeout=60)
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (out1, out2)
    assert (store / "blobs" / f"sha256-{DIGEST[7:]}").read_bytes() == BLOB
    # one of them found the blob in place and downloaded nothing
    assert len([r for r in Blobs.ranges if r == ""]) == 1
    assert not list((store / ".provisioner-tmp").iterdir())


def test_the_operation_hands_the_bounds_to_the_helper(monkeypatch):
    from provisioner.operations import ollama as ops

    seen: list[str] = []
    monkeypatch.setattr(ops, "_follow", lambda state, host, label, command: seen.append(command))
    ops.fetch_model(None, None, "m:1", ["/usr/local/lib/provisioner/ollama-fetch-model", "a b"])
    command = seen[0]
    assert command.startswith("env 'PROVISIONER_CURL_BOUNDS=--retry 3 --connect-timeout 30 ")
    assert f"--max-time {bounds.get('download', 'blob_max_time_s')}" in command
    assert f"PROVISIONER_STORE_WAIT={bounds.get('store_lock', 'wait_s')}" in command
    assert command.endswith("/usr/local/lib/provisioner/ollama-fetch-model 'a b'")
