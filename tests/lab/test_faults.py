"""Fault injection on the lab, in one go (issue 18): a tampered release, every host failing at
once, a large blob interrupted by Ctrl-C and resumed with a Range request (bytes counted), two
runs at once on one host, an apply interrupted by Ctrl-C, a package mirror that fails (once,
then always), a full model store, and a host stopped mid-apply. Each case asserts the exit
code, the reason in ``--json`` (``hosts.NAME.error`` / ``errors``), that nothing was lost, and
a clean re-converge.

A full store: a small tmpfs (``FULL_STORE``) mounted over the victim's model store, so that
nothing fills this machine's disk; the store's content is copied in first and is back as it was
when the tmpfs goes. The full store during a transfer (curl exit 23) is covered by the unit
tests (tests/unit/test_fetch_helper_bounds.py).

Run: flock /tmp/provisioner-lab.lock .venv/bin/python -m pytest -q -m lab tests/lab/test_faults.py
(LAB_HOSTS=gpu3,cpu1 is enough: two hosts, one of them the victim).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from provisioner import bounds, gpu_stack
from provisioner.operations import nvidia
from tests.doubles.ollama.registry import fetch_manifest, push_model

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SERVICE = "169.254.100.1"
REGISTRY = f"http://{SERVICE}:5000"
MIRROR = f"http://{SERVICE}:8080"  # the lab mirror (tests/lab/mirrors.py)
FLAKY_SOURCE = "/etc/apt/sources.list.d/provisioner-lab-flaky.sources"
FLAKY_KEY = "/etc/apt/keyrings/provisioner-lab-flaky.gpg"
STORE = "/var/lib/ollama/models"
BIG = 48 * 1024 * 1024  # the large blob: tens of MB, made here, never committed
RATE = "8mbit"  # ~1 MB/s on the victim's link: the big blob takes ~50 s


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "provisioner.cli", *args, "--json"]


def provision(*args: str, timeout: int = 1200) -> tuple[int, Any, str]:
    proc = subprocess.run(
        _command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    try:
        payload = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, proc.stderr[-6000:]


def start(*args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """``provision ARGS`` in the background; ``sigint_ignored``: as a shell script's background
    job starts it (SIGINT ignored), which Ctrl-C must stop all the same."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen(
        _command(*args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, Any, str]:
    out, err = proc.communicate(timeout=timeout)
    try:
        payload = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, err[-6000:]


@pytest.fixture(scope="module")
def fleet(lab):
    """A converged fleet: the victim (the last host) and the others."""
    code, result, err = provision("apply", str(lab.inventory))
    assert code == 0, (result, err)
    return lab


def _tags(lab, host: str) -> dict[str, str]:
    tags = json.loads(lab.ssh(host, "curl -s http://127.0.0.1:11434/api/tags").stdout)
    return {m["name"]: m["digest"] for m in tags["models"]}


def _library_model(lab, host: str) -> tuple[str, str, str]:
    """A library model the host serves: (repository, tag, name as the host lists it)."""
    for key in sorted(lab.info["models"]):
        repository, tag = key.rsplit(":", 1)
        short = f"{repository.removeprefix('library/')}:{tag}"
        if repository.startswith("library/") and short in _tags(lab, host):
            return repository, tag, short
    raise AssertionError(f"{host} serves no library model of the lab registry")


def _throttle(lab, host: str, on: bool) -> None:
    veth = lab.host(host).veth
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True)
    if on:
        subprocess.run(
            ["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", RATE, "burst", "64kb",
             "latency", "500ms"],
            check=True,
        )  # fmt: skip


def _rx_bytes(lab, host: str) -> int:
    counter = "/sys/class/net/eth0/statistics/rx_bytes"
    out = subprocess.run(
        ["ip", "netns", "exec", lab.host(host).netns, "cat", counter],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout)


def _size(lab, host: str, path: str) -> int:
    out = lab.ssh(host, f"stat -c %s {path} 2>/dev/null || echo 0", check=False).stdout
    return int(out.strip() or 0)


