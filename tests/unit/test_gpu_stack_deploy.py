"""The GPU stack deploys, run for real (pyinfra API mode, ``@fake`` hosts) against GpuHostDouble
hosts (tests/unit/test_gpu_stack_double.py), for every supported distribution: the exact commands
of a fresh host, nothing on a converged one, the reboot of a host whose module is outdated,
NVSwitch, Pascal (proprietary), Blackwell (open), CPU-only and refused hosts."""

from __future__ import annotations

import itertools
import logging
import re

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from test_gpu_stack_double import GpuHostDouble, ServedKey, install_doubles, library_family

from provisioner import run_events
from provisioner.deploys.cuda_toolkit import cuda_toolkit
from provisioner.deploys.gpu import gpu_stack
from provisioner.deploys.nvidia_driver import nvidia_driver
from provisioner.deploys.pytorch import pytorch

FAKE = {"fake_delay": 0, "fake_delay_jitter": 0}
DISTROS = ["debian12", "debian13", "ubuntu2204", "ubuntu2404", "rhel9", "rocky9"]
APT = {"debian12", "debian13", "ubuntu2204", "ubuntu2404"}

APT_INSTALL = (
    "env DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
REBOOT = "( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &"
UNATTENDED_DROPIN = [
    "upload /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
    "chmod 644 /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
]
VENV = "/opt/provisioner/torch-venv"
TORCH_SETUP = [
    "useradd -d /home/provisioner -s /usr/sbin/nologin -r -M provisioner",
    f"mkdir -p {VENV}",
    f"chown provisioner: {VENV}",
    f"runuser -u provisioner -- python3 -m venv {VENV}",
]


EL_TORCH_SETUP = [c.replace("python3 -m", "python3.11 -m") for c in TORCH_SETUP]


def pip(tag: str, version: str = "2.9.1", index: str = "https://download.pytorch.org/whl") -> str:
    return (
        f"runuser -u provisioner -- {VENV}/bin/pip install --no-input --disable-pip-version-check "
        f"--no-cache-dir --index-url {index}/{tag} torch=={version}+{tag}"
    )


# NVIDIA's apt repository keys: 3bf863cc everywhere but debian13, which NVIDIA signs with
# 8793F200 (cuda-repo-management #30/#34/#39; fingerprint as recorded in test_gpu_stack_double)
KEYS = {
    "*": ("3bf863cc.pub", "eb693b3035cd5710e231e123a4b469963bf863cc"),
    "debian13": ("8793F200.pub", "02182e60104fcdc26eae1b8597a5d4cb8793f200"),
}


def apt_key(repo: str) -> str:
    key, fpr = KEYS.get(repo, KEYS["*"])
    url = f"https://developer.download.nvidia.com/compute/cuda/repos/{repo}/x86_64/{key}"
    return (
        "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
        f"/usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file {url} "
        '"$d/key"; mkdir -m 700 "$d/g"; '
        'f=$(GNUPGHOME="$d/g" gpg --batch --quiet --show-keys --with-colons "$d/key" 2>/dev/null '
        '| awk -F: \'$1=="pub"{n++; p=1; next} $1=="fpr" && p {f=$10; p=0} '
        "END{if (n==1) print tolower(f)}'); "
        f"[ \"$f\" = {fpr} ] || {{ echo '{url}: the key'\"'\"'s fingerprint is not the pinned "
        f"{fpr}' >&2; exit 1; }}; "
        'install -D -m 0644 "$d/key" /etc/apt/keyrings/nvidia-cuda.asc'
    )


EL_KEY = (
    "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
    'curl -fsSL -o "$d/key" https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/'
    "D42D0685.pub; sed -i '/^Version/d' \"$d/key\"; printf '%s  %s\\n' "
    'd0664fbbdb8c32356d45de36c5984617217b2d0bef41b93ccecd326ba3b80c87 "$d/key" | sha256sum -c '
    "--status - || { echo 'https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/"
    "D42D0685.pub: the key'\"'\"'s sha256 is not the pinned "
    "d0664fbbdb8c32356d45de36c5984617217b2d0bef41b93ccecd326ba3b80c87' >&2; exit 1; }; "
    'install -D -m 0644 "$d/key" /etc/pki/rpm-gpg/nvidia-cuda.asc'
)

# The commands a fresh host runs, spelled out for one distro of each family: an RTX 4090
# (Ada: open modules, cu130 wheels) with CUDA toolkit 13.0.
FRESH_DEBIAN12 = [
    "apt-get update",
    f"{APT_INSTALL} gpg",
    apt_key("debian12"),
    "upload /etc/apt/sources.list.d/nvidia-cuda.sources",
    "chmod 644 /etc/apt/sources.list.d/nvidia-cuda.sources",
    # priority 600 for NVIDIA's repository, as cuda-keyring's preference file sets it
    "upload /etc/apt/preferences.d/nvidia-cuda.pref",
    "chmod 644 /etc/apt/preferences.d/nvidia-cuda.pref",
    "upload /etc/apt/sources.list.d/provisioner-distro-components.sources",
    "chmod 644 /etc/apt/sources.list.d/provisioner-distro-components.sources",
    "apt-get update",
    f"{APT_INSTALL} linux-headers-6.1.0-28-amd64",
    "apt-get update",
    f"{APT_INSTALL} nvidia-driver-pinning-580",
    "apt-get update",
    f"{APT_INSTALL} nvidia-open",
    "apt-mark hold libcuda1 libnvidia-ml1 libnvidia-ptxjitcompiler1 nvidia-driver "
    "nvidia-kernel-open-dkms nvidia-open",
    # unattended-upgrades leaves the driver packages alone (issue 16)
    "upload /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
    "chmod 644 /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
    "upload /etc/modprobe.d/blacklist-nouveau.conf",
    "chmod 644 /etc/modprobe.d/blacklist-nouveau.conf",
    "update-initramfs -u",
    REBOOT,
    "systemctl start nvidia-persistenced.service",
    "systemctl enable nvidia-persistenced.service",
    "apt-get update",
    f"{APT_INSTALL} cuda-toolkit-13-0",
    "upload /etc/profile.d/cuda.sh",
    "chmod 644 /etc/profile.d/cuda.sh",
    "apt-get update",
    f"{APT_INSTALL} python3-venv",
    *TORCH_SETUP,
    pip("cu130"),
]
FRESH_RHEL9 = [
    EL_KEY,
    "upload /etc/yum.repos.d/nvidia-cuda.repo",
    "chmod 644 /etc/yum.repos.d/nvidia-cuda.repo",
    "dnf install -y kernel-devel-5.14.0-427.13.1.el9_4.x86_64 python3-dnf-plugin-versionlock",
    "dnf module enable -y nvidia-driver:580-open",
    "dnf install -y nvidia-open",
    "dnf versionlock add kmod-nvidia-open-dkms nvidia-driver nvidia-open",
    "upload /etc/modprobe.d/blacklist-nouveau.conf",
    "chmod 644 /etc/modprobe.d/blacklist-nouveau.conf",
    "dracut -f",
    REBOOT,
    "systemctl start nvidia-persistenced.service",
    "systemctl enable nvidia-persistenced.service",
    "dnf install -y cuda-toolkit-13-0",
    "upload /etc/profile.d/cuda.sh",
    "chmod 644 /etc/profile.d/cuda.sh",
    "dnf install -y python3.11",  # EL9's python3 is 3.9; torch 2.9 needs >= 3.10
    *EL_TORCH_SETUP,
    pip("cu130"),
]


def fresh(
    distro: str,
    *,
    flavour: str = "open",
    fabricmanager: bool = False,
    toolkit: str | None = "13-0",
    tag: str = "cu130",
) -> list[str]:
    """The commands of a fresh host of ``distro``, built from the per-family pieces above."""
    apt = distro in APT
    ubuntu = distro.startswith("ubuntu")
    meta = {"open": "nvidia-open", "proprietary": "cuda-drivers"}[flavour]
    if apt:
        kmod = {
            ("open", False): "nvidia-kernel-open-dkms",
            ("proprietary", False): "nvidia-kernel-dkms",
            ("open", True): "nvidia-dkms-open",
            ("proprietary", True): "nvidia-dkms",
        }[flavour, ubuntu]
        fm = "nvidia-fabricmanager"
        libs = [lib.format(branch="580") for lib in library_family(distro)["libraries"]]
        held = sorted([meta, kmod, "nvidia-driver", *libs, *([fm] if fabricmanager else [])])
        out = ["apt-get update", f"{APT_INSTALL} gpg", apt_key(distro)]
        out += [
            "upload /etc/apt/sources.list.d/nvidia-cuda.sources",
            "chmod 644 /etc/apt/sources.list.d/nvidia-cuda.sources",
            "upload /etc/apt/preferences.d/nvidia-cuda.pref",
            "chmod 644 /etc/apt/preferences.d/nvidia-cuda.pref",
        ]
        if not ubuntu:
            out += [
                "upload /etc/apt/sources.list.d/provisioner-distro-components.sources",
                "chmod 644 /etc/apt/sources.list.d/provisioner-distro-components.sources",
            ]
        out += ["apt-get update", f"{APT_INSTALL} linux-headers-6.1.0-28-amd64"]
        out += ["apt-get update", f"{APT_INSTALL} nvidia-driver-pinning-580"]
        out += ["apt-get update", f"{APT_INSTALL} {meta}"]
        if fabricmanager:
            # NVIDIA's driver container matches Fabric Manager's version by prefix
            out += ["apt-get update", f"{APT_INSTALL} '{fm}=580.126.09*'"]
        out += [f"apt-mark hold {' '.join(held)}", *UNATTENDED_DROPIN]
        initramfs = "update-initramfs -u"
    else:
        kmod = {"open": "kmod-nvidia-open-dkms", "proprietary": "kmod-nvidia-latest-dkms"}[flavour]
        fm = "nvidia-fabricmanager"  # from branch 580 on EL (nvidia-fabric-manager before)
        held = sorted([meta, kmod, "nvidia-driver", *([fm] if fabricmanager else [])])
        prerequisites = "python3-dnf-plugin-versionlock" + (
            " epel-release" if distro == "rocky9" else ""
        )
        out = [
            EL_KEY,
            "upload /etc/yum.repos.d/nvidia-cuda.repo",
            "chmod 644 /etc/yum.repos.d/nvidia-cuda.repo",
            f"dnf install -y kernel-devel-5.14.0-427.13.1.el9_4.x86_64 {prerequisites}",
            f"dnf module enable -y nvidia-driver:580-{'open' if flavour == 'open' else 'dkms'}",
            f"dnf install -y {meta}",
        ]
        if fabricmanager:
            out += [f"dnf install -y {fm}-580.126.09"]
        out += [f"dnf versionlock add {' '.join(held)}"]
        initramfs = "dracut -f"
    out += [
        "upload /etc/modprobe.d/blacklist-nouveau.conf",
        "chmod 644 /etc/modprobe.d/blacklist-nouveau.conf",
        initramfs,
        REBOOT,
    ]
    if ubuntu:  # Ubuntu's unit runs --no-persistence-mode: NVIDIA's role overrides it
        out += [
            "mkdir -p /etc/systemd/system/nvidia-persistenced.service.d",
            "upload /etc/systemd/system/nvidia-persistenced.service.d/provisioner.conf",
            "chmod 644 /etc/systemd/system/nvidia-persistenced.service.d/provisioner.conf",
            "systemctl daemon-reload",
        ]
    out += [
        "systemctl start nvidia-persistenced.service",
        "systemctl enable nvidia-persistenced.service",
    ]
    if fabricmanager:
        out += [
            "systemctl start nvidia-fabricmanager.service",
            "systemctl enable nvidia-fabricmanager.service",
        ]
    if toolkit:
        out += ["apt-get update", f"{APT_INSTALL} cuda-toolkit-{toolkit}"] if apt else []
        out += [] if apt else [f"dnf install -y cuda-toolkit-{toolkit}"]
        out += ["upload /etc/profile.d/cuda.sh", "chmod 644 /etc/profile.d/cuda.sh"]
    out += ["apt-get update", f"{APT_INSTALL} python3-venv"] if apt else []
    # EL9's python3 is 3.9; torch 2.9 has no cp39 wheels: the venv is made with python3.11
    out += [] if apt else ["dnf install -y python3.11"]
    return [*out, *(TORCH_SETUP if apt else EL_TORCH_SETUP), pip(tag)]


@pytest.fixture
def doubles(monkeypatch):
    return install_doubles(monkeypatch)


def apply(
    registry,
    hosts: dict[str, GpuHostDouble],
    data: dict | None = None,
    deploy=gpu_stack,
    check_for_changes: bool = True,
):
    """Run ``deploy`` on the doubles, in pyinfra's API mode; return the state.
    ``check_for_changes=False`` plans as ``pyinfra -y`` (``provision apply``) does: the
    operations' bodies run only when executing."""
    registry.update(hosts)
    for double in hosts.values():
        double.changes.clear()
    inventory = Inventory(
        ([(f"@fake/{name}", {**FAKE, **(data or {}).get(name, {})}) for name in hosts], {})
    )
    state = State(inventory=inventory, config=Config(), check_for_changes=check_for_changes)
    connect_all(state)
    add_deploy(state, deploy)
    run_ops(state)
    return state


def failed(state) -> set[str]:
    return {host.name.split("/", 1)[1] for host in state.failed_hosts}


TOOLKIT = {"cuda_toolkit_version": "13.0"}


def test_the_builder_spells_the_literal_lists():
    assert fresh("debian12") == FRESH_DEBIAN12
    assert fresh("rhel9") == FRESH_RHEL9


# --- fresh, converged, outdated --------------------------------------------------------------


@pytest.mark.parametrize("distro", DISTROS)
def test_fresh_host_exact_commands_then_converged(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state) and host.unknown == []
    assert host.changes == fresh(distro)
    # the module that runs is the installed one, and the services run
    assert host.module == "580.126.09" and host.module_flavour == "open"
    assert "nvidia-persistenced.service" in host.services_running
    assert host.torch == {VENV: "2.9.1+cu130"}
    # a converged host: nothing changes
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state)
    assert host.changes == []
    assert host.boots == 1


