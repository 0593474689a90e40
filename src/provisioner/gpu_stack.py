"""The GPU stack's data and decisions, as pure functions (no pyinfra, no connections).

Reads ``data/distros.toml`` (what differs between distributions), ``data/gpu_devices.csv`` (PCI
device id -> GPU model), ``data/nvidia_compat.toml`` (what each GPU architecture and CUDA version
needs from the driver) and ``data/torch_wheels.toml`` (the PyTorch wheel indexes), and turns one
host's facts and data into plans for the deploys in :mod:`provisioner.deploys`:

* :func:`plan_driver`: distro table, repository and key, branch, kernel-module flavour (open for
  Turing and newer, proprietary when any GPU is older), Fabric Manager (NVSwitch), reboot policy;
  or the reason the host has no driver to install (CPU-only);
* :func:`plan_toolkit`: the ``cuda-toolkit-X-Y`` package, or why there is none;
* :func:`plan_torch`: the wheel index (``cu126``/``cu128``/``cu130``/``cpu``) and version.

The concerns live in modules of their own, re-exported here so that ``gpu_stack.X`` keeps
working: :mod:`provisioner.gpu_data` (the data tables), :mod:`provisioner.gpu_packages`
(installed packages, holds, locks), :mod:`provisioner.gpu_module` (the running module); the
plans are here.

Every refusal is a :class:`GpuStackError` whose message names the values involved; the deploys
raise it for one host before anything changes there. :func:`reboot_reasons` tells whether the
kernel module that runs is the one that should.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provisioner import settings
from provisioner.gpu_data import (
    DISTRO_SOURCE_SUFFIX,
    FLAVOURS,
    REBOOT_MARKER,
    Architecture,
    Distro,
    Family,
    GpuModel,
    GpuStackError,
    _cc_tuple,
    _data_text,
    architecture_for_cc,
    architectures,
    branch_of,
    compat,
    distro,
    distros,
    families,
    find_distro,
    identify_device,
    native_branch,
    package_version,
    repo_arch,
    torch_indexes,
)
from provisioner.gpu_module import loaded_module_version, module_problem, reboot_reasons
from provisioner.gpu_packages import (
    InstalledDriver,
    branch_locked,
    find_packages,
    installed_driver,
    installed_packages,
    is_installed,
    lock_problems,
    name_matches,
    packages_to_hold,
)
from provisioner.nvidia_smi import GPU_CLASSES, NVSWITCH_CLASSES, gpus_on_bus

__all__ = [
    "DISTRO_SOURCE_SUFFIX",
    "FLAVOURS",
    "REBOOT_MARKER",
    "Architecture",
    "Distro",
    "DriverPlan",
    "Family",
    "GpuModel",
    "GpuStackError",
    "InstalledDriver",
    "KeySource",
    "StackPlan",
    "ToolkitPlan",
    "TorchPlan",
    "name_matches",
    "architecture_for_cc",
    "architectures",
    "branch_locked",
    "branch_of",
    "check_headers_offered",
    "check_offered_branch",
    "choose_flavour",
    "choose_python",
    "compat",
    "distro",
    "distros",
    "driver_table",
    "families",
    "find_distro",
    "find_packages",
    "gpu_presence",
    "host_gpus",
    "identify_device",
    "installed_driver",
    "installed_packages",
    "is_installed",
    "key_source",
    "loaded_module_version",
    "lock_problems",
    "module_problem",
    "native_branch",
    "package_version",
    "packages_to_hold",
    "plan_driver",
    "plan_stack",
    "plan_toolkit",
    "plan_torch",
    "python_floor",
    "reboot_reasons",
    "repo_arch",
    "secure_boot_signing",
    "torch_indexes",
]

# --- Plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySource:
    """Where the repository signing key comes from and how it is checked."""

    url: str
    path: str
    sha256: str | None
    fingerprint: str | None
    strip_version: bool


@dataclass(frozen=True)
class DriverPlan:
    """What the driver deploy does on one host; ``skip`` set: nothing, and why."""

    skip: str | None = None
    gpu_reason: str = ""
    distro: Distro | None = None
    kernel: str = ""
    codename: str = ""
    repo_url: str = ""
    key: KeySource | None = None
    branch: str = ""
    version: str | None = None
    flavour: str = ""
    flavour_reason: str = ""
    nvswitch: bool = False
    gpus: tuple[GpuModel, ...] = ()
    compute_caps: tuple[str, ...] = ()
    installed: InstalledDriver = InstalledDriver()
    change: str | None = None  # an allowed branch/flavour change this run makes
    headers_repo_url: str | None = None
    extra_components: tuple[str, ...] = ()
    reboot: bool = True
    reboot_timeout: int = 900
    hold_kernel: bool = False  # nvidia_hold_kernel
    headers: str = ""  # the kernel headers package DKMS builds against
    mok_key: str | None = None  # Secure Boot: DKMS signs the module with this MOK
    mok_cert: str | None = None

    @property
    def driver_packages(self) -> list[str]:
        """The packages that install this plan's driver."""
        if self.distro is None:
            return []
        return self.distro.driver_packages(self.flavour, self.branch, self.kernel)

    @property
    def distro_key(self) -> str:
        return self.distro.key if self.distro else ""


