"""Model sync, update and mirror on loopback: the stand-in Ollama server (tests/doubles/ollama)
and a real CNCF Distribution registry (``docker-registry``), both started here by PID.

The stand-in keeps the real client's limits: it pulls a blob only from a registry that
redirects blob downloads (ollama/ollama#7244), so a pull straight from Distribution fails with
an error line in the middle of a 200 stream, which is what the ``pull`` path must catch, and
the ``place`` path (the toolkit's own verified download into the store) must get around.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner import models_sync
from provisioner.facts.ollama import OllamaModels
from provisioner.ollama_api import Registry
from provisioner.operations import ollama as ollama_ops

ROOT = Path(__file__).resolve().parents[2]
DOUBLES = ROOT / "tests" / "doubles" / "ollama"
HELPER = ROOT / "src" / "provisioner" / "templates" / "ollama" / "ollama-fetch-model.sh"
DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"

pytestmark = pytest.mark.skipif(
    not os.path.exists(DOCKER_REGISTRY) or shutil.which("curl") is None,
    reason="needs docker-registry (Debian package docker-registry) and curl",
)


def _load_double(name: str):
    spec = importlib.util.spec_from_file_location(f"ollama_double_{name}", DOUBLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


registry_double = _load_double("registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, what: str) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on {url}")


class DistributionRegistry:
    """``docker-registry serve`` on 127.0.0.1, stoppable and restartable on the same storage."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "registry.yml"
        self.config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            "log:\n  level: error\n"
        )
        self.log = root / "registry.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [DOCKER_REGISTRY, "serve", str(self.config)], stdout=log, stderr=log
            )
        _wait_for(f"{self.url}/v2/", self.process, "docker-registry")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def push(self, name: str, tag: str, seed: str) -> str:
        return registry_double.push_model(self.url, name, tag, seed=seed)