@pytest.mark.parametrize("distro", DISTROS)
def test_outdated_module_is_replaced_by_a_reboot(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host})
    host.module = "580.95.05"  # still loaded from before, e.g. after an out-of-band upgrade
    state = apply(doubles, {"a": host})
    assert not failed(state)
    assert host.changes == [REBOOT]
    assert host.module == "580.126.09" and host.boots == 2


@pytest.mark.parametrize("distro", DISTROS)
def test_requested_upgrade_within_the_branch(doubles, distro):
    apt = distro in APT
    old, new = ("580.105.08-1", "580.126.09-1") if apt else ("580.105.08-1.el9", "580.126.09-1.el9")
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host}, {"a": {"nvidia_driver_version": old}})
    assert host.module == "580.105.08"
    state = apply(doubles, {"a": host}, {"a": {"nvidia_driver_version": new}})
    assert not failed(state)
    if apt:
        kmod = "nvidia-dkms-open" if distro.startswith("ubuntu") else "nvidia-kernel-open-dkms"
        assert host.changes == [
            "apt-get update",
            f"{APT_INSTALL} --allow-change-held-packages --allow-downgrades nvidia-open={new}",
            REBOOT,
        ]
        assert all(host.packages[p]["held"] for p in ("nvidia-open", kmod, "nvidia-driver"))
    else:
        held = "kmod-nvidia-open-dkms nvidia-driver nvidia-open"
        assert host.changes == [
            f"dnf versionlock delete {held}",
            f"dnf install -y --allowerasing nvidia-open-{new}",
            f"dnf versionlock add {held}",
            REBOOT,
        ]
    assert host.module == "580.126.09"


