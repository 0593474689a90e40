"""`provision verify --repair` on the lab: only the host verify finds broken is applied to."""

from __future__ import annotations

import pytest

from tests.lab.test_e2e import provision

pytestmark = pytest.mark.lab


def test_verify_repair_applies_only_to_the_broken_host(lab):
    broken, healthy = "gpu1", "cpu1"
    if not {broken, healthy} <= set(lab.hosts):
        pytest.skip("needs gpu1 and cpu1")
    code, _, err = provision("apply", str(lab.inventory), "--limit", broken, "--limit", healthy)
    assert code == 0, err
    lab.ssh(broken, "systemctl stop ollama")
    code, report, err = provision(
        "verify", str(lab.inventory), "--limit", f"{broken},{healthy}", "--repair"
    )
    assert code == 0, err
    assert report["hosts"][broken]["status"] == "fail"  # what verify found first
    repair = report["repair"]
    assert repair["broken"] == [broken]
    assert set(repair["apply"]["hosts"]) == {broken}
    assert repair["apply"]["hosts"][broken]["changed"], repair["apply"]  # Ollama started
    assert repair["after"]["hosts"][broken]["status"] == "pass"
    assert lab.ssh(broken, "systemctl is-active ollama").stdout.strip() == "active"
