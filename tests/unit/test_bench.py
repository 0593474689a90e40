"""The benchmark's own pure parts (bench/): statistics, reports, the matplotlib chart, the planner
fleet, the lab fleet and inventories, sshd session counting, the Ansible peer's inventory and
recap, the counting registry proxy. Nothing here is timed."""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from bench import chart, lab_bench, planner_scale, report
from bench.__main__ import _ints, _parts
from bench.peers.ansible import inventory as ansible_inventory
from bench.peers.ansible.runner import PLAYBOOK, parse_recap
from bench.registry_proxy import CountingProxy, request_kind
from bench.run import evaluate_targets, fanout, summarise_runs
from bench.stats import paired_ratios, ratio_summary, summarize, versus_target

# --- statistics ---------------------------------------------------------------------------------


def test_summary_is_median_min_max():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.text(" s") == "2.50 s (1.00–10.00, n=4)"
    assert summarize([4.2]).text(" s") == "4.20 s"


def test_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_ratios_are_paired_run_by_run():
    assert paired_ratios([2.0, 6.0], [1.0, 2.0]) == [2.0, 3.0]
    assert ratio_summary([2.0, 6.0, 4.0], [1.0, 2.0, 4.0]).median == 2.0
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_ratios([1.0], [0.0])


def test_a_missed_target_says_by_how_much():
    assert versus_target(4.0, 5.0)["met"] is True
    missed = versus_target(6.0, 5.0)
    assert missed["met"] is False
    assert missed["miss_factor"] == 1.2 and missed["miss_percent"] == 20.0
    assert versus_target(0.3, 0.3, strict=True)["met"] is False
    assert versus_target(0.3, 0.3)["met"] is True


# --- results, targets, report ---------------------------------------------------------------------


def _record(wall: float, commands: int, hosts: int = 1, changed=None) -> dict:
    return {
        "wall_s": wall,
        "exit_code": 0,
        "changed": changed or {},
        "sessions": {
            f"bench{i}": {"logins": 1, "commands": commands, "sftp": 0} for i in range(1, hosts + 1)
        },
    }


def _results() -> dict:
    ours = {1: [_record(4.0, 60), _record(6.0, 62)], 8: [_record(8.0, 60, 8), _record(9.0, 61, 8)]}
    ansible = {1: [_record(20.0, 40), _record(30.0, 41)]}
    return {
        "meta": {
            "date": "2026-11-28T10:00:00Z",
            "revision": "abc1234",
            "machine": {
                "cpus": 2,
                "memory_mib": 24000,
                "kernel": "6.1",
                "python": "3.11",
                "pyinfra": "3.10.0",
            },
            "options": {"reps": 2},
            "duration_s": 100,
        },  # fmt: skip
        "notes": [],
        "converged": {
            "ours": summarise_runs(ours),
            "ansible": summarise_runs(ansible),
            "fanout_ratio": {"ours": fanout(ours)},
            "ours_over_ansible": {"1": ratio_summary([4.0, 6.0], [20.0, 30.0]).to_json()},
            "pyinfra_baseline": summarise_runs({1: [_record(1.0, 1), _record(1.0, 1)]})["1"],
        },
        "planner": {
            "hosts": 10000,
            "models_planned": 5,
            "wall_s": summarize([2.5, 2.4]).to_json(),
            "max_rss_mib": summarize([200.0]).to_json(),
            "plan_fleet_s": summarize([0.5]).to_json(),
        },
        "startup": {
            "provision_help_s": summarize([0.1, 0.2]).to_json(),
            "python_bare_s": summarize([0.02]).to_json(),
        },
    }


def test_runs_are_summarised_per_host_count():
    rows = _results()["converged"]["ours"]
    assert rows["1"]["wall_s"]["median"] == 5.0
    assert rows["8"]["commands_per_host"]["min"] == 60
    assert rows["8"]["commands_per_host"]["n"] == 16  # every host of every run
    assert rows["1"]["runs_with_changes"] == 0
    changed = summarise_runs({1: [_record(1.0, 5, changed={"bench1": ["op"]})]})
    assert changed["1"]["runs_with_changes"] == 1


def test_fanout_divides_each_repetition_by_its_own_one_host_time():
    ratios = fanout({1: [_record(4.0, 1), _record(6.0, 1)], 8: [_record(8.0, 1), _record(9.0, 1)]})
    assert ratios["8"]["min"] == 1.5 and ratios["8"]["max"] == 2.0