@pytest.mark.parametrize("distro", ["debian12", "debian13"])
def test_driver_mismatch_without_sysfs_like_the_lab(doubles, distro):
    """Without /sys/module/nvidia (a container, the lab), the loaded version comes from
    nvidia-smi: "Driver/library version mismatch" means the module is outdated."""
    host = GpuHostDouble(distro=distro, gpus=("20b2", "20b2"), nvswitch="1af1", sysfs=False)
    apply(doubles, {"a": host})
    assert apply(doubles, {"a": host}) and host.changes == []
    host.module = "580.105.08"
    state = apply(doubles, {"a": host})
    assert not failed(state)
    assert host.changes == [REBOOT]
    assert host.services_running == {"nvidia-persistenced.service", "nvidia-fabricmanager.service"}


# --- GPU generations -------------------------------------------------------------------------


@pytest.mark.parametrize("distro", DISTROS)
def test_nvswitch_host_gets_fabric_manager_at_the_driver_version(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("20b2", "20b2"), nvswitch="1af1")
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state) and host.unknown == []
    assert host.changes == fresh(distro, fabricmanager=True)
    assert "nvidia-fabricmanager.service" in host.services_running
    assert apply(doubles, {"a": host}, {"a": TOOLKIT}) and host.changes == []


@pytest.mark.parametrize("distro", DISTROS)
def test_pascal_host_gets_the_proprietary_modules(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("15f8",))
    data = {"cuda_toolkit_version": "12.8"}
    state = apply(doubles, {"a": host}, {"a": data})
    assert not failed(state)
    # proprietary modules; CUDA 13 and the cu130/cu128 wheels leave Pascal out: cu126
    assert host.changes == fresh(distro, flavour="proprietary", toolkit="12-8", tag="cu126")
    assert host.module_flavour == "proprietary"
    assert apply(doubles, {"a": host}, {"a": data}) and host.changes == []


