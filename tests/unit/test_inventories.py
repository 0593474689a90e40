"""The shipped example inventories load and validate, whether or not the lab is up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("lab_up", [False, True])
def test_prod_inventory_validates_and_plans_what_if(tmp_path, lab_up):
    run_dir = tmp_path / "lab-run"
    run_dir.mkdir()
    if lab_up:  # a lab.json like a running lab's: group_data/lab.py reads it
        (run_dir / "lab.json").write_text(
            '{"hosts": {}, "ssh_user": "root", "ssh_key": "/k", '
            '"key": {"url_asc": "http://x/k.asc", "fingerprint": "' + "A" * 40 + '"}, '
            '"ollama": {"releases": {"0.32.15": {"sha256": "' + "0" * 64 + '"}}}}'
        )
    code = (
        "from provisioner.inventory import load\n"
        "loaded = load('inventories/prod.py')\n"
        "print(sorted(h.name for h in loaded.hosts))\n"
        "print(loaded.data_of(loaded.inventory.get_host('gpu-4090-02'))['ollama_context_length'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LAB_RUN": str(run_dir)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    names, context = result.stdout.splitlines()
    assert "gpu-a100-01" in names and "cpu-embed-01" in names
    assert context == "16384"  # the host's own value beats group_data/prod.py's 8192


def test_lab_inventory_says_the_lab_is_not_up(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "plan", "inventories/lab.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LAB_RUN": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 2
    assert "the lab is not up" in result.stderr and "make lab-up" in result.stderr