def test_targets_report_met_missed_and_unmeasured():
    rows = {row["key"]: row for row in evaluate_targets(_results())}
    assert rows["converged_one_host_s"]["met"] is True  # 5.0 <= 5
    assert rows["fanout_ratio"]["met"] is False and rows["fanout_ratio"]["hosts"] == 8
    assert rows["ours_over_ansible"]["met"] is True  # 0.2
    assert rows["plan_10k_s"]["met"] is False and rows["plan_10k_s"]["miss_percent"] == 22.5
    assert rows["help_s"]["met"] is True
    assert rows["mirror_upstream_factor"]["value"] is None


def test_markdown_report_has_every_section_and_the_misses(tmp_path):
    results = _results()
    results["targets"] = evaluate_targets(results)
    text = report.render(results)
    assert "| provision plan, 10000 hosts (process wall time) | < 2 s | 2.45 s |" in text
    assert "**missed by 22.5 %**" in text
    assert "| 8 | provision apply | 8.50 (8.00–9.00) | 1.75 (1.50–2.00) |" in text
    assert "| 1 | ours / Ansible |" not in text and "| 1 | 0.200 (0.200–0.200) |" in text
    assert "## Planner scale" in text and "## Start-up" in text
    assert "spends 4.00 s more, for 60 more remote commands (67 ms each" in text
    paths = report.write(results, tmp_path)
    assert json.loads(paths["json"].read_text())["meta"]["revision"] == "abc1234"
    assert paths["md"].read_text().startswith(text)


# --- chart (matplotlib, optional) ---------------------------------------------------------

needs_matplotlib = pytest.mark.skipif(
    not chart.AVAILABLE, reason="matplotlib is not installed (the bench's optional extra)"
)