@pytest.mark.parametrize("distro", DISTROS)
def test_blackwell_host_gets_the_open_modules(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2901",))
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state)
    assert host.changes == fresh(distro)
    assert host.module_flavour == "open"


def test_mixed_turing_and_volta_host_takes_proprietary(doubles):
    host = GpuHostDouble(distro="ubuntu2404", gpus=("1eb8", "1db4"))
    state = apply(doubles, {"a": host})
    assert not failed(state)
    # Volta (7.0) is still in the cu128 builds, not in cu130's
    assert host.changes == fresh("ubuntu2404", flavour="proprietary", toolkit=None, tag="cu128")


# --- CPU-only hosts --------------------------------------------------------------------------


@pytest.mark.parametrize("distro", DISTROS)
def test_cpu_only_host_skips_the_gpu_parts_with_reasons(doubles, caplog, distro):
    caplog.set_level(logging.INFO)
    host = GpuHostDouble(distro=distro, gpus=())
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state)
    venv = ["apt-get update", f"{APT_INSTALL} python3-venv"] if distro in APT else []
    venv += [] if distro in APT else ["dnf install -y python3.11"]
    setup = TORCH_SETUP if distro in APT else EL_TORCH_SETUP
    assert host.changes == [*venv, *setup, pip("cpu")]
    log = caplog.text
    assert "NVIDIA driver: skipped, CPU-only host: no NVIDIA GPU on the PCI bus" in log
    assert "CUDA toolkit: skipped, no CUDA toolkit on a CPU-only host" in log
    assert "PyTorch: torch 2.9.1+cpu from https://download.pytorch.org/whl/cpu" in log
    assert apply(doubles, {"a": host}, {"a": TOOLKIT}) and host.changes == []


def test_data_gpu_false_skips_a_gpu_host(doubles, caplog):
    caplog.set_level(logging.INFO)
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"a": host}, {"a": {"gpu": False}})
    assert not failed(state)
    assert host.changes == [
        "apt-get update",
        f"{APT_INSTALL} python3-venv",
        *TORCH_SETUP,
        pip("cpu"),
    ]
    assert "skipped, CPU-only host: data `gpu` is false" in caplog.text


# --- reboot policy ---------------------------------------------------------------------------


def test_no_reboot_reports_pending_then_converges_after_a_manual_reboot(doubles, caplog):
    caplog.set_level(logging.INFO)
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    data = {"a": {"nvidia_reboot": False}}
    state = apply(doubles, {"a": host}, data)
    assert not failed(state)
    assert REBOOT not in host.changes and host.boots == 0
    assert "upload /var/lib/provisioner/reboot-required" in host.changes
    assert "systemctl start nvidia-persistenced.service" not in host.changes
    assert "systemctl enable nvidia-persistenced.service" in host.changes
    marker = host.files["/var/lib/provisioner/reboot-required"]["content"]
    assert "no NVIDIA kernel module is loaded (installed 580.126.09)" in marker
    assert "PENDING REBOOT (nvidia_reboot is false)" in caplog.text
    # still pending: the marker stays as it is
    assert apply(doubles, {"a": host}, data) and host.changes == []
    # the operator reboots; the next run clears the marker and starts the service
    host.reboot()
    host.services_running.clear()
    apply(doubles, {"a": host}, data)
    assert host.changes == [
        "rm -f /var/lib/provisioner/reboot-required",
        "systemctl start nvidia-persistenced.service",
    ]


