"""`provision facts @local` and `provision plan @local`, run for real with the nvidia-smi double.

The double (tests/doubles/nvidia-smi) is placed first on PATH and replays the formats of the
real samples; everything else (pyinfra's @local connector, the facts' shell script, the CLI) is
the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles.nvidia_smi import H100_80GB, RTX_4090, install_nvidia_smi_double

PROVISION = [sys.executable, "-m", "provisioner.cli"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        PROVISION + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def double_env(tmp_path: Path, gpus, state=None, header="classic") -> dict[str, str]:
    bin_dir, conf = tmp_path / "bin", tmp_path / "conf"
    install_nvidia_smi_double(bin_dir, conf, gpus=gpus, state=state, header=header)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "NVIDIA_SMI_DOUBLE_DIR": str(conf),
    }


def second_gpu(gpu: dict, index: int) -> dict:
    return {
        **gpu,
        "index": index,
        "pci_bus_id": f"00000000:{0x10 + index:02X}:00.0",
        "uuid": gpu["uuid"][:-1] + str(index),
    }


def test_facts_local_json_two_h100(tmp_path):
    env = double_env(tmp_path, [H100_80GB, second_gpu(H100_80GB, 1)])
    result = run(["facts", "@local", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)["hosts"]["@local"]
    assert host["gpu_state"] == "ok"
    assert host["driver_version"] == "580.105.08" and host["cuda_version"] == "13.0"
    assert [g["memory_total_mib"] for g in host["gpus"]] == [81559, 81559]
    assert host["gpus"][0] == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "memory_total_mib": 81559,
        "compute_cap": "9.0",
        "pci_bus_id": "00000000:00:09.0",
        "mig": "Disabled",
    }
    assert host["os"]["id"] and host["os"]["arch"]
    assert host["memory_total_mib"] > 0


@pytest.mark.parametrize(
    ("state", "expected"), [("no-driver", "no-driver"), ("driver-mismatch", "driver-mismatch")]
)
def test_facts_local_failure_states_are_not_errors_of_the_run(tmp_path, state, expected):
    env = double_env(tmp_path, [RTX_4090], state=state)
    result = run(["facts", "@local", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)["hosts"]["@local"]
    assert host["gpu_state"] == expected
    assert host["gpus"] == []
    if expected == "driver-mismatch":
        assert "NVML library version" in host["error"]


def test_facts_local_without_nvidia_smi_is_no_gpu(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    result = run(["facts", "@local", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hosts"]["@local"]["gpu_state"] == "no-gpu"


def test_facts_table_names_state_and_gpu(tmp_path):
    env = {**double_env(tmp_path, [RTX_4090], header="r610"), "COLUMNS": "200"}
    result = run(["facts", "@local"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "NVIDIA GeForce RTX 4090" in result.stdout and "ok" in result.stdout


def test_plan_local_json_sizes_models_to_the_double(tmp_path):
    env = double_env(tmp_path, [RTX_4090])
    result = run(["plan", "@local", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)["hosts"]["@local"]
    assert host["vram_mib"] == 24564
    assert host["mode"] == "gpu"
    assert 0 < host["budget_mib"] < 24564
    assert host["models"], host
    for model in host["models"]:
        assert set(model) >= {"tag", "estimated_vram_mib", "gpus", "reason"}
        assert model["estimated_vram_mib"] <= host["budget_mib"]
        assert model["gpus"] == [0]
    assert isinstance(host["skipped"], list)


def test_plan_local_with_driver_mismatch_plans_nothing_and_says_why(tmp_path):
    env = double_env(tmp_path, [RTX_4090], state="driver-mismatch")
    result = run(["plan", "@local", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)["hosts"]["@local"]
    assert host["models"] == []
    assert host["mode"] == "none" and "mismatch" in host["reason"]


def test_unreachable_host_is_reported_and_exit_1(tmp_path):
    inv = tmp_path / "inv.py"
    inv.write_text(
        'hosts = [("down-1", {"ssh_hostname": "127.0.0.1", "ssh_port": 9,'
        ' "ssh_connect_retries": 0})]\n'
    )
    result = run(["facts", str(inv), "--json"], dict(os.environ), tmp_path)
    assert result.returncode == 1
    host = json.loads(result.stdout)["hosts"]["down-1"]
    assert host["gpu_state"] == "unreachable" and host["error"]
    assert "host down-1 unreachable" in result.stderr


def test_plan_what_if_json(tmp_path):
    result = run(
        ["plan", "--what-if", "2x NVIDIA A100-SXM4-80GB:81920", "--what-if", "Tesla T4:15360",
         "--profile", "coding", "--json"],
        dict(os.environ),
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hosts = json.loads(result.stdout)["hosts"]
    assert list(hosts) == ["what-if-1", "what-if-2"]
    assert hosts["what-if-1"]["vram_mib"] == 2 * 81920
    assert [g["index"] for g in hosts["what-if-1"]["gpus"]] == [0, 1]
    assert hosts["what-if-2"]["models"] and all(
        m["estimated_vram_mib"] <= hosts["what-if-2"]["budget_mib"]
        for m in hosts["what-if-2"]["models"]
    )


def test_plan_what_if_with_data_sizes_for_that_data(tmp_path):
    def plan(*data):
        args = ["plan", "--what-if", "NVIDIA GeForce RTX 4090:24564", "--json"]
        for item in data:
            args += ["--data", item]
        result = run(args, dict(os.environ), tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["hosts"]["what-if-1"]

    models = 'models=["qwen2.5-coder:7b"]'
    short = plan(models, "ollama_context_length=4096")
    long = plan(models, "ollama_context_length=32768", "ollama_num_parallel=2")
    assert short["settings"]["context_length"] == 4096
    assert long["settings"]["num_parallel"] == 2
    assert [m["tag"] for m in short["models"]] == ["qwen2.5-coder:7b"]
    assert short["models"][0]["context"] == 4096 and long["models"][0]["context"] == 32768
    # 28 layers x 4 KV heads x 128 x 2 (K, V) x 2 B: 56 KiB per token; 2 x 32768 - 4096 more tokens
    growth = long["models"][0]["estimated_vram_mib"] - short["models"][0]["estimated_vram_mib"]
    assert growth >= (2 * 32768 - 4096) * 56 // 1024


def test_plan_users_sizes_for_concurrent_requests(tmp_path):
    args = ["plan", "--what-if", "NVIDIA H100 80GB HBM3:81559", "--json"]
    args += ["--data", 'models_resident=["qwen3:8b","nomic-embed-text:v1.5"]', "--users", "8"]
    result = run(args, dict(os.environ), tmp_path)
    assert result.returncode == 0, result.stderr
    host = json.loads(result.stdout)["hosts"]["what-if-1"]
    assert host["settings"]["num_parallel"] == 8
    assert host["resident"]["fits"] and host["resident"]["parallel"] == 8
    assert all(m["parallel"] == 8 for m in host["models"])
    both = run(args + ["--data", "ollama_num_parallel=2"], dict(os.environ), tmp_path)
    assert both.returncode == 2 and "--users" in both.stderr
