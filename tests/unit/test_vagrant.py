"""The Vagrant smoke set-up, checked without VMs (docs/vagrant.md).

* The vagrant inventory resolves through pyinfra's real ``@vagrant`` connector and the project's
  loader (``provisioner.inventory.load``), with the stand-in ``vagrant`` (tests/doubles/vagrant)
  replaying output recorded from the real Vagrant 2.3.4 (tests/fixtures/vagrant/).
* ``scripts/vagrant-smoke.sh`` always destroys the VMs, whichever step fails.
* ``vagrant validate`` of the real Vagrantfile, with the real ``vagrant``: skipped when it is not
  installed, a failure instead when ``PROVISIONER_VAGRANT_VALIDATE=1`` (CI sets it after
  ``scripts/vagrant-validate.sh`` installed Vagrant).

The loader runs in a subprocess: importing ``pyinfra_cli`` monkey-patches the whole process for
gevent, and the connector memoizes Vagrant's answers per process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from provisioner import planner, settings

REPO = Path(__file__).resolve().parents[2]
DOUBLE = REPO / "tests" / "doubles" / "vagrant"
FIXTURES = REPO / "tests" / "fixtures" / "vagrant"
INVENTORY = REPO / "inventories" / "vagrant.py"
VMS = ("ubuntu2204", "ubuntu2404", "debian12", "rocky9")
RECORDING_DIR = "/tmp/provisioner-recording/provisioner"  # where record.sh ran Vagrant
RECORDED_KEY = RECORDING_DIR + "/.vagrant/machines/{vm}/{provider}/private_key"

# What the recordings say (tests/fixtures/vagrant/README.md): vagrant-libvirt hands out addresses
# on its management network and SSH on port 22; VirtualBox forwards 2222, then 2200, 2201...
LIBVIRT_ADDRESSES = {
    "ubuntu2204": "192.168.121.47",
    "ubuntu2404": "192.168.121.113",
    "debian12": "192.168.121.20",
    "rocky9": "192.168.121.198",
}
VIRTUALBOX_PORTS = {"ubuntu2204": 2222, "ubuntu2404": 2200, "debian12": 2201, "rocky9": 2202}

LOAD = textwrap.dedent(
    """
    import json, sys
    from provisioner.inventory import InventoryError, load
    try:
        loaded = load(sys.argv[1])
    except InventoryError as exc:
        print(json.dumps({"problems": exc.problems}))
    else:
        hosts = {
            h.name: {"groups": sorted(h.groups), "data": loaded.data_of(h)} for h in loaded.hosts
        }
        print(json.dumps({"hosts": hosts}, default=repr))
    """
)


def double_env(tmp: Path, scenario: str, **extra: str) -> dict[str, str]:
    """The environment of a process that finds the stand-in ``vagrant`` first on PATH."""
    assert os.access(DOUBLE, os.X_OK), f"{DOUBLE} lost its executable bit"
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "vagrant").exists():
        (bin_dir / "vagrant").symlink_to(DOUBLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "PROVISIONER_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VAGRANT_DOUBLE_SCENARIO=scenario,
        VAGRANT_DOUBLE_LOG=str(tmp / "vagrant.log"),
        **extra,
    )
    return env


@cache
def _resolve(scenario: str, cwd: str, extra: tuple[tuple[str, str], ...]) -> tuple[dict, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = double_env(Path(tmp), scenario, **dict(extra))
        result = subprocess.run(
            [sys.executable, "-c", LOAD, str(INVENTORY)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        log = Path(env["VAGRANT_DOUBLE_LOG"])
        calls = log.read_text().splitlines() if log.exists() else []
    return json.loads(result.stdout.splitlines()[-1]), calls


def resolve(scenario: str, cwd: Path = REPO, **extra: str) -> tuple[dict[str, Any], list[str]]:
    """Load inventories/vagrant.py with the project's loader; return its answer and the
    ``vagrant`` calls the connector made (``VAGRANT_CWD=... ARGS``)."""
    return _resolve(scenario, str(cwd), tuple(sorted(extra.items())))


def test_resolves_the_four_running_libvirt_vms_from_the_recorded_output():
    answer, calls = resolve("libvirt-running")
    hosts = answer["hosts"]
    assert sorted(hosts) == sorted(f"@vagrant/{vm}" for vm in VMS)
    for vm in VMS:
        data = hosts[f"@vagrant/{vm}"]["data"]
        assert data["ssh_hostname"] == LIBVIRT_ADDRESSES[vm]
        assert data["ssh_port"] == 22
        assert data["ssh_user"] == "vagrant"
        assert data["ssh_key"] == RECORDED_KEY.format(vm=vm, provider="libvirt")
    # One `vagrant status`, then one `vagrant ssh-config` per running VM, nothing else.
    args = sorted(call.split(" ", 1)[1] for call in calls)
    assert args == sorted(["status --machine-readable", *(f"ssh-config {vm}" for vm in VMS)])


def test_virtualbox_vms_differ_only_by_their_forwarded_port():
    hosts = resolve("virtualbox-running")[0]["hosts"]
    assert sorted(hosts) == sorted(f"@vagrant/{vm}" for vm in VMS)
    for vm in VMS:
        data = hosts[f"@vagrant/{vm}"]["data"]
        assert (data["ssh_hostname"], data["ssh_port"]) == ("127.0.0.1", VIRTUALBOX_PORTS[vm])
        assert data["ssh_key"] == RECORDED_KEY.format(vm=vm, provider="virtualbox")


def test_only_running_vms_become_hosts():
    answer, calls = resolve("libvirt-partial")
    assert list(answer["hosts"]) == ["@vagrant/debian12"]
    assert answer["hosts"]["@vagrant/debian12"]["data"]["ssh_hostname"] == "192.168.121.20"
    # No ssh-config for the shut-off and never-created machines.
    assert [c.split(" ", 1)[1] for c in calls if " ssh-config " in c] == ["ssh-config debian12"]


def test_no_running_vm_is_bad_input_before_any_connection():
    answer, _ = resolve("not-created")
    assert len(answer["problems"]) == 1
    problem = answer["problems"][0]
    assert "No running Vagrant instances found" in problem
    assert "inventories/vagrant.py" in problem


def test_cli_exits_2_when_no_vm_is_running(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "plan", "inventories/vagrant.py"],
        cwd=REPO,
        env=double_env(tmp_path, "not-created"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "No running Vagrant instances found" in result.stderr
    assert "no host was contacted" in result.stderr


def test_group_data_throwaway_host_keys_sudo_and_the_smoke_profile():
    hosts = resolve("libvirt-running")[0]["hosts"]
    for host in hosts.values():
        assert {"@vagrant", "vms", "vagrant"} <= set(host["groups"])
        data = host["data"]
        assert data["ssh_known_hosts_file"] == "/dev/null"
        assert data["ssh_strict_host_key_checking"] == "no"
        assert data["_sudo"] is True
        assert data["gpu"] is False
        assert data["models"] == ["qwen3:0.6b"]


def test_with_gpu_passthrough_gpu_is_left_to_detection():
    hosts = resolve("libvirt-running", PROVISIONER_GPU_PCI="0000:01:00.0")[0]["hosts"]
    assert all("gpu" not in host["data"] for host in hosts.values())


def test_vagrant_runs_against_the_repository_vagrantfile_from_any_directory(tmp_path):
    answer, calls = resolve("libvirt-running", cwd=tmp_path)
    assert len(answer["hosts"]) == 4
    assert calls and all(call.startswith(f"VAGRANT_CWD={REPO} ") for call in calls)


def test_an_operator_vagrant_cwd_wins(tmp_path):
    _, calls = resolve("libvirt-running", VAGRANT_CWD=str(tmp_path))
    assert calls and all(call.startswith(f"VAGRANT_CWD={tmp_path} ") for call in calls)


@pytest.mark.parametrize("memory_total_mib", [3584, 3916])
def test_smoke_profile_plans_its_one_model_on_a_4_gib_vm(memory_total_mib):
    data = resolve("libvirt-running")[0]["hosts"]["@vagrant/debian12"]["data"]
    # A 4096 MiB VM: the guest kernel reports a little less (about 3.8 GiB).
    facts = {
        "gpu_state": "no-driver",
        "gpus": [],
        "memory_total_mib": memory_total_mib,
        "pci_devices": [],
    }
    plan = planner.plan_host("@vagrant/debian12", facts, settings.resolve(data))
    assert plan["mode"] == "cpu"
    assert [m["tag"] for m in plan["models"]] == ["qwen3:0.6b"]
    assert plan["skipped"] == []


@pytest.mark.parametrize(
    "scenario", ["libvirt-running", "libvirt-partial", "virtualbox-running", "not-created"]
)
def test_each_recorded_running_machine_has_its_recorded_ssh_config(scenario):
    lines = (FIXTURES / f"{scenario}.status.txt").read_text().splitlines()
    records = [line.split(",", 3) for line in lines]
    assert all(len(r) == 4 and r[0].isdigit() for r in records)  # timestamp,target,type,data
    machines = {r[1] for r in records if r[2] == "state"}
    assert machines == set(VMS)
    running = {r[1] for r in records if r[2] == "state" and r[3] == "running"}
    for vm in VMS:
        recording = FIXTURES / f"{scenario}.ssh-config.{vm}.txt"
        assert recording.exists() == (vm in running)
        if vm in running:
            assert recording.read_text().startswith(f"Host {vm}\n")
            # Vagrant prints an empty line after each host.
            assert recording.read_text().endswith("\n\n")


def test_double_answers_ssh_config_of_a_stopped_machine_as_vagrant_does(tmp_path):
    env = double_env(tmp_path, "libvirt-partial")
    stopped = subprocess.run(
        ["vagrant", "ssh-config", "ubuntu2204"], env=env, capture_output=True, text=True
    )
    assert (stopped.returncode, stopped.stdout) == (1, "")
    assert "not yet ready for SSH" in stopped.stderr
    unknown = subprocess.run(
        ["vagrant", "ssh-config", "centos7"], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 1
    assert "The machine with the name 'centos7' was not found" in unknown.stderr


# --- scripts/vagrant-smoke.sh ---------------------------------------------------------------

PROVISION_DOUBLE = """#!/bin/sh
# TEST DOUBLE of the provision CLI: logs its arguments, fails the step named in $FAIL_STEP.
echo "provision $*" >> "$SMOKE_LOG"
[ "$1" = "$FAIL_STEP" ] && exit 1
exit 0
"""


def run_smoke(tmp_path: Path, fail_step: str = "", up_rc: int = 0, args: tuple[str, ...] = ()):
    provision = tmp_path / "provision"
    provision.write_text(PROVISION_DOUBLE)
    provision.chmod(0o755)
    log = tmp_path / "vagrant.log"
    env = double_env(
        tmp_path,
        "libvirt-running",
        PROVISION=str(provision),
        SMOKE_LOG=str(log),
        FAIL_STEP=fail_step,
        VAGRANT_DOUBLE_UP_RC=str(up_rc),
    )
    result = subprocess.run(
        [str(REPO / "scripts" / "vagrant-smoke.sh"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    steps = [line.removeprefix(f"VAGRANT_CWD={REPO} ") for line in log.read_text().splitlines()]
    return result, steps


def test_smoke_runs_every_step_then_destroys(tmp_path):
    result, steps = run_smoke(tmp_path)
    assert result.returncode == 0, result.stderr
    limit = " ".join(f"--limit @vagrant/{vm}" for vm in VMS)
    assert steps == [
        "up " + " ".join(VMS),
        f"provision plan inventories/vagrant.py {limit}",
        f"provision apply inventories/vagrant.py {limit}",
        f"provision verify inventories/vagrant.py {limit}",
        "destroy -f " + " ".join(VMS),
    ]


def test_smoke_destroys_after_a_failed_apply(tmp_path):
    result, steps = run_smoke(tmp_path, fail_step="apply", args=("debian12",))
    assert result.returncode == 1
    assert [s.split(" ")[:2] for s in steps] == [
        ["up", "debian12"],
        ["provision", "plan"],
        ["provision", "apply"],
        ["destroy", "-f"],
    ]
    assert steps[-1] == "destroy -f debian12"


def test_smoke_destroys_when_vagrant_up_fails(tmp_path):
    result, steps = run_smoke(tmp_path, up_rc=1)
    assert result.returncode == 1
    assert steps == ["up " + " ".join(VMS), "destroy -f " + " ".join(VMS)]


# --- vagrant validate with the real Vagrant --------------------------------------------------


def _real_vagrant() -> str | None:
    path = shutil.which("vagrant")
    if path and "TEST DOUBLE" not in Path(path).read_text(errors="replace")[:200]:
        return path
    return None


@pytest.fixture(scope="module")
def real_vagrant(tmp_path_factory) -> dict[str, Any]:
    """The real ``vagrant`` with a private VAGRANT_HOME and data dir; skips without it."""
    path = _real_vagrant()
    if path is None:
        reason = "the real vagrant is not installed (scripts/vagrant-validate.sh installs it)"
        if os.environ.get("PROVISIONER_VAGRANT_VALIDATE") == "1":
            pytest.fail(f"PROVISIONER_VAGRANT_VALIDATE=1 but {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("vagrant")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "PROVISIONER_"))}
    env.update(
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_HOME=str(tmp / "home"),
        VAGRANT_DOTFILE_PATH=str(tmp / "dot"),
        VAGRANT_DEFAULT_PROVIDER="libvirt",
    )
    plugins = subprocess.run(
        [path, "plugin", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    libvirt = any(line.startswith("vagrant-libvirt ") for line in plugins.stdout.splitlines())
    return {"path": path, "env": env, "libvirt": libvirt}


def validate(real_vagrant: dict[str, Any], cwd: Path = REPO, **extra: str):
    args = [real_vagrant["path"], "validate"]
    if not real_vagrant["libvirt"]:
        args.append("--ignore-provider")
    return subprocess.run(
        args,
        cwd=cwd,
        env={**real_vagrant["env"], **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_vagrantfile_validates(real_vagrant):
    result = validate(real_vagrant)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully." in result.stdout


def test_vagrantfile_with_gpu_passthrough_validates(real_vagrant):
    result = validate(real_vagrant, PROVISIONER_GPU_PCI="0000:01:00.0,0000:01:00.1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vagrantfile_refuses_a_malformed_pci_address(real_vagrant):
    result = validate(real_vagrant, PROVISIONER_GPU_PCI="01:00.0")
    assert result.returncode != 0
    assert 'PROVISIONER_GPU_PCI: "01:00.0" is not a PCI address' in result.stderr


def test_validate_catches_a_misspelt_setting(real_vagrant, tmp_path):
    """Proof that the validation above checks something: a typo fails it."""
    text = (REPO / "Vagrantfile").read_text()
    typos = [("config.vm.box_check_update", "config.vm.box_check_updat", "box_check_updat")]
    if real_vagrant["libvirt"]:
        typos.append(("lv.cpus = CPUS", "lv.cpuz = CPUS", "cpuz"))
    for good, bad, setting in typos:
        assert good in text
        (tmp_path / "Vagrantfile").write_text(text.replace(good, bad))
        result = validate(real_vagrant, cwd=tmp_path)
        assert result.returncode == 1
        assert f"shouldn't exist: {setting}" in result.stdout + result.stderr


def test_real_vagrant_status_matches_the_recordings(real_vagrant):
    result = subprocess.run(
        [real_vagrant["path"], "status", "--machine-readable"],
        cwd=REPO,
        env=real_vagrant["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    machines = [line.split(",", 3)[1] for line in result.stdout.splitlines() if ",state," in line]
    assert machines == list(VMS)
    if real_vagrant["libvirt"]:
        recorded = (FIXTURES / "not-created.status.txt").read_text()

        def strip_time(text: str) -> list[str]:
            return [line.split(",", 1)[1] for line in text.splitlines()]

        assert strip_time(result.stdout) == strip_time(recorded)
