"""Day 2 on the lab: monitoring on a provisioned host, then each failure it must show.

Runs after tests/lab/test_e2e.py (conftest orders the ``test_e2e*`` modules last). gpu1 gets
``--data monitoring=true``: Debian's real node_exporter from the archive (through the lab's
apt-cacher-ng), the health collector and its timer. Each break is made the way it happens on a
real host, the collector runs once (what the timer does every period), and the metric that
node_exporter serves must change; then the host is repaired and the metric comes back.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.lab.test_e2e import provision

pytestmark = pytest.mark.lab

HOST = "gpu1"
WAIT_API = (
    "for i in $(seq 50); do curl -fs http://127.0.0.1:11434/api/version >/dev/null && break; "
    "sleep 0.2; done;"
)
METRICS = "curl -fsS --max-time 10 http://127.0.0.1:9100/metrics"


def scrape(lab) -> str:
    """Run the collector once (one timer period), then scrape node_exporter on the host.
    ``reset-failed`` first: a test scrapes more often than systemd's start rate limit allows
    (5 starts in 10 s; the timer starts it once a period), and resetting it is what an operator
    does to run it by hand again."""
    lab.ssh(HOST, "systemctl reset-failed provisioner-metrics.service; "
                  "systemctl start provisioner-metrics.service")  # fmt: skip
    return lab.ssh(HOST, METRICS).stdout


def value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not re.match(rf"{name}(\{{| )", line):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def monitored(lab):
    code, result, err = provision(
        "apply", str(lab.inventory), "--limit", HOST, "--data", "monitoring=true"
    )
    assert code == 0, err
    assert result["hosts"][HOST]["status"] in ("changed", "unchanged"), result
    config = json.loads(lab.ssh(HOST, "cat /etc/provisioner/monitoring.json").stdout)
    return config


def test_node_exporter_serves_the_provisioner_metrics_on_loopback_only(lab, monitored):
    text = scrape(lab)
    assert value(text, "node_boot_time_seconds") is not None  # the real node_exporter
    assert value(text, "provisioner_nvml_state", state="ok") == 1
    assert value(text, "provisioner_ollama_up") == 1
    assert value(text, "provisioner_check", layer="models", check="present", status="ok") == 1
    assert value(text, "provisioner_last_apply_success_timestamp_seconds") > 0
    for model in monitored["models"]:
        assert value(text, "provisioner_model_present", model=model["name"]) == 1
    timer = lab.ssh(HOST, "systemctl show -p ActiveState,TimersMonotonic provisioner-metrics.timer")
    assert "ActiveState=active" in timer.stdout
    assert "60s" in lab.ssh(HOST, "cat /etc/systemd/system/provisioner-metrics.timer").stdout
    listening = lab.ssh(HOST, "ss -Hltn 'sport = :9100'").stdout
    assert "127.0.0.1:9100" in listening and "*:9100" not in listening, listening
    other = lab.ssh(
        "cpu1", f"curl -fsS --max-time 5 http://{lab.addresses[HOST]}:9100/metrics", check=False
    )
    assert other.returncode != 0


# A converged host with monitoring: the planning probe, the execution's probe (monitoring's
# files, units and packages with the other layers' state: deploys/monitoring.state_keys) and
# the record of the successful run, which writes on every run by nature.
MAX_MONITORED_COMMANDS = 3


def test_a_second_apply_with_monitoring_changes_nothing(lab, monitored):
    from bench import lab_bench

    lab.ssh(HOST, lab_bench.SSHD_SETUP)
    sessions = lab_bench.SessionLog({HOST: lab.fleet.root(lab.host(HOST))})
    sessions.start([HOST])
    code, result, err = provision(
        "apply", str(lab.inventory), "--limit", HOST, "--data", "monitoring=true"
    )
    seen = sessions.stop(settle=1.0)[HOST]
    assert code == 0, err
    assert result["hosts"][HOST]["status"] == "unchanged", result["hosts"][HOST]
    assert 0 < seen["commands"] <= MAX_MONITORED_COMMANDS, seen


def test_ollama_stopped_shows_within_one_period(lab, monitored):
    lab.ssh(HOST, "systemctl stop ollama")
    try:
        text = scrape(lab)
        assert value(text, "provisioner_ollama_up") == 0
        assert value(text, "provisioner_check", layer="ollama", check="api", status="failed") == 1
    finally:
        lab.ssh(HOST, "systemctl start ollama")
    assert value(scrape(lab), "provisioner_ollama_up") == 1


def test_a_deleted_blob_shows_the_model_missing(lab, monitored):
    name = monitored["models"][0]["name"]
    store = monitored["models_dir"]
    model, tag = name.rsplit(":", 1)
    parts = (["registry.ollama.ai", "library"] + model.split("/"))[-3:]
    manifest = json.loads(lab.ssh(HOST, f"cat {store}/manifests/{'/'.join(parts)}/{tag}").stdout)
    blob = max(manifest["layers"], key=lambda layer: layer["size"])["digest"].replace(":", "-")
    lab.ssh(HOST, f"rm {store}/blobs/{blob}")
    text = scrape(lab)
    assert value(text, "provisioner_model_present", model=name) == 0
    assert value(text, "provisioner_check", layer="models", check="present", status="failed") == 1
    code, _, err = provision("models", "sync", str(lab.inventory), "--limit", HOST)
    assert code == 0, err
    assert value(scrape(lab), "provisioner_model_present", model=name) == 1


def test_a_driver_mismatch_and_the_cpu_fallback_show(lab, monitored):
    """An upgrade leaves NVML mismatched; Ollama restarted then finds no GPU and runs on CPU
    (ollama#15918): both the NVML state and the loaded model's CPU share must show it."""
    name = monitored["models"][0]["name"]
    lab.set_state(HOST, "driver-mismatch")
    lab.ssh(HOST, "systemctl restart ollama")
    try:
        lab.ssh(
            HOST,
            f"{WAIT_API} curl -fsS http://127.0.0.1:11434/api/generate "
            f"-d '{json.dumps({'model': name, 'prompt': 'hi', 'stream': False})}'",
        )
        text = scrape(lab)
        assert value(text, "provisioner_nvml_state", state="driver-mismatch") == 1
        assert value(text, "provisioner_check", layer="driver", check="nvml", status="failed") == 1
        assert value(text, "provisioner_model_loaded_cpu_ratio", model=name) == 1
        assert (
            value(text, "provisioner_check", layer="models", check="on_gpu", status="failed") == 1
        )
    finally:
        lab.set_state(HOST, "clear")
        lab.ssh(HOST, "systemctl restart ollama")
    lab.ssh(HOST, f"{WAIT_API} true")
    text = scrape(lab)
    assert value(text, "provisioner_nvml_state", state="ok") == 1
    assert value(text, "provisioner_model_loaded", model=name) is None
