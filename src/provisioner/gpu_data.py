"""The GPU stack's data tables: distributions (``data/distros.toml``), GPU models
(``data/gpu_devices.csv``), driver/CUDA compatibility (``data/nvidia_compat.toml``) and the
PyTorch wheel indexes (``data/torch_wheels.toml``), loaded once and typed. Part of
:mod:`provisioner.gpu_stack`, which re-exports every name here."""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

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
    auto_upgrades_dropin: str = ""  # apt.conf.d file that keeps unattended-upgrades off


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
    headers_vault: str = ""  # where an older minor release's kernel headers stay
    kernel_hold: tuple[str, ...] = ()  # nvidia_hold_kernel: {kernel}, {flavour} filled in

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

    def kernel_packages(self, kernel: str) -> list[str]:
        """The packages ``nvidia_hold_kernel`` holds for the running ``kernel``: its image and
        headers, and the metapackages of its flavour (``6.1.0-28-cloud-amd64``: cloud-amd64)
        that would pull a newer kernel in."""
        match = re.match(r"^\d+(?:\.\d+)*-\d+(?:\.\d+)*-(.+)$", kernel)
        flavour = match.group(1) if match else kernel.rsplit("-", 1)[-1]
        names = (name.format(kernel=kernel, flavour=flavour) for name in self.kernel_hold)
        return list(dict.fromkeys(names))

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
            auto_upgrades_dropin=spec.get("auto_upgrades_dropin", ""),
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
        headers_vault=spec.get("headers_vault", ""),
        kernel_hold=_tuple(spec.get("kernel_hold")),
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


# Versions as the package managers spell them


def package_version(version: str) -> str:
    """``3:580.105.08-1.el9`` -> ``580.105.08``: the upstream version, no epoch or revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def branch_of(version: str) -> str:
    """``580.105.08-1`` -> ``580``."""
    return package_version(version).split(".")[0]