@pytest.mark.parametrize("distro", ["debian12", "rhel9"])
def test_no_reboot_into_a_kernel_without_the_module_until_it_is_built(
    doubles, monkeypatch, tmp_path, caplog, distro
):
    """A kernel update installed without its headers: DKMS built nothing for the kernel the
    host boots next. The host is not rebooted but reported pending with the reason and the
    next step; the other host reboots; once the module is built, the reboot goes ahead."""
    caplog.set_level(logging.INFO)
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(run_events.ENV, str(events))
    stuck = GpuHostDouble(distro=distro, gpus=("2684",))
    other = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"stuck": stuck, "other": other})
    new = "6.1.0-29-amd64" if distro == "debian12" else "5.14.0-503.el9.x86_64"
    headers = f"linux-headers-{new}" if distro == "debian12" else f"kernel-devel-{new}"
    for host in (stuck, other):
        host.module = "580.105.08"  # an out-of-band driver upgrade: the old module still runs
    stuck.next_kernel = new
    state = apply(doubles, {"stuck": stuck, "other": other})
    assert not failed(state)
    assert REBOOT not in stuck.changes and stuck.boots == 1
    assert other.changes == [REBOOT] and other.boots == 2
    marker = stuck.files["/var/lib/provisioner/reboot-required"]["content"]
    why = (
        f"not rebooting: kernel {new}, which the host boots next, has no NVIDIA module (a "
        f"reboot would come up without the driver); next: install the kernel headers {headers}"
        f", then build it: dkms autoinstall -k {new}, then run provision apply again"
    )
    assert why in marker
    mismatch = "nvidia-smi reports a driver/library version mismatch (installed 580.126.09)"
    assert mismatch in marker
    pending = run_events.pending_reboots(run_events.read(events))
    assert list(pending) == ["@fake/stuck"]
    assert pending["@fake/stuck"].startswith(f"({why}): {mismatch}")
    assert f"PENDING REBOOT ({why})" in caplog.text
    # still not built: nothing changes, the marker stays
    apply(doubles, {"stuck": stuck})
    assert stuck.changes == [] and stuck.boots == 1
    # the operator builds it (dkms autoinstall -k NEW): the reboot goes ahead, the marker goes
    stuck.modules_built.add(new)
    state = apply(doubles, {"stuck": stuck})
    assert not failed(state)
    assert stuck.changes == [REBOOT, "rm -f /var/lib/provisioner/reboot-required"]
    assert stuck.boots == 2 and stuck.module == "580.126.09"


def test_host_fails_with_the_reason_when_the_module_does_not_load(doubles, monkeypatch, caplog):
    clock = itertools.count(0, 30)
    monkeypatch.setattr("provisioner.operations.nvidia.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("provisioner.operations.nvidia.gevent.sleep", lambda s: None)
    bad = GpuHostDouble(distro="debian12", gpus=("2684",), module_loads=False)
    good = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"bad": bad, "good": good})
    assert failed(state) == {"bad"}
    assert bad.changes[-1] == REBOOT  # nothing after the reboot
    assert (
        "after the reboot the NVIDIA kernel module is not right: no NVIDIA kernel module is "
        "loaded (installed 580.126.09)" in caplog.text
    )
    assert good.changes == fresh("debian12", toolkit=None)


# --- refused hosts: an error for that host before anything changes; the others carry on -----