class OllamaDouble:
    """The stand-in ``ollama serve`` on 127.0.0.1 with its own store."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.models = root / "models"
        self.log = root / "ollama.log"
        env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{self.port}", OLLAMA_MODELS=str(self.models))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(DOUBLES / "ollama_double.py"), "serve"],
                env=env,
                stdout=log,
                stderr=log,
            )
        _wait_for(f"{self.api}/api/version", self.process, "the stand-in Ollama")

    def tags(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.api}/api/tags", timeout=5) as response:
            return {m["name"]: m["digest"] for m in json.load(response)["models"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


class RedirectingRegistry:
    """A front that answers every request with a 307 to the registry under another host name,
    as registries with object-storage back ends (and the public library) do for blobs."""

    def __init__(self, upstream_port: int) -> None:
        target = f"http://localhost:{upstream_port}"

        class Handler(BaseHTTPRequestHandler):
            def _redirect(self) -> None:
                self.send_response(307)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _redirect

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = DistributionRegistry(tmp_path_factory.mktemp("registry"))
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture
def server(tmp_path):
    double = OllamaDouble(tmp_path)
    yield double
    double.stop()


@pytest.fixture(autouse=True)
def as_root(monkeypatch, tmp_path):
    """Placed files are owned by the user running the tests (no ``ollama`` user here), and the
    fetch helper runs from a copy (the repository may not keep its executable bit)."""
    helper = tmp_path / "ollama-fetch-model"
    shutil.copy(HELPER, helper)
    helper.chmod(0o755)
    monkeypatch.setattr(ollama_ops, "SERVICE_USER", _user())
    monkeypatch.setattr(ollama_ops, "FETCH_HELPER", str(helper))


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _host_data(server: OllamaDouble, registry_url: str | None, models: list[str], **extra):
    data = {
        "gpu": False,
        "models": models,
        "model_catalog_extra": [
            {
                "tag": tag,
                "size_bytes": 4855,
                "context": 2048,
                "layers": 4,
                "kv_heads": 2,
                "head_dim": 16,
            }
            for tag in {*models, *extra.get("models_pinned", [])}
        ],
        "ollama_models_dir": str(server.models),
        "ollama_port": server.port,
    }
    if registry_url:
        data.update(
            ollama_registry=registry_url,
            ollama_registry_insecure=True,
            ollama_registry_namespace="site",
        )
    data.update(extra)
    return data


def _inventory(*hosts):
    from pyinfra.api import Inventory

    from provisioner.inventory import LoadedInventory

    inventory = Inventory((list(hosts), {}))
    return LoadedInventory(source="test", inventory=inventory, hosts=list(inventory))


def _sync(*hosts, **kwargs):
    return models_sync.sync(_inventory(*hosts), show_progress=False, **kwargs)


def _update(*hosts, **kwargs):
    return models_sync.update(_inventory(*hosts), show_progress=False, **kwargs)


# --- sync -------------------------------------------------------------------------------------


def test_place_fetches_verified_blobs_and_aliases_the_short_name(registry, server):
    digest = registry.push("site/tiny", "1b", seed="place-1")
    result = _sync(("@local", _host_data(server, registry.url, ["tiny:1b"])))

    assert result.exit_code == 0, result.to_json()
    host = result.hosts["@local"]
    assert [(c.model, c.action, c.after) for c in host.changes] == [
        (f"127.0.0.1:{registry.port}/site/tiny:1b", "added", digest),
        ("tiny:1b", "added", digest),
    ]
    tags = server.tags()
    assert tags["tiny:1b"] == digest.removeprefix("sha256:")
    assert not list((server.models / ".provisioner-tmp").iterdir())


def test_a_converged_host_shows_no_change(registry, server):
    registry.push("site/tiny", "1b", seed="converged")
    data = _host_data(server, registry.url, ["tiny:1b"])
    assert _sync(("@local", data)).hosts["@local"].status == "changed"

    second = _sync(("@local", data))
    assert second.hosts["@local"].status == "unchanged"
    assert second.hosts["@local"].changes == []

    dry = _sync(("@local", data), dry=True)
    assert dry.hosts["@local"].status == "unchanged"


def test_dry_run_changes_nothing(registry, server):
    registry.push("site/tiny", "1b", seed="dry")
    result = _sync(("@local", _host_data(server, registry.url, ["tiny:1b"])), dry=True)
    assert result.hosts["@local"].would_change
    assert result.hosts["@local"].status == "changed"
    assert server.tags() == {}


def test_pull_from_distribution_fails_on_the_error_line_mid_stream(registry, server):
    """Distribution answers a blob GET with 200 and no Location: the real client (and the
    stand-in) report that as an error line inside a 200 NDJSON stream."""
    registry.push("site/tiny", "1b", seed="pull-error")
    data = _host_data(
        server,
        registry.url,
        ["tiny:1b"],
        ollama_registry_transport="pull",
        ollama_models_refresh=True,
    )
    result = _sync(("@local", data))

    assert result.exit_code == 1
    assert result.failed_hosts == ["@local"]
    assert any("no Location header in response" in e for e in result.hosts["@local"].errors)
    assert "tiny:1b" not in server.tags()


def test_pull_through_a_redirecting_registry_works(registry, server):
    digest = registry.push("site/tiny", "1b", seed="redirect")
    front = RedirectingRegistry(registry.port)
    try:
        data = _host_data(server, front.url, ["tiny:1b"], ollama_registry_transport="pull")
        result = _sync(("@local", data))
    finally:
        front.stop()
    assert result.exit_code == 0, result.to_json()
    assert server.tags()["tiny:1b"] == digest.removeprefix("sha256:")


def test_insecure_goes_only_to_the_site_registrys_own_host(registry, server):
    """`insecure: true` lets Ollama use plain HTTP; it is sent for the site registry's pulls
    only, so a model named with another (plain-HTTP) registry is pulled over https and fails
    there instead of silently downgrading."""
    registry.push("site/tiny", "1b", seed="insecure-site")
    registry.push("other/tiny", "1b", seed="insecure-other")
    front = RedirectingRegistry(registry.port)
    elsewhere = f"127.0.0.1:{registry.port}/other/tiny:1b"
    try:
        data = _host_data(
            server, front.url, ["tiny:1b", elsewhere], ollama_registry_transport="pull"
        )
        result = _sync(("@local", data), refresh=False)  # straight to Ollama's /api/pull
    finally:
        front.stop()
    assert result.exit_code == 1
    errors = " ".join(result.hosts["@local"].errors)
    assert "server gave HTTP response to HTTPS client" in errors, errors
    assert "tiny:1b" in server.tags() and elsewhere not in server.tags()


def test_api_commands_show_ollamas_error_body(server):
    """Not `curl -f`: a 4xx answer fails the command with Ollama's own {"error": ...}."""
    command = ollama_ops._api_command(
        f"http://127.0.0.1:{server.port}", "DELETE", "/api/delete", {"model": "nope:1"}
    )
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == (
        'DELETE /api/delete: HTTP 404: {"error":"model \'nope:1\' not found"}'
    )


