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

Every refusal is a :class:`GpuStackError` whose message names the values involved; the deploys
raise it for one host before anything changes there. :func:`reboot_reasons` tells whether the
kernel module that runs is the one that should.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from provisioner import settings
from provisioner.nvidia_smi import GPU_CLASSES, NVSWITCH_CLASSES, gpus_on_bus

FLAVOURS = ("open", "proprietary")
REBOOT_MARKER = "/var/lib/provisioner/reboot-required"


class GpuStackError(ValueError):
    """A host's data or hardware that the GPU stack refuses, with a message for the operator."""


# --------------------------------------------------------------------------------------------
# Data files


def _data_text(name: str) -> str:
    return (resources.files("provisioner") / "data" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Family:
    """How one package manager is driven (``[family.*]`` of distros.toml)."""

    name: str
    update: tuple[str, ...]
    install: tuple[str, ...]
    replace_held: tuple[str, ...]
    unhold_before_replace: bool
    remove: tuple[str, ...]
    hold: tuple[str, ...]
    unhold: tuple[str, ...]
    version_separator: str
    fetch: tuple[str, ...]
    key_dir: str
    gpg_package: str
    fm_version: str = "{version}"
    repo_preference: str = ""
    module_reset: tuple[str, ...] = ()
    module_enable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Distro:
    """One supported distribution release (``[distro.*]`` of distros.toml)."""

    key: str
    name: str
    family: Family
    match: tuple[Mapping[str, str], ...]
    repo_path: str
    arches: Mapping[str, str]
    extra_components: tuple[str, ...]
    key_file: str
    key_fingerprint: str
    key_sha256: str
    key_strip_version: bool
    driver_meta: Mapping[str, str]
    kernel_module: Mapping[str, tuple[str, ...]]
    driver_globs: tuple[str, ...]
    hold_globs: tuple[str, ...]
    hold_exclude: tuple[str, ...]
    branch_lock: str
    fabricmanager: tuple[Mapping[str, Any], ...]
    prerequisites: tuple[str, ...]
    headers: str
    initramfs: tuple[str, ...]
    venv_packages: tuple[str, ...]
    toolkit_package: str
    archive_keyring: str = ""
    pinning_package: str = ""
    module_stream: str = ""
    stream_suffix: Mapping[str, str] = field(default_factory=dict)
    persistenced_dropin: bool = False
    secure_boot: str = "dkms"
    repo_first_branch: int = 0
    pythons: tuple[Mapping[str, Any], ...] = ()
    offered: tuple[str, ...] = ()  # the distribution's own driver: the branches it ships

    @property
    def distribution_driver(self) -> bool:
        """Whether this table installs the distribution's own driver packages."""
        return self.key.endswith(DISTRO_SOURCE_SUFFIX)

    def driver_packages(self, flavour: str, branch: str, kernel: str = "") -> list[str]:
        """The packages that install the driver (``driver_meta``, several on the distro
        source; ``{branch}`` and the kernel's ``{flavour}`` filled in)."""
        kernel_flavour = kernel.split("-")[-1] if kernel else ""
        text = self.driver_meta[flavour].format(branch=branch, flavour=kernel_flavour)
        return text.split()

    def matches(self, os_id: str | None, version_id: str | None, codename: str | None) -> bool:
        for rule in self.match:
            if rule.get("id") != os_id:
                continue
            version = rule.get("version")
            if (
                version
                and version_id
                and (version_id == version or version_id.startswith(version + "."))
            ):
                return True
            if rule.get("codename") and rule.get("codename") == codename:
                return True
        return False

    def fabricmanager_package(self, branch: str) -> str:
        """Fabric Manager's package name for a driver branch (``nvidia-fabricmanager`` from
        580, ``nvidia-fabricmanager-<branch>`` / ``nvidia-fabric-manager`` before)."""
        for entry in self.fabricmanager:
            if int(branch or 0) >= int(entry["from"]):
                return str(entry["name"]).format(branch=branch)
        raise GpuStackError(f"{self.name}: no Fabric Manager package for branch {branch}")

    def fabricmanager_globs(self) -> tuple[str, ...]:
        """Every Fabric Manager package name of any branch (globs)."""
        return tuple(str(e["name"]).format(branch="[0-9]*") for e in self.fabricmanager)

    def fabricmanager_version(self, version: str) -> str:
        """The version spec that installs Fabric Manager at the driver's ``version``."""
        return self.family.fm_version.format(version=package_version(version))

    def pinning(self, branch: str) -> str:
        return self.pinning_package.format(branch=branch)

    def stream(self, branch: str, flavour: str) -> str:
        return self.module_stream.format(branch=branch, stream=self.stream_suffix[flavour])


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value or ())