def _writers(lab, host: str) -> str:
    # [l]: the pattern does not match the shell that runs pgrep (its own command line)
    return lab.ssh(
        host, "pgrep -af 'ollama-fetch-mode[l]|cur[l] ' || true", check=False
    ).stdout.strip()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_tampered_release_names_the_checksum_and_keeps_the_serving_version(fleet):
    lab = fleet
    host = lab.hosts[-1]
    before = lab.ssh(host, "ollama --version", check=False).stdout.strip()
    code, result, err = provision(
        "apply", str(lab.inventory), "--limit", host,
        "--data", "ollama_version=0.20.3", "--data", f"ollama_sha256={'0' * 64}",
    )  # fmt: skip
    assert code == 1, err
    error = result["hosts"][host]["error"]
    assert "a download did not match its checksum" in error, error
    assert "expected " + "0" * 64 in error
    assert lab.ssh(host, "ollama --version", check=False).stdout.strip() == before


def test_every_host_failing_keeps_true_counts_and_every_reason(fleet):
    lab = fleet
    code, result, err = provision(
        "apply", str(lab.inventory),
        "--data", "ollama_version=0.20.3", "--data", f"ollama_sha256={'0' * 64}",
    )  # fmt: skip
    assert code == 1, err
    assert sorted(result["failed_hosts"]) == sorted(lab.hosts)
    for host in lab.hosts:
        entry = result["hosts"][host]
        assert entry["unchanged"] > 0, entry  # what ran before the failure is counted
        assert "pyinfra run" not in entry["failed"], entry
        assert "did not match its checksum" in entry["error"], entry


def test_a_large_blob_interrupted_by_ctrl_c_resumes_with_a_range_request(fleet):
    """Also two runs at once: an apply during the sync is refused, naming the sync's run."""
    lab = fleet
    host = lab.hosts[-1]
    repository, tag, short = _library_model(lab, host)
    digest = push_model(
        REGISTRY, repository, tag, seed=f"issue-18-big-{time.time()}", size=BIG, chunk_size=None
    )
    _, manifest = fetch_manifest(REGISTRY, repository, tag)
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    part = f"{STORE}/.provisioner-tmp/sha256-{weights['digest'].removeprefix('sha256:')}"
    try:
        _interrupt_and_resume(lab, host, weights, part, digest, short)
    finally:
        _throttle(lab, host, False)
        lab.republish_model(repository, tag)  # back to the lab's own bytes, whatever happened
    code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
    assert code == 0, err
    assert _tags(lab, host)[short] == lab.info["models"][f"{repository}:{tag}"].removeprefix(
        "sha256:"
    )


def _interrupt_and_resume(lab, host: str, weights: dict, part: str, digest: str, short: str):
    _throttle(lab, host, True)
    try:
        sync = start("models", "sync", str(lab.inventory), "--limit", host, sigint_ignored=True)
        _wait_for(lambda: _size(lab, host, part) > 4 * 1024 * 1024, 120, "the blob to arrive")

        # two runs at once: the second is refused on this host, with the holder's name
        code, result, err = provision("apply", str(lab.inventory), "--limit", host)
        assert code == 1, err
        error = result["hosts"][host]["error"]
        assert "another run holds the host" in error and f"pid {sync.pid} " in error, error
        assert "Could not get lock" not in err  # never an apt/dpkg lock error

        sync.send_signal(signal.SIGINT)  # Ctrl-C
        pressed = time.monotonic()
        code, _, err = finish(sync, timeout=60)
        assert code == 130, err
        assert time.monotonic() - pressed < 20
        _wait_for(lambda: not _writers(lab, host), 10, "the helper and curl to stop")
        kept = _size(lab, host, part)
        time.sleep(2)
        assert _size(lab, host, part) == kept and 0 < kept < weights["size"]
    finally:
        _throttle(lab, host, False)

    received = _rx_bytes(lab, host)
    code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
    assert code == 0, err
    fetched = _rx_bytes(lab, host) - received
    remaining = weights["size"] - kept
    # resumed: what was missing came over the wire, not the whole blob again
    assert remaining <= fetched < remaining + 2 * 1024 * 1024, (fetched, remaining, kept)
    assert _tags(lab, host)[short] == digest.removeprefix("sha256:")