def test_prune_removes_unplanned_models_but_keeps_pinned_ones(registry, server):
    for name in ("tiny", "small", "embed"):
        registry.push(f"site/{name}", "1b", seed=f"prune-{name}")
    everything = _host_data(server, registry.url, ["tiny:1b", "small:1b", "embed:1b"])
    assert _sync(("@local", everything)).exit_code == 0

    fewer = _host_data(server, registry.url, ["tiny:1b"], models_pinned=["embed:1b"])
    without_prune = _sync(("@local", fewer))
    assert without_prune.hosts["@local"].status == "unchanged"

    pruned = _sync(("@local", fewer), prune=True)
    removed = sorted(c.model for c in pruned.hosts["@local"].changes if c.action == "removed")
    assert removed == [f"127.0.0.1:{registry.port}/site/small:1b", "small:1b"]
    assert set(server.tags()) == {
        "tiny:1b",
        "embed:1b",
        f"127.0.0.1:{registry.port}/site/tiny:1b",
        f"127.0.0.1:{registry.port}/site/embed:1b",
    }


def test_a_pinned_model_in_other_case_is_one_model_in_the_sync(registry, server):
    """``models = ["tiny:1b"]`` and ``models_pinned = ["Tiny:1B"]``: one model to hold, one
    pull, one check, one name in the store and in the mirror's list (issue 17)."""
    digest = registry.push("site/tiny", "1b", seed="mixed-case")
    data = _host_data(server, registry.url, ["tiny:1b"])
    data["models_pinned"] = ["Tiny:1B"]
    site = f"127.0.0.1:{registry.port}/site/tiny:1b"

    result = _update(("@local", data))
    assert result.exit_code == 0, result.to_json()
    host = result.hosts["@local"]
    assert [(c.model, c.action) for c in host.changes] == [(site, "added"), ("tiny:1b", "added")]
    assert host.problems == []
    assert set(server.tags()) == {site, "tiny:1b"}
    assert server.tags()["tiny:1b"] == digest.removeprefix("sha256:")
    assert models_sync.planned_by_host(_inventory(("@local", data))) == {"@local": ["tiny:1b"]}


def test_a_sync_while_the_registry_is_down_fails_and_completes_on_the_next_run(registry, server):
    registry.push("site/tiny", "1b", seed="interrupted")
    data = _host_data(server, registry.url, ["tiny:1b"])
    registry.stop()
    try:
        failed = _sync(("@local", data))
    finally:
        registry.start()
    assert failed.failed_hosts == ["@local"]
    assert "tiny:1b" not in server.tags()

    again = _sync(("@local", data))
    assert again.exit_code == 0, again.to_json()
    assert "tiny:1b" in server.tags()


# --- the fetch helper on its own --------------------------------------------------------------