@dataclass(frozen=True)
class ToolkitPlan:
    skip: str | None = None
    version: str = ""
    package: str = ""
    bin_dir: str = ""


@dataclass(frozen=True)
class TorchPlan:
    tag: str
    reason: str
    version: str
    index_url: str
    venv: str
    user: str
    distro: Distro | None = None
    trusted_host: str | None = None
    python: str = "python3"  # the interpreter the venv is made with
    python_packages: tuple[str, ...] = ()  # what installs it (EL9: python3.11)

    @property
    def local_version(self) -> str:
        return f"{self.version}+{self.tag}"


@dataclass(frozen=True)
class StackPlan:
    driver: DriverPlan
    toolkit: ToolkitPlan | None = None
    torch: TorchPlan | None = None


def _data(data: Any, key: str) -> Any:
    """A host data key, or its declared default (``data/keys/*.toml``): one place for defaults,
    none written here."""
    value = data.get(key) if hasattr(data, "get") else None
    return settings.all_defaults().get(key) if value is None else value


def gpu_presence(
    data: Any, pci: list[Mapping[str, str]] | None, smi: Mapping[str, Any] | None
) -> tuple[bool, str]:
    """Whether the host takes the GPU path, and why (data ``gpu``, lspci, nvidia-smi)."""
    forced = _data(data, "gpu")
    gpus = gpus_on_bus(pci)
    if forced is False:
        return False, "data `gpu` is false"
    if forced is True:
        return True, "data `gpu` is true"
    if gpus:
        return True, f"{len(gpus)} NVIDIA GPU(s) on the PCI bus"
    if smi and smi.get("state") == "ok" and smi.get("gpus"):
        return True, "nvidia-smi reports NVIDIA GPUs"
    return False, "no NVIDIA GPU on the PCI bus (lspci/sysfs) and none reported by nvidia-smi"


def host_gpus(
    pci: list[Mapping[str, str]] | None, smi: Mapping[str, Any] | None
) -> tuple[tuple[GpuModel, ...], tuple[str, ...], bool]:
    """The host's GPU models (PCI first, nvidia-smi when lspci saw none), their compute
    capabilities, and whether an NVSwitch is present."""
    devices = list(pci or [])
    nvswitch = any(d.get("class_id") in NVSWITCH_CLASSES for d in devices)
    models = [identify_device(d["device_id"]) for d in devices if d.get("class_id") in GPU_CLASSES]
    nvswitch = nvswitch or any(
        identify_device(d["device_id"]).nvswitch for d in devices if d.get("device_id")
    )
    caps = [m.compute_capability for m in models if m.compute_capability]
    smi_gpus = list((smi or {}).get("gpus") or []) if (smi or {}).get("state") == "ok" else []
    if not models:
        for gpu in smi_gpus:
            arch = architecture_for_cc(gpu.get("compute_cap"))
            if arch:
                models.append(
                    GpuModel(
                        "",
                        gpu.get("name") or "NVIDIA GPU",
                        arch,
                        gpu.get("memory_total_mib"),
                        gpu.get("compute_cap"),
                        False,
                        False,
                    )
                )
    caps += [
        g["compute_cap"] for g in smi_gpus if g.get("compute_cap") and g["compute_cap"] not in caps
    ]
    return tuple(models), tuple(dict.fromkeys(caps)), nvswitch