@needs_matplotlib
def test_the_report_links_its_fleet_scaling_chart(tmp_path):
    paths = report.write(_results(), tmp_path)
    assert paths["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "![fleet scaling](2026-11-28.png)" in paths["md"].read_text()


def test_without_matplotlib_the_report_says_why_it_has_no_chart(tmp_path, monkeypatch):
    monkeypatch.setattr(chart, "AVAILABLE", False)
    paths = report.write(_results(), tmp_path)
    assert "png" not in paths and not list(tmp_path.glob("*.png"))
    assert chart.MISSING in paths["md"].read_text()
    with pytest.raises(RuntimeError, match="matplotlib is not installed"):
        chart.write_chart(tmp_path / "x.png", [], title="t", x_label="x", y_label="y")


@needs_matplotlib
def test_chart_draws_each_series_in_its_own_colour(tmp_path):
    from PIL import Image

    series = [
        chart.Series("ours", [(8, 5.0, 4.0, 6.0), (1, 3.0, 2.5, 3.5)]),
        chart.Series("ansible", [(1, 9.0, 8.0, 10.0), (8, 30.0, 25.0, 33.0)]),
    ]
    path = chart.write_chart(tmp_path / "c.png", series, title="t", x_label="x", y_label="y")
    image = Image.open(path).convert("RGB")
    assert image.size == (720, 480)
    colours = {colour for _, colour in image.getcolors(maxcolors=720 * 480)}
    # matplotlib's default cycle: C0 blue, C1 orange; one per series
    assert (31, 119, 180) in colours and (255, 127, 14) in colours
    assert (44, 160, 44) not in colours  # no third series was drawn


def test_scaling_series_come_from_the_converged_runs():
    series = report.scaling_series(_results())
    assert [s.name for s in series] == ["provision apply (pyinfra)", "ansible-playbook"]
    assert all(p[2] <= p[1] <= p[3] for s in series for p in s.points)


# --- planner scale ------------------------------------------------------------------------------


def test_recorded_fleet_is_deterministic_and_mixed():
    fleet = planner_scale.fleet_facts(300)["hosts"]
    assert fleet == planner_scale.fleet_facts(300)["hosts"]
    assert len(fleet) == 300 and "gpu-00001" in fleet and "gpu-00300" in fleet
    states = {h["facts"]["gpu_state"] for h in fleet.values()}
    assert {"ok", "no-gpu", "no-driver"} <= states
    uuids = [g["uuid"] for h in fleet.values() for g in h["facts"]["gpus"]]
    assert len(uuids) == len(set(uuids))


def test_recorded_fleet_data_is_valid_host_data():
    from provisioner import settings

    for entry in planner_scale.fleet_facts(200)["hosts"].values():
        assert settings.validate(entry["data"]) == []


def test_plan_of_recorded_facts(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(planner_scale.fleet_facts(60)))
    out = planner_scale.plan_recorded(path)
    assert out["hosts"] == 60 and out["models_planned"] > 30
    assert out["inside_s"] >= out["plan_s"] >= 0


# --- the lab fleet and inventories ------------------------------------------------------------


FLEET = {
    "network": {"service_address": "169.254.100.1"},
    "host": [
        {"name": "gpu1", "index": 1, "release": "bookworm", "gpus": [{"name": "RTX"}]},
        {"name": "cpu1", "index": 4, "release": "bookworm", "gpus": []},
    ],
}


def test_bench_fleet_clones_one_host_without_touching_the_config():
    config = lab_bench.bench_fleet_config(FLEET, 8)
    assert [h["name"] for h in config["host"]] == [f"bench{i}" for i in range(1, 9)]
    assert [h["index"] for h in config["host"]] == list(range(1, 9))
    assert all(h["gpus"] == [{"name": "RTX"}] for h in config["host"])
    assert [h["name"] for h in FLEET["host"]] == ["gpu1", "cpu1"]
    config["host"][0]["gpus"].append("x")
    assert FLEET["host"][0]["gpus"] == [{"name": "RTX"}]
    with pytest.raises(ValueError):
        lab_bench.bench_fleet_config(FLEET, 31)
    with pytest.raises(ValueError):
        lab_bench.bench_fleet_config(FLEET, 2, template="nope")


def test_inventory_for_n_hosts_loads_and_validates(tmp_path, monkeypatch):
    from provisioner.inventory import load

    spec = {"address": "169.254.101.2", "gpus": [{"memory_total_mib": 24564}]}
    hosts = [(name, lab_bench.host_data(spec)) for name in lab_bench.host_names(4)]
    group_data = tmp_path / "lab-group-data.py"
    group_data.write_text('ssh_user = "root"\nollama_version = "0.32.15"\n')
    path = lab_bench.write_inventory(
        tmp_path / "inv", hosts, group_data, overrides={"ollama_registry_namespace": "site"}
    )
    assert path.name == "lab.py"
    monkeypatch.chdir(tmp_path)
    loaded = load(str(path))
    assert [h.name for h in loaded.hosts] == ["bench1", "bench2", "bench3", "bench4"]
    data = loaded.data_of(loaded.hosts[2])
    assert data["models"] == ["qwen2.5-coder:14b", "llama3.2:3b"]
    assert data["gpu_count"] == 1 and data["cuda_toolkit_version"] == "13.0"
    assert data["ollama_registry_namespace"] == "site" and data["ssh_user"] == "root"


def test_group_data_values_are_what_pyinfra_takes(tmp_path):
    path = tmp_path / "g.py"
    path.write_text("import json\nfrom pathlib import Path\n_x = 1\na = json.dumps(1)\nb = [2]\n")
    assert lab_bench.group_data_values(path) == {"a": "1", "b": [2]}


SSHD_LOG = """\
Connection from 169.254.101.1 port 40000 on 169.254.101.2 port 22 rdomain ""
Accepted publickey for root from 169.254.101.1 port 40000 ssh2: ED25519 SHA256:abc
Starting session: command for root from 169.254.101.1 port 40000 id 0
Starting session: command for root from 169.254.101.1 port 40000 id 1
Starting session: subsystem 'sftp' for root from 169.254.101.1 port 40000 id 2
Close session: user root from 169.254.101.1 port 40000 id 0
"""


def test_sshd_log_counts_logins_commands_and_sftp():
    assert lab_bench.sshd_counts(SSHD_LOG) == {"logins": 1, "commands": 2, "sftp": 1}
    assert lab_bench.sshd_counts("") == {"logins": 0, "commands": 0, "sftp": 0}


def test_session_log_counts_only_what_came_after_start(tmp_path):
    root = tmp_path / "bench1"
    log = root / lab_bench.SSHD_LOG.lstrip("/")
    log.parent.mkdir(parents=True)
    log.write_text(SSHD_LOG)
    sessions = lab_bench.SessionLog({"bench1": root, "bench2": tmp_path / "missing"})
    sessions.start(["bench1", "bench2"])
    with log.open("a") as handle:
        handle.write("Starting session: command for root from x port 1 id 9\n")
    counts = sessions.stop(settle=0)
    assert counts["bench1"] == {"logins": 0, "commands": 1, "sftp": 0}
    assert counts["bench2"] == {"logins": 0, "commands": 0, "sftp": 0}


def test_timed_run_parses_json_and_counts_the_childs_cpu(tmp_path):
    code = (
        "import json, sys; sum(range(2_000_000)); "
        "print(json.dumps({'n': 1})); print('log', file=sys.stderr)"
    )
    run = lab_bench.run_timed([sys.executable, "-c", code], log=tmp_path / "run.log")
    assert run.returncode == 0 and run.payload == {"n": 1}
    assert run.cpu_s > 0 and run.wall_s > 0
    assert (tmp_path / "run.log").read_text() == "log\n"
    bad = lab_bench.run_timed([sys.executable, "-c", "print('not json')"], log=tmp_path / "b.log")
    assert bad.payload is None and "not json" in (tmp_path / "b.log").read_text()


def test_controller_cpu_is_summarised_when_measured():
    with_cpu = [dict(_record(1.0, 5), cpu_s=c) for c in (0.5, 0.7)]
    assert summarise_runs({1: with_cpu})["1"]["controller_cpu_s"]["median"] == 0.6
    assert "controller_cpu_s" not in summarise_runs({1: [_record(1.0, 5)]})["1"]


def test_changed_operations_by_host():
    payload = {"hosts": {"a": {"changed": ["x"]}, "b": {"changed": []}}}
    assert lab_bench.changed_by_host(payload) == {"a": ["x"], "b": []}
    assert lab_bench.changed_by_host(None) == {}


# --- the Ansible peer ---------------------------------------------------------------------------

LAB_HOST = {
    "address": "169.254.101.2",
    "release": "bookworm",
    "gpus": [
        {"name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "compute_cap": "8.9",
         "pci_device_id": "2684", "pci_bus_id": "00000000:01:00.0", "uuid": "GPU-1"}
    ],
}  # fmt: skip
MIRROR = "http://169.254.100.1:8080"
LAB_DATA = {
    "nvidia_repo_url": f"{MIRROR}/cuda",
    "nvidia_repo_key_url": f"{MIRROR}/keys/lab-archive-keyring.asc",
    "nvidia_repo_key_fingerprint": "a" * 40,
    "pytorch_index_url": f"{MIRROR}/whl",
    "pytorch_index_trusted": True,
    "ollama_version": "0.32.15",
    "ollama_release_url": MIRROR + "/ollama/v{version}/ollama-linux-{arch}.tgz",
    "ollama_sha256": "b" * 64,
    "ollama_registry": "http://169.254.100.1:5000",
    "ollama_registry_insecure": True,
}
DEBIAN = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = [(DEBIAN, ["bookworm-updates", "bookworm"], KEYRING)]


def _vars(data=None):
    return ansible_inventory.host_vars(
        "bench1",
        LAB_HOST,
        {**LAB_DATA, **lab_bench.host_data(LAB_HOST), **(data or {})},
        kernel="6.1.0-test",
        key_sha256="c" * 64,
        distro_sources=SOURCES,
    )


def test_ansible_vars_follow_provisioners_plan():
    v = _vars()
    assert v["ansible_host"] == "169.254.101.2"
    assert v["nvidia_key_path"] == "/etc/apt/keyrings/nvidia-cuda.asc"
    assert v["nvidia_repo_sources"] == (
        f"Types: deb\nURIs: {MIRROR}/cuda/debian12/x86_64/\nSuites: /\n"
        "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc\n"
    )
    assert v["nvidia_driver_package"] == "nvidia-open"  # Ada: open kernel modules
    assert v["nvidia_pinning_package"] == "nvidia-driver-pinning-580"
    assert v["cuda_toolkit_package"] == "cuda-toolkit-13-0"
    assert "/usr/local/cuda-13.0/bin" in v["cuda_profile"]
    assert v["torch_requirement"] == "torch==2.9.1+cu130"
    assert v["torch_index_url"] == f"{MIRROR}/whl/cu130"
    assert v["ollama_url"] == f"{MIRROR}/ollama/v0.32.15/ollama-linux-amd64.tgz"
    assert v["ollama_models"] == ["qwen2.5-coder:14b", "llama3.2:3b", "nomic-embed-text:v1.5"]
    assert v["ollama_pull_names"]["llama3.2:3b"] == "169.254.100.1:5000/library/llama3.2:3b"
    assert "OLLAMA_HOST" in v["ollama_dropin"] and "ExecStart" in v["ollama_unit"]


def test_ansible_components_file_is_the_one_the_driver_deploy_writes():
    assert _vars()["nvidia_components_sources"] == (
        "# Managed by provisioner: archive components the NVIDIA packages need.\n"
        f"\nTypes: deb\nURIs: {DEBIAN}\nSuites: bookworm bookworm-updates\n"
        f"Components: contrib\nSigned-By: {KEYRING}\n"
    )
    assert ansible_inventory.components_sources(SOURCES, []) == ""


def test_hold_exclusions_as_one_regular_expression():
    pattern = re.compile(ansible_inventory.exclude_regex(["nvidia-driver-pinning-*", "a.b?"]))
    assert pattern.match("nvidia-driver-pinning-580")
    assert not pattern.match("nvidia-open") and not pattern.match("axbc")
    assert pattern.match("a.bc")


def test_every_variable_of_the_play_is_in_the_inventory():
    yaml = pytest.importorskip("yaml")
    play = yaml.safe_load(PLAYBOOK.read_text())
    assert play[0]["gather_subset"] == ["!all", "!min", "platform", "distribution"]
    text = PLAYBOOK.read_text()
    used = set(re.findall(r"\{\{\s*([a-z_][a-z0-9_]*)", text))
    used |= set(re.findall(r"when:\s*([a-z_][a-z0-9_]*)", text))
    registered = set(re.findall(r"register:\s*([a-z_]+)", text))
    known = {"ansible_kernel", "ansible_facts", "item", "true", "false"} | registered
    missing = used - known - set(_vars())
    assert missing == set()


def test_ansible_inventory_document():
    doc = ansible_inventory.inventory(
        {"bench1": {"ansible_host": "x"}}, ssh_user="root", ssh_key="k"
    )
    assert doc["all"]["hosts"]["bench1"] == {"ansible_host": "x"}
    assert doc["all"]["vars"]["ansible_ssh_private_key_file"] == "k"


def test_play_recap_is_parsed():
    text = (
        "TASK [x] ***\nok: [bench1]\n\nPLAY RECAP *********\n"
        "bench1                     : ok=35   changed=0    unreachable=0    failed=0    "
        "skipped=8    rescued=0    ignored=0   \n"
        "bench2 : ok=30 changed=2 unreachable=0 failed=1 skipped=8 rescued=0 ignored=0\n"
    )
    recap = parse_recap(text)
    assert recap["bench1"]["ok"] == 35 and recap["bench1"]["changed"] == 0
    assert recap["bench2"]["changed"] == 2 and recap["bench2"]["failed"] == 1
    assert parse_recap("no recap") == {}


# --- the counting registry proxy ----------------------------------------------------------------


def test_request_kinds_of_the_registry_api():
    assert request_kind("GET", "/v2/library/llama3.2/blobs/sha256:ab") == "blob"
    assert request_kind("HEAD", "/v2/site/llama3.2/blobs/sha256:ab") == "blob"
    assert request_kind("GET", "/v2/library/llama3.2/manifests/1b") == "manifest"
    assert request_kind("POST", "/v2/site/llama3.2/blobs/uploads/") == "upload"
    assert request_kind("PUT", "/v2/site/llama3.2/manifests/1b") == "upload"
    assert request_kind("GET", "/v2/") == "other"


class _Blobs(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_proxy_passes_bytes_through_and_counts_them():
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blobs)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        with CountingProxy(("127.0.0.1", 0), backend.server_address[:2]) as proxy:
            assert proxy._server is not None
            port = proxy._server.server_address[1]
            for _ in range(3):
                url = f"http://127.0.0.1:{port}/v2/library/m/blobs/sha256:aa"
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.read() == b"x" * 1000
            snapshot = proxy.counters.snapshot()
            assert snapshot["served"] == {"blob": 3000}
            assert snapshot["requests"] == {"blob": 3}
            proxy.counters.reset()
            assert proxy.counters.served_total == 0
    finally:
        backend.shutdown()
        backend.server_close()


# --- command line -------------------------------------------------------------------------------


def test_command_line_lists():
    assert _ints("1,2,4,8") == (1, 2, 4, 8)
    assert _parts("startup,planner") == ("startup", "planner")
    with pytest.raises(Exception, match="host counts"):
        _ints("0,2")
    with pytest.raises(Exception, match="unknown part"):
        _parts("startup,warp")


def test_results_folder_keeps_pngs_out_of_git():
    ignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text()
    assert "bench/results/*.png" in ignore


# --- issue 15: round-trip time, layers, targets -------------------------------------------------


def _rtt_results() -> dict:
    results = _results()
    ours = {1: [_record(2.5, 9), _record(2.7, 9)]}
    theirs = {1: [_record(30.0, 62), _record(32.0, 62)]}
    results["rtt"] = {
        "50": {
            "ours": summarise_runs(ours)["1"],
            "ansible": summarise_runs(theirs)["1"],
            "ours_over_ansible": ratio_summary([2.5, 2.7], [30.0, 32.0]).to_json(),
        },
        "0": {"ours": summarise_runs({1: [_record(1.0, 9)]})["1"]},
    }
    results["converged"]["layers"] = {
        "by_layer": {"plan GPU stack": 2, "execute site": 1},
        "sshd": {"commands": 3, "logins": 1, "sftp": 0},
    }
    return results


def test_issue15_targets_read_commands_and_the_50ms_run():
    rows = {row["key"]: row for row in evaluate_targets(_rtt_results())}
    assert rows["commands_per_host"]["value"] > 12 and rows["commands_per_host"]["met"] is False
    assert rows["rtt50_one_host_s"]["value"] == 2.6 and rows["rtt50_one_host_s"]["met"] is True
    assert rows["converged_one_host_s_15"]["met"] is False  # 5.0 > 2.0
    assert rows["ours_over_ansible_15"]["met"] is False  # 0.2 > 0.1


def test_the_report_has_the_rtt_table_and_the_layers():
    text = report.render(_rtt_results())
    assert "| 50 | 2.60 (2.50–2.70) | 9 (9–9) | 31.00 (30.00–32.00) | 62 (62–62) |" in text
    assert "| 0 | 1.00 | 9 | – | – | – |" in text
    assert "| plan | GPU stack | 2 |" in text
    assert "**3** (the host's sshd counted 3)" in text


def test_rtt_values_outside_the_relay_bounds_are_refused():
    from bench.__main__ import _rtts

    assert _rtts("0,20,50,100") == (0, 20, 50, 100)
    with pytest.raises(Exception, match="milliseconds"):
        _rtts("5000")


def test_remote_cpu_is_what_the_sshd_listeners_children_used(monkeypatch):
    """children_cpu_of reads a real process's reaped children's CPU; SessionLog reports each
    host's difference, and the summary and the report carry it per host."""
    import os
    import subprocess

    before = lab_bench.children_cpu_of(os.getpid())
    subprocess.run([sys.executable, "-c", "sum(range(4_000_000))"], check=True)
    after = lab_bench.children_cpu_of(os.getpid())
    assert before is not None and after > before
    assert lab_bench.children_cpu_of(2**22 + 12345) is None  # no such process

    used = iter([10.0, 10.25])
    monkeypatch.setattr(lab_bench, "sshd_listener", lambda netns: 4242 if netns == "ns1" else None)
    monkeypatch.setattr(lab_bench, "children_cpu_of", lambda pid: next(used))
    sessions = lab_bench.SessionLog({"bench1": Path("/nonexistent")}, netns={"bench1": "ns1"})
    sessions.start(["bench1"])
    assert sessions.stop(settle=0)["bench1"]["cpu_s"] == 0.25

    records = [_record(1.0, 2) for _ in range(2)]
    for record, cpu in zip(records, (0.2, 0.4), strict=True):
        for host in record["sessions"].values():
            host["cpu_s"] = cpu
    row = summarise_runs({1: records})["1"]
    assert row["remote_cpu_s_per_host"]["median"] == pytest.approx(0.3)
    results = _results()
    results["converged"]["ours"]["1"] = row
    text = report.render(results)
    assert "remote CPU/host (s)" in text
    line = next(x for x in text.splitlines() if x.startswith("| 1 | provision apply |"))
    assert line.rstrip(" |").endswith("0.30 (0.20–0.40)")
