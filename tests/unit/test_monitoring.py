"""The monitoring deploy's pieces: the health collector, the rules file and the dashboard.

The collector runs here for real (a subprocess, as the timer runs it) against the nvidia-smi
double and a loopback HTTP server that answers Ollama's three read-only endpoints with bodies
shaped like Ollama's API documentation (docs/api.md: /api/version, /api/tags, /api/ps). The
lab test (tests/lab/test_monitoring_lab.py) runs it on a provisioned host with the stand-in
Ollama and node_exporter from Debian.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner import settings
from provisioner.deploys import monitoring

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "provisioner"
COLLECTOR = PKG / "templates" / "monitoring" / "provisioner_metrics.py"
RULES = ROOT / "templates" / "monitoring" / "provisioner-rules.yml"
RULE_TESTS = sorted((ROOT / "tests" / "monitoring").glob("rules_test*.yml"))
DASHBOARD = ROOT / "templates" / "monitoring" / "grafana-dashboard.json"
DOUBLES = ROOT / "tests" / "doubles"
DIGEST = "sha256:" + "a" * 64


class _Ollama(BaseHTTPRequestHandler):
    bodies: dict[str, object] = {}

    def do_GET(self) -> None:  # noqa: N802
        body = self.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ollama_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ollama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Ollama.bodies = {
        "/api/version": {"version": "0.21.1"},
        "/api/tags": {
            "models": [
                {
                    "name": "qwen2.5:7b",
                    "model": "qwen2.5:7b",
                    "digest": "a" * 64,
                    "size": 4683087332,
                }
            ]
        },
        "/api/ps": {
            "models": [
                {
                    "name": "qwen2.5:7b",
                    "model": "qwen2.5:7b",
                    "size": 6_000_000_000,
                    "size_vram": 4_500_000_000,
                    "digest": "a" * 64,
                    "context_length": 8192,
                }
            ]
        },
    }
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _gpu_double(tmp_path: Path, state: str | None = None) -> dict[str, str]:
    conf = tmp_path / "gpu"
    conf.mkdir()
    (conf / "gpus").write_text(
        "0|NVIDIA GeForce RTX 4090|24564|8.9|00000000:01:00.0|GPU-aaaa|[N/A]|71|60|450|5120|3\n"
    )
    (conf / "driver").write_text("580.105.08 13.0\n")
    if state:
        (conf / "state").write_text(state + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(DOUBLES / "nvidia-smi", bin_dir / "nvidia-smi")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "NVIDIA_SMI_DOUBLE_DIR": str(conf)}


def _collect(tmp_path: Path, config: dict, env: dict[str, str]) -> str:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    shutil.copy(COLLECTOR, lib / "provisioner_metrics.py")
    shutil.copy(PKG / "nvidia_smi.py", lib / "nvidia_smi.py")
    shutil.copy(PKG / "next_boot.py", lib / "next_boot.py")
    path = tmp_path / "monitoring.json"
    path.write_text(json.dumps({"textfile_dir": str(tmp_path / "textfile"), **config}))
    proc = subprocess.run(
        [sys.executable, str(lib / "provisioner_metrics.py"), "--config", str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    return (tmp_path / "textfile" / "provisioner.prom").read_text()


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split(" ")[0] + line))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_collector_reports_a_healthy_gpu_host(tmp_path, ollama_api):
    env = _gpu_double(tmp_path)
    config = {"ollama_api": ollama_api, "gpu": True, "models": [{"name": "Qwen2.5:7B"}]}
    text = _collect(tmp_path, config, env)
    assert _value(text, "provisioner_nvml_state", state="ok") == 1
    assert _value(text, "provisioner_nvml_state", state="driver-mismatch") == 0
    assert _value(text, "provisioner_nvidia_info", driver_version="580.105.08") == 1
    assert _value(text, "provisioner_gpu_memory_used_bytes", gpu="0") == 5120 * 2**20
    assert _value(text, "provisioner_gpu_memory_total_bytes", gpu="0") == 24564 * 2**20
    assert _value(text, "provisioner_gpu_temperature_celsius", gpu="0") == 71
    assert _value(text, "provisioner_ollama_up") == 1
    assert _value(text, "provisioner_ollama_info", version="0.21.1") == 1
    # a mixed-case planned name is the same model as Ollama's lower-case one
    assert _value(text, "provisioner_model_present", model="qwen2.5:7b") == 1
    assert _value(text, "provisioner_model_loaded_vram_bytes", model="qwen2.5:7b") == 4.5e9
    assert _value(text, "provisioner_model_loaded_cpu_ratio", model="qwen2.5:7b") == 0.25
    assert _value(text, "provisioner_check", layer="driver", check="nvml", status="ok") == 1
    assert _value(text, "provisioner_check", layer="models", check="on_gpu", status="failed") == 1
    assert _value(text, "provisioner_check", layer="ollama", check="api", status="ok") == 1


def test_collector_reports_a_mismatch_a_missing_model_and_ollama_down(tmp_path, ollama_api):
    env = _gpu_double(tmp_path, state="driver-mismatch")
    config = {
        "ollama_api": ollama_api,
        "models": [{"name": "qwen2.5:7b", "digest": DIGEST}, {"name": "llama3.1:8b"}],
    }
    text = _collect(tmp_path, config, env)
    assert _value(text, "provisioner_nvml_state", state="driver-mismatch") == 1
    assert _value(text, "provisioner_check", layer="driver", check="nvml", status="failed") == 1
    assert _value(text, "provisioner_model_present", model="llama3.1:8b") == 0
    assert _value(text, "provisioner_model_digest_match", model="qwen2.5:7b") == 1
    assert _value(text, "provisioner_check", layer="models", check="present", status="failed") == 1

    down = _collect(tmp_path, {"ollama_api": "http://127.0.0.1:9", "models": []}, env)
    assert _value(down, "provisioner_ollama_up") == 0
    assert _value(down, "provisioner_check", layer="ollama", check="api", status="failed") == 1


def test_collector_output_is_valid_exposition(tmp_path, ollama_api):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    text = _collect(tmp_path, {"ollama_api": ollama_api, "models": []}, _gpu_double(tmp_path))
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _alerts() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M)


def test_rules_pass_promtool_and_each_alert_fires_in_a_test():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    tested = "".join(path.read_text() for path in RULE_TESTS)
    for alert in _alerts():
        # each alert has a case where it fires (a non-empty exp_alerts)
        pattern = rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels"
        assert re.search(pattern, tested), f"no firing test case for {alert}"


def _collector_metrics() -> set[str]:
    names = set(re.findall(r'\(\s*"(provisioner_\w+)",\s*"gauge"', COLLECTOR.read_text()))
    return names | {"provisioner_last_apply_success_timestamp_seconds"}


def test_rules_and_dashboard_use_only_metrics_the_collector_writes():
    known = _collector_metrics()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"provisioner_\w+", RULES.read_text() + "\n".join(exprs)))
    assert used and used <= known, used - known
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))


def test_metrics_are_documented():
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    for name in _collector_metrics():
        assert f"`{name}`" in doc, name


def _resolved(**data):
    return settings.resolve({"monitoring": True, **data})


def test_listen_beyond_loopback_needs_an_allowlist():
    assert monitoring.check_settings(_resolved()) == []
    problems = monitoring.check_settings(_resolved(monitoring_listen_address="0.0.0.0:9100"))
    assert [key for key, _ in problems] == ["monitoring_listen_address"]
    allowed = _resolved(
        monitoring_listen_address="10.0.0.5:9100", monitoring_allow_networks=["10.0.0.0/24"]
    )
    assert monitoring.check_settings(allowed) == []
    bad = monitoring.check_settings(_resolved(monitoring_listen_address="[::1]:99999"))
    assert bad and bad[0][0] == "monitoring_listen_address"
    # off: nothing is checked (the keys only matter with monitoring on)
    assert monitoring.check_settings(settings.resolve({"monitoring_listen_address": "x"})) == []


def test_rendered_units_and_dropin():
    cfg, _ = monitoring.settings_from(
        _resolved(monitoring_listen_address="[::1]:9200", monitoring_interval_s=30)
    )
    exporter = monitoring.exporters()["apt"]
    dropin = monitoring.render_dropin(cfg, exporter)
    assert "ExecStart=\nExecStart=/usr/bin/prometheus-node-exporter" in dropin
    assert "--web.listen-address=[::1]:9200" in dropin
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in dropin
    assert "OnUnitActiveSec=30s" in monitoring.render_timer(cfg)
    assert monitoring.COLLECTOR in monitoring.render_service()
    nft_cfg, _ = monitoring.settings_from(
        _resolved(
            monitoring_listen_address="10.0.0.5:9100", monitoring_allow_networks=["10.1.2.3/24"]
        )
    )
    nft = monitoring.render_nft(nft_cfg)
    assert "tcp dport 9100" in nft and "10.1.2.0/24" in nft and "provisioner_monitoring" in nft


def test_exporter_data_covers_every_package_family():
    from provisioner import gpu_stack

    assert set(monitoring.exporters()) == set(gpu_stack.families())


def test_the_state_keys_are_what_its_operations_read():
    """Monitoring's files, directories, units and packages are registered for the execution's
    one probe; the allowlist's only when it listens beyond loopback; the exporter's package
    by name (``system.packages``), on apt and dnf alike."""
    from pyinfra.facts.files import Directory, Sha1File

    from provisioner.facts.nvidia import NamedPackages

    local, _ = monitoring.settings_from(_resolved())
    wide, _ = monitoring.settings_from(
        _resolved(
            monitoring_listen_address="10.0.0.5:9100", monitoring_allow_networks=["10.0.0.0/24"]
        )
    )
    apt = monitoring.exporters()["apt"]
    keys = monitoring.state_keys(local, apt, "apt")
    paths = {kwargs.get("path") for _, kwargs in keys}
    assert monitoring.COLLECTOR in paths and f"{monitoring.LIB_DIR}/next_boot.py" in paths
    assert (Sha1File, {"path": monitoring.CONFIG}) in keys
    assert (Directory, {"path": apt.textfile_dir}) in keys
    assert (NamedPackages, {"names": [apt.package]}) in keys
    assert monitoring.FIREWALL_RULES not in paths
    wide_paths = {kwargs.get("path") for _, kwargs in monitoring.state_keys(wide, apt, "apt")}
    assert monitoring.FIREWALL_RULES in wide_paths
    el = monitoring.exporters()["dnf"]
    assert (NamedPackages, {"names": [el.package]}) in monitoring.state_keys(local, el, "dnf")
