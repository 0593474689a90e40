"""One refused host does not stop the others, in pyinfra's CLI mode too (``pyinfra ... -y --json``,
as ``provision apply`` runs it), with two ``@fake`` hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

DEBIAN12 = ["ID=debian", 'VERSION_ID="12"', "VERSION_CODENAME=bookworm", "##arch x86_64"]
DEBIAN11 = ["ID=debian", 'VERSION_ID="11"', "VERSION_CODENAME=bullseye", "##arch x86_64"]


def test_cli_refuses_one_host_and_runs_the_other(tmp_path):
    common = {"fake_delay": 0, "fake_delay_jitter": 0, "gpu": False}
    hosts = [
        (
            "@fake/good",
            {
                **common,
                "fake_responses": {
                    "cat /etc/os-release": DEBIAN12,
                    "command -v useradd": "/usr/sbin/useradd",
                    "uname -s": "Linux",
                },
            },
        ),
        ("@fake/bad", {**common, "fake_responses": {"cat /etc/os-release": DEBIAN11}}),
    ]
    (tmp_path / "inventory.py").write_text(f"hosts = {hosts!r}\n")
    (tmp_path / "deploy.py").write_text(
        textwrap.dedent(
            """
            from provisioner.deploys.gpu import gpu_stack

            gpu_stack()
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py", "-y", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr  # a host failed
    report = json.loads(run.stdout)
    assert report["results"]["failed_hosts"] == ["@fake/bad"]
    operations = report["results"]["operations"]
    assert operations, run.stderr
    for op in operations:
        assert "@fake/good" in op["success"] + op["no_change"], op
        assert "@fake/good" not in op["error"]
    torch = [op for op in operations if op["name"].endswith("Install torch 2.9.1+cpu")]
    assert torch and torch[0]["success"] == ["@fake/good"]
    assert (
        "[@fake/bad] GPU stack: refused, nothing was changed on this host: unsupported "
        "distribution 'debian 11'" in " ".join(run.stderr.split())
    )