@cache
def families() -> dict[str, Family]:
    table = tomllib.loads(_data_text("distros.toml"))["family"]
    return {
        name: Family(
            name=name,
            update=_tuple(spec["update"]),
            install=_tuple(spec["install"]),
            replace_held=_tuple(spec["replace_held"]),
            unhold_before_replace=bool(spec.get("unhold_before_replace", False)),
            remove=_tuple(spec["remove"]),
            hold=_tuple(spec["hold"]),
            unhold=_tuple(spec["unhold"]),
            version_separator=spec["version_separator"],
            fetch=_tuple(spec["fetch"]),
            key_dir=spec["key_dir"],
            gpg_package=spec["gpg_package"],
            fm_version=spec.get("fm_version", "{version}"),
            repo_preference=spec.get("repo_preference", ""),
            module_reset=_tuple(spec.get("module_reset")),
            module_enable=_tuple(spec.get("module_enable")),
        )
        for name, spec in table.items()
    }


@cache
def distros() -> dict[str, Distro]:
    """Every supported distribution, by key (``debian12``, ``rhel9``, ...)."""
    raw = tomllib.loads(_data_text("distros.toml"))["distro"]

    def resolved(key: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if key in seen:
            raise ValueError(f"distros.toml: base cycle through {key}")
        spec = dict(raw[key])
        base = spec.pop("base", None)
        return {**resolved(base, (*seen, key)), **spec} if base else spec

    out: dict[str, Distro] = {}
    for key in raw:
        spec = resolved(key)
        out[key] = _distro(key, spec)
        if spec.get("distro_driver"):
            variant = f"{key}{DISTRO_SOURCE_SUFFIX}"
            out[variant] = _distro(variant, _distro_source_spec(spec))
    return out


# the distro table of a release's own driver packages: "<key>:distro"
DISTRO_SOURCE_SUFFIX = ":distro"


def _distro_source_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A release's table with its own driver packages (``distro_driver``) in place of NVIDIA's:
    no NVIDIA repository or key, no branch pinning package (one branch per release), no
    Fabric Manager; the holds, nouveau, reboot and services work the same way."""
    own = spec["distro_driver"]
    return {
        **spec,
        "name": f"{spec['name']} (distribution driver)",
        "extra_components": own.get("components", []),
        "driver_meta": own["packages"],
        "kernel_module": own["kernel_module"],
        "driver_globs": own["driver_globs"],
        "branch_lock": "none",
        "fabricmanager": [],
        "secure_boot": own.get("secure_boot", "dkms"),
        "repo_first_branch": 0,
        "offered": own["branches"],
    }


def _distro(key: str, spec: dict[str, Any]) -> Distro:
    """One ``[distro.*]`` table (its base already merged in) as a :class:`Distro`."""
    fams = families()
    return Distro(
        key=key,
        name=spec["name"],
        family=fams[spec["family"]],
        match=_tuple(spec["match"]),
        repo_path=spec["repo_path"],
        arches=dict(spec["arches"]),
        extra_components=_tuple(spec.get("extra_components")),
        key_file=spec["key_file"],
        key_fingerprint=spec.get("key_fingerprint", ""),
        key_sha256=spec.get("key_sha256", ""),
        key_strip_version=bool(spec.get("key_strip_version", False)),
        driver_meta=dict(spec["driver_meta"]),
        kernel_module={k: _tuple(v) for k, v in spec["kernel_module"].items()},
        driver_globs=_tuple(spec["driver_globs"]),
        hold_globs=_tuple(spec["hold_globs"]),
        hold_exclude=_tuple(spec.get("hold_exclude")),
        branch_lock=spec["branch_lock"],
        fabricmanager=_tuple(spec["fabricmanager"]),
        prerequisites=_tuple(spec.get("prerequisites")),
        headers=spec["headers"],
        initramfs=_tuple(spec["initramfs"]),
        venv_packages=_tuple(spec.get("venv_packages")),
        toolkit_package=spec["toolkit_package"],
        archive_keyring=spec.get("archive_keyring", ""),
        pinning_package=spec.get("pinning_package", ""),
        module_stream=spec.get("module_stream", ""),
        stream_suffix=dict(spec.get("stream_suffix", {})),
        persistenced_dropin=bool(spec.get("persistenced_dropin", False)),
        secure_boot=spec.get("secure_boot", "dkms"),
        repo_first_branch=int(spec.get("repo_first_branch", 0)),
        pythons=_tuple(spec.get("pythons")),
        offered=_tuple(spec.get("offered")),
    )


def distro(key: str) -> Distro:
    """One distro table by key; KeyError names the known ones."""
    try:
        return distros()[key]
    except KeyError:
        raise KeyError(f"unknown distro {key!r} (known: {', '.join(distros())})") from None


def find_distro(os_info: Mapping[str, Any]) -> Distro:
    """The distro table for a host's ``OsInfo`` fact, or a GpuStackError."""
    os_id, version_id = os_info.get("id"), os_info.get("version_id")
    codename = os_info.get("codename")
    releases = [d for d in distros().values() if not d.distribution_driver]
    for candidate in releases:
        if candidate.matches(os_id, version_id, codename):
            return candidate
    shown = os_info.get("pretty_name") or f"{os_id or '?'} {version_id or codename or '?'}"
    supported = ", ".join(d.name for d in releases)
    raise GpuStackError(f"unsupported distribution {shown!r} (supported: {supported})")


def repo_arch(target: Distro, machine: str | None) -> str:
    """NVIDIA's repository architecture directory for ``uname -m``, or a GpuStackError."""
    if machine in target.arches:
        return target.arches[machine]
    raise GpuStackError(
        f"architecture {machine or 'unknown'!r} is not supported on {target.name} "
        f"(supported: {', '.join(target.arches)})"
    )


@dataclass(frozen=True)
class Architecture:
    name: str
    label: str
    kernel_modules: str  # proprietary | open | open-only
    first_branch: int | None
    last_branch: int | None
    compute_capability: tuple[str, ...]


@dataclass(frozen=True)
class GpuModel:
    """One NVIDIA PCI device as gpu_devices.csv knows it."""

    device_id: str
    name: str
    architecture: Architecture
    memory_mib: int | None
    compute_capability: str | None
    nvswitch: bool
    listed: bool  # False: known only by its device-id range

    @property
    def label(self) -> str:
        return f"{self.name} ({self.architecture.label})"


@cache
def compat() -> dict[str, Any]:
    return tomllib.loads(_data_text("nvidia_compat.toml"))


@cache
def architectures() -> dict[str, Architecture]:
    return {
        name: Architecture(
            name=name,
            label=spec["label"],
            kernel_modules=spec["kernel_modules"],
            first_branch=spec.get("first_branch"),
            last_branch=spec.get("last_branch"),
            compute_capability=_tuple(spec.get("compute_capability")),
        )
        for name, spec in compat()["architecture"].items()
    }


@cache
def _device_table() -> tuple[dict[str, GpuModel], list[tuple[int, int, GpuModel]]]:
    text = "\n".join(
        line for line in _data_text("gpu_devices.csv").splitlines() if not line.startswith("#")
    )
    exact: dict[str, GpuModel] = {}
    ranges: list[tuple[int, int, GpuModel]] = []
    archs = architectures()
    for row in csv.DictReader(io.StringIO(text)):
        device = row["device_id"].strip().lower()
        model = GpuModel(
            device_id=device,
            name=row["name"],
            architecture=archs[row["architecture"]],
            memory_mib=int(row["memory_mib"]) if row["memory_mib"] else None,
            compute_capability=row["compute_capability"] or None,
            nvswitch=row["nvswitch"] == "1",
            listed="-" not in device,
        )
        if "-" in device:
            first, last = (int(part, 16) for part in device.split("-"))
            ranges.append((first, last, model))
        else:
            exact[device] = model
    ranges.sort(key=lambda r: r[1] - r[0])  # narrowest first
    return exact, ranges


def identify_device(device_id: str) -> GpuModel:
    """The GPU model of an NVIDIA PCI device id (``"2330"``), by row or by id range."""
    device = device_id.strip().lower()
    exact, ranges = _device_table()
    if device in exact:
        return exact[device]
    try:
        number = int(device, 16)
    except ValueError:
        number = -1
    for first, last, model in ranges:
        if first <= number <= last:
            return GpuModel(
                device_id=device,
                name=f"NVIDIA device {device}",
                architecture=model.architecture,
                memory_mib=None,
                compute_capability=None,
                nvswitch=False,
                listed=False,
            )
    return GpuModel(
        device, f"NVIDIA device {device}", architectures()["newer"], None, None, False, False
    )


def architecture_for_cc(compute_cap: str | None) -> Architecture | None:
    """The architecture of a compute capability as nvidia-smi reports it (``"8.9"``)."""
    if not compute_cap:
        return None
    best: tuple[int, Architecture] | None = None
    for arch in architectures().values():
        for prefix in arch.compute_capability:
            if compute_cap == prefix or (prefix.endswith(".") and compute_cap.startswith(prefix)):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), arch)
    return best[1] if best else None


