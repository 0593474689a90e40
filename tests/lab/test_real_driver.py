"""The NVIDIA driver deploy against packages nobody here wrote, and against a host that already
has NVIDIA's cuda-keyring source.

* Debian's own driver (``nvidia_driver_source = "distro"``, bookworm non-free 535.x) from the
  Debian archive through apt-cacher-ng: DKMS really builds the module for an installed Debian
  kernel's headers (the running kernel is the machine's, which has no packaged headers), the
  real ``nvidia-smi`` meets no device and the facts say so, the holds are real ``apt-mark``
  holds, and ``provision verify`` reports what it can and cannot check there.
* A host with the (stand-in) cuda-keyring installed, which names NVIDIA's repository with its
  own Signed-By: the deploy reuses that source, and ``apt-get update`` sees one source, no error.

It changes its two hosts in ways the end-to-end flow does not expect (a real driver on cpu1,
cuda-keyring on gpu3), so it runs only when asked, in a lab of its own: ``LAB_REAL_DRIVER=1``
with ``LAB_HOSTS=gpu3,cpu1``, under the lab lock:
``flock /tmp/provisioner-lab.lock env LAB_REAL_DRIVER=1 LAB_HOSTS=gpu3,cpu1 python -m pytest
-m lab tests/lab/test_real_driver.py``. Measured times are printed and written to
``$LAB_RUN/real-driver-times.json``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        os.environ.get("LAB_REAL_DRIVER") != "1",
        reason="real driver packages: a lab of its own (LAB_REAL_DRIVER=1 LAB_HOSTS=gpu3,cpu1)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
DRIVER_ONLY = REPO / "src/provisioner/entrypoints/nvidia_driver.py"
REAL = "cpu1"  # bookworm, no simulated GPU: nothing of the stand-in driver is on it
KEYRING = "gpu3"  # bookworm, simulated T4: the stand-in driver from the lab's CUDA repository
TIMES: dict[str, float] = {}


def driver_deploy(lab, host: str, **data: Any) -> subprocess.CompletedProcess:
    """The driver deploy alone on one lab host, through pyinfra's CLI like ``provision apply``."""
    command = [sys.executable, "-m", "pyinfra", str(lab.inventory), str(DRIVER_ONLY), "-y"]
    command += ["--limit", host]
    for key, value in data.items():
        command += ["--data", f"{key}={json.dumps(value)}"]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=3600, check=False
    )


def provision(*args: str) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        payload = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, proc.stderr[-4000:]


def record(name: str, seconds: float) -> None:
    TIMES[name] = round(seconds, 1)
    print(f"TIME {name}: {seconds:.1f} s")
    out = Path(os.environ.get("LAB_RUN", "/var/tmp/provisioner-lab")) / "real-driver-times.json"
    out.write_text(json.dumps(TIMES, indent=2))


# the data of the real-driver host, for apply and verify alike
REAL_DATA = {
    "gpu": True,  # no GPU in the lab: take the GPU path anyway
    "nvidia_driver_source": "distro",
    "nvidia_driver_branch": "535",
    "nvidia_driver_flavour": "proprietary",  # nvidia-kernel-dkms: the smaller DKMS build
    "nvidia_kernel_headers": "linux-headers-amd64",
    "nvidia_reboot": False,  # the lab's kernel is the machine's: the module cannot load
}


@pytest.fixture(scope="module")
def real_driver(lab):
    if REAL not in lab.hosts:
        pytest.skip(f"{REAL} is not in this lab (LAB_HOSTS)")
    started = time.monotonic()
    proc = driver_deploy(lab, REAL, **REAL_DATA)
    record("real driver deploy (download, install, DKMS build)", time.monotonic() - started)
    return proc


def test_debians_driver_installs_and_dkms_builds_the_module(lab, real_driver):
    assert real_driver.returncode == 0, real_driver.stderr[-6000:]
    installed = lab.ssh(REAL, "dpkg-query -W nvidia-driver nvidia-kernel-dkms nvidia-smi").stdout
    # 535.x: the recorded archive has 535.261.03-1; bookworm's updates carry newer 535s
    assert re.search(r"^nvidia-driver\s+535\.\d+\.\d+-\S+$", installed, re.M), installed
    assert re.search(r"^nvidia-kernel-dkms\s+535\.", installed, re.M), installed
    status = lab.ssh(REAL, "dkms status").stdout
    # built and installed for the Debian kernel whose headers were installed
    assert re.search(r"nvidia-current/535\.[\d.]+, 6\.1\.\S+-amd64, x86_64: installed", status), (
        status
    )
    kernel = re.search(r"(6\.1\.\S+-amd64)", status).group(1)  # type: ignore[union-attr]
    modules = lab.ssh(REAL, f"ls /lib/modules/{kernel}/updates/dkms/").stdout.split()
    assert any(m.startswith("nvidia-current.ko") for m in modules), modules
    # the DKMS build runs in nvidia-kernel-dkms's postinst: dpkg.log's "configure" to "status
    # installed" of that package is the build (plus a second or so of dpkg bookkeeping)
    log = lab.ssh(REAL, "grep -E ' (configure|status installed) nvidia-kernel-dkms:' "
                        "/var/log/dpkg.log").stdout.splitlines()  # fmt: skip
    stamps = [time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) for line in log]
    assert len(stamps) >= 2, log
    record("DKMS build of nvidia-current (dpkg configure -> installed)", stamps[-1] - stamps[0])


