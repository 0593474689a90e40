"""Data for every lab host: connection, and every source pointed at the lab's mirrors.

This is also the worked example of an air-gapped site: only URLs (and the keys that pin what
they serve) change; the deploy code is the same as for production.

pyinfra imports every file of group_data/ for every inventory of this folder, so this file
must not fail when the lab is down: it then sets nothing (inventories/lab.py itself says the lab
is not up).
"""

import json
import os
from pathlib import Path

_LAB_JSON = Path(os.environ.get("LAB_RUN", "/var/tmp/provisioner-lab")) / "lab.json"

if _LAB_JSON.exists():
    _LAB = json.loads(_LAB_JSON.read_text())
    _MIRROR = "http://169.254.100.1:8080"

    # Connection: root over SSH with the lab's key. Host keys are checked strictly against the
    # known_hosts file the lab wrote when it made each host (as a site records its servers' keys
    # when it installs them): a host that answers with another key is refused. Never turn this
    # off at a real site; it is what stops a man in the middle.
    ssh_user = _LAB["ssh_user"]
    ssh_key = _LAB["ssh_key"]
    ssh_known_hosts_file = _LAB.get("known_hosts", str(_LAB_JSON.parent / "known_hosts"))
    ssh_strict_host_key_checking = "yes"

    # NVIDIA's CUDA repository (the lab's signed stand-in, same layout as NVIDIA's URLs).
    nvidia_repo_url = f"{_MIRROR}/cuda"
    nvidia_repo_key_url = _LAB["key"]["url_asc"]
    nvidia_repo_key_fingerprint = _LAB["key"]["fingerprint"]

    # PyTorch wheel indexes (PEP 503; <url>/cu130, <url>/cpu).
    pytorch_index_url = f"{_MIRROR}/whl"
    pytorch_index_trusted = True  # plain HTTP on the lab's own network

    # Ollama release archive from the lab mirror, laid out as Ollama's releases are. No
    # ollama_sha256: each host checks the archive against the mirrored sha256sum.txt, as a
    # default install does. LAB_OLLAMA_VERSION plays another offered version (the oldest
    # supported one, in tests/lab/test_e2e.py).
    _OLLAMA = os.environ.get("LAB_OLLAMA_VERSION") or _LAB.get("ollama", {}).get("default")
    if _OLLAMA:  # else the toolkit's default ollama_version
        ollama_version = _OLLAMA
    ollama_release_url = f"{_MIRROR}/ollama/v{{version}}/ollama-linux-{{arch}}.{{ext}}"

    # Models come from the site registry (CNCF Distribution over plain HTTP).
    ollama_registry = "http://169.254.100.1:5000"
    ollama_registry_insecure = True
