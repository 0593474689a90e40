"""The lab: real Debian hosts (systemd-nspawn, SSH) with simulated GPUs, made by tests/lab/.

Bring the lab up first (`sudo make lab-up`, or `python -m tests.lab up`); this inventory reads
the running lab's description, `$LAB_RUN/lab.json` (default /var/tmp/provisioner-lab), for the
hosts' addresses and the per-cache values (signing key, release checksums). Every source points
at the lab's mirrors on 169.254.100.1 (see group_data/lab.py); nothing leaves the machine.

| host | release  | simulated GPUs                        | role in the tests                   |
| ---- | -------- | ------------------------------------- | ----------------------------------- |
| gpu1 | bookworm | 1x RTX 4090 24564 MiB                 | coding box, resident set, CUDA 12.8 |
| gpu2 | trixie   | 2x A100-SXM4-80GB + NVSwitch          | profile-planned, CUDA 13.0, FM      |
| gpu3 | bookworm | 1x Tesla T4 15360 MiB                 | inference only (no CUDA toolkit)    |
| cpu1 | bookworm | none                                  | CPU-only host (models sized to RAM) |
"""

import json
import os
from pathlib import Path

_LAB_JSON = Path(os.environ.get("LAB_RUN", "/var/tmp/provisioner-lab")) / "lab.json"
if not _LAB_JSON.exists():
    raise RuntimeError(f"the lab is not up ({_LAB_JSON} missing): run `sudo make lab-up` first")
_LAB = json.loads(_LAB_JSON.read_text())

# What each host serves, and what `provision verify` expects of it.
_ROLES = {
    "gpu1": {
        "models": ["qwen2.5-coder:14b", "llama3.2:3b"],
        "models_always": ["nomic-embed-text:v1.5"],
        # the chat/code model and the embedding model stay loaded together (issue 14)
        "models_resident": ["qwen2.5-coder:14b", "nomic-embed-text:v1.5"],
        "cuda_toolkit_version": "12.8",
    },
    "gpu2": {
        "model_profile": "coding",
        "models_max": 1,
        "models_always": ["nomic-embed-text:v1.5"],
        "cuda_toolkit_version": "13.0",
    },
    "gpu3": {"models": ["llama3.2:3b"]},
    "cpu1": {"models": ["llama3.2:1b"], "model_profile": "cpu"},
}
# A lab test may pin models per host for one command (`models sync` and `verify` take no
# --data): LAB_MODELS_PINNED='{"gpu3": ["Llama3.2:3B"]}'.
_PINNED = json.loads(os.environ.get("LAB_MODELS_PINNED") or "{}")


def _host(name: str, spec: dict) -> tuple[str, dict]:
    data = {"ssh_hostname": spec["address"], **_ROLES.get(name, {})}
    if name in _PINNED:
        data["models_pinned"] = list(_PINNED[name])
    if spec["gpus"]:
        data["gpu_count"] = len(spec["gpus"])
        data["gpu_memory_mib"] = spec["gpus"][0]["memory_total_mib"]
    return name, data


gpu_hosts = [_host(n, s) for n, s in _LAB["hosts"].items() if s["gpus"]]
cpu_hosts = [_host(n, s) for n, s in _LAB["hosts"].items() if not s["gpus"]]