@pytest.mark.parametrize(
    ("bad", "data", "message"),
    [
        (
            GpuHostDouble(distro="debian12", os_release="debian11"),
            {},
            "unsupported distribution 'debian 11' (supported: Debian 12, Debian 13, Ubuntu 22.04, "
            "Ubuntu 24.04, RHEL 9, Rocky Linux 9)",
        ),
        (
            GpuHostDouble(distro="debian12", arch="aarch64"),
            {},
            "architecture 'aarch64' is not supported on Debian 12 (supported: x86_64)",
        ),
        (
            GpuHostDouble(distro="ubuntu2404", gpus=("2901",)),
            {"nvidia_driver_branch": "560"},
            "driver branch 560 does not support NVIDIA B200 (Blackwell): Blackwell GPUs need "
            "branch 570 or newer",
        ),
        (
            GpuHostDouble(distro="ubuntu2204", gpus=("15f8",)),
            {"nvidia_driver_branch": "590"},
            "driver branch 590 does not support Tesla P100-PCIE-16GB (Pascal): the last branch "
            "for Pascal GPUs is 580",
        ),
        (
            GpuHostDouble(distro="rocky9", gpus=("2901", "15f8")),
            {},
            "no kernel module flavour drives all GPUs of this host: NVIDIA B200 (Blackwell) need "
            "the open modules, Tesla P100-PCIE-16GB (Pascal) the proprietary ones",
        ),
        (
            GpuHostDouble(
                distro="debian12", gpus=("2684",), driver_versions=("570.195.03", "580.105.08")
            ),
            {"nvidia_driver_branch": "570", "pytorch_cuda": "cu130"},
            "pytorch_cuda cu130 with torch 2.9.1: cu130 wheels (CUDA 13.0) need driver branch 580 "
            "or newer, nvidia_driver_branch is 570",
        ),
        (
            GpuHostDouble(distro="debian12", gpus=("2684",)),
            {"torch_version": "2.5.1", "pytorch_cuda": "cu130"},
            "pytorch_cuda cu130 with torch 2.5.1: torch 2.5.1 is not published on the cu130 index "
            "(it carries 2.9, 2.10, 2.11, 2.12, 2.13, 2.14, 2.15)",
        ),
        (
            GpuHostDouble(distro="rhel9", gpus=("2684",)),
            {"nvidia_driver_branch": "570", "cuda_toolkit_version": "13.0"},
            "CUDA toolkit 13.0 needs driver branch 580 or newer, nvidia_driver_branch is 570",
        ),
        (
            GpuHostDouble(distro="debian12", gpus=("15f8",)),
            {"cuda_toolkit_version": "13.0"},
            "CUDA toolkit 13.0 cannot compile for compute capability 6.0 (Tesla P100-PCIE-16GB "
            "(Pascal)); CUDA 13 needs 7.5 or newer",
        ),
        (
            GpuHostDouble(distro="debian12", gpus=()),
            {"pytorch_cuda": "cu128"},
            "pytorch_cuda is cu128, but this is a CPU-only host: no NVIDIA GPU on the PCI bus "
            "(lspci/sysfs) and none reported by nvidia-smi",
        ),
    ],
    ids=[
        "debian11",
        "aarch64-debian",
        "blackwell-560",
        "pascal-590",
        "blackwell+pascal",
        "cu130-on-570",
        "torch-not-on-index",
        "toolkit13-on-570",
        "toolkit13-on-pascal",
        "cuda-wheels-on-cpu",
    ],
)
def test_bad_input_refuses_that_host_only(doubles, caplog, bad, data, message):
    good = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"bad": bad, "good": good}, {"bad": data})
    assert failed(state) == {"bad"}
    assert bad.changes == []  # nothing ran on it
    assert f"GPU stack: refused, nothing was changed on this host: {message}" in caplog.text
    assert good.changes == fresh("debian12", toolkit=None)


def test_branch_change_is_refused_unless_allowed(doubles, caplog):
    host = GpuHostDouble(
        distro="debian12", gpus=("2684",), driver_versions=("570.195.03", "580.105.08")
    )
    apply(doubles, {"a": host, "b": GpuHostDouble()}, {"a": {"nvidia_driver_branch": "570"}})
    assert host.module == "570.195.03"
    # the inventory now says 580: refused, nothing changes
    state = apply(doubles, {"a": host, "b": GpuHostDouble()})
    assert failed(state) == {"a"} and host.changes == []
    assert (
        "driver branch 570 is installed (570.195.03-1), nvidia_driver_branch is 580: changing an "
        "installed driver needs nvidia_driver_allow_branch_change: true" in caplog.text
    )
    # allowed: the pinning package changes, the held packages are replaced, the host reboots
    state = apply(doubles, {"a": host}, {"a": {"nvidia_driver_allow_branch_change": True}})
    assert not failed(state)
    assert host.changes == [
        "env DEBIAN_FRONTEND=noninteractive apt-get remove -y nvidia-driver-pinning-570",
        "apt-get update",
        f"{APT_INSTALL} nvidia-driver-pinning-580",
        "apt-get update",
        f"{APT_INSTALL} --allow-change-held-packages --allow-downgrades nvidia-open",
        REBOOT,
        pip("cu130"),  # branch 580 takes the cu130 wheels (570 had cu128)
    ]
    assert host.module == "580.105.08"


def test_flavour_change_after_a_gpu_swap_is_refused_unless_allowed(doubles, caplog):
    host = GpuHostDouble(distro="ubuntu2204", gpus=("1eb8",))
    apply(doubles, {"a": host})
    host.gpus = ("1eb8", "15f8")  # a Pascal card joins: the host needs proprietary modules now
    state = apply(doubles, {"a": host, "b": GpuHostDouble()})
    assert failed(state) == {"a"} and host.changes == []
    assert (
        "the open kernel modules are installed, this host needs the proprietary ones" in caplog.text
    )
    apply(doubles, {"a": host}, {"a": {"nvidia_driver_allow_branch_change": True}})
    assert host.changes[:2] == [
        "apt-get update",
        f"{APT_INSTALL} --allow-change-held-packages --allow-downgrades cuda-drivers",
    ]
    assert host.module_flavour == "proprietary" and "nvidia-dkms-open" not in host.packages


# --- sources: air-gapped mirrors, key checks ---------------------------------------------------


def test_every_source_comes_from_data(doubles):
    mirror = "http://mirror.internal"
    key_url = f"{mirror}/keys/cuda.gpg"
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    host.served_keys[key_url] = ServedKey("0" * 40, "ab" * 32, "cd" * 32)
    data = {
        "nvidia_repo_url": f"{mirror}/cuda/",
        "nvidia_repo_key_url": key_url,
        "nvidia_repo_key_sha256": "AB" * 32,
        "pytorch_index_url": f"{mirror}/whl/",
        "kernel_headers_repo_url": f"{mirror}/debian",
    }
    state = apply(doubles, {"a": host}, {"a": data})
    assert not failed(state)
    assert "gpg" not in host.packages  # a sha256 pin needs no gpg
    sources = host.files["/etc/apt/sources.list.d/nvidia-cuda.sources"]["content"]
    assert sources == (
        f"Types: deb\nURIs: {mirror}/cuda/debian12/x86_64/\nSuites: /\n"
        "Signed-By: /etc/apt/keyrings/nvidia-cuda.gpg\n"
    )
    headers = host.files["/etc/apt/sources.list.d/provisioner-kernel-headers.sources"]["content"]
    assert f"URIs: {mirror}/debian\nSuites: bookworm\nComponents: main\n" in headers
    assert host.changes[-1] == pip("cu130", index=f"{mirror}/whl")
    assert apply(doubles, {"a": host}, {"a": data}) and host.changes == []