def _names(models: Iterable[GpuModel]) -> str:
    return ", ".join(dict.fromkeys(m.label for m in models))


def choose_flavour(
    models: tuple[GpuModel, ...], branch: int, wanted: str = "auto"
) -> tuple[str, str]:
    """The kernel-module flavour for these GPUs on ``branch``, and why; GpuStackError when no
    flavour or branch drives them all."""
    for model in models:
        arch = model.architecture
        if arch.last_branch is not None and branch > arch.last_branch:
            raise GpuStackError(
                f"driver branch {branch} does not support {model.label}: "
                f"the last branch for {arch.label} GPUs is {arch.last_branch}"
            )
        if arch.first_branch is not None and branch < arch.first_branch:
            raise GpuStackError(
                f"driver branch {branch} does not support {model.label}: "
                f"{arch.label} GPUs need branch {arch.first_branch} or newer"
            )
    needs_open = [m for m in models if m.architecture.kernel_modules == "open-only"]
    needs_prop = [m for m in models if m.architecture.kernel_modules == "proprietary"]
    if needs_open and needs_prop:
        raise GpuStackError(
            f"no kernel module flavour drives all GPUs of this host: {_names(needs_open)} "
            f"need the open modules, {_names(needs_prop)} the proprietary ones"
        )
    if wanted == "open" and needs_prop:
        raise GpuStackError(
            f"nvidia_driver_flavour is open, but {_names(needs_prop)} need the proprietary modules"
        )
    if wanted == "proprietary" and needs_open:
        raise GpuStackError(
            f"nvidia_driver_flavour is proprietary, but {_names(needs_open)} need the open modules"
        )
    if wanted in FLAVOURS:
        return wanted, f"nvidia_driver_flavour is {wanted}"
    if needs_prop:
        newer = [m for m in models if m not in needs_prop]
        mixed = f" (mixed host: {_names(newer)} run on them too)" if newer else ""
        return "proprietary", f"{_names(needs_prop)} need the proprietary modules{mixed}"
    if not models:
        return "open", "no GPU model known: NVIDIA's default flavour since R560"
    return "open", f"{_names(models)}: Turing or newer, open modules"


def _check_hex(value: str | None, length: int, key: str) -> str | None:
    if value is None or value == "":
        return None
    cleaned = value.replace(" ", "").lower()
    if not re.fullmatch(f"[0-9a-f]{{{length}}}", cleaned):
        raise GpuStackError(f"{key} must be {length} hex digits, got {value!r}")
    return cleaned


def key_source(data: Any, target: Distro, repo_url: str) -> KeySource:
    url = _data(data, "nvidia_repo_key_url") or f"{repo_url}{target.key_file}"
    sha256 = _check_hex(_data(data, "nvidia_repo_key_sha256"), 64, "nvidia_repo_key_sha256")
    fingerprint = _check_hex(
        _data(data, "nvidia_repo_key_fingerprint"), 40, "nvidia_repo_key_fingerprint"
    )
    strip = False
    if sha256 is None and fingerprint is None:
        # the distro's built-in check applies only to the distro's own key file
        sha256 = target.key_sha256.lower() or None
        fingerprint = target.key_fingerprint.lower() or None
        strip = target.key_strip_version
    if sha256 is None and fingerprint is None:
        raise GpuStackError(
            "the repository key would be installed unchecked: set nvidia_repo_key_sha256 "
            "or nvidia_repo_key_fingerprint"
        )
    extension = "gpg" if url.split("?", 1)[0].endswith(".gpg") else "asc"
    path = f"{target.family.key_dir}/nvidia-cuda.{extension}"
    return KeySource(url, path, sha256, fingerprint, strip)


