"""The GPU stack's data tables and decisions (provisioner.gpu_stack): pure functions, no hosts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioner import gpu_stack, settings
from provisioner.gpu_stack import GpuStackError

ROOT = Path(__file__).resolve().parents[2]
OS = {
    "debian12": {"id": "debian", "version_id": "12", "codename": "bookworm", "arch": "x86_64"},
    "debian13": {"id": "debian", "version_id": "13", "codename": "trixie", "arch": "x86_64"},
    "ubuntu2204": {"id": "ubuntu", "version_id": "22.04", "codename": "jammy", "arch": "x86_64"},
    "ubuntu2404": {"id": "ubuntu", "version_id": "24.04", "codename": "noble", "arch": "aarch64"},
    "rhel9": {"id": "rhel", "version_id": "9.4", "codename": None, "arch": "x86_64"},
    "rocky9": {"id": "rocky", "version_id": "9.5", "codename": None, "arch": "x86_64"},
}


def pci(*devices: str, nvswitch: str | None = None) -> list[dict[str, str]]:
    out = [
        {"slot": f"0000:{i:02x}:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": d}
        for i, d in enumerate(devices, 1)
    ]
    if nvswitch:
        out.append(
            {"slot": "0000:80:00.0", "class_id": "0680", "vendor_id": "10de", "device_id": nvswitch}
        )
    return out


def facts(
    distro="debian12", devices=("2684",), nvswitch=None, packages=None, module=None, smi=None
):
    return {
        "os": OS[distro],
        "kernel": "6.1.0-28-amd64",
        "pci": pci(*devices, nvswitch=nvswitch),
        "smi": smi or {"state": "no-driver", "gpus": [], "driver_version": None},
        "packages": packages or {"manager": "dpkg", "packages": [], "locks": [], "stream": None},
        "module": module,
    }


DATA = settings.resolve({})


def data(**overrides):
    return {**DATA, **overrides}


# --- the tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(OS))
def test_every_supported_release_finds_its_table(key):
    assert gpu_stack.find_distro(OS[key]).key == key


def test_distro_tables_are_complete():
    for target in gpu_stack.distros().values():
        assert set(target.driver_meta) == set(gpu_stack.FLAVOURS)
        assert set(target.kernel_module) == set(gpu_stack.FLAVOURS)
        assert "x86_64" in target.arches
        assert target.key_fingerprint or target.key_sha256, target.key
        assert target.headers.count("{kernel}") == 1
        assert target.branch_lock in ("pinning-package", "module-stream", "none")
        # "none" only for a release's own driver, which ships one branch (or names them)
        assert (target.branch_lock == "none") == target.distribution_driver
        assert bool(target.offered) == target.distribution_driver
        if target.branch_lock == "pinning-package":
            assert target.pinning("580") == "nvidia-driver-pinning-580"
        elif target.branch_lock == "module-stream":
            assert target.stream("580", "open") == "nvidia-driver:580-open"
            assert target.stream("580", "proprietary") == "nvidia-driver:580-dkms"
    assert gpu_stack.distro("debian12").extra_components == ("contrib",)
    assert gpu_stack.distro("ubuntu2204").extra_components == ()


def test_unknown_release_and_architecture_are_refused():
    with pytest.raises(GpuStackError, match=r"unsupported distribution 'Debian GNU/Linux 11"):
        gpu_stack.find_distro(
            {"id": "debian", "version_id": "11", "pretty_name": "Debian GNU/Linux 11"}
        )
    with pytest.raises(GpuStackError, match=r"architecture 'ppc64le' is not supported on RHEL 9"):
        gpu_stack.repo_arch(gpu_stack.distro("rhel9"), "ppc64le")
    assert gpu_stack.repo_arch(gpu_stack.distro("ubuntu2404"), "aarch64") == "sbsa"


@pytest.mark.parametrize(
    ("device", "name", "arch", "memory"),
    [
        ("2684", "NVIDIA GeForce RTX 4090", "ada", 24564),
        ("20b2", "NVIDIA A100-SXM4-80GB", "ampere", 81920),
        ("1eb8", "Tesla T4", "turing", 15360),
        ("2330", "NVIDIA H100 80GB HBM3", "hopper", 81559),
        ("2335", "NVIDIA H200", "hopper", 143771),
        ("26b9", "NVIDIA L40S", "ada", 46068),
        ("27b8", "NVIDIA L4", "ada", 23034),
        ("2236", "NVIDIA A10", "ampere", 23028),
        ("1db4", "Tesla V100-PCIE-16GB", "volta", None),
        ("15f8", "Tesla P100-PCIE-16GB", "pascal", None),
        ("17c2", "NVIDIA GeForce GTX TITAN X", "maxwell", 12206),
        ("2901", "NVIDIA B200", "blackwell", 183359),
    ],
)
def test_listed_devices(device, name, arch, memory):
    model = gpu_stack.identify_device(device)
    assert (model.name, model.architecture.name, model.memory_mib) == (name, arch, memory)
    assert model.listed and not model.nvswitch


def test_nvswitches_and_unlisted_ids_by_range():
    assert gpu_stack.identify_device("1af1").nvswitch
    assert gpu_stack.identify_device("22A3").nvswitch
    for device, arch in [
        ("1b80", "pascal"),  # GTX 1080
        ("15f0", "pascal"),  # GP100 inside the Maxwell range: the narrower range wins
        ("13c2", "maxwell"),
        ("1d81", "volta"),
        ("2182", "turing"),
        ("2208", "ampere"),
        ("2324", "hopper"),
        ("2b85", "blackwell"),  # RTX 5090
        ("3001", "newer"),
    ]:
        model = gpu_stack.identify_device(device)
        assert model.architecture.name == arch, device
        assert not model.listed
    assert gpu_stack.identify_device("2b85").label == "NVIDIA device 2b85 (Blackwell)"


def test_compute_capability_to_architecture():
    assert gpu_stack.architecture_for_cc("6.1").name == "pascal"
    assert gpu_stack.architecture_for_cc("7.0").name == "volta"
    assert gpu_stack.architecture_for_cc("7.5").name == "turing"
    assert gpu_stack.architecture_for_cc("8.9").name == "ada"
    assert gpu_stack.architecture_for_cc("12.0").name == "blackwell"
    assert gpu_stack.architecture_for_cc(None) is None


def test_wheel_index_driver_floors_follow_their_cuda_version():
    indexes = gpu_stack.torch_indexes()
    floors = {
        tag: gpu_stack.native_branch(spec["cuda"]) for tag, spec in indexes.items() if spec["cuda"]
    }
    assert floors == {"cu126": 560, "cu128": 570, "cu130": 580}


# --- flavour and branch ----------------------------------------------------------------------


def models(*devices):
    return tuple(gpu_stack.identify_device(d) for d in devices)


def test_flavour_decisions():
    assert gpu_stack.choose_flavour(models("2684", "1eb8"), 580)[0] == "open"
    assert gpu_stack.choose_flavour(models("2901"), 580)[0] == "open"
    flavour, reason = gpu_stack.choose_flavour(models("1eb8", "1db4"), 580)
    assert flavour == "proprietary"
    assert reason == (
        "Tesla V100-PCIE-16GB (Volta) need the proprietary modules "
        "(mixed host: Tesla T4 (Turing) run on them too)"
    )
    assert gpu_stack.choose_flavour(models("2330"), 580, "proprietary")[0] == "proprietary"
    assert gpu_stack.choose_flavour((), 580)[0] == "open"
    assert gpu_stack.choose_flavour(models("3001"), 600)[0] == "open"


@pytest.mark.parametrize(
    ("devices", "branch", "wanted", "message"),
    [
        (("2901",), 565, "auto", "driver branch 565 does not support NVIDIA B200 (Blackwell)"),
        (("17c2",), 590, "auto", "the last branch for Maxwell GPUs is 580"),
        (("1db4",), 595, "auto", "the last branch for Volta GPUs is 580"),
        (("2901", "1db4"), 580, "auto", "no kernel module flavour drives all GPUs"),
        (("15f8",), 580, "open", "nvidia_driver_flavour is open, but Tesla P100-PCIE-16GB"),
        (("2901",), 580, "proprietary", "nvidia_driver_flavour is proprietary, but NVIDIA B200"),
    ],
)
def test_flavour_and_branch_refusals(devices, branch, wanted, message):
    with pytest.raises(GpuStackError, match=re.escape(message)):
        gpu_stack.choose_flavour(models(*devices), branch, wanted)


def test_plan_driver_for_an_nvswitch_host():
    plan = gpu_stack.plan_driver(data(), facts(devices=("2330",) * 8, nvswitch="22a3"))
    assert plan.skip is None and plan.nvswitch and plan.flavour == "open"
    assert (
        plan.repo_url == "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
    )
    assert plan.key == gpu_stack.KeySource(
        url=plan.repo_url + "3bf863cc.pub",
        path="/etc/apt/keyrings/nvidia-cuda.asc",
        sha256=None,
        fingerprint="eb693b3035cd5710e231e123a4b469963bf863cc",
        strip_version=False,
    )


def test_gpu_from_nvidia_smi_when_lspci_sees_none():
    smi = {
        "state": "ok",
        "driver_version": "580.105.08",
        "gpus": [{"name": "Tesla P100-PCIE-16GB", "compute_cap": "6.0"}],
    }
    plan = gpu_stack.plan_driver(data(), facts(devices=(), smi=smi))
    assert plan.skip is None and plan.flavour == "proprietary" and plan.compute_caps == ("6.0",)


def test_cpu_only_reasons():
    assert gpu_stack.plan_driver(data(), facts(devices=())).skip == (
        "CPU-only host: no NVIDIA GPU on the PCI bus (lspci/sysfs) and none reported by nvidia-smi"
    )
    assert (
        gpu_stack.plan_driver(data(gpu=False), facts()).skip == "CPU-only host: data `gpu` is false"
    )
    forced = gpu_stack.plan_driver(data(gpu=True), facts(devices=()))
    assert forced.skip is None and forced.flavour == "open"


def test_key_checks_come_from_data_or_the_distro():
    rhel = gpu_stack.plan_driver(data(), facts("rhel9")).key
    assert rhel.sha256 == "d0664fbbdb8c32356d45de36c5984617217b2d0bef41b93ccecd326ba3b80c87"
    assert rhel.strip_version and rhel.fingerprint is None
    assert rhel.path == "/etc/pki/rpm-gpg/nvidia-cuda.asc"
    # a site key replaces the distro's checks
    own = gpu_stack.plan_driver(
        data(nvidia_repo_key_url="http://m/keys/k.gpg", nvidia_repo_key_sha256="AB" * 32),
        facts("debian12"),
    ).key
    assert (own.sha256, own.fingerprint, own.path) == (
        "ab" * 32,
        None,
        "/etc/apt/keyrings/nvidia-cuda.gpg",
    )
    with pytest.raises(GpuStackError, match="nvidia_repo_key_fingerprint must be 40 hex digits"):
        gpu_stack.plan_driver(data(nvidia_repo_key_fingerprint="3BF863CC"), facts())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"nvidia_driver_branch": "R580"},
            'nvidia_driver_branch must be a branch number such as "580"',
        ),
        (
            {"nvidia_driver_version": "590.44.01-1"},
            "nvidia_driver_version 590.44.01-1 is not on nvidia_driver_branch 580",
        ),
        ({"nvidia_repo_url": ""}, "nvidia_repo_url is empty"),
    ],
)
def test_bad_driver_data(overrides, message):
    with pytest.raises(GpuStackError, match=re.escape(message)):
        gpu_stack.plan_driver(data(**overrides), facts())


def installed(*pkgs):
    return {
        "manager": "dpkg",
        "packages": [{"name": n, "version": v, "arch": "amd64", "held": True} for n, v in pkgs],
        "locks": [],
        "stream": None,
    }


def test_installed_driver_of_another_branch_or_flavour_needs_the_flag():
    pkgs = installed(("nvidia-open", "570.195.03-1"), ("nvidia-kernel-open-dkms", "570.195.03-1"))
    with pytest.raises(
        GpuStackError,
        match=r"driver branch 570 is installed \(570.195.03-1\), nvidia_driver_branch is 580",
    ):
        gpu_stack.plan_driver(data(), facts(packages=pkgs))
    plan = gpu_stack.plan_driver(data(nvidia_driver_allow_branch_change=True), facts(packages=pkgs))
    assert plan.change and plan.installed.driver_version == "570.195.03"
    prop = installed(("cuda-drivers", "580.105.08-1"), ("nvidia-kernel-dkms", "580.105.08-1"))
    with pytest.raises(
        GpuStackError,
        match="the proprietary kernel modules are installed, this host needs the open ones",
    ):
        gpu_stack.plan_driver(data(), facts(packages=prop))


def test_a_loaded_driver_nobody_installed_counts_as_another_branch():
    module = {
        "loaded": True,
        "version": "535.161.08",
        "flavour": "proprietary",
        "nouveau_loaded": False,
    }
    with pytest.raises(GpuStackError, match=r"driver branch 535 is installed \(535.161.08\)"):
        gpu_stack.plan_driver(data(), facts(module=module))
    # ours is installed, an older one still runs: a pending reboot, not a change
    pkgs = installed(("nvidia-kernel-open-dkms", "580.105.08-1"))
    module["version"] = "570.195.03"
    assert gpu_stack.plan_driver(data(), facts(packages=pkgs, module=module)).change is None


# --- toolkit and PyTorch ---------------------------------------------------------------------


def test_toolkit_plans():
    driver = gpu_stack.plan_driver(data(), facts())
    assert gpu_stack.plan_toolkit(data(), driver).skip.startswith("cuda_toolkit_version is not set")
    assert gpu_stack.plan_toolkit(data(cuda_toolkit_version=""), driver).skip
    plan = gpu_stack.plan_toolkit(data(cuda_toolkit_version="13.0"), driver)
    assert (plan.package, plan.bin_dir) == ("cuda-toolkit-13-0", "/usr/local/cuda-13.0/bin")
    with pytest.raises(GpuStackError, match=r'cuda_toolkit_version must be "major.minor"'):
        gpu_stack.plan_toolkit(data(cuda_toolkit_version="13"), driver)
    with pytest.raises(GpuStackError, match="CUDA 11.8 is not supported"):
        gpu_stack.plan_toolkit(data(cuda_toolkit_version="11.8"), driver)


@pytest.mark.parametrize(
    ("devices", "branch", "torch", "tag"),
    [
        (("2684",), "580", "2.9.1", "cu130"),
        (("2684",), "570", "2.9.1", "cu128"),
        (("2684",), "560", "2.9.1", "cu126"),
        (("2684",), "580", "2.6.0", "cu126"),  # only cu126 carries 2.6
        (("2684",), "570", "2.13.0", "cu126"),  # cu128 stops at 2.11
        (("15f8",), "580", "2.9.1", "cu126"),  # Pascal: not in the cu13x / cu128 builds
        (("1db4",), "580", "2.9.1", "cu128"),  # Volta: in cu128, not in cu130
        (("2901",), "570", "2.9.1", "cu128"),  # Blackwell needs cu128+
        (("2901",), "580", "2.12.0", "cu130"),
    ],
)
def test_torch_index_follows_driver_gpus_and_version(devices, branch, torch, tag):
    d = data(nvidia_driver_branch=branch, torch_version=torch)
    plan = gpu_stack.plan_torch(d, gpu_stack.plan_driver(d, facts(devices=devices)))
    assert plan.tag == tag
    assert plan.index_url == f"https://download.pytorch.org/whl/{tag}"
    assert plan.local_version == f"{torch}+{tag}"


def test_no_index_fits_names_every_reason():
    d = data(nvidia_driver_branch="550")
    with pytest.raises(GpuStackError) as error:
        gpu_stack.plan_torch(d, gpu_stack.plan_driver(d, facts()))
    assert str(error.value) == (
        "no PyTorch CUDA wheel index fits torch 2.9.1 on driver branch 550: "
        "cu130 wheels (CUDA 13.0) need driver branch 580 or newer, nvidia_driver_branch is 550; "
        "cu128 wheels (CUDA 12.8) need driver branch 570 or newer, nvidia_driver_branch is 550; "
        "cu126 wheels (CUDA 12.6) need driver branch 560 or newer, nvidia_driver_branch is 550"
    )


def test_forced_indexes():
    d = data(pytorch_cuda="cu126")
    assert gpu_stack.plan_torch(d, gpu_stack.plan_driver(d, facts())).tag == "cu126"
    d = data(pytorch_cuda="cu126")
    with pytest.raises(
        GpuStackError, match=r"cu126 wheels are not built for compute capability 10.0"
    ):
        gpu_stack.plan_torch(d, gpu_stack.plan_driver(d, facts(devices=("2901",))))
    cpu = data(pytorch_cuda="cpu")
    cpu_driver = gpu_stack.plan_driver(cpu, facts(devices=()))
    assert gpu_stack.plan_torch(cpu, cpu_driver, OS["debian12"]).tag == "cpu"
    with pytest.raises(GpuStackError, match='torch_version must be a version such as "2.9.1"'):
        gpu_stack.plan_torch(data(torch_version="latest"), gpu_stack.plan_driver(data(), facts()))


# --- the running module ----------------------------------------------------------------------


def test_loaded_module_version_falls_back_to_nvidia_smi():
    assert gpu_stack.loaded_module_version({"version": "580.105.08"}, None) == "580.105.08"
    ok = {"state": "ok", "driver_version": "580.126.09"}
    assert gpu_stack.loaded_module_version({"version": None}, ok) == "580.126.09"
    assert gpu_stack.loaded_module_version(None, {"state": "driver-mismatch"}) is None


def test_reboot_reasons_and_module_problem():
    target = gpu_stack.distro("debian12")
    ours = gpu_stack.installed_driver(
        target, installed(("nvidia-kernel-open-dkms", "580.105.08-1"))
    )
    ok = {"state": "ok", "driver_version": "580.105.08"}
    loaded = {"version": "580.105.08", "flavour": "open", "nouveau_loaded": False}
    assert gpu_stack.reboot_reasons(ours, loaded, ok) == []
    assert gpu_stack.module_problem(ours, loaded, ok) is None
    assert gpu_stack.reboot_reasons(ours, {**loaded, "version": "580.95.05"}, None) == [
        "the loaded NVIDIA module is 580.95.05, the installed driver is 580.105.08"
    ]
    assert gpu_stack.reboot_reasons(ours, {**loaded, "flavour": "proprietary"}, ok) == [
        "the loaded module is the proprietary flavour, open is installed"
    ]
    assert gpu_stack.reboot_reasons(ours, None, {"state": "driver-mismatch"}) == [
        "nvidia-smi reports a driver/library version mismatch (installed 580.105.08)"
    ]
    assert gpu_stack.reboot_reasons(
        gpu_stack.InstalledDriver(), {"nouveau_loaded": True}, None
    ) == ["the nouveau module is loaded"]
    assert gpu_stack.module_problem(ours, loaded, {"state": "no-gpu", "error": None}) == (
        "nvidia-smi state is no-gpu"
    )


def test_every_key_the_stack_reads_is_declared():
    declared = settings.all_keys()
    read = set(
        re.findall(
            r'_data\(\s*data,\s*"(\w+)"', (ROOT / "src/provisioner/gpu_stack.py").read_text()
        )
    )
    assert read and read <= set(declared), read - set(declared)
    for component in ("nvidia_driver", "cuda_toolkit", "pytorch"):
        assert settings.defaults(component)