def test_the_real_nvidia_smi_meets_no_device_and_the_facts_say_so(lab, real_driver):
    assert real_driver.returncode == 0
    smi = lab.ssh(REAL, "nvidia-smi; echo rc=$?", check=False).stdout
    assert "couldn't communicate with the NVIDIA driver" in smi, smi
    code, facts, err = provision("facts", str(lab.inventory), "--limit", REAL)
    assert facts is not None, err
    host = facts["hosts"][REAL]
    assert host["gpu_state"] == "no-driver", host
    assert "couldn't communicate with the NVIDIA driver" in (host["error"] or ""), host


def test_the_holds_are_real_apt_mark_holds(lab, real_driver):
    assert real_driver.returncode == 0
    held = set(lab.ssh(REAL, "apt-mark showhold").stdout.split())
    assert {"nvidia-driver", "nvidia-kernel-dkms", "nvidia-smi", "libnvidia-ml1"} <= held, held
    # apt refuses to upgrade or remove them
    out = lab.ssh(REAL, "apt-get -s remove nvidia-kernel-dkms 2>&1", check=False)
    assert "Held packages were changed" in out.stdout or out.returncode != 0, out.stdout


def test_the_second_run_changes_nothing_but_the_pending_reboot(lab, real_driver):
    assert real_driver.returncode == 0
    started = time.monotonic()
    again = driver_deploy(lab, REAL, **REAL_DATA)
    record("real driver deploy, second run", time.monotonic() - started)
    assert again.returncode == 0, again.stderr[-4000:]
    marker = lab.ssh(REAL, "cat /var/lib/provisioner/reboot-required").stdout
    assert "no NVIDIA kernel module is loaded (installed 535." in marker, marker


def test_verify_reports_what_it_can_and_cannot_check(lab, real_driver):
    """``provision verify`` with the same data as the deploy (its CLI has no --data: the same
    inventory loader, with the overrides, in process)."""
    from provisioner.inventory import load
    from provisioner.verify_cli import verify_inventory

    assert real_driver.returncode == 0
    report = verify_inventory(load(str(lab.inventory), (REAL,), dict(REAL_DATA)), workers=1)
    checks = {c.check: c for c in report.checks_of(REAL) if c.layer == "driver"}
    print("VERIFY", json.dumps({k: [c.status, c.message] for k, c in checks.items()}))
    # what it cannot check here (no device): said, with nvidia-smi's own words
    assert checks["nvidia_smi_answers"].status == "fail"
    assert "couldn't communicate" in checks["nvidia_smi_answers"].message
    assert checks["module_matches_userspace"].status == "fail"
    assert "no NVIDIA kernel module is loaded (installed 535." in (
        checks["module_matches_userspace"].message
    )
    assert checks["no_pending_reboot"].status == "fail"
    # what it can: the branch is held by real apt-mark holds, nouveau is off
    assert checks["driver_locked"].status == "pass", checks["driver_locked"].message
    assert checks["nouveau_not_loaded"].status == "pass"


def test_an_existing_cuda_keyring_source_is_reused(lab):
    if KEYRING not in lab.hosts:
        pytest.skip(f"{KEYRING} is not in this lab (LAB_HOSTS)")
    keyring = lab.info["cuda_repos"]["debian12"]["keyring_deb"]
    lab.ssh(
        KEYRING,
        f"/usr/lib/apt/apt-helper download-file {keyring} /tmp/cuda-keyring.deb "
        "&& dpkg -i /tmp/cuda-keyring.deb",
    )
    started = time.monotonic()
    proc = driver_deploy(lab, KEYRING)
    record("stand-in driver deploy over cuda-keyring", time.monotonic() - started)
    assert proc.returncode == 0, proc.stderr[-6000:]
    url = lab.info["cuda_repos"]["debian12"]["url"].rstrip("/")
    named = lab.ssh(KEYRING, f"grep -ls '{url}' /etc/apt/sources.list.d/*").stdout.split()
    assert named == ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"], named
    update = lab.ssh(KEYRING, "apt-get update 2>&1", check=False)
    assert update.returncode == 0 and "E:" not in update.stdout, update.stdout
    assert "nvidia-open" in lab.ssh(KEYRING, "dpkg-query -W nvidia-open").stdout
