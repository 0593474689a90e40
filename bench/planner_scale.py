"""Planner scale: ``provision plan`` over recorded facts of a large fleet, without connections.

:func:`fleet_facts` makes the facts of ``n`` hosts in the ``provision facts --json`` shape,
deterministically (a seeded mix of real server shapes, GPU states, RAM sizes and per-host data:
profiles, explicit model lists, models_always). :func:`measure` writes them to a file and runs
``python -m bench.planner_scale FILE`` in a fresh interpreter, which does what ``provision
plan --json`` does after gathering: resolve each host's data, ``planner.plan_fleet``, JSON.
Peak memory is the child's ``ru_maxrss`` (from ``os.wait4``); wall time is measured outside
(interpreter start and imports included) and inside (load + plan + JSON only).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (GPU name, memory.total MiB as nvidia-smi reports it, PCI device id, compute capability,
#  GPUs per server, weight in the fleet): shapes of real servers
SHAPES: tuple[tuple[str, int, str, str, int, int], ...] = (
    ("NVIDIA GeForce RTX 4090", 24564, "2684", "8.9", 1, 12),
    ("NVIDIA GeForce RTX 4090", 24564, "2684", "8.9", 2, 6),
    ("NVIDIA L4", 23034, "27b8", "8.9", 1, 8),
    ("NVIDIA L4", 23034, "27b8", "8.9", 4, 4),
    ("Tesla T4", 15360, "1eb8", "7.5", 1, 10),
    ("NVIDIA A10", 23028, "2236", "8.6", 1, 6),
    ("NVIDIA L40S", 46068, "26b9", "8.9", 2, 8),
    ("NVIDIA L40S", 46068, "26b9", "8.9", 4, 4),
    ("NVIDIA A100-SXM4-80GB", 81920, "20b2", "8.0", 8, 10),
    ("NVIDIA A100 80GB PCIe", 81920, "20b5", "8.0", 2, 6),
    ("NVIDIA H100 80GB HBM3", 81559, "2330", "9.0", 8, 12),
    ("NVIDIA H200", 143771, "2335", "9.0", 8, 4),
)
RAM_MIB = (65536, 131072, 262144, 524288, 1048576, 2097152)
# (state, weight): most hosts are healthy; a few wait for a driver or a reboot
STATES = (("ok", 93), ("no-driver", 2), ("driver-mismatch", 1), ("cpu-only", 4))
EMBED = "nomic-embed-text:v1.5"
ROLES: tuple[tuple[dict[str, Any], int], ...] = (
    ({}, 30),  # the default profile (general)
    ({"model_profile": "coding"}, 15),
    ({"model_profile": "chat", "models_max": 2}, 10),
    ({"model_profile": "reasoning"}, 8),
    ({"model_profile": "embedding", "models_max": 1}, 4),
    ({"models": ["qwen2.5-coder:14b", "llama3.2:3b"], "models_always": [EMBED]}, 12),
    ({"models": ["llama3.3:70b", "qwen3:32b"]}, 8),
    ({"models": ["gpt-oss:120b"], "ollama_context_length": 32768}, 5),
    ({"model_profile": "coding", "ollama_num_parallel": 4, "ollama_kv_cache_type": "q8_0"}, 8),
)


def _pick(rng: random.Random, table: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(table, weights=[row[-1] for row in table])[0]


def host_facts(rng: random.Random, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Facts (``provision facts --json`` host shape) and host data of host ``number``."""
    name, memory, device, cap, count, _ = _pick(rng, SHAPES)
    state = _pick(rng, STATES)[0]
    ram = rng.choice(RAM_MIB)
    role = dict(_pick(rng, ROLES)[0])
    os_info = {
        "id": "debian" if number % 3 else "ubuntu",
        "version_id": "12" if number % 3 else "24.04",
        "codename": "bookworm" if number % 3 else "noble",
        "arch": "x86_64",
        "pretty_name": "recorded",
        "id_like": None if number % 3 else "debian",
    }
    if state == "cpu-only":
        facts = {
            "gpu_state": "no-gpu",
            "gpus": [],
            "driver_version": None,
            "cuda_version": None,
            "error": None,
            "os": os_info,
            "memory_total_mib": ram,
            "pci_devices": [],
        }
        role = {"models": ["llama3.2:3b"], "model_profile": "cpu"} if number % 2 else {}
        return facts, role
    bus = ("01", "07", "0F", "41", "81", "87", "8F", "C1")
    gpus = [
        {
            "index": i,
            "name": name,
            "uuid": f"GPU-{number:08x}-{i:04x}-4000-8000-{rng.getrandbits(48):012x}",
            "memory_total_mib": memory,
            "compute_cap": cap,
            "pci_bus_id": f"00000000:{bus[i]}:00.0",
            "mig": "Disabled" if "A100" in name or "H100" in name or "H200" in name else None,
        }
        for i in range(count)
    ]
    pci = [
        {
            "slot": f"0000:{bus[i].lower()}:00.0",
            "class_id": "0302",
            "vendor_id": "10de",
            "device_id": device,
        }
        for i in range(count)
    ]
    healthy = state == "ok"
    facts = {
        "gpu_state": state,
        "gpus": gpus if healthy else [],
        "driver_version": "580.105.08" if healthy else None,
        "cuda_version": "13.0" if healthy else None,
        "error": None if healthy else f"recorded: {state}",
        "os": os_info,
        "memory_total_mib": ram,
        "pci_devices": pci,
    }
    return facts, role


def fleet_facts(n: int, seed: int = 8) -> dict[str, dict[str, Any]]:
    """``{"hosts": {name: {"facts": ..., "data": ...}}}`` of ``n`` hosts, the same for a seed."""
    rng = random.Random(seed)
    width = max(5, len(str(n)))
    hosts = {}
    for number in range(1, n + 1):
        facts, data = host_facts(rng, number)
        hosts[f"gpu-{number:0{width}d}"] = {"facts": facts, "data": data}
    return {"hosts": hosts}


def plan_recorded(path: Path) -> dict[str, Any]:
    """What ``provision plan --json`` does after gathering, on recorded facts; returns timings."""
    started = time.perf_counter()
    from provisioner import planner, settings

    imported = time.perf_counter()
    recorded = json.loads(path.read_text())["hosts"]
    hosts = {
        name: (entry["facts"], settings.resolve(entry["data"])) for name, entry in recorded.items()
    }
    loaded = time.perf_counter()
    result = planner.plan_fleet(hosts)
    planned = time.perf_counter()
    text = json.dumps(result, indent=2, sort_keys=False)
    done = time.perf_counter()
    models = sum(len(h["models"]) for h in result["hosts"].values())
    return {
        "hosts": len(result["hosts"]),
        "models_planned": models,
        "json_bytes": len(text),
        "import_s": imported - started,
        "load_s": loaded - imported,
        "plan_s": planned - loaded,
        "json_s": done - planned,
        "inside_s": done - started,
    }


def measure(facts_file: Path, python: str = sys.executable) -> dict[str, Any]:
    """Run :func:`plan_recorded` in a fresh interpreter; wall time and peak RSS of the child."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-m", "bench.planner_scale", str(facts_file)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"planner scale run failed ({proc.returncode}): {err.decode()[-2000:]}")
    inside = json.loads(out)
    return {**inside, "wall_s": wall, "max_rss_mib": usage.ru_maxrss / 1024}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.planner_scale FACTS.json")
    print(json.dumps(plan_recorded(Path(sys.argv[1]))))