def test_debian_contrib_source_mirrors_the_main_sources(doubles):
    host = GpuHostDouble(distro="debian13", gpus=("2684",))
    apply(doubles, {"a": host})
    assert host.files["/etc/apt/sources.list.d/provisioner-distro-components.sources"][
        "content"
    ] == (
        "# Managed by provisioner: archive components the NVIDIA packages need.\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def test_a_key_that_fails_its_pin_never_reaches_the_keyring(doubles, caplog):
    key_url = "http://mirror.internal/keys/cuda.asc"
    bad = GpuHostDouble(distro="debian12", gpus=("2684",))
    bad.served_keys[key_url] = ServedKey("0" * 40, "ef" * 32, "ef" * 32)
    data = {"nvidia_repo_key_url": key_url, "nvidia_repo_key_sha256": "ab" * 32}
    state = apply(doubles, {"bad": bad, "good": GpuHostDouble()}, {"bad": data})
    assert failed(state) == {"bad"}
    assert "/etc/apt/keyrings/nvidia-cuda.asc" not in bad.files
    assert "the key's sha256 is not the pinned " + "ab" * 32 in caplog.text
    assert len(bad.changes) == 1  # the fetch, nothing after it


# --- each deploy on its own ------------------------------------------------------------------


def test_component_deploys_run_on_their_own(doubles):
    host = GpuHostDouble(distro="ubuntu2404", gpus=("2330",))
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=nvidia_driver)
    assert host.module == "580.126.09" and host.torch == {}
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=cuda_toolkit)
    assert host.changes == [
        "apt-get update",
        f"{APT_INSTALL} cuda-toolkit-13-0",
        "upload /etc/profile.d/cuda.sh",
        "chmod 644 /etc/profile.d/cuda.sh",
    ]
    assert "/usr/local/cuda-13.0/bin" in host.files["/etc/profile.d/cuda.sh"]["content"]
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=pytorch)
    assert host.torch == {VENV: "2.9.1+cu130"}
    apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert host.changes == []


def test_torch_of_another_index_is_replaced(doubles):
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": {"pytorch_cuda": "cu128"}})
    assert host.torch == {VENV: "2.9.1+cu128"}
    apply(doubles, {"a": host})
    assert host.changes == [pip("cu130")]


def test_local_connector_never_reboots(monkeypatch):
    """pyinfra cannot reboot the machine it runs on: the host is reported as pending."""
    from pyinfra.connectors.local import LocalConnector
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra_testing.util import FakeState, create_host

    from provisioner.operations import nvidia

    packages = {
        "manager": "dpkg",
        "locks": [],
        "stream": None,
        "packages": [
            {
                "name": "nvidia-kernel-open-dkms",
                "version": "580.105.08-1",
                "arch": "amd64",
                "held": True,
            }
        ],
    }
    facts = {
        "nvidia.GpuStackPackages": packages,
        "nvidia.NvidiaKernelModule": {"version": None, "nouveau_loaded": False},
        "gpu.NvidiaSmi": {
            "cuda_version=False": {"state": "no-driver", "gpus": [], "driver_version": None}
        },
        "files.File": {"path=/var/lib/provisioner/reboot-required": None},
        "files.Directory": {
            "path=/var/lib/provisioner": {"mode": 755},
            "path=/var/lib/provisioner/reboot-required": None,
        },
    }
    state = FakeState()
    host = create_host(state, facts=facts)
    host.connector = object.__new__(LocalConnector)
    with ctx_state.use(state), ctx_host.use(host):
        commands = list(nvidia.reboot_if_needed._inner(distro="debian12"))
    assert [type(c).__name__ for c in commands] == ["FileUploadCommand", "StringCommand"]
    assert str(commands[1]) == "chmod 644 /var/lib/provisioner/reboot-required"


# --- day 2: unattended-upgrades and the kernel hold (issue 16) -------------------------------


def test_unattended_upgrades_blacklist_names_exactly_the_driver_packages(doubles):
    """The drop-in's entries, matched as unattended-upgrades matches them (``re.match`` of
    each entry against the package name, ``is_pkgname_in_blacklist``), cover every held driver
    package and nothing else of the stack."""
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host})
    text = host.files["/etc/apt/apt.conf.d/51provisioner-nvidia-driver"]["content"]
    assert "Unattended-Upgrade::Package-Blacklist {" in text
    patterns = re.findall(r'^\s+"(.+)";$', text, re.M)

    def blacklisted(name: str) -> bool:
        return any(re.match(p, name) for p in patterns)

    held = {name for name, p in host.packages.items() if p["held"]}
    assert held and all(blacklisted(name) for name in held)
    for other in ("nvidia-driver-pinning-580", "cuda-toolkit-13-0", "linux-image-amd64"):
        assert not blacklisted(other), other
    assert not blacklisted("nvidia-driver-libs")  # "nvidia-driver$" ends at the name
    # converged: nothing changes
    apply(doubles, {"a": host})
    assert host.changes == []