class FlakyMirror:
    """A front of the lab mirror on the service address that answers the first ``fail``
    requests for an ``InRelease`` with a 503 and a short error page (what apt-cacher-ng gave
    hosts in issue 18's benchmark), then passes requests on; it counts what it answered."""

    def __init__(self, fail: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        mirror = self
        self.fail, self.answers = fail, []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.endswith("/InRelease") and mirror.fail > 0:
                    mirror.fail -= 1
                    mirror.answers.append((self.path, 503))
                    self.send_error(503, "Failure to move file out of the way")
                    return
                try:
                    with urllib.request.urlopen(MIRROR + self.path, timeout=30) as response:
                        body, status = response.read(), response.status
                except urllib.error.HTTPError as error:
                    body, status = b"", error.code
                mirror.answers.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((SERVICE, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{SERVICE}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _refresh_with(lab, host: str, mirror: FlakyMirror) -> subprocess.CompletedProcess:
    """The package lists' refresh exactly as the GPU stack runs it, with a source of the lab's
    NVIDIA stand-in repository behind ``mirror`` added."""
    distro = lab.info["hosts"][host]["distro"]
    # the lab repository's key (a CPU-only host has no NVIDIA source of its own to copy)
    lab.ssh(
        host, f"mkdir -p /etc/apt/keyrings && curl -fsS -o {FLAKY_KEY} {lab.info['key']['url_gpg']}"
    )
    source = (
        f"Types: deb\\nURIs: {mirror.url}/cuda/{distro}/x86_64/\\nSuites: /\\n"
        f"Signed-By: {FLAKY_KEY}\\n"
    )
    lab.ssh(host, f"printf '{source}' > {FLAKY_SOURCE}")
    update = next(iter(nvidia._install(gpu_stack.distro(distro), ["x"])))
    return lab.ssh(host, update.get_raw_value(), check=False)


def test_a_mirror_that_fails_the_first_request_is_retried_and_one_that_keeps_failing_is_named(
    fleet,
):
    lab = fleet
    host = lab.hosts[-1]
    attempts = bounds.get("packages", "update_attempts")
    flaky = FlakyMirror(fail=1)
    try:
        run = _refresh_with(lab, host, flaky)
        assert run.returncode == 0, (run.stdout, run.stderr)
        in_release = [status for path, status in flaky.answers if path.endswith("/InRelease")]
        assert in_release[0] == 503 and 200 in in_release, flaky.answers
    finally:
        flaky.stop()
    broken = FlakyMirror(fail=10**6)
    try:
        started = time.monotonic()
        run = _refresh_with(lab, host, broken)
        took = time.monotonic() - started
        assert run.returncode == 1, (run.stdout, run.stderr)
        last = run.stderr.strip().splitlines()[-1]
        assert f"failed {attempts} times (last exit 100)" in last, run.stderr
        assert f"package mirror(s): {broken.url}/cuda/" in last, last
        # bounded: the attempts, their pauses and apt's own retries, never an endless loop
        assert took < attempts * 120, took
        print(f"a mirror that keeps failing: {took:.0f} s, {len(broken.answers)} requests")
    finally:
        broken.stop()
        lab.ssh(host, f"rm -f {FLAKY_SOURCE} {FLAKY_KEY}; apt-get update -qq", check=False)


FULL_STORE = 40 * 1024 * 1024  # the tmpfs over the victim's store: smaller than BIG


def _mount_small_store(lab, host: str, size: int) -> None:
    """A tmpfs of ``size`` bytes over the store, holding what the store held (its temporary
    directory left out)."""
    lab.ssh(
        host,
        f"set -e; tar -C {STORE} --exclude=./.provisioner-tmp -cf /tmp/store.tar . && "
        f"mount -t tmpfs -o size={size},mode=755 provisioner-full-store {STORE} && "
        f"tar -C {STORE} -xpf /tmp/store.tar && rm -f /tmp/store.tar",
    )


def _unmount_small_store(lab, host: str) -> None:
    lab.ssh(
        host,
        f"if mountpoint -q {STORE}; then umount {STORE} || umount -l {STORE}; fi; "
        "rm -f /tmp/store.tar",
        check=False,
    )


def _store_consistent(lab, host: str) -> None:
    """Every blob in blobs/ is whole (its content is its name), and every manifest's blobs are
    there: nothing half-written is visible to Ollama."""
    bad = lab.ssh(
        host,
        f'cd {STORE}/blobs && for f in sha256-*; do [ -e "$f" ] || continue; '
        '[ "sha256-$(sha256sum "$f" | cut -d" " -f1)" = "$f" ] || echo "partial $f"; done; '
        f"find {STORE}/manifests -type f -exec cat {{}} + | grep -o 'sha256:[0-9a-f]*' | "
        'sort -u | while read d; do [ -f "sha256-${d#sha256:}" ] || echo "missing $d"; done',
    ).stdout.strip()
    assert not bad, bad


def test_a_full_store_fails_its_host_naming_the_bytes_and_a_retry_after_freeing_space_works(
    fleet,
):
    lab = fleet
    host, others = lab.hosts[-1], lab.hosts[:-1]
    repository, tag, short = _library_model(lab, host)
    before = _tags(lab, host)[short]
    serving = [other for other in others if short in _tags(lab, other)]
    used = int(lab.ssh(host, f"du -sb --exclude=.provisioner-tmp {STORE}").stdout.split()[0])
    assert used < FULL_STORE // 4, f"{host}'s store holds {used} bytes: too much to copy"
    digest = push_model(
        REGISTRY, repository, tag, seed=f"issue-18-full-{time.time()}", size=BIG, chunk_size=None
    )
    _, manifest = fetch_manifest(REGISTRY, repository, tag)
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    try:
        _mount_small_store(lab, host, FULL_STORE)
        code, result, err = provision("models", "sync", str(lab.inventory))
        assert code == 1, err
        assert result["failed_hosts"] == [host], result
        error = " ".join(result["hosts"][host]["errors"])
        found = re.search(rf"no space left in {STORE} for (\S+): it needs (\d+) more bytes, "
                          r"(\d+) are free", error)  # fmt: skip
        assert found, error
        assert found[1] == weights["digest"] and int(found[2]) == weights["size"], error
        assert int(found[3]) < int(found[2]) and int(found[3]) <= FULL_STORE, error
        _store_consistent(lab, host)
        assert _tags(lab, host)[short] == before  # the model it served is still served
        for other in others:  # the other hosts converged
            assert result["hosts"][other]["status"] != "failed", result["hosts"][other]
        for other in serving:
            assert _tags(lab, other)[short] == digest.removeprefix("sha256:")

        # space freed: the same command now succeeds
        lab.ssh(host, f"mount -o remount,size={3 * BIG} {STORE}")
        code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
        assert code == 0, (result, err)
        assert _tags(lab, host)[short] == digest.removeprefix("sha256:")
        _store_consistent(lab, host)
    finally:
        _unmount_small_store(lab, host)
        lab.republish_model(repository, tag)
    code, result, err = provision("models", "sync", str(lab.inventory))
    assert code == 0, (result, err)
    lab_digest = lab.info["models"][f"{repository}:{tag}"].removeprefix("sha256:")
    assert all(_tags(lab, name)[short] == lab_digest for name in [host, *serving])


def _delete_model(lab, host: str, repository: str, tag: str, short: str) -> None:
    """Remove the model (its short name and the site copy) so that an apply must fetch it:
    apply does not re-check present tags (ollama_models_refresh)."""
    api = "http://127.0.0.1:11434/api/delete"
    for name in (short, f"{REGISTRY.removeprefix('http://')}/{repository}:{tag}"):
        lab.ssh(host, f'curl -s -X DELETE {api} -d \'{{"model": "{name}"}}\'', False)


def test_apply_interrupted_by_ctrl_c_stops_the_fetch_on_the_host_and_reconverges(fleet):
    """``provision apply`` runs pyinfra as a child: Ctrl-C reaches apply (started with SIGINT
    ignored, as a script's background job), which stops its child within the grace period;
    the helper and its curl on the host stop, the host lock is free, and apply finishes the
    job when run again."""
    lab = fleet
    host = lab.hosts[-1]
    repository, tag, short = _library_model(lab, host)
    digest = push_model(
        REGISTRY, repository, tag, seed=f"issue-18-apply-{time.time()}", size=BIG, chunk_size=None
    )
    _, manifest = fetch_manifest(REGISTRY, repository, tag)
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    part = f"{STORE}/.provisioner-tmp/sha256-{weights['digest'].removeprefix('sha256:')}"
    _delete_model(lab, host, repository, tag, short)
    grace = bounds.get("interrupt", "grace_s")
    try:
        _throttle(lab, host, True)
        try:
            run = start("apply", str(lab.inventory), "--limit", host, sigint_ignored=True)
            _wait_for(lambda: _size(lab, host, part) > 4 * 1024 * 1024, 300, "the blob")
            run.send_signal(signal.SIGINT)
            pressed = time.monotonic()
            code, _, err = finish(run, timeout=120)
            took = time.monotonic() - pressed
            assert code == 130, err
            assert took < grace + 15, took
            _wait_for(lambda: not _writers(lab, host), 10, "the helper and curl to stop")
            kept = _size(lab, host, part)
            assert 0 < kept < weights["size"]
            print(f"apply stopped {took:.1f} s after Ctrl-C; {kept} bytes kept")
        finally:
            _throttle(lab, host, False)
        code, result, err = provision("apply", str(lab.inventory), "--limit", host)
        assert code == 0, (result, err)
        assert _tags(lab, host)[short] == digest.removeprefix("sha256:")
    finally:
        lab.republish_model(repository, tag)
    code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
    assert code == 0, (result, err)


def test_a_host_stopped_mid_apply_fails_with_its_reason_and_reconverges(fleet):
    lab = fleet
    host, others = lab.hosts[-1], lab.hosts[:-1]
    repository, tag, short = _library_model(lab, host)
    push_model(
        REGISTRY, repository, tag, seed=f"issue-18-stop-{time.time()}", size=BIG, chunk_size=None
    )
    _, manifest = fetch_manifest(REGISTRY, repository, tag)
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    part = f"{STORE}/.provisioner-tmp/sha256-{weights['digest'].removeprefix('sha256:')}"
    _delete_model(lab, host, repository, tag, short)
    _throttle(lab, host, True)
    try:
        run = start("apply", str(lab.inventory))
        _wait_for(lambda: _size(lab, host, part) > 4 * 1024 * 1024, 300, "the blob to arrive")
        lab.fleet.stop_host(lab.host(host))
        code, result, err = finish(run, timeout=600)
    finally:
        _throttle(lab, host, False)
        lab.republish_model(repository, tag)
        if not lab.fleet.running(lab.host(host)):
            lab.fleet.start_host(lab.host(host))
    assert code == 1, err
    assert result["failed_hosts"] == [host], result
    error = result["hosts"][host]["error"]
    assert error.startswith("step '") and "executed 0 commands" not in error, error
    print(f"reason given for the stopped host: {error}")
    for other in others:
        assert result["hosts"][other]["status"] != "failed", result["hosts"][other]
    code, result, err = provision("apply", str(lab.inventory))
    assert code == 0, (result, err)
    assert _tags(lab, host)[short] == lab.info["models"][f"{repository}:{tag}"].removeprefix(
        "sha256:"
    )
