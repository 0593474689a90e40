"""The lab's own records (issue 18, items 5 and 6): teardown follows lab.json, whichever fleet
brought the lab up, and the hosts' SSH host keys are recorded for strict checking.

No lab is started here: the machine-level steps of a host's teardown are replaced by a
recorder, so the test runs anywhere (no root, no systemd-nspawn).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab import lab as lab_module
from tests.lab.fleet import Fleet, HostSpec, load_config


def _bench_lab_json(run: Path) -> None:
    """lab.json as a bench fleet writes it: hosts that fleet.toml does not have."""
    hosts = {
        f"b{i}": {
            "index": 10 + i,
            "address": f"169.254.{110 + i}.2",
            "release": "bookworm",
            "distro": "debian12",
            "gpus": [
                {
                    "name": "NVIDIA L4",
                    "memory_total_mib": 23034,
                    "compute_cap": "8.9",
                    "pci_device_id": "27b8",
                    "pci_bus_id": "00000000:01:00.0",
                    "uuid": f"GPU-{i}",
                    "mig_mode": "[N/A]",
                }
            ],
            "nvswitch": False,
        }
        for i in range(1, 4)
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "lab.json").write_text(json.dumps({"hosts": hosts, "run_dir": str(run)}))


@pytest.fixture
def lab_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("LAB_RUN", str(run))
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAB_HOSTS", raising=False)
    destroyed: list[str] = []

    def destroy(self, host):
        destroyed.append(host.name)
        return []

    monkeypatch.setattr(Fleet, "destroy_host", destroy)
    monkeypatch.setattr(Fleet, "leftovers", lambda self: [])
    monkeypatch.setattr(lab_module.Mirrors, "down", lambda self: None)
    monkeypatch.setattr(lab_module.Mirrors, "leftovers", lambda self: [])
    return run, destroyed


def test_a_lab_of_another_fleet_is_attached_from_its_lab_json(lab_run):
    run, _ = lab_run
    _bench_lab_json(run)
    lab = lab_module.Lab.attach()
    assert lab.hosts == ["b1", "b2", "b3"]
    assert lab.addresses["b2"] == "169.254.112.2"
    assert lab.host("b3").gpus[0].name == "NVIDIA L4"


def test_down_tears_down_the_hosts_lab_json_recorded(lab_run, capsys):
    run, destroyed = lab_run
    _bench_lab_json(run)
    (run / "hosts" / "killed-test-host").mkdir(parents=True)
    assert lab_module.main(["down"]) == 0
    fleet_toml = [h["name"] for h in load_config()["host"]]
    assert destroyed[:3] == ["b1", "b2", "b3"]
    assert set(destroyed) == {"b1", "b2", "b3", "killed-test-host", *fleet_toml}
    assert not (run / "lab.json").exists()
    assert "down in" in capsys.readouterr().out


def test_an_older_lab_json_without_index_takes_it_from_the_address():
    info = {"hosts": {"gpu7": {"address": "169.254.107.2", "release": "trixie"}}}
    assert lab_module.specs_from_info(info) == [HostSpec("gpu7", 7, "trixie")]


def test_host_keys_are_recorded_per_address_and_replaced_when_a_host_is_made_again(tmp_path):
    fleet = Fleet([], tmp_path / "cache", tmp_path / "run", load_config())
    host = HostSpec("gpu1", 1, "bookworm")
    other = HostSpec("gpu2", 2, "trixie")
    for spec, key in ((host, "AAAAold"), (other, "AAAAother")):
        ssh = fleet.root(spec) / "etc/ssh"
        ssh.mkdir(parents=True)
        (ssh / "ssh_host_ed25519_key.pub").write_text(f"ssh-ed25519 {key} root@base\n")
        fleet.record_host_keys(spec)
    (fleet.root(host) / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAnew x\n")
    fleet.record_host_keys(host)
    assert fleet.known_hosts.read_text().splitlines() == [
        "169.254.102.2 ssh-ed25519 AAAAother",
        "169.254.101.2 ssh-ed25519 AAAAnew",
    ]
    fleet.forget_host_keys(other)
    assert fleet.known_hosts.read_text() == "169.254.101.2 ssh-ed25519 AAAAnew\n"
    args = fleet.ssh_args(host)
    assert "StrictHostKeyChecking=yes" in args
    assert f"UserKnownHostsFile={fleet.known_hosts}" in args
