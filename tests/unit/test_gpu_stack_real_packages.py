"""The GPU stack against the NVIDIA stack as it really ships (issue 12).

Every expectation here comes from a recorded primary source, named where it is used:

* Debian's archive: tests/fixtures/packages/debian-{bookworm,trixie}.txt (apt metadata
  recorded from deb.debian.org, see the files' headers);
* NVIDIA/gpu-driver-container @ 06a208ca9747c82b1ba99b76ecdcf2469b0a0207 (Aug 2026):
  Fabric Manager's package names and version matching (ubuntu22.04/install.sh,
  ubuntu22.04/precompiled/local-repo.sh, rhel9/precompiled/Dockerfile);
* NVIDIA/cuda-repo-management issues #30, #34, #38-#40 (debian13's key 8793F200 and its
  first branch); PyPI (``pip index versions torch --python-version X``, 2026-12-06) for the
  Python each torch release has wheels for.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from provisioner import gpu_stack
from provisioner.facts.nvidia import AptSourcesFor, RepoDriverBranches, SecureBoot
from provisioner.gpu_stack import GpuStackError
from tests.unit.test_gpu_stack_deploy import APT_INSTALL, REBOOT, apply, failed
from tests.unit.test_gpu_stack_double import (
    RELEASES,
    GpuHostDouble,
    install_doubles,
    recorded_packages,
)

GPU = [{"slot": "0000:01:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2684"}]
OS = {
    "debian12": {"id": "debian", "version_id": "12", "codename": "bookworm", "arch": "x86_64"},
    "debian13": {"id": "debian", "version_id": "13", "codename": "trixie", "arch": "x86_64"},
    "ubuntu2204": {"id": "ubuntu", "version_id": "22.04", "codename": "jammy", "arch": "x86_64"},
    "ubuntu2404": {"id": "ubuntu", "version_id": "24.04", "codename": "noble", "arch": "x86_64"},
    "rocky9": {"id": "rocky", "version_id": "9.4", "arch": "x86_64"},
}


def facts(distro: str, **extra) -> dict:
    return {"os": OS[distro], "kernel": "6.1.0-28-amd64", "pci": GPU, **extra}


@pytest.fixture
def doubles(monkeypatch):
    return install_doubles(monkeypatch)


# --- Debian's own driver, from the recorded archive --------------------------------------------


@pytest.mark.parametrize("distro", ["debian12", "debian13"])
def test_debians_driver_tables_match_the_recorded_archive(distro):
    recorded = recorded_packages(RELEASES[distro])
    own = gpu_stack.distro(f"{distro}:distro")
    driver = recorded["nvidia-driver"]["Version"]
    assert own.offered == (gpu_stack.branch_of(driver),)
    for flavour in gpu_stack.FLAVOURS:
        for name in own.driver_packages(flavour, own.offered[0]):
            assert name in recorded, name
            component = recorded[name]["Filename"].split("/")[1]
            assert component == "main" or component in own.extra_components, (name, component)
        (kmod,) = own.kernel_module[flavour]
        assert recorded[kmod]["Version"] == driver
        assert "dkms" in recorded[kmod]["Depends"]  # built on the host: Secure Boot needs a MOK
    assert own.secure_boot == "dkms"
    # every package built from the driver's source at the driver's version is held
    same = [n for n, f in recorded.items() if f["Version"] == driver]
    assert {"libnvidia-ml1", "libcuda1", "firmware-nvidia-gsp", "nvidia-smi"} <= set(same)
    for name in same:
        assert gpu_stack.name_matches(name, own.hold_globs), name
        assert not gpu_stack.name_matches(name, own.hold_exclude), name


def test_debian_13_ships_550_and_debian_12_535():
    assert gpu_stack.distro("debian12:distro").offered == ("535",)
    assert gpu_stack.distro("debian13:distro").offered == ("550",)
    data = {"nvidia_driver_source": "distro", "nvidia_driver_branch": "580"}
    with pytest.raises(GpuStackError, match=r"Debian 13 ships driver branch 550 in its own"):
        gpu_stack.plan_driver(data, facts("debian13"))


def test_debians_driver_deploys_with_its_real_names_holds_and_no_nvidia_repository(doubles):
    host = GpuHostDouble(distro="debian12", gpus=("2684",), archive="debian")
    data = {
        "nvidia_driver_source": "distro",
        "nvidia_driver_branch": "535",
        "nvidia_driver_flavour": "proprietary",
    }
    state = apply(doubles, {"a": host}, {"a": data}, deploy=_driver_only())
    assert not failed(state), host.changes
    recorded = recorded_packages("bookworm")
    # installed: what Debian's metadata pulls in (first alternatives), all held
    held = sorted(n for n, p in host.packages.items() if p["held"])
    assert {"nvidia-driver", "nvidia-kernel-dkms", "nvidia-smi", "libnvidia-ml1"} <= set(held)
    assert all(n in recorded for n in held)
    assert host.changes == [
        "upload /etc/apt/sources.list.d/provisioner-distro-components.sources",
        "chmod 644 /etc/apt/sources.list.d/provisioner-distro-components.sources",
        "apt-get update",
        f"{APT_INSTALL} linux-headers-6.1.0-28-amd64",
        "apt-get update",
        f"{APT_INSTALL} nvidia-driver nvidia-smi nvidia-persistenced nvidia-kernel-dkms",
        f"apt-mark hold {' '.join(held)}",
        # unattended-upgrades leaves the driver packages alone (issue 16)
        "upload /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
        "chmod 644 /etc/apt/apt.conf.d/51provisioner-nvidia-driver",
        "upload /etc/modprobe.d/blacklist-nouveau.conf",
        "chmod 644 /etc/modprobe.d/blacklist-nouveau.conf",
        "update-initramfs -u",
        REBOOT,
        "systemctl start nvidia-persistenced.service",
        "systemctl enable nvidia-persistenced.service",
    ]
    components = host.files["/etc/apt/sources.list.d/provisioner-distro-components.sources"]
    assert "Components: contrib non-free non-free-firmware" in components["content"]
    assert host.module == "535.261.03"
    host.changes.clear()
    state = apply(doubles, {"a": host}, {"a": data}, deploy=_driver_only())
    assert not failed(state) and host.changes == []


def _driver_only():
    from provisioner.deploys.nvidia_driver import nvidia_driver

    return nvidia_driver


# --- Fabric Manager: names by branch, versions as NVIDIA matches them ---------------------------


@pytest.mark.parametrize(
    ("distro", "branch", "name", "spec"),
    [
        # gpu-driver-container ubuntu22.04/precompiled/local-repo.sh: <580 -> -<branch>
        ("ubuntu2204", "570", "nvidia-fabricmanager-570", "nvidia-fabricmanager-570=570.195.03*"),
        ("ubuntu2404", "580", "nvidia-fabricmanager", "nvidia-fabricmanager=580.105.08*"),
        ("debian12", "580", "nvidia-fabricmanager", "nvidia-fabricmanager=580.105.08*"),
        # rhel9/precompiled/Dockerfile: >=580 nvidia-fabricmanager, before nvidia-fabric-manager
        ("rocky9", "570", "nvidia-fabric-manager", "nvidia-fabric-manager-570.195.03"),
        ("rhel9", "580", "nvidia-fabricmanager", "nvidia-fabricmanager-580.105.08"),
    ],
)
def test_fabric_manager_names_and_version_match(distro, branch, name, spec):
    target = gpu_stack.distro(distro)
    version = {"570": "570.195.03-1", "580": "580.105.08-1"}[branch]
    if target.family.name == "dnf":
        version = f"3:{version}.el9"  # the kmod's release: FM's carries no .el9 tag
    assert target.fabricmanager_package(branch) == name
    separator = target.family.version_separator
    assert f"{name}{separator}{target.fabricmanager_version(version)}" == spec


def test_nvswitch_host_installs_fabric_manager_570_under_its_branch_name(doubles):
    host = GpuHostDouble(
        distro="ubuntu2204",
        gpus=("20b2", "20b2"),
        nvswitch="1af1",
        driver_versions=("570.195.03", "580.105.08"),
    )
    state = apply(doubles, {"a": host}, {"a": {"nvidia_driver_branch": "570"}})
    assert not failed(state)
    assert f"{APT_INSTALL} 'nvidia-fabricmanager-570=570.195.03*'" in host.changes
    assert host.packages["nvidia-fabricmanager-570"]["held"]
    assert "nvidia-fabricmanager.service" in host.services_running


# --- keys and branches -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distro", "key", "fingerprint"),
    [
        ("debian12", "3bf863cc.pub", "eb693b3035cd5710e231e123a4b469963bf863cc"),
        ("debian13", "8793F200.pub", "02182e60104fcdc26eae1b8597a5d4cb8793f200"),
        ("ubuntu2204", "3bf863cc.pub", "eb693b3035cd5710e231e123a4b469963bf863cc"),
        ("ubuntu2404", "3bf863cc.pub", "eb693b3035cd5710e231e123a4b469963bf863cc"),
    ],
)
def test_each_release_gets_the_key_nvidia_signs_it_with(distro, key, fingerprint):
    plan = gpu_stack.plan_driver({"nvidia_driver_branch": "590"}, facts(distro))
    assert plan.key is not None
    assert plan.key.url.endswith(f"/{plan.distro.repo_path}/x86_64/{key}")
    assert plan.key.fingerprint == fingerprint


def test_rocky9_key_is_checked_by_nvidias_stripped_sha256():
    plan = gpu_stack.plan_driver({}, facts("rocky9"))
    assert plan.key is not None and plan.key.url.endswith("/rhel9/x86_64/D42D0685.pub")
    assert plan.key.strip_version and plan.key.sha256 and plan.key.fingerprint is None


def test_debian13_without_the_branch_fails_before_anything_changes(doubles, caplog):
    unreadable = GpuHostDouble(distro="debian13", gpus=("2684",), repo_readable=False)
    only590 = GpuHostDouble(
        distro="debian13", gpus=("2684",), driver_versions=("590.44.01", "590.48.01")
    )
    good = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"u": unreadable, "o": only590, "good": good})
    assert failed(state) == {"u", "o"}
    assert unreadable.changes == [] and only590.changes == []
    assert (
        "NVIDIA's debian13 repository offers driver branches from 590 on (as recorded; its "
        "index could not be read: E: Failed to fetch Packages.gz  404  Not Found), "
        "nvidia_driver_branch is 580" in caplog.text
    )
    assert "debian13/x86_64/ offers driver branch 590, nvidia_driver_branch is 580" in caplog.text


def test_the_repository_index_fact_reads_branches_from_packages_gz(tmp_path: Path):
    stanzas = [("nvidia-open", "580.105.08-1"), ("cuda-drivers", "580.105.08-1")]
    stanzas += [("nvidia-open", "590.44.01-1"), ("nvidia-open", "1:595.10.01-1")]
    text = "".join(f"Package: {n}\nVersion: {v}\nArchitecture: amd64\n\n" for n, v in stanzas)
    (tmp_path / "Packages").write_text(text)
    subprocess.run(["gzip", "-k", str(tmp_path / "Packages")], check=True)
    fact = RepoDriverBranches()
    command = fact.command(f"{tmp_path}/", ["cp", "{url}", "{dest}"], "nvidia-open")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert fact.process(out.stdout.splitlines()) == {
        "read": True,
        "branches": ["580", "590", "595"],
        "error": None,
    }
    missing = fact.command(f"{tmp_path}/nope/", ["cp", "{url}", "{dest}"], "nvidia-open")
    out = subprocess.run(["sh", "-c", missing], capture_output=True, text=True, check=True)
    result = fact.process(out.stdout.splitlines())
    assert result["read"] is False and "No such file" in result["error"]


# --- a host that already has cuda-keyring ------------------------------------------------------


def test_an_existing_cuda_keyring_source_is_reused_not_doubled(doubles):
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    url = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
    keyring_list = "/etc/apt/sources.list.d/cuda-debian12-x86_64.list"
    # what NVIDIA's cuda-keyring package installs (its .list and its keyring)
    host.files[keyring_list] = {
        "content": f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {url} /\n",
        "sha256": None,
        "mode": 0o644,
    }
    state = apply(doubles, {"a": host})
    assert not failed(state), host.changes
    assert "upload /etc/apt/sources.list.d/nvidia-cuda.sources" not in host.changes
    assert not any(p.endswith("nvidia-cuda.sources") for p in host.files)
    assert host.module == "580.126.09"


def test_without_the_reuse_apt_would_refuse_the_second_source(doubles):
    host = GpuHostDouble(distro="debian12")
    url = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
    for path, by in (
        ("/etc/apt/sources.list.d/cuda-debian12-x86_64.list", "/usr/share/keyrings/c.gpg"),
        ("/etc/apt/sources.list.d/nvidia-cuda.sources", "/etc/apt/keyrings/nvidia-cuda.asc"),
    ):
        text = (
            f"deb [signed-by={by}] {url} /\n"
            if path.endswith(".list")
            else f"Types: deb\nURIs: {url}\nSuites: /\nSigned-By: {by}\n"
        )
        host.files[path] = {"content": text, "sha256": None, "mode": 0o644}
    ok, out = host.run("apt-get update")
    assert not ok and "Conflicting values set for option Signed-By" in out[0]
    fact = AptSourcesFor()
    assert fact.process(host.run(fact.command(url))[1]) == sorted(
        [
            "/etc/apt/sources.list.d/cuda-debian12-x86_64.list",
            "/etc/apt/sources.list.d/nvidia-cuda.sources",
        ]
    )


# --- Secure Boot -------------------------------------------------------------------------------


def test_secure_boot_without_a_mok_refuses_the_host_before_anything_changes(doubles, caplog):
    host = GpuHostDouble(distro="ubuntu2404", gpus=("2684",), secure_boot=True)
    other = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"sb": host, "ok": other})
    assert failed(state) == {"sb"} and host.changes == [] and host.boots == 0
    assert "SecureBoot enabled: the kernel would reject the DKMS-built NVIDIA module" in caplog.text
    assert 'nvidia_driver_source = "distro" (Canonical-signed modules)' in caplog.text
    assert other.module == "580.126.09"


def test_secure_boot_with_an_unenrolled_mok_is_refused(doubles, caplog):
    cert = "/var/lib/shim-signed/mok/MOK.der"
    host = GpuHostDouble(distro="debian12", secure_boot=True, mok_enrolled={cert: False})
    data = {"nvidia_mok_key": "/var/lib/shim-signed/mok/MOK.priv", "nvidia_mok_cert": cert}
    good = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(doubles, {"a": host, "good": good}, {"a": data})
    assert failed(state) == {"a"} and host.changes == []
    assert "is not enrolled" in caplog.text and f"mokutil --import {cert}" in caplog.text


def test_secure_boot_with_an_enrolled_mok_signs_and_the_module_loads(doubles):
    cert = "/var/lib/shim-signed/mok/MOK.der"
    host = GpuHostDouble(distro="debian12", secure_boot=True, mok_enrolled={cert: True})
    data = {"nvidia_mok_key": "/var/lib/shim-signed/mok/MOK.priv", "nvidia_mok_cert": cert}
    state = apply(doubles, {"a": host}, {"a": data})
    assert not failed(state)
    conf = host.files["/etc/dkms/framework.conf.d/provisioner-mok.conf"]["content"]
    assert f'mok_certificate="{cert}"' in conf
    assert host.changes.index("upload /etc/dkms/framework.conf.d/provisioner-mok.conf") < next(
        i for i, c in enumerate(host.changes) if c.endswith("nvidia-open")
    )
    assert host.module == "580.126.09"


def test_ubuntus_signed_modules_need_no_mok():
    data = {"nvidia_driver_source": "distro", "nvidia_driver_branch": "580"}
    sb = {"enabled": True, "source": "mokutil", "detail": "SecureBoot enabled"}
    plan = gpu_stack.plan_driver(data, {**facts("ubuntu2404"), "kernel": "6.8.0-45-generic",
                                        "secure_boot": sb})  # fmt: skip
    assert plan.mok_key is None and plan.distro is not None
    assert plan.driver_packages == [
        "linux-modules-nvidia-580-server-open-generic",
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
    ]


def test_the_secure_boot_fact_reads_mokutil_and_the_efi_variable():
    fact = SecureBoot()
    assert fact.process(["mokutil|SecureBoot enabled"])["enabled"] is True
    assert fact.process(["mokutil|SecureBoot disabled"])["enabled"] is False
    assert fact.process(["efivar|1"]) == {
        "enabled": True,
        "source": "efivars",
        "detail": "SecureBoot=1",
    }
    assert fact.process(["efivar|no-efi"])["enabled"] is False
    assert fact.process([]) == fact.default()


# --- PyTorch on the distribution's Python ------------------------------------------------------


@pytest.mark.parametrize(
    ("distro", "torch", "python", "packages"),
    [
        ("rocky9", "2.8.0", "python3", ()),  # 3.9 still has cp39 wheels of 2.8
        ("rocky9", "2.9.1", "python3.11", ("python3.11",)),
        ("rocky9", "2.15.0", "python3.11", ("python3.11",)),
        ("ubuntu2204", "2.14.1", "python3", ()),  # 3.10: torch 2.14.1 is its newest
        ("ubuntu2204", "2.15.0", "python3.11", ("python3.11", "python3.11-venv")),
        ("debian12", "2.15.0", "python3", ()),
    ],
)
def test_the_venv_python_meets_the_torch_releases_floor(distro, torch, python, packages):
    driver = gpu_stack.plan_driver({"nvidia_driver_branch": "580"}, facts(distro))
    plan = gpu_stack.plan_torch({"torch_version": torch}, driver)
    assert (plan.python, plan.python_packages) == (python, packages)


def test_torch_2_7_cu128_is_not_picked_for_volta():
    v100 = [{"slot": "0000:01:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "1db4"}]
    driver = gpu_stack.plan_driver({"nvidia_driver_branch": "580"}, facts("debian12", pci=v100))
    assert gpu_stack.plan_torch({"torch_version": "2.7.1"}, driver).tag == "cu126"
    assert gpu_stack.plan_torch({"torch_version": "2.8.0"}, driver).tag == "cu128"
    with pytest.raises(GpuStackError, match=r"cu128 wheels are not built for compute capa"):
        gpu_stack.plan_torch({"torch_version": "2.7.1", "pytorch_cuda": "cu128"}, driver)
    assert re.match(r"2\.1[45]", gpu_stack.plan_torch({"torch_version": "2.15.0"}, driver).version)


def test_an_el_kernel_whose_headers_left_the_repositories_is_refused_with_the_vault(
    doubles, caplog
):
    old = GpuHostDouble(distro="rocky9", gpus=("2684",), headers_offered=False)
    good = GpuHostDouble(distro="rocky9", gpus=("2684",))
    state = apply(doubles, {"old": old, "good": good})
    assert failed(state) == {"old"} and old.changes == []
    assert (
        "kernel-devel-5.14.0-427.13.1.el9_4.x86_64 (the running kernel's headers, which DKMS "
        "needs) is not offered by the host's repositories: set kernel_headers_repo_url, e.g. to "
        "https://dl.rockylinux.org/vault/rocky/9.4/AppStream/x86_64/os/" in caplog.text
    )
    # with the vault as the headers repository the host goes through
    vault = "https://dl.rockylinux.org/vault/rocky/9.4/AppStream/x86_64/os/"
    state = apply(doubles, {"old": old, "good": good}, {"old": {"kernel_headers_repo_url": vault}})
    assert not failed(state) and old.module == "580.126.09"