def _branch_and_version(data: Any) -> tuple[str, str | None]:
    branch = str(_data(data, "nvidia_driver_branch"))
    if not re.fullmatch(r"\d{3}", branch):
        raise GpuStackError(
            f'nvidia_driver_branch must be a branch number such as "580", got {branch!r}'
        )
    version = _data(data, "nvidia_driver_version") or None
    if version is not None and branch_of(version) != branch:
        raise GpuStackError(
            f"nvidia_driver_version {version} is not on nvidia_driver_branch {branch}"
        )
    return branch, version


def driver_table(data: Any, release: Distro, branch: str) -> Distro:
    """The table the driver comes from: the release's (NVIDIA's repository) or, with
    ``nvidia_driver_source = "distro"``, the release's own packages; GpuStackError when the
    distribution does not ship ``branch``, naming the branches it does."""
    if _data(data, "nvidia_driver_source") != "distro":
        return release
    own = distros().get(f"{release.key}{DISTRO_SOURCE_SUFFIX}")
    if own is None:
        raise GpuStackError(
            f'nvidia_driver_source is "distro", but {release.name} has no driver packages of '
            "its own here (docs/gpu-stack.md lists the distro sources)"
        )
    if branch not in own.offered:
        raise GpuStackError(
            f"{release.name} ships driver branch {', '.join(own.offered)} in its own packages, "
            f"nvidia_driver_branch is {branch}"
        )
    return own


def _installed_change(
    data: Any, installed: InstalledDriver, loaded: str | None, branch: str, flavour: str, why: str
) -> str | None:
    """An installed driver of another branch or flavour (None: none); GpuStackError unless
    ``nvidia_driver_allow_branch_change``."""
    # a loaded module counts only where no driver package is installed (a driver this toolkit
    # did not install); otherwise an old loaded module is a pending reboot, not a change
    branches = set(installed.branches) or ({loaded.split(".")[0]} if loaded else set())
    changes = []
    if branches - {branch}:
        present = installed.version or loaded
        changes.append(
            f"driver branch {'/'.join(sorted(branches - {branch}))} is installed "
            f"({present}), nvidia_driver_branch is {branch}"
        )
    if installed.flavour and installed.flavour != flavour:
        changes.append(
            f"the {installed.flavour} kernel modules are installed, this host needs "
            f"the {flavour} ones ({why})"
        )
    change = "; ".join(changes) or None
    if change and not _data(data, "nvidia_driver_allow_branch_change"):
        raise GpuStackError(
            f"{change}: changing an installed driver needs nvidia_driver_allow_branch_change: true "
            "(docs/gpu-stack.md, 'Changing the branch')"
        )
    return change