def _cc_tuple(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split("."))


@cache
def torch_indexes() -> dict[str, dict[str, Any]]:
    return dict(tomllib.loads(_data_text("torch_wheels.toml"))["index"])


def native_branch(cuda: str) -> int:
    """The oldest driver branch a toolkit or wheel of CUDA ``cuda`` (``"12.8"``) was built for."""
    return int(compat()["cuda"][cuda]["native_driver"].split(".")[0])


# --------------------------------------------------------------------------------------------
# Installed packages (the GpuStackPackages fact)


def package_version(version: str) -> str:
    """``3:580.105.08-1.el9`` -> ``580.105.08``: the upstream version, no epoch or revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def branch_of(version: str) -> str:
    return package_version(version).split(".")[0]


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def installed_packages(packages_fact: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((packages_fact or {}).get("packages") or [])


def find_packages(
    packages_fact: Mapping[str, Any] | None, globs: Iterable[str]
) -> list[Mapping[str, Any]]:
    """Installed packages whose name matches one of ``globs``."""
    globs = tuple(globs)
    return [p for p in installed_packages(packages_fact) if _matches(p["name"], globs)]


def is_installed(packages_fact: Mapping[str, Any] | None, spec: str) -> bool:
    """True when ``spec`` names an installed package: by name, or by ``name-version[.arch]``
    as ``kernel-devel-$(uname -r)`` does on EL."""
    for p in installed_packages(packages_fact):
        plain = p["version"].split(":", 1)[-1]
        if spec in (p["name"], f"{p['name']}-{plain}", f"{p['name']}-{plain}.{p.get('arch')}"):
            return True
    return False


@dataclass(frozen=True)
class InstalledDriver:
    """The driver a host has installed, from its kernel-module package."""

    package: str | None = None  # e.g. nvidia-kernel-open-dkms
    version: str | None = None  # package version, e.g. 580.105.08-1
    flavour: str | None = None
    branches: frozenset[str] = frozenset()  # of every driver package seen

    @property
    def driver_version(self) -> str | None:
        return package_version(self.version) if self.version else None


def installed_driver(target: Distro, packages_fact: Mapping[str, Any] | None) -> InstalledDriver:
    found: tuple[str, str, str] | None = None
    for flavour in FLAVOURS:
        for p in find_packages(packages_fact, target.kernel_module[flavour]):
            found = found or (p["name"], p["version"], flavour)
    branches = frozenset(
        branch_of(p["version"])
        for p in find_packages(packages_fact, target.driver_globs)
        if re.match(r"(\d+:)?\d{3}\.", p["version"])
    )
    if not found:
        return InstalledDriver(branches=branches)
    return InstalledDriver(found[0], found[1], found[2], branches)


def packages_to_hold(target: Distro, packages_fact: Mapping[str, Any] | None) -> list[str]:
    """Installed driver packages that are not held yet."""
    return sorted(
        p["name"]
        for p in find_packages(packages_fact, target.hold_globs)
        if not _matches(p["name"], target.hold_exclude) and not p.get("held")
    )


def branch_locked(target: Distro, packages_fact: Mapping[str, Any] | None, branch: str) -> bool:
    """Whether the driver is locked to ``branch`` the distro's way: its pinning package
    installed (apt), its module stream enabled (EL); a distribution's own driver ships one
    branch, so only its holds lock it."""
    if target.branch_lock == "pinning-package":
        return is_installed(packages_fact, target.pinning(branch))
    if target.branch_lock == "module-stream":
        return str((packages_fact or {}).get("stream") or "").startswith(f"{branch}-")
    return True


def lock_problems(
    target: Distro, packages_fact: Mapping[str, Any] | None, branch: str
) -> list[str]:
    """What the driver deploy would still change to lock the driver (empty: locked): the
    branch lock, and the driver packages not held yet (``packages_to_hold``). Verify judges
    with this, apply acts on the same two answers."""
    problems = []
    if not branch_locked(target, packages_fact, branch):
        how = (
            target.pinning(branch)
            if target.branch_lock == "pinning-package"
            else f"module stream {target.stream(branch, 'open').rsplit('-', 1)[0]}-*"
        )
        problems.append(f"branch {branch} is not locked ({how} missing)")
    unheld = packages_to_hold(target, packages_fact)
    if unheld:
        problems.append(f"not held: {', '.join(unheld)}")
    return problems


# --------------------------------------------------------------------------------------------
# Plans


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


# --------------------------------------------------------------------------------------------
# The running kernel module


def loaded_module_version(
    module: Mapping[str, Any] | None, smi: Mapping[str, Any] | None
) -> str | None:
    """The version of the NVIDIA kernel module that runs: from /sys/module/nvidia/version or
    /proc/driver/nvidia/version, else the driver version nvidia-smi reports when it works
    (NVML only initialises when the user-space library and the loaded module agree)."""
    if module and module.get("version"):
        return str(module["version"])
    if smi and smi.get("state") == "ok" and smi.get("driver_version"):
        return str(smi["driver_version"])
    return None


def reboot_reasons(
    installed: InstalledDriver,
    module: Mapping[str, Any] | None,
    smi: Mapping[str, Any] | None,
) -> list[str]:
    """Why the module that should run is not the one that runs (empty: no reboot needed)."""
    reasons = []
    if (module or {}).get("nouveau_loaded"):
        reasons.append("the nouveau module is loaded")
    if not installed.driver_version:
        return reasons
    loaded = loaded_module_version(module, smi)
    state = (smi or {}).get("state")
    if state == "driver-mismatch":
        reasons.append(
            f"nvidia-smi reports a driver/library version mismatch "
            f"(installed {installed.driver_version})"
        )
    elif loaded is None:
        reasons.append(f"no NVIDIA kernel module is loaded (installed {installed.driver_version})")
    elif loaded != installed.driver_version:
        reasons.append(
            f"the loaded NVIDIA module is {loaded}, the installed driver is "
            f"{installed.driver_version}"
        )
    loaded_flavour = (module or {}).get("flavour")
    if loaded and loaded_flavour and installed.flavour and loaded_flavour != installed.flavour:
        reasons.append(
            f"the loaded module is the {loaded_flavour} flavour, {installed.flavour} is installed"
        )
    return reasons


def module_problem(
    installed: InstalledDriver, module: Mapping[str, Any] | None, smi: Mapping[str, Any] | None
) -> str | None:
    """After a reboot: what is still wrong with the running module (None: all right)."""
    reasons = reboot_reasons(installed, module, smi)
    if reasons:
        return "; ".join(reasons)
    if not installed.driver_version:
        return "no NVIDIA driver package is installed"
    state = (smi or {}).get("state")
    if state != "ok":
        detail = (smi or {}).get("error") or ""
        return f"nvidia-smi state is {state}" + (f": {detail}" if detail else "")
    return None