def test_the_unattended_upgrades_dropin_is_removed_when_no_driver_is_managed(doubles):
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host})
    assert "/etc/apt/apt.conf.d/51provisioner-nvidia-driver" in host.files
    apply(doubles, {"a": host}, {"a": {"gpu": False}})
    assert "rm -f /etc/apt/apt.conf.d/51provisioner-nvidia-driver" in host.changes
    assert "/etc/apt/apt.conf.d/51provisioner-nvidia-driver" not in host.files


def test_no_unattended_upgrades_dropin_on_el(doubles):
    host = GpuHostDouble(distro="rhel9", gpus=("2684",))
    apply(doubles, {"a": host})
    assert not [path for path in host.files if "apt.conf.d" in path]


@pytest.mark.parametrize("distro", ["debian12", "ubuntu2404", "rhel9"])
def test_kernel_hold_holds_the_running_kernel_and_releases_only_its_own(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    own = "linux-image-6.1.0-28-amd64" if host.family == "apt" else "kernel-modules-core"
    host.kernel_packages[own]["held"] = True  # the operator's own hold
    if host.family == "dnf":
        host.locks[own] = host.kernel_packages[own]["version"]
    data = {"a": {"nvidia_hold_kernel": True}}
    apply(doubles, {"a": host}, data)
    expected = {
        "debian12": "apt-mark hold linux-headers-6.1.0-28-amd64 linux-image-amd64",
        "ubuntu2404": "apt-mark hold linux-headers-6.1.0-28-amd64 linux-image-amd64 linux-amd64",
        "rhel9": "dnf versionlock add kernel kernel-core kernel-modules kernel-devel",
    }[distro]
    assert expected in host.changes
    assert all(p["held"] for p in host.kernel_packages.values())
    record = host.files["/var/lib/provisioner/kernel-hold"]["content"].split()
    assert own not in record and sorted(record) == sorted(
        expected.split()[2 + (distro == "rhel9") :]
    )
    apply(doubles, {"a": host}, data)
    assert host.changes == []  # idempotent
    # set back to false: the provisioner's holds go, the operator's stays
    apply(doubles, {"a": host})
    unhold = "apt-mark unhold" if host.family == "apt" else "dnf versionlock delete"
    release = f"{unhold} {' '.join(sorted(record))}"
    assert host.changes == [release, "rm -f /var/lib/provisioner/kernel-hold"]
    assert host.kernel_packages[own]["held"] is True
    assert not any(p["held"] for n, p in host.kernel_packages.items() if n != own)
    apply(doubles, {"a": host})
    assert host.changes == []


# --- a locked fleet (provision lock, docs/lock.md) ---------------------------------------------


def test_a_locked_host_installs_the_locked_toolkit_version_and_torch_wheel(
    doubles, tmp_path, monkeypatch
):
    from provisioner import lock

    wheel = "https://download.pytorch.org/whl/cu130/torch-2.9.1%2Bcu130-cp311-cp311-linux.whl"
    items = [
        lock.Item(
            "toolkit",
            {"name": "cuda-toolkit-13-0", "version": "13.0.1-1", "distro": "ubuntu2404",
             "source": "https://example/Packages.gz"},
            ["@fake/a"],
        ),
        lock.Item(
            "torch",
            {"name": "torch-2.9.1+cu130-cp311-cp311-linux.whl", "version": "2.9.1",
             "python": "cp311", "arch": "x86_64", "url": wheel, "sha256": "ab" * 32,
             "source": "https://download.pytorch.org/whl/cu130/torch/"},
            ["@fake/a"],
        ),
    ]  # fmt: skip
    path = tmp_path / "fleet.lock.toml"
    path.write_text(lock.render(lock.Lock(items)))
    monkeypatch.setenv(lock.ENV, str(path))
    lock._load.cache_clear()
    host = GpuHostDouble(distro="ubuntu2404", gpus=("2330",))
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=nvidia_driver)
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=cuda_toolkit)  # 13.0.1-1 is offered
    assert f"{APT_INSTALL} cuda-toolkit-13-0=13.0.1-1" in host.changes
    apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=pytorch)
    assert (
        pip("cu130").replace("torch==2.9.1+cu130", f"'torch @ {wheel}#sha256={'ab' * 32}'")
        in host.changes
    )
    # a lock naming a version the repository does not offer fails the host at the install
    path.write_text(path.read_text().replace("13.0.1-1", "13.0.9-1"))
    lock._load.cache_clear()
    fresh_host, other = (GpuHostDouble(distro="ubuntu2404", gpus=("2330",)) for _ in "ab")
    hosts, data = {"a": fresh_host, "b": other}, {"a": TOOLKIT, "b": TOOLKIT}
    apply(doubles, hosts, data, deploy=nvidia_driver)
    state = apply(doubles, hosts, data, deploy=cuda_toolkit)
    assert failed(state) == {"a"}
    assert "cuda-toolkit-13-0=13.0.9-1" in fresh_host.changes[-1]
    assert f"{APT_INSTALL} cuda-toolkit-13-0" in other.changes  # not locked: as before