def _helper_args(
    registry: DistributionRegistry, store: Path, repository: str, tag: str, inline: bool = False
):
    """The helper's arguments as ``ollama.models`` builds them: the manifest by URL (never on
    the command line), or ``inline`` as base64 (the form kept for small manifests)."""
    manifest = Registry(registry.url).manifest(repository, tag)
    import base64

    source = (
        base64.b64encode(manifest.raw).decode()
        if inline
        else f"{registry.url}/v2/{repository}/manifests/{tag}"
    )
    return manifest, [
        ollama_ops.FETCH_HELPER,
        str(store),
        _user(),
        f"{registry.url}/v2/{repository}/blobs/",
        manifest.digest,
        source,
        f"127.0.0.1:{registry.port}/{repository}/{tag}",
        *[f"{b.digest}:{b.size}" for b in manifest.blobs],
    ]


def test_fetch_helper_resumes_a_partial_blob(registry, tmp_path):
    registry.push("site/resume", "1b", seed="resume")
    store = tmp_path / "store"
    manifest, args = _helper_args(registry, store, "site/resume", "1b")
    weights = max(manifest.layers, key=lambda b: b.size)
    content = urllib.request.urlopen(f"{registry.url}/v2/site/resume/blobs/{weights.digest}").read()
    partial = store / ".provisioner-tmp" / weights.file_name
    partial.parent.mkdir(parents=True)
    partial.write_bytes(content[: len(content) // 2])

    run = subprocess.run(args, capture_output=True, text=True)

    assert run.returncode == 0, run.stdout
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    resumed = [e for e in lines if e.get("digest") == weights.digest]
    assert resumed[0]["completed"] == len(content) // 2  # it started from the partial file
    assert lines[-1] == {"status": "success"}
    assert (store / "blobs" / weights.file_name).read_bytes() == content
    assert not partial.exists()


def test_fetch_helper_refuses_a_corrupt_partial_blob_and_keeps_the_store_clean(registry, tmp_path):
    registry.push("site/corrupt", "1b", seed="corrupt")
    store = tmp_path / "store"
    manifest, args = _helper_args(registry, store, "site/corrupt", "1b")
    weights = max(manifest.layers, key=lambda b: b.size)
    partial = store / ".provisioner-tmp" / weights.file_name
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * (weights.size // 2))

    run = subprocess.run(args, capture_output=True, text=True)

    assert run.returncode == 1
    error = json.loads(run.stdout.splitlines()[-1])["error"]
    assert f"blob {weights.digest} does not match its digest" in error
    assert not (store / "blobs" / weights.file_name).exists()
    assert not (store / "manifests").exists() or not any((store / "manifests").rglob("1b"))
    assert not partial.exists()
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("inline", [False, True])
def test_fetch_helper_refuses_a_manifest_that_does_not_match_its_digest(registry, tmp_path, inline):
    registry.push("site/tampered", "1b", seed="tampered")
    _, args = _helper_args(registry, tmp_path / "store", "site/tampered", "1b", inline)
    args[4] = "sha256:" + "0" * 64
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 1
    assert "expected sha256:" + "0" * 64 in json.loads(run.stdout.splitlines()[-1])["error"]
    assert not any((tmp_path / "store" / "manifests").rglob("1b"))
    assert not list((tmp_path / "store" / ".provisioner-tmp").glob("manifest*"))


def test_fetch_helper_takes_the_manifest_by_url_not_on_the_command_line(registry, tmp_path):
    """A manifest of many layers (safetensors models) is larger than one argument may be
    (MAX_ARG_STRLEN, 128 KiB): the helper gets its URL and fetches it itself."""
    registry.push("site/argv", "1b", seed="argv")
    manifest, args = _helper_args(registry, tmp_path / "store", "site/argv", "1b")
    assert args[5].startswith("http://") and args[5].endswith("/site/argv/manifests/1b")
    assert all(len(a) < 1024 for a in args)
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    stored = tmp_path / "store" / "manifests" / f"127.0.0.1:{registry.port}" / "site" / "argv"
    assert (stored / "1b").read_bytes() == manifest.raw


# --- update -----------------------------------------------------------------------------------


def test_update_picks_up_a_repushed_tag_and_names_a_failing_host(registry, server):
    first = registry.push("site/tiny", "1b", seed="update-1")
    data = _host_data(server, registry.url, ["tiny:1b"])
    assert _sync(("@local", data)).exit_code == 0

    second = registry.push("site/tiny", "1b", seed="update-2")
    assert second != first
    refused = "curl: (7) Failed to connect to 10.9.9.9 port 5000: Connection refused"
    broken = (
        "@fake/broken",
        {
            **data,
            "fake_delay": 0,
            "fake_delay_jitter": 0,
            "fake_responses": {
                "cat /proc/meminfo": "MemTotal:       16318480 kB",
                "manifest.v2+json": f"error {refused}",  # the registry manifest request
                "provisioner.lock.owner": "held",  # provisioner.host_lock: free
            },
        },
    )
    result = _update(("@local", data), broken, batch=1)

    assert result.failed_hosts == ["@fake/broken"]
    assert result.exit_code == 1
    assert any(refused in e for e in result.hosts["@fake/broken"].errors)
    local = result.hosts["@local"]
    assert local.status == "changed", local.to_json()
    assert ("tiny:1b", "updated", first, second) in [
        (c.model, c.action, c.before, c.after) for c in local.changes
    ]
    assert local.problems == []
    assert server.tags()["tiny:1b"] == second.removeprefix("sha256:")
    # the old weights are gone: the store holds exactly the blobs of the new manifest
    blobs = {p.name for p in (server.models / "blobs").iterdir()}
    assert blobs == {b.file_name for b in Registry(registry.url).manifest("site/tiny", "1b").blobs}
    assert _update(("@local", data)).hosts["@local"].status == "unchanged"


def test_update_check_reports_a_model_the_registry_no_longer_matches(registry, server):
    registry.push("site/tiny", "1b", seed="check-1")
    data = _host_data(server, registry.url, ["tiny:1b"], ollama_models_refresh=False)
    assert _sync(("@local", data)).exit_code == 0
    registry.push("site/tiny", "1b", seed="check-2")

    # a plain sync without refresh leaves the old digest: the check after an update would not
    stale = _sync(("@local", data), refresh=False, check=True)
    assert stale.hosts["@local"].problems == [
        f"tiny:1b differs from 127.0.0.1:{registry.port}/site/tiny:1b in the registry"
    ]
    assert stale.exit_code == 1


# --- mirror -----------------------------------------------------------------------------------


def test_mirror_copies_upstream_models_into_the_site_registry_once(registry, tmp_path):
    upstream_digest = registry.push("library/mirrored", "1b", seed="mirror")
    result = models_sync.mirror(
        ["mirrored:1b"],
        to=registry.url,
        namespace="mirror-site",
        upstream=registry.url,
        show_progress=False,
    )
    assert result.exit_code == 0, result.to_json()
    entry = result.models["mirrored:1b"]
    assert entry["status"] == "copied"
    assert entry["site"] == f"127.0.0.1:{registry.port}/mirror-site/mirrored:1b"
    site = Registry(registry.url).manifest("mirror-site/mirrored", "1b")
    assert site.digest == upstream_digest
    assert result.bytes_fetched == site.size

    again = models_sync.mirror(
        ["mirrored:1b"],
        to=registry.url,
        namespace="mirror-site",
        upstream=registry.url,
        show_progress=False,
    )
    assert again.models["mirrored:1b"]["status"] == "unchanged"
    assert again.bytes_fetched == 0


def test_mirror_names_a_model_the_upstream_lacks(registry):
    result = models_sync.mirror(
        ["absent:1b"],
        to=registry.url,
        namespace="site",
        upstream=registry.url,
        show_progress=False,
    )
    assert result.exit_code == 1
    assert result.failed == ["absent:1b"]
    assert "HTTP 404" in result.models["absent:1b"]["error"]


def test_store_fact_reads_what_the_server_lists(registry, server):
    registry.push("site/tiny", "1b", seed="fact")
    assert _sync(("@local", _host_data(server, registry.url, ["tiny:1b"]))).exit_code == 0
    command = OllamaModels().command(str(server.models))
    output = subprocess.run(command, shell=True, capture_output=True, text=True).stdout
    fact = OllamaModels().process(output.splitlines())
    assert {name: m["digest"].removeprefix("sha256:") for name, m in fact.items()} == server.tags()
    assert all(m["complete"] for m in fact.values())


# --- interrupt ----------------------------------------------------------------------------------


class SlowLink:
    """A forwarding proxy in front of the registry that sends blob bodies in 16 KiB chunks,
    ``delay`` seconds apart (a slow site link), passing Range requests on; it counts the body
    bytes it sent.

    With ``hold_at``, a blob response stops once that many of its body bytes are sent and waits
    for :meth:`release` (a link that stalls): the transfer is then certainly in the middle of the
    blob when the test presses Ctrl-C, however loaded the machine is, instead of racing the
    clock. Released, a held response goes on; one whose client is gone ends. ``marker``: a file
    the link creates once it holds, for a process outside this one to wait on."""

    def __init__(
        self,
        upstream: str,
        delay: float = 0.02,
        hold_at: int | None = None,
        marker: Path | None = None,
    ) -> None:
        link = self
        self.marker = marker

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with link.lock:
                    link.in_flight += 1
                try:
                    self._forward()
                finally:
                    with link.lock:
                        link.in_flight -= 1

            def _forward(self) -> None:
                request = urllib.request.Request(upstream + self.path)
                for name in ("Accept", "Range"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    response = urllib.request.urlopen(request, timeout=30)
                except urllib.error.HTTPError as error:
                    response = error
                self.send_response(response.status)
                for name, value in response.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.end_headers()
                try:
                    link._send_body(response, self.wfile, slow="/blobs/" in self.path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.delay, self.sent, self.hold_at = delay, 0, hold_at
        self.lock, self.in_flight = threading.Lock(), 0
        self.gate, self.holding = threading.Event(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _send_body(self, response, out, slow: bool) -> None:
        body = 0
        while chunk := response.read(16384):
            out.write(chunk)
            self.sent += len(chunk)
            body += len(chunk)
            if slow and self.hold_at is not None and body >= self.hold_at:
                self.holding.set()
                if self.marker is not None:
                    self.marker.touch()
                # bounded: a test that never releases still ends (curl's stall bound, 60 s, is
                # longer, so the held transfer is not abandoned by curl meanwhile)
                self.gate.wait(timeout=45)
            if slow:
                time.sleep(self.delay)

    def release(self, timeout: float = 10.0) -> None:
        """Let held responses go on, and wait (bounded) until every response in flight has
        ended, so that no late byte of an interrupted transfer counts toward the next one."""
        self.gate.set()
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.in_flight, "a response of the interrupted transfer is still sending"

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_ctrl_c_stops_the_sync_and_its_curl_and_the_next_run_resumes(registry, server):
    """Ctrl-C (a real SIGINT to this process) in the middle of a blob: the sync stops within
    seconds, no curl keeps writing into the store, the bytes that arrived stay, and the next
    sync fetches only the rest (a Range request; the proxy counts the bytes). The link holds
    the blob after its first quarter until the test has checked the interrupted state, so a
    loaded machine cannot finish the blob before the signal lands."""
    size = 4 * 1024 * 1024
    digest = registry_double.push_model(
        registry.url, "site/big", "1b", seed="interrupt", size=size, chunk_size=None
    )
    quarter = size // 4
    held = server.models.parent / "link-holds"
    link = SlowLink(registry.url, hold_at=quarter, marker=held)
    try:
        manifest = Registry(link.url).manifest("site/big", "1b")
        weights = max(manifest.layers, key=lambda b: b.size)
        assert weights.size == size
        part = server.models / ".provisioner-tmp" / weights.file_name
        data = _host_data(server, link.url, ["big:1b"])

        # the "operator" (a process of its own, as a terminal is) presses Ctrl-C once the link
        # holds the blob after its first quarter: the link's marker, not the file's size (curl
        # may keep the last bytes it got in its write buffer, just short of a quarter)
        operator = subprocess.Popen(
            ["sh", "-c", f"while [ ! -e {held} ]; do sleep 0.1; done; sleep 0.2; "
                         f"kill -INT {os.getpid()}"]
        )  # fmt: skip
        try:
            with pytest.raises(KeyboardInterrupt):
                _sync(("@local", data))
        finally:
            operator.kill()
            operator.wait()

        def writers() -> list[str]:
            ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True)
            return [line for line in ps.stdout.splitlines() if str(part) in line]

        deadline = time.monotonic() + 5
        while writers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not writers()  # no orphaned helper or curl
        assert link.holding.is_set()  # the signal landed while the blob was held mid-way
        kept = part.stat().st_size
        time.sleep(1)
        assert part.stat().st_size == kept and 0 < kept <= quarter
        assert "big:1b" not in server.tags()

        link.release()  # the held response's client is gone: it ends without another byte
        assert part.stat().st_size == kept
        link.delay, link.sent = 0.0, 0
        again = _sync(("@local", data))
        assert again.exit_code == 0, again.to_json()
        assert server.tags()["big:1b"] == digest.removeprefix("sha256:")
        # resumed: the rest of the blob (plus the small manifests) came, not the whole blob
        assert weights.size - kept <= link.sent < weights.size - kept + 64 * 1024
    finally:
        link.stop()


def test_provision_models_sync_stops_on_ctrl_c_even_when_started_with_it_ignored(
    registry, server, tmp_path
):
    """``provision models sync`` as the operator runs it (a process of its own), started as a
    shell script's background job starts it (SIGINT ignored): Ctrl-C still stops it within
    seconds with exit 130, its helper and curl stop, and the bytes that arrived stay."""
    size = 4 * 1024 * 1024
    registry_double.push_model(
        registry.url, "site/big", "1b", seed="interrupt-cli", size=size, chunk_size=None
    )
    link = SlowLink(registry.url, hold_at=size // 4)  # the blob waits after a quarter
    try:
        manifest = Registry(link.url).manifest("site/big", "1b")
        weights = max(manifest.layers, key=lambda b: b.size)
        assert weights.size == size
        part = server.models / ".provisioner-tmp" / weights.file_name
        inventory = tmp_path / "inventory.py"
        inventory.write_text(
            f"hosts = [('@local', {_host_data(server, link.url, ['big:1b'])!r})]\n"
        )
        # the as_root fixture's patches, in the child: this user owns the files, the helper copy
        bootstrap = (
            "import provisioner.operations.ollama as o; "
            f"o.SERVICE_USER = {ollama_ops.SERVICE_USER!r}; "
            f"o.FETCH_HELPER = {ollama_ops.FETCH_HELPER!r}; "
            "from provisioner.cli import main; main()"
        )
        sync = subprocess.Popen(
            [sys.executable, "-c", bootstrap, "models", "sync", str(inventory), "--json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a lock of its own: this pytest process holds the unit tests' lock on @local
            env=dict(os.environ, PROVISIONER_HOST_LOCK_PATH=str(tmp_path / "provisioner.lock")),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        deadline = time.monotonic() + 60
        while not link.holding.is_set():  # the link holds the blob after its first quarter
            assert sync.poll() is None and time.monotonic() < deadline, sync.communicate()
            time.sleep(0.1)
        time.sleep(0.2)  # the held bytes reach curl
        sync.send_signal(signal.SIGINT)
        pressed = time.monotonic()
        out, err = sync.communicate(timeout=60)
        assert sync.returncode == 130, err
        assert time.monotonic() - pressed < 15
        assert "provision: models sync interrupted" in err

        def writers() -> list[str]:
            ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True)
            return [line for line in ps.stdout.splitlines() if str(part) in line]

        deadline = time.monotonic() + 5
        while writers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not writers()
        assert link.holding.is_set()
        kept = part.stat().st_size
        time.sleep(1)
        assert 0 < part.stat().st_size == kept <= weights.size // 4
        assert "big:1b" not in server.tags()
        link.release()
        assert part.stat().st_size == kept
    finally:
        link.stop()