def secure_boot_signing(
    data: Any, target: Distro, facts: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """The MOK that signs a DKMS-built module on a Secure Boot host (None, None: not needed);
    GpuStackError when the module would be rejected after the reboot: no MOK given, its
    certificate missing or not enrolled. Decided before anything changes on the host."""
    state = facts.get("secure_boot") or {}
    if not state.get("enabled") or target.secure_boot == "signed":
        return None, None
    seen = state.get("detail") or "Secure Boot is enabled"
    key, cert = _data(data, "nvidia_mok_key"), _data(data, "nvidia_mok_cert")
    if not key or not cert:
        signed = distros().get(f"{target.key.split(':')[0]}{DISTRO_SOURCE_SUFFIX}")
        hint = (
            '; or nvidia_driver_source = "distro" (Canonical-signed modules)'
            if signed is not None and signed.secure_boot == "signed"
            else ""
        )
        raise GpuStackError(
            f"{seen}: the kernel would reject the DKMS-built NVIDIA module after the reboot "
            "(Key was rejected by service). Set nvidia_mok_key and nvidia_mok_cert to a Machine "
            "Owner Key enrolled on this host (mokutil --import <cert>, then confirm the "
            f"enrolment at the console during the next boot){hint}"
        )
    mok = facts.get("mok") or {}
    if not mok.get("exists"):
        raise GpuStackError(f"{seen}: nvidia_mok_cert {cert} does not exist on the host")
    if not mok.get("enrolled"):
        raise GpuStackError(
            f"{seen}: the MOK {cert} is not enrolled ({mok.get('detail') or 'mokutil --test-key'})"
            f": run mokutil --import {cert}, reboot and confirm the enrolment at the console, "
            "then apply again"
        )
    return str(key), str(cert)


def check_offered_branch(plan: DriverPlan, repo: Mapping[str, Any] | None) -> None:
    """Refuse a plan whose repository does not offer its branch, naming the branches it does:
    from the repository's own index (``RepoDriverBranches``), else from the branches recorded
    for the release (``repo_first_branch``). Called before anything changes on the host."""
    if plan.skip or plan.distro is None or plan.distro.distribution_driver:
        return
    installed = plan.installed.version
    if installed and branch_of(installed) == plan.branch:
        return  # the branch is installed: the repository had it
    if repo and repo.get("read"):
        offered = list(repo.get("branches") or [])
        if plan.branch not in offered:
            raise GpuStackError(
                f"{plan.repo_url} offers driver branch {', '.join(offered) or 'none'}, "
                f"nvidia_driver_branch is {plan.branch}"
            )
        return
    first = plan.distro.repo_first_branch
    if first and int(plan.branch) < first:
        raise GpuStackError(
            f"NVIDIA's {plan.distro.repo_path} repository offers driver branches from {first} on "
            f"(as recorded; its index could not be read: {(repo or {}).get('error') or 'not read'})"
            f", nvidia_driver_branch is {plan.branch}"
        )


def check_headers_offered(
    plan: DriverPlan, available: bool | None, os_info: Mapping[str, Any] | None = None
) -> None:
    """Refuse a plan whose kernel headers package the host's repositories no longer offer (an
    EL image older than the current minor release), naming where they stay; before anything
    changes. ``available`` None (not asked, or no answer): nothing to say."""
    if plan.skip or available is not False or plan.headers_repo_url or plan.distro is None:
        return
    vault = plan.distro.headers_vault.format(
        version=(os_info or {}).get("version_id") or "<minor>",
        arch=(os_info or {}).get("arch") or "<arch>",
    )
    where = (
        f": set kernel_headers_repo_url, e.g. to {vault}"
        if vault
        else (": set kernel_headers_repo_url to a repository that has it, or boot a current kernel")
    )
    raise GpuStackError(
        f"{plan.headers} (the running kernel's headers, which DKMS needs) is not offered by "
        f"the host's repositories{where}"
    )


def _headers(data: Any, target: Distro, kernel: str) -> str:
    return str(_data(data, "nvidia_kernel_headers") or target.headers.format(kernel=kernel))


def _extra_components(data: Any, target: Distro) -> tuple[str, ...]:
    wanted = _data(data, "nvidia_extra_components")
    return tuple(target.extra_components if wanted is None else wanted)


def plan_driver(data: Any, facts: Mapping[str, Any]) -> DriverPlan:
    """The driver plan of one host from its data and facts (keys ``os``, ``kernel``, ``pci``,
    ``smi``, ``packages``, ``module``, ``secure_boot``, ``mok``, as gathered by the deploys)."""
    pci, smi = facts.get("pci") or [], facts.get("smi") or {}
    has_gpu, gpu_reason = gpu_presence(data, pci, smi)
    if not has_gpu:
        return DriverPlan(skip=f"CPU-only host: {gpu_reason}", gpu_reason=gpu_reason)

    branch, version = _branch_and_version(data)
    os_info = facts.get("os") or {}
    target = driver_table(data, find_distro(os_info), branch)
    arch = repo_arch(target, os_info.get("arch"))
    kernel = facts.get("kernel")
    if not kernel:
        raise GpuStackError("the running kernel release (uname -r) could not be read")

    models, caps, nvswitch = host_gpus(pci, smi)
    if nvswitch and not target.fabricmanager:
        raise GpuStackError(
            f"{target.name} has no Fabric Manager package, which this NVSwitch system needs"
        )
    flavour, flavour_reason = choose_flavour(
        models, int(branch), str(_data(data, "nvidia_driver_flavour"))
    )
    installed = installed_driver(target, facts.get("packages"))
    loaded = loaded_module_version(facts.get("module"), smi)
    change = _installed_change(data, installed, loaded, branch, flavour, flavour_reason)
    mok_key, mok_cert = secure_boot_signing(data, target, facts)

    base = str(_data(data, "nvidia_repo_url") or "").rstrip("/")
    if not base:
        raise GpuStackError("nvidia_repo_url is empty")
    repo_url = f"{base}/{target.repo_path}/{arch}/"
    return DriverPlan(
        gpu_reason=gpu_reason,
        distro=target,
        kernel=kernel,
        codename=os_info.get("codename") or "",
        repo_url=repo_url,
        key=key_source(data, target, repo_url),
        branch=branch,
        version=version,
        flavour=flavour,
        flavour_reason=flavour_reason,
        nvswitch=nvswitch,
        gpus=models,
        compute_caps=caps,
        installed=installed,
        change=change,
        headers_repo_url=_data(data, "kernel_headers_repo_url") or None,
        extra_components=_extra_components(data, target),
        reboot=bool(_data(data, "nvidia_reboot")),
        reboot_timeout=int(_data(data, "nvidia_reboot_timeout")),
        hold_kernel=bool(_data(data, "nvidia_hold_kernel")),
        headers=_headers(data, target, kernel),
        mok_key=mok_key,
        mok_cert=mok_cert,
    )


def _caps_outside(caps: Iterable[str], low: str | None, high: str | None) -> list[str]:
    out = []
    for cap in caps:
        value = _cc_tuple(cap)
        if (low and value < _cc_tuple(low)) or (high and value > _cc_tuple(high)):
            out.append(cap)
    return out


def plan_toolkit(data: Any, driver: DriverPlan) -> ToolkitPlan:
    """The CUDA toolkit plan: none unless ``cuda_toolkit_version`` is set on a GPU host."""
    version = str(_data(data, "cuda_toolkit_version") or "").strip()
    if not version:
        return ToolkitPlan(
            skip="cuda_toolkit_version is not set (PyTorch brings its own CUDA runtime)"
        )
    if driver.skip:
        return ToolkitPlan(skip=f"no CUDA toolkit on a {driver.skip}")
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not match:
        raise GpuStackError(
            f'cuda_toolkit_version must be "major.minor" such as "13.0", got {version!r}'
        )
    major, minor = match.groups()
    majors = compat()["cuda_major"]
    if major not in majors:
        raise GpuStackError(
            f"CUDA {version} is not supported (known CUDA major versions: {', '.join(majors)})"
        )
    floor = majors[major]
    min_branch = int(floor["min_driver"].split(".")[0])
    if int(driver.branch) < min_branch:
        raise GpuStackError(
            f"CUDA toolkit {version} needs driver branch {min_branch} or newer, "
            f"nvidia_driver_branch is {driver.branch}"
        )
    too_old = _caps_outside(driver.compute_caps, floor.get("min_compute_capability"), None)
    if too_old:
        raise GpuStackError(
            f"CUDA toolkit {version} cannot compile for compute capability {', '.join(too_old)} "
            f"({_names(driver.gpus)}); CUDA {major} needs "
            f"{floor['min_compute_capability']} or newer"
        )
    assert driver.distro is not None
    return ToolkitPlan(
        version=version,
        package=driver.distro.toolkit_package.format(major=major, minor=minor),
        bin_dir=f"/usr/local/cuda-{version}/bin",
    )


def _torch_minor(version: str) -> str:
    match = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", version)
    if not match:
        raise GpuStackError(f'torch_version must be a version such as "2.9.1", got {version!r}')
    return f"{match.group(1)}.{match.group(2)}"


def _version_tuple(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split("."))


def python_floor(minor: str) -> str | None:
    """The oldest Python that torch ``minor`` (``"2.9"``) publishes wheels for, or None."""
    floor = None
    for entry in tomllib.loads(_data_text("torch_wheels.toml")).get("python", {}).get("floors", []):
        if _version_tuple(minor) >= _version_tuple(entry["from"]):
            floor = entry["min_python"]
    return floor


def choose_python(target: Distro, minor: str, version: str) -> Mapping[str, Any]:
    """The distro's cheapest interpreter that torch ``minor`` has wheels for (distros.toml
    ``pythons``); GpuStackError naming the versions when none has."""
    floor = python_floor(minor)
    pythons = target.pythons or ({"version": "", "binary": "python3", "packages": []},)
    for candidate in pythons:
        if floor is None or not candidate["version"]:
            return candidate
        if _version_tuple(candidate["version"]) >= _version_tuple(floor):
            return candidate
    offered = ", ".join(p["version"] for p in pythons)
    raise GpuStackError(
        f"torch {version} publishes wheels for Python {floor} and newer; {target.name} offers "
        f"Python {offered}"
    )


def _index_problem(
    tag: str, spec: Mapping[str, Any], minor: str, version: str, driver: DriverPlan
) -> str | None:
    """Why index ``tag`` cannot serve this host, or None."""
    if "*" not in spec["torch"] and minor not in spec["torch"]:
        return (
            f"torch {version} is not published on the {tag} index "
            f"(it carries {', '.join(spec['torch'])})"
        )
    if not spec["cuda"]:
        return None
    need = native_branch(spec["cuda"])
    if int(driver.branch) < need:
        return (
            f"{tag} wheels (CUDA {spec['cuda']}) need driver branch {need} or newer, "
            f"nvidia_driver_branch is {driver.branch}"
        )
    low = (spec.get("min_compute_capability_by_torch") or {}).get(minor) or spec.get(
        "min_compute_capability"
    )
    outside = _caps_outside(driver.compute_caps, low, spec.get("max_compute_capability"))
    if outside:
        return (
            f"{tag} wheels are not built for compute capability {', '.join(outside)} "
            f"({_names(driver.gpus)})"
        )
    return None


def plan_torch(
    data: Any, driver: DriverPlan, os_info: Mapping[str, Any] | None = None
) -> TorchPlan:
    """The PyTorch plan: wheel index tag, version, venv; GpuStackError for a pairing the driver
    cannot run, naming both versions."""
    version = str(_data(data, "torch_version"))
    minor = _torch_minor(version)
    forced = _data(data, "pytorch_cuda")
    indexes = torch_indexes()
    target = driver.distro or find_distro(os_info or {})
    python = choose_python(target, minor, version)
    common = dict(
        version=version,
        venv=str(_data(data, "pytorch_venv")),
        user=str(_data(data, "pytorch_user")),
        distro=target,
        python=str(python["binary"]),
        python_packages=tuple(python.get("packages") or ()),
    )
    base = str(_data(data, "pytorch_index_url")).rstrip("/")
    if _data(data, "pytorch_index_trusted"):
        common["trusted_host"] = urlsplit(base).hostname
    if forced is not None and forced not in indexes:
        raise GpuStackError(f"pytorch_cuda {forced!r} is not a known index ({', '.join(indexes)})")
    if driver.skip:
        if forced not in (None, "cpu"):
            raise GpuStackError(f"pytorch_cuda is {forced}, but this is a {driver.skip}")
        problem = _index_problem("cpu", indexes["cpu"], minor, version, driver)
        if problem:
            raise GpuStackError(problem)
        return TorchPlan(tag="cpu", reason=driver.skip, index_url=f"{base}/cpu", **common)
    if forced:
        problem = _index_problem(forced, indexes[forced], minor, version, driver)
        if problem:
            raise GpuStackError(f"pytorch_cuda {forced} with torch {version}: {problem}")
        return TorchPlan(tag=forced, reason="pytorch_cuda", index_url=f"{base}/{forced}", **common)
    problems = []
    for tag, spec in sorted(indexes.items(), key=lambda item: -item[1]["order"]):
        if not spec["cuda"]:
            continue
        problem = _index_problem(tag, spec, minor, version, driver)
        if problem is None:
            reason = f"newest index for driver branch {driver.branch} and torch {version}"
            return TorchPlan(tag=tag, reason=reason, index_url=f"{base}/{tag}", **common)
        problems.append(problem)
    raise GpuStackError(
        f"no PyTorch CUDA wheel index fits torch {version} on driver branch {driver.branch}: "
        + "; ".join(problems)
    )


def plan_stack(data: Any, facts: Mapping[str, Any]) -> StackPlan:
    """Driver, toolkit and PyTorch plans of one host, all checked before anything runs."""
    driver = plan_driver(data, facts)
    return StackPlan(
        driver=driver,
        toolkit=plan_toolkit(data, driver),
        torch=plan_torch(data, driver, facts.get("os")),
    )
