"""The first apply by layer (issue 15): the timeline bench/layers.py records around pyinfra's
CLI, its seconds and bytes per layer (bench/timeline.py), the bytes the lab's mirrors served
(bench/mirror_logs.py, fed with lines copied from the live lab's logs of 2026-12-06:
apt-cacher-ng 3.7.4, Python 3.11 http.server, docker-registry 2.8.2+ds1), and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import mirror_logs, report, timeline
from bench.run import evaluate_targets, first_apply_results

REPO = Path(__file__).resolve().parents[2]

# --- the mirrors' logs -------------------------------------------------------------------------

ACNG = """\
1796583592|I|151287|169.254.108.2|deb.debian.org/debian/dists/bookworm/InRelease
1796583592|O|151293|169.254.108.2|deb.debian.org/debian/dists/bookworm/InRelease
1796583592|O|151293|169.254.103.2|deb.debian.org/debian/dists/bookworm/InRelease
1796583789|O|392432|169.254.108.2|deb.debian.org/debian/pool/main/c/curl/libcurl4_7.88.1-10+deb12u15_amd64.deb
not a transfer line
"""

HTTP = """\
Serving HTTP on 169.254.100.1 port 8080 (http://169.254.100.1:8080/) ...
169.254.105.2 - - [06/Dec/2026 18:59:50] "GET /cuda/debian12/x86_64/Packages.gz HTTP/1.1" 200 -
169.254.103.2 - - [06/Dec/2026 19:00:21] "GET /cuda/debian12/x86_64/InRelease HTTP/1.1" 304 -
169.254.103.2 - - [06/Dec/2026 19:03:03] "GET /whl/cu130/torch/ HTTP/1.1" 200 -
169.254.103.2 - - [06/Dec/2026 19:03:03] "GET /whl/cu130/torch-2.9.1%2Bcu130-py3-none-any.whl HTTP/1.1" 200 -
169.254.105.2 - - [06/Dec/2026 19:03:04] "GET /cuda/debian12/x86_64/./libcuda1_580.126.09-1_amd64.deb HTTP/1.1" 200 -
169.254.105.2 - - [06/Dec/2026 19:03:05] "GET /whl/cu130/ HTTP/1.1" 200 -
169.254.105.2 - - [06/Dec/2026 19:03:06] "HEAD /cuda/debian12/x86_64/Packages.gz HTTP/1.1" 200 -
"""  # noqa: E501 (log lines as written)

REGISTRY = """\
time="2026-12-06T18:59:43.213729559Z" level=info msg="listening on 169.254.100.1:5000" go.version=go1.19.8 instance.id=da90e70f-9322-47ad-ad20-332dbb1f4c48 version=2.8.2+ds1
time="2026-12-06T18:59:43.323858425Z" level=error msg="response completed with error" err.code="blob unknown" err.detail="sha256:fa9b7a907ffa239bc7bef352e6072377465a0899d962eda4be0a1d5b988b09d2" err.message="blob unknown to registry" go.version=go1.19.8 http.request.host="169.254.100.1:5000" http.request.id=7e2c7cc2-a385-4361-b456-cab6ea66bc63 http.request.method=HEAD http.request.remoteaddr="169.254.100.1:46788" http.request.uri="/v2/library/qwen2.5-coder/blobs/sha256:fa9b7a907ffa239bc7bef352e6072377465a0899d962eda4be0a1d5b988b09d2" http.request.useragent= http.response.contenttype="application/json; charset=utf-8" http.response.duration=2.194333ms http.response.status=404 http.response.written=157 vars.digest="sha256:fa9b7a907ffa239bc7bef352e6072377465a0899d962eda4be0a1d5b988b09d2" vars.name=library/qwen2.5-coder
time="2026-12-06T19:03:33.283975097Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="169.254.100.1:5000" http.request.id=e70f132f-2bb8-4d48-9c36-994fc20cfe4e http.request.method=GET http.request.remoteaddr="169.254.105.2:54394" http.request.uri=/v2/library/qwen2.5-coder/manifests/14b http.request.useragent=curl/7.88.1 http.response.contenttype=application/vnd.docker.distribution.manifest.v2+json http.response.duration=1.190115ms http.response.status=200 http.response.written=848
time="2026-12-06T19:03:35.883677593Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="169.254.100.1:5000" http.request.id=ec08f155-8b76-495e-8abf-f8dfea25a97e http.request.method=GET http.request.remoteaddr="169.254.105.2:54496" http.request.uri="/v2/library/nomic-embed-text/blobs/sha256:a0f7c71fd4038abbdb0a82c27ea305db6ad7da319e9e75d64d6358a74094125a" http.request.useragent=curl/7.88.1 http.response.contenttype=application/octet-stream http.response.duration=3.369535ms http.response.status=200 http.response.written=4096
169.254.105.2 - - [06/Dec/2026:19:03:35 +0000] "GET /v2/library/nomic-embed-text/blobs/sha256:a0f7c71fd4038abbdb0a82c27ea305db6ad7da319e9e75d64d6358a74094125a HTTP/1.1" 200 4096 "" "curl/7.88.1"
"""  # noqa: E501

HOSTS = {"169.254.103.2": "bench3", "169.254.105.2": "bench5", "169.254.108.2": "bench8"}


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A mirror's www with the files the HTTP sample names, of known sizes."""
    root = tmp_path / "www"
    files = {
        "cuda/debian12/x86_64/Packages.gz": 1000,
        "cuda/debian12/x86_64/InRelease": 1198,
        "cuda/debian12/x86_64/libcuda1_580.126.09-1_amd64.deb": 30_000,
        "whl/cu130/torch/index.html": 300,
        "whl/cu130/torch-2.9.1+cu130-py3-none-any.whl": 50_000,
    }
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    return root


def test_acng_lines_are_served_or_fetched_upstream():
    transfers = mirror_logs.parse_acng(ACNG)
    served = [(t.client, t.size) for t in transfers if not t.upstream]
    assert served == [
        ("169.254.108.2", 151293),
        ("169.254.103.2", 151293),
        ("169.254.108.2", 392432),
    ]
    assert [(t.client, t.size) for t in transfers if t.upstream] == [("169.254.108.2", 151287)]


def test_http_sizes_come_from_the_files_served(www):
    got = [(t.client, t.size) for t in mirror_logs.parse_http(HTTP, www)]
    assert got == [
        ("169.254.105.2", 1000),  # Packages.gz
        ("169.254.103.2", 0),  # 304: no body
        ("169.254.103.2", 300),  # a directory: its index.html
        ("169.254.103.2", 50_000),  # %2B decoded
        ("169.254.105.2", 30_000),  # ./ resolved
        ("169.254.105.2", None),  # a generated listing: size unknown
        ("169.254.105.2", 0),  # HEAD: no body
    ]


def test_a_logged_path_never_reads_outside_www(www, tmp_path):
    (tmp_path / "secret").write_text("x" * 10)
    assert mirror_logs.served_file(www, "/../secret") is None
    assert mirror_logs.served_file(www, "/%2e%2e/secret") is None
    assert mirror_logs.served_file(www, "/cuda/../cuda/debian12/x86_64/InRelease?x=1").name == (
        "InRelease"
    )


def test_registry_counts_response_lines_only():
    got = [(t.client, t.size) for t in mirror_logs.parse_registry(REGISTRY)]
    # the access-log line repeats the blob: not counted twice
    assert got == [("169.254.100.1", 157), ("169.254.105.2", 848), ("169.254.105.2", 4096)]
    assert mirror_logs.client_address("[fe80::1]:5000") == "fe80::1"


def test_summary_per_mirror_and_host(www):
    transfers = [
        *mirror_logs.parse_acng(ACNG),
        *mirror_logs.parse_http(HTTP, www),
        *mirror_logs.parse_registry(REGISTRY),
    ]
    summary = mirror_logs.summarise(transfers, HOSTS)
    acng = summary["mirrors"]["apt-cacher-ng"]
    assert (acng["bytes"], acng["requests"], acng["upstream_bytes"]) == (695018, 3, 151287)
    assert acng["by_host"] == {"bench8": 151293 + 392432, "bench3": 151293}
    http = summary["mirrors"]["http"]
    assert (http["bytes"], http["requests"], http["unsized"]) == (81300, 7, 1)
    assert summary["mirrors"]["registry"]["by_host"] == {"169.254.100.1": 157, "bench5": 4944}
    assert summary["by_host"]["bench5"] == 1000 + 30_000 + 848 + 4096
    assert summary["by_host"]["bench3"] == 151293 + 300 + 50_000


def test_only_what_the_logs_gained_is_read(tmp_path, www):
    services = tmp_path / "services"
    (services / "acng-log").mkdir(parents=True)
    (services / "acng-log" / "apt-cacher.log").write_text(ACNG)
    (services / "registry.log").write_text(REGISTRY)  # http.log does not exist yet
    logs = mirror_logs.MirrorLogs(services, www)
    logs.mark()
    with (services / "acng-log" / "apt-cacher.log").open("a") as out:
        out.write("1796583800|O|1000|169.254.103.2|deb.debian.org/debian/pool/a.deb\n")
        out.write("1796583800|O|5000|169.254.103.2|deb.debian.org/debian/pool/b.deb")  # unfinished
    (services / "http.log").write_text(HTTP.splitlines()[1] + "\n")
    summary = logs.read(HOSTS, settle=0)
    assert summary["mirrors"]["apt-cacher-ng"]["bytes"] == 1000
    assert summary["mirrors"]["http"]["by_host"] == {"bench5": 1000}
    assert summary["mirrors"]["registry"]["requests"] == 0
    assert summary["by_host"] == {"bench3": 1000, "bench5": 1000}


# --- seconds and bytes per layer -----------------------------------------------------------------


def _op(layer: str, start: float, end: float, before: dict, after: dict) -> dict:
    hosts = {h: {"start": start, "end": end, "ok": True} for h in before}
    return {
        "name": f"provisioner | {layer} | op",
        "layer": layer,
        "start": start,
        "end": end,
        "bytes_start": before,
        "bytes_end": after,
        "hosts": hosts,
    }


def _timeline() -> dict:
    """Two hosts: connect 1 s, plan 3 s, execute 20 s; b's counter is unreadable mid-run."""
    return {
        "version": 1,
        "stages": [
            {"stage": "connect", "at": 100.0, "bytes": {"a": 0, "b": 0}},
            {"stage": "prepare", "at": 101.0, "bytes": {"a": 10, "b": 20}},
            {"stage": "execute", "at": 104.0, "bytes": {"a": 110, "b": 220}},
            {"stage": "disconnect", "at": 124.0, "bytes": {"a": 9110, "b": None}},
            {"stage": "end", "at": 124.5, "bytes": {"a": 9120, "b": None}},
        ],
        "plan": [
            {"host": "a", "layer": "GPU stack", "start": 101.5, "end": 102.5},
            {"host": "b", "layer": "GPU stack", "start": 101.5, "end": 103.5},
            {"host": "a", "layer": "Install Ollama", "start": 102.5, "end": 103.0},
            {"host": "b", "layer": "Install Ollama", "start": 103.5, "end": 103.6},
            {"host": "b", "layer": "Install Ollama", "start": 103.6, "end": 104.0},
        ],
        "ops": [
            _op("site", 104.0, 105.0, {"a": 110, "b": 220}, {"a": 110, "b": 220}),
            _op("GPU stack", 105.0, 115.0, {"a": 110, "b": 220}, {"a": 5110, "b": 6220}),
            _op("GPU stack", 115.0, 116.0, {"a": 5110, "b": 6220}, {"a": 5210, "b": 6320}),
            _op("Install Ollama", 116.0, 124.0, {"a": 5210, "b": 6320}, {"a": 9110, "b": None}),
        ],
    }


def test_layers_add_their_operations_and_plan_time():
    summary = timeline.summarise(_timeline())
    gpu = summary["layers"]["GPU stack"]
    assert gpu["plan_s"] == 1.5  # median of a's 1 s and b's 2 s
    assert (gpu["execute_s"], gpu["wall_s"], gpu["ops"]) == (11.0, 12.5, 2)
    assert gpu["bytes"] == {"a": 5100, "b": 6100} and gpu["bytes_total"] == 11200
    assert gpu["bytes_per_host"] == {"median": 5600, "min": 5100, "max": 6100, "n": 2}
    ollama = summary["layers"]["Install Ollama"]
    assert ollama["plan_s"] == 0.5  # a 0.5 s; b 0.1 + 0.4 s
    assert ollama["bytes"] == {"a": 3900, "b": None} and ollama["bytes_total"] is None
    site = summary["layers"]["site"]
    assert site["plan_s"] == 1.0  # the plan stage's 3 s less the layers' 1.5 + 0.5
    assert site["wall_s"] == 2.0 and site["bytes_total"] == 0
    assert list(summary["layers"]) == ["site", "GPU stack", "Install Ollama"]  # run order
    total = sum(row["wall_s"] for row in summary["layers"].values())
    assert total == pytest.approx(3.0 + 20.0)  # plan + execute stages


def test_phases_are_pyinfras_stages_with_their_bytes():
    phases = timeline.summarise(_timeline())["phases"]
    assert list(phases) == ["connect", "plan", "execute", "disconnect"]
    assert phases["plan"] == {"wall_s": 3.0, "bytes": {"a": 100, "b": 200}}
    assert phases["execute"]["bytes"] == {"a": 9000, "b": None}


def test_the_summary_command_reads_a_timeline_file(tmp_path, capsys):
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(_timeline()))
    assert timeline.main([str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]["GPU stack"]["wall_s"] == 12.5
    assert timeline.main([]) == 2


def test_a_serial_run_is_read_from_each_hosts_own_span():
    op = {
        "layer": "GPU stack",
        "hosts": {
            "a": {"start": 1.0, "end": 3.0, "bytes_start": 0, "bytes_end": 50},
            "b": {"start": 3.0, "end": 4.5, "bytes_start": 10, "bytes_end": 15},
        },
    }
    assert timeline.op_span(op) == 3.5
    assert timeline.op_bytes(op) == {"a": 50, "b": 5}


# --- the recorder, around pyinfra's own CLI (pyinfra 3.10, @local) -------------------------------

DEPLOY = """\
from pyinfra.api import deploy
from pyinfra.operations import server

COUNTER = {counter!r}

@deploy("GPU stack")
def gpu():
    server.shell(name="Fetch the driver", commands=[f"echo 5000 > '{{COUNTER}}'"])
    server.shell(name="Check", commands=["true"])

@deploy("Install Ollama")
def ollama():
    server.shell(name="Fetch Ollama", commands=[f"sleep 0.2; echo 7000 > '{{COUNTER}}'"])
    server.shell(name="Fail", commands=["{last}"])

@deploy("provisioner")
def site():
    server.shell(name="Hold the host lock", commands=["true"])
    gpu()
    ollama()

site()
"""


def _record(tmp_path: Path, last: str) -> tuple[int, dict]:
    counter = tmp_path / "counter-@local"
    counter.write_text("1000\n")
    (tmp_path / "inv.py").write_text('hosts = ["@local"]\n')
    (tmp_path / "deploy.py").write_text(DEPLOY.format(counter=str(counter), last=last))
    out = tmp_path / "timeline.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.layers",
            str(tmp_path / "inv.py"),
            str(tmp_path / "deploy.py"),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "BENCH_LAYERS_TIMELINE": str(out),
            "BENCH_LAYERS_NET": str(tmp_path / "counter-{host}"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(out.read_text())


def test_the_recorder_times_each_operation_and_its_bytes_on_a_real_pyinfra_run(tmp_path):
    code, doc = _record(tmp_path, "true")
    assert code == 0
    assert [s["stage"] for s in doc["stages"]] == [
        "connect",
        "prepare",
        "execute",
        "disconnect",
        "end",
    ]
    assert [(op["layer"], op["name"].rsplit(" | ", 1)[-1]) for op in doc["ops"]] == [
        ("site", "Hold the host lock"),
        ("GPU stack", "Fetch the driver"),
        ("GPU stack", "Check"),
        ("Install Ollama", "Fetch Ollama"),
        ("Install Ollama", "Fail"),
    ]
    starts = [op["start"] for op in doc["ops"]]
    assert starts == sorted(starts) and all(op["end"] >= op["start"] for op in doc["ops"])
    assert all(op["hosts"]["@local"]["ok"] for op in doc["ops"])
    assert {p["layer"] for p in doc["plan"]} == {"GPU stack", "Install Ollama"}
    layers = timeline.summarise(doc)["layers"]
    assert {name: row["bytes"] for name, row in layers.items()} == {
        "site": {"@local": 0},
        "GPU stack": {"@local": 4000},
        "Install Ollama": {"@local": 2000},
    }
    assert layers["Install Ollama"]["execute_s"] >= 0.2  # the sleep


def test_a_failed_run_exits_non_zero_and_still_leaves_its_timeline(tmp_path):
    code, doc = _record(tmp_path, "exit 3")
    assert code != 0
    last = doc["ops"][-1]
    assert last["layer"] == "Install Ollama" and last["hosts"]["@local"]["ok"] is False
    assert doc["stages"][-1]["stage"] == "end"


def test_a_missing_counter_reads_as_unknown(tmp_path):
    from bench.layers import received_bytes

    (tmp_path / "n-a").write_text("42\n")
    assert received_bytes(["a", "b"], str(tmp_path / "n-{host}")) == {"a": 42, "b": None}


# --- results and report --------------------------------------------------------------------------


def _first_apply() -> dict:
    served = {
        "mirrors": {
            "apt-cacher-ng": {
                "bytes": 20 * 2**20,
                "requests": 160,
                "unsized": 0,
                "upstream_bytes": 2**20,
                "by_host": {"a": 10 * 2**20, "b": 10 * 2**20},
            },
            "http": {
                "bytes": 3 * 2**20,
                "requests": 40,
                "unsized": 1,
                "upstream_bytes": 0,
                "by_host": {"a": 2**20, "b": 2 * 2**20},
            },
        },
        "by_host": {"a": 11 * 2**20, "b": 12 * 2**20, "169.254.100.1": 5},
    }
    return first_apply_results(
        ["a", "b"],
        190.04,
        0,
        timeline.summarise(_timeline()),
        served,
        {"a": 0, "b": None},
        {"a": 12 * 2**20, "b": 7},
    )


def test_first_apply_results_keep_the_old_keys_and_add_the_breakdown():
    first = _first_apply()
    assert (first["hosts"], first["wall_s"], first["exit_code"]) == (2, 190.0, 0)
    assert first["by_host"] == {
        "a": {"from_mirrors_bytes": 11 * 2**20, "received_bytes": 12 * 2**20},
        "b": {"from_mirrors_bytes": 12 * 2**20, "received_bytes": None},
    }
    assert first["mirror_clients_not_hosts"] == {"169.254.100.1": 5}
    assert list(first["layers"]) == ["site", "GPU stack", "Install Ollama"]
    assert first["phases"]["connect"]["wall_s"] == 1.0


def _results(first: dict | None) -> dict:
    results = {
        "meta": {
            "date": "2026-12-06T19:00:00Z",
            "revision": "abc1234",
            "machine": {
                "cpus": 2,
                "memory_mib": 1,
                "kernel": "6.1",
                "python": "3.11",
                "pyinfra": "3.10.0",
            },
            "options": {"reps": 1},
        },
        "notes": [],
    }
    if first:
        results["first_apply"] = first
    results["targets"] = evaluate_targets(results)
    return results


def test_the_report_breaks_the_first_apply_down_by_layer_and_mirror():
    first = _first_apply()
    first["layers"]["GPU stack"]["bytes"] = {"a": 5 * 2**20, "b": 7 * 2**20}
    first["layers"]["Install Ollama"]["bytes"] = {"a": 3 * 2**20, "b": None}
    text = report.render(_results(first))
    assert "## First apply on 2 bare hosts, by layer" in text
    assert "| *connect* | 1.0 | | | | 0.0 (0.0–0.0) |" in text
    assert "| GPU stack | 12.5 | 1.5 | 11.0 | 2 | 6.0 (5.0–7.0) |" in text
    assert "| Install Ollama | 8.5 | 0.5 | 8.0 | 1 | 3.0 |" in text  # b's counter unknown
    assert "| *results, disconnect* | 0.5 | | | | |" in text
    # the stages in all: 1 + 3 + 20 + 0.5 s; a received 9110 bytes, b's counter was lost
    assert "| **pyinfra, in all** | **24.5** | 3.0 | 20.0 | | 0.0 |" in text
    assert "| apt-cacher-ng | 20.0 | 160 | 1.0 |" in text
    assert "| http | 3.0 (1 of unknown size) | 40 | – |" in text
    assert "| **all** | **23.0** | | |" in text
    assert "| a | 11.0 | 12.0 |" in text and "| b | 12.0 | – |" in text
    what = "| first provision apply on 2 bare hosts | measured by layer, bytes per host and "
    value = "per mirror | 190 s (3 layers, 2 mirrors, 12 MiB from the mirrors per host (max))"
    assert f"{what}{value} | met |" in text


def test_without_a_first_apply_the_target_is_not_measured():
    rows = {r["key"]: r for r in evaluate_targets({})}
    assert rows["first_apply_by_layer"]["value"] is None
    text = report.render(_results(None))
    assert "## First apply" not in text
    assert "| first provision apply on 8 bare hosts | measured by layer" in text
    assert "| not measured | – |" in text


def test_a_failed_first_apply_misses_its_goal():
    first = {**_first_apply(), "exit_code": 1}
    rows = {r["key"]: r for r in evaluate_targets({"first_apply": first})}
    assert rows["first_apply_by_layer"]["met"] is False


def test_the_lab_session_wires_the_timeline_the_logs_and_the_counters(tmp_path, monkeypatch, www):
    """LabRun.first_apply on a stand-in lab: bench.layers is given the timeline's file, the
    mirrors' logs are read from where they were before the run, addresses become names."""
    from types import SimpleNamespace

    from bench import lab_bench, layers
    from bench.run import LabRun

    services = tmp_path / "services"
    (services / "acng-log").mkdir(parents=True)
    acng = services / "acng-log" / "apt-cacher.log"
    acng.write_text(ACNG)  # before the run: not counted
    spec = {"bench1": "169.254.101.2", "bench2": "169.254.102.2"}
    doc = _timeline()
    for stage in doc["stages"]:
        stage["bytes"] = {"bench1": stage["bytes"]["a"], "bench2": stage["bytes"]["b"]}
    doc["ops"] = [
        _op("GPU stack", 105.0, 115.0, {"bench1": 0, "bench2": 0}, {"bench1": 7, "bench2": 9})
    ]
    seen = {}

    def run_timed(command, *, log, env, parse_json):
        seen.update(command=command, env=env)
        Path(env[layers.TIMELINE_ENV]).write_text(json.dumps(doc))
        Path(env["BENCH_LAYERS_OUT"]).write_text('{"bench1": {"execute GPU stack": 3}}')
        with acng.open("a") as out:
            out.write("1796583800|O|1000|169.254.102.2|deb.debian.org/debian/pool/a.deb\n")
        return lab_bench.CliRun(190.0, 0, "", "tail")

    counters = iter([{"bench1": 100, "bench2": None}, {"bench1": 600, "bench2": 5}])
    monkeypatch.setattr(lab_bench, "run_timed", run_timed)
    monkeypatch.setattr(layers, "received_bytes", lambda names: next(counters))
    monkeypatch.setattr(mirror_logs.time, "sleep", lambda s: None)
    lab = LabRun.__new__(LabRun)
    lab.max_n, lab.work, lab.logs = 2, tmp_path, tmp_path / "logs"
    lab.inventories = {2: tmp_path / "lab.py"}
    lab.lab = SimpleNamespace(
        info={"hosts": {name: {"address": a} for name, a in spec.items()}},
        mirrors=SimpleNamespace(services=services, www=www),
    )
    first, tail = lab.first_apply()
    assert seen["command"][1:] == ["-m", "bench.layers", str(tmp_path / "lab.py")]
    assert tail == "tail" and first["exit_code"] == 0 and first["hosts"] == 2
    assert first["layers"]["GPU stack"]["bytes"] == {"bench1": 7, "bench2": 9}
    assert first["mirrors"]["apt-cacher-ng"]["bytes"] == 1000
    assert first["by_host"] == {
        "bench1": {"from_mirrors_bytes": 0, "received_bytes": 500},
        "bench2": {"from_mirrors_bytes": 1000, "received_bytes": None},
    }
    assert first["commands"] == {"bench1": {"execute GPU stack": 3}}
