"""GpuHostDouble: a TEST DOUBLE of a GPU server, as the GPU stack's deploys see it through pyinfra.

The deploy tests run the real deploys (API mode, ``@fake`` hosts) against this double: it answers
every fact command the stack uses from its state (also inside a state probe: our own format,
``fact_cache.probe_command``, whose shell behaviour tests/unit/test_state_probe.py checks against
the real /bin/sh; the double answers each part as that fact alone), applies the changing
commands to that state
(package installs with apt/dnf rules, holds, files, services, a reboot that loads the installed
module) and refuses, loudly, any command it does not know. It is strict where the real thing is:
a driver installed before its branch pinning, a held package replaced without
``--allow-change-held-packages``, NVIDIA packages before the repository and an ``apt-get update``,
Debian's driver without ``contrib``, a key that fails its pin, Fabric Manager at another version
than the driver, a service started without its kernel module, a reboot without headers (DKMS had
nothing to build) all fail as they would on a host.

apt and dnf take the bound options of ``data/bounds.toml`` (timeouts, download retries, a lock
wait) and the package lists' refresh runs inside a bounded retry loop; neither changes what a
command installs, so the double reads each command without them (:func:`unbound`;
tests/unit/test_package_bounds.py checks that the deploys give them).

This module also holds the double's own tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shlex
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyinfra.connectors.fake import FakeConnector
from pyinfra.connectors.util import CommandOutput, OutputLine

from provisioner import fact_batch, fact_cache, gpu_stack, next_boot, nvidia_smi
from provisioner.facts.gpu import NvidiaPciDevices
from provisioner.facts.nvidia import (
    KERNEL_HOLD_RECORD,
    GpuStackPackages,
    NvidiaKernelModule,
    SecureBoot,
)
from provisioner.facts.system import BootId, OsInfo

NVIDIA_FINGERPRINT = "eb693b3035cd5710e231e123a4b469963bf863cc"
# The key file each repository serves, and its fingerprint. 3bf863cc: NVIDIA/cuda-repo-management
# issue #4 and #30 (sqv output); 8793F200 (debian13 only): cuda-repo-management #39 names the file,
# the full fingerprint as four independent third-party projects pin it (not checked against
# the live key from here: no network to developer.download.nvidia.com).
SERVED_FINGERPRINTS = {
    "3bf863cc.pub": NVIDIA_FINGERPRINT,
    "8793F200.pub": "02182e60104fcdc26eae1b8597a5d4cb8793f200",
    "D42D0685.pub": "",
}
EL_KEY_SHA256_STRIPPED = "d0664fbbdb8c32356d45de36c5984617217b2d0bef41b93ccecd326ba3b80c87"

# one part of a state probe, as fact_cache.probe_command writes it: "( CMD ); printf ... MARK"
# (the first after the "o=$( " that gathers the output)
PROBE_PART = re.compile(
    r"(?:o=\$\( )?\( (.*?) \); printf '\\n%s (\d+) %s\\n' '("
    + re.escape(fact_cache.PROBE_MARK)
    + r" [0-9a-f]+)' \"\$\?\";",
    re.S,
)

OS_RELEASE = {
    "debian11": ["ID=debian", 'VERSION_ID="11"', "VERSION_CODENAME=bullseye"],
    "debian12": ["ID=debian", 'VERSION_ID="12"', "VERSION_CODENAME=bookworm"],
    "debian13": ["ID=debian", 'VERSION_ID="13"', "VERSION_CODENAME=trixie"],
    "ubuntu2204": ["ID=ubuntu", 'VERSION_ID="22.04"', "VERSION_CODENAME=jammy", "ID_LIKE=debian"],
    "ubuntu2404": ["ID=ubuntu", 'VERSION_ID="24.04"', "VERSION_CODENAME=noble", "ID_LIKE=debian"],
    "rhel9": ['ID="rhel"', 'VERSION_ID="9.4"', 'ID_LIKE="fedora"'],
    "rocky9": ['ID="rocky"', 'VERSION_ID="9.4"', 'ID_LIKE="rhel centos fedora"'],
}
# what a stock install has of the kernel's packages (Debian: linux-image-<kernel> and
# linux-image-amd64; Ubuntu: its flavour's linux-image-<flavour> and linux-<flavour>; EL:
# kernel, kernel-core, kernel-modules, kernel-modules-core): typical names, not recorded from a
# real host (unverified)
KERNEL_PACKAGES = {
    "debian": ["linux-image-{kernel}", "linux-image-amd64"],
    # the double's apt kernel is 6.1.0-28-amd64 on Ubuntu too: its flavour is amd64
    "ubuntu": ["linux-image-{kernel}", "linux-image-amd64", "linux-amd64"],
    "rhel": ["kernel", "kernel-core", "kernel-modules", "kernel-modules-core"],
    "rocky": ["kernel", "kernel-core", "kernel-modules", "kernel-modules-core"],
}
KERNEL_PACKAGE_VERSION = {"apt": "6.1.123-1", "dnf": "5.14.0-427.13.1.el9_4"}
KERNELS = {
    "apt": "6.1.0-28-amd64",
    "dnf": "5.14.0-427.13.1.el9_4.x86_64",
}
# The NVIDIA user-space libraries per distribution, with their sources (real package names).
LIBRARIES = tomllib.loads(
    (Path(__file__).resolve().parents[1] / "doubles" / "nvidia_libraries.toml").read_text()
)["family"]


def library_family(distro: str) -> dict[str, Any]:
    """The nvidia_libraries.toml table of ``distro``: debian*, ubuntu* or dnf (the EL ones)."""
    for prefix in ("debian", "ubuntu"):
        if distro.startswith(prefix):
            return LIBRARIES[prefix]
    return LIBRARIES["dnf"]


# The interpreters each release ships (python3) or offers as packages: Debian 12 3.11, Debian 13
# 3.13, Ubuntu 22.04 3.10 (3.11 in universe), Ubuntu 24.04 3.12, EL9 3.9 with python3.11 and
# python3.12 in AppStream (distribution package indexes; EL9 from the RHEL 9 application
# streams lifecycle, not checked from here).
PYTHONS = {
    "debian11": {"python3": "3.9"},
    "debian12": {"python3": "3.11"},
    "debian13": {"python3": "3.13"},
    "ubuntu2204": {"python3": "3.10", "python3.11": "3.11"},
    "ubuntu2404": {"python3": "3.12"},
    "rhel9": {"python3": "3.9", "python3.11": "3.11", "python3.12": "3.12"},
    "rocky9": {"python3": "3.9", "python3.11": "3.11", "python3.12": "3.12"},
}
# The oldest Python each torch minor has wheels for, on PyPI (pip index versions torch
# --python-version X, 2026-12-06: 3.9 -> 2.8.0 newest, 3.10 -> 2.14.1, 3.11 -> 2.15.0).
TORCH_PYTHON_FLOOR = (("2.15", (3, 11)), ("2.9", (3, 10)))
GPU_CATALOGUE = {  # device id -> (nvidia-smi name, memory MiB, compute capability)
    "2684": ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
    "20b2": ("NVIDIA A100-SXM4-80GB", 81920, "8.0"),
    "1eb8": ("Tesla T4", 15360, "7.5"),
    "2330": ("NVIDIA H100 80GB HBM3", 81559, "9.0"),
    "15f8": ("Tesla P100-PCIE-16GB", 16280, "6.0"),
    "2901": ("NVIDIA B200", 183359, "10.0"),
    "1db4": ("Tesla V100-PCIE-16GB", 16160, "7.0"),
}
DEFAULT_DIRS = {
    "/etc/apt/apt.conf.d",
    "/etc/apt/sources.list.d",
    "/etc/apt/keyrings",
    "/etc/modprobe.d",
    "/etc/profile.d",
    "/etc/yum.repos.d",
    "/etc/pki/rpm-gpg",
    "/etc/apt/preferences.d",
    "/etc/systemd/system",
    "/etc/dkms",
    "/opt",
    "/var/lib",
}


# The module file Debian's own driver packages install (nvidia-kernel-dkms, nvidia-open-kernel-dkms
# 535.261.03-1: dkms.conf DEST_MODULE_NAME[0]="$PACKAGE_NAME"); NVIDIA's keep nvidia.ko.
# tests/conformance/gpu_stack/records.toml, debian.module_name.
DEBIAN_MODULE_NAMES = {"proprietary": "nvidia-current", "open": "nvidia-current-open"}


class DoubleError(AssertionError):
    pass


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "packages"
RELEASES = {"debian12": "bookworm", "debian13": "trixie"}


def recorded_packages(release: str) -> dict[str, dict[str, str]]:
    """tests/fixtures/packages/debian-<release>.txt: the recorded Debian archive stanzas."""
    text = (FIXTURES / f"debian-{release}.txt").read_text()
    out: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != "#"
        )
        if "Package" in fields:
            out.setdefault(fields["Package"], fields)
    return out


def debian_archive(distro: str) -> dict[str, dict[str, Any]]:
    """The double's Debian archive, from the recorded metadata: versions, the dependencies it
    has records of (first alternative), and the component each package comes from."""
    recorded = recorded_packages(RELEASES[distro])
    cat: dict[str, dict[str, Any]] = {}
    for name, fields in recorded.items():
        deps = []
        for dep in (fields.get("Depends") or "").split(", "):
            first = dep.split(" | ")[0].split(" ")[0]
            if first in recorded and first != name:
                deps.append(first)
        component = fields["Filename"].split("/")[1]
        cat[name] = {
            "versions": [fields["Version"]],
            "deps": deps,
            "nvidia": False,
            "component": component,
            "exact": True,
        }
    return cat


@dataclass
class ServedKey:
    """A signing key the double's "network" serves: its fingerprint and sha256 values."""

    fingerprint: str
    sha256: str
    sha256_stripped: str


_RETRIED = re.compile(r"until timeout -k \d+ \d+ sh -c ('(?:[^']|'\"'\"')*') >\"\$log\" 2>&1; do")


def unbound(command: str) -> str:
    """``command`` without what :mod:`provisioner.bounds` adds: the retry loop of
    :func:`~provisioner.bounds.retried` (the command it runs) and each family's bound options."""
    from provisioner import bounds

    loop = _RETRIED.search(command)
    if loop:
        command = shlex.split(loop.group(1))[0]
    for spec in bounds.bounds()["packages"]["options"].values():
        for options in ([*spec["options"], *spec.get("update_options", [])], spec["options"]):
            joined = " ".join(options)
            command = command.replace(f"{spec['after']} {joined} ", f"{spec['after']} ")
    return command


@dataclass
class GpuHostDouble:
    """TEST DOUBLE of one GPU server (see the module docstring)."""

    distro: str = "debian12"
    gpus: tuple[str, ...] = ("2684",)
    nvswitch: str | None = None  # NVSwitch PCI device id, e.g. "1af1"
    driver_versions: tuple[str, ...] = ("580.105.08", "580.126.09", "590.44.01")
    toolkits: tuple[str, ...] = ("13.0", "12.8")
    arch: str = "x86_64"
    # "nvidia": NVIDIA's CUDA repository (the stand-in catalogue below); "debian": the Debian
    # archive's own NVIDIA packages as RECORDED in tests/fixtures/packages/debian-<release>.txt
    archive: str = "nvidia"
    os_release: str | None = None  # another /etc/os-release than the distro's (OS_RELEASE key)
    sysfs: bool = True  # False: like a container/the lab, no /sys/module/nvidia
    module_loads: bool = True  # False: the module never loads (e.g. rejected by Secure Boot)
    secure_boot: bool = False  # UEFI Secure Boot enforcing: an unsigned DKMS module is rejected
    mok_enrolled: dict[str, bool] = field(default_factory=dict)  # cert path -> enrolled
    repo_readable: bool = True  # False: the repository index cannot be fetched
    headers_offered: bool = True  # False: an older minor's kernel-devel left the repositories
    initramfs_tool: bool = True
    nouveau_loaded: bool = False
    # the kernel the host boots next (newest /boot/vmlinuz-*), None: the running one; a kernel
    # update installed without its headers leaves DKMS nothing to build for it
    next_kernel: str | None = None
    next_kernel_headers: bool = False
    modules_built: set[str] = field(default_factory=set)  # kernels DKMS built a module for
    # the kernel's own packages (image, metapackages): name -> {"version", "held"}; the
    # headers are in ``packages`` (the driver deploy installs them)
    kernel_packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    served_keys: dict[str, ServedKey] = field(default_factory=dict)
    # state
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    locks: dict[str, str] = field(default_factory=dict)
    stream: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: set(DEFAULT_DIRS))
    module: str | None = None
    module_flavour: str | None = None
    services_enabled: set[str] = field(default_factory=set)
    services_running: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=lambda: {"root"})
    owners: dict[str, str] = field(default_factory=dict)  # path -> user (default root)
    torch: dict[str, str] = field(default_factory=dict)  # venv -> version
    lists_fresh: bool = False
    boots: int = 0
    uptime: int = 5000
    changes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.target = gpu_stack.distro(self.distro)
        self.family = self.target.family.name
        self.kernel = KERNELS[self.family]
        if not self.kernel_packages:
            names = KERNEL_PACKAGES[self.distro.rstrip("0123456789")]
            self.kernel_packages = {
                n.format(kernel=self.kernel): {"version": KERNEL_PACKAGE_VERSION[self.family]}
                for n in names
            }
            for package in self.kernel_packages.values():
                package["held"] = False
        key_url_file = self.target.key_file
        default_key = ServedKey(SERVED_FINGERPRINTS[key_url_file], "0" * 64, EL_KEY_SHA256_STRIPPED)
        for arch in ("x86_64", "sbsa"):
            url = (
                "https://developer.download.nvidia.com/compute/cuda/repos/"
                f"{self.target.repo_path}/{arch}/{key_url_file}"
            )
            self.served_keys.setdefault(url, default_key)
        if self.family == "apt":
            self.files.setdefault(
                "/etc/apt/sources.list.d/debian.sources",
                {
                    "content": (
                        "Types: deb\nURIs: http://deb.debian.org/debian\n"
                        "Suites: bookworm bookworm-updates\nComponents: main\n"
                        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                    ),
                    "sha256": None,
                    "mode": 0o644,
                },
            )

    # --- the "repository" ------------------------------------------------------------------

    def pkg_version(self, upstream: str) -> str:
        return f"3:{upstream}-1.el9" if self.family == "dnf" else f"{upstream}-1"

    def catalogue(self) -> dict[str, dict[str, Any]]:
        if self.archive == "debian":
            return {**debian_archive(self.os_release or self.distro), **self._base_catalogue()}
        return self._nvidia_catalogue()

    def _base_catalogue(self) -> dict[str, dict[str, Any]]:
        """What the distribution's archive carries besides the driver: helpers, headers."""
        cat = {
            name: {"versions": ["1.0-1"], "deps": [], "nvidia": False}
            for name in ("gpg", "gnupg2", "python3-venv", "python3-dnf-plugin-versionlock",
                         "epel-release", *(p for p in PYTHONS[self.distro] if p != "python3"),
                         "python3.11-venv")
        }  # fmt: skip
        if self.family == "apt":
            cat[f"linux-headers-{self.kernel}"] = {
                "versions": ["6.1.0-1"],
                "deps": [],
                "nvidia": False,
            }
        else:
            cat["kernel-devel"] = {
                "versions": [self.kernel.rsplit(".", 1)[0]],
                "deps": [],
                "nvidia": False,
            }
        return cat

    def _add_libraries(self, cat: dict[str, dict[str, Any]]) -> None:
        """The NVIDIA libraries (nvidia_libraries.toml), one set per driver branch; each is
        pulled in, at its own version, by the package named in ``depends_of``."""
        libs = library_family(self.distro)
        for lib in libs["libraries"]:
            per_branch = "{branch}" in lib
            for branch in self.branches() if per_branch else [None]:
                name = lib.format(branch=branch)
                cat[name] = {
                    "versions": [
                        self.pkg_version(v)
                        for v in self.driver_versions
                        if branch is None or v.split(".")[0] == branch
                    ],
                    "deps": [],
                    "replaces": sorted({lib.format(branch=b) for b in self.branches()} - {name}),
                }
        for lib, parent in libs["depends_of"].items():
            if "{branch}" not in parent:  # resolved to the installed version's branch
                cat[parent]["deps"].append(lib)
                continue
            for branch in self.branches():
                cat[parent.format(branch=branch)]["deps"].append(lib.format(branch=branch))

    def branches(self) -> list[str]:
        return sorted({v.split(".")[0] for v in self.driver_versions})

    def nvml_version(self) -> str | None:
        """The NVML library's version: the ``nvml`` package when the world has one, else the
        user-space driver package's."""
        pattern = library_family(self.distro)["nvml"].format(branch="*")
        for name, p in self.packages.items():
            if pattern and fnmatch.fnmatchcase(name, pattern):
                return gpu_stack.package_version(p["version"])
        userspace = self.packages.get("nvidia-driver")
        return gpu_stack.package_version(userspace["version"]) if userspace else None

    def unattended_upgrade(self, upstream: str) -> list[str]:
        """A newer driver ``upstream`` is published and unattended-upgrades runs: every installed
        NVIDIA package that is not held (apt-mark hold / versionlock) and that the branch lock
        allows moves to it, unless (exact dependencies) something that needs it stays behind.
        Returns the packages that moved."""
        self.driver_versions = (*self.driver_versions, upstream)
        cat = self.catalogue()
        new = self.pkg_version(upstream)
        moving = {
            name
            for name, p in self.packages.items()
            if cat.get(name, {}).get("nvidia")
            and new in cat[name]["versions"]
            and p["version"] != new
            and not p["held"]
            and name not in self.locks
            and self.branch_allowed(name, new)
        }
        if library_family(self.distro)["exact_depends"]:
            stuck = True
            while stuck:
                stuck = {
                    dep.format(branch=gpu_stack.branch_of(self.packages[name]["version"]))
                    for name, meta in cat.items()
                    if name in self.packages and name not in moving
                    for dep in meta["deps"]
                } & moving
                moving -= stuck
        for name in moving:
            self.packages[name]["version"] = new
        return sorted(moving)

    def _nvidia_catalogue(self) -> dict[str, dict[str, Any]]:
        """Every package the double's repositories carry: versions, dependencies, and
        whether it comes from NVIDIA's repository."""
        t = self.target
        driver = [self.pkg_version(v) for v in self.driver_versions]
        cat: dict[str, dict[str, Any]] = {}
        for flavour in gpu_stack.FLAVOURS:
            kmod = t.kernel_module[flavour][0]
            cat[t.driver_meta[flavour]] = {"versions": driver, "deps": [kmod, "nvidia-driver"]}
            cat[kmod] = {"versions": driver, "deps": [], "flavour": flavour}
        cat["nvidia-driver"] = {"versions": driver, "deps": []}
        for branch in sorted({v.split(".")[0] for v in self.driver_versions}):
            # Fabric Manager: named by branch, released without the kmod's .el9 tag
            # (gpu-driver-container rhel9/precompiled/Dockerfile, ubuntu22.04/install.sh)
            fm = cat.setdefault(
                t.fabricmanager_package(branch), {"versions": [], "deps": [], "fabricmanager": True}
            )
            fm["versions"] += [f"{v}-1" for v in self.driver_versions if v.split(".")[0] == branch]
        for branch in {v.split(".")[0] for v in self.driver_versions}:
            if t.pinning_package:
                cat[t.pinning(branch)] = {"versions": [self.pkg_version(f"{branch}.0")], "deps": []}
        for series in self.toolkits:
            name = t.toolkit_package.format(major=series.split(".")[0], minor=series.split(".")[1])
            cat[name] = {"versions": [self.pkg_version(f"{series}.1")], "deps": []}
        self._add_libraries(cat)
        for entry in cat.values():
            entry["nvidia"] = True
        return {**cat, **self._base_catalogue()}

    def branch_allowed(self, name: str, version: str) -> bool:
        """The branch lock: pinning package (apt) or module stream (dnf)."""
        meta = self.catalogue()[name]
        if "flavour" not in meta and name not in self.target.driver_meta.values():
            if name != "nvidia-driver" and not meta.get("fabricmanager"):
                return True
        branch = gpu_stack.branch_of(version)
        if self.family == "dnf":
            if not self.stream:
                return False
            stream_branch, _, kind = self.stream.partition("-")
            flavour = meta.get("flavour")
            if name == self.target.driver_meta["open"]:
                flavour = "open"
            elif name == self.target.driver_meta["proprietary"]:
                flavour = "proprietary"
            if flavour and self.target.stream_suffix[flavour] != kind:
                return False
            return stream_branch == branch
        pins = [n for n in self.packages if n.startswith("nvidia-driver-pinning-")]
        return not pins or any(n.endswith(branch) for n in pins)  # unpinned: any branch

    # --- package manager -------------------------------------------------------------------

    def _resolve(self, spec: str) -> tuple[str, str | None]:
        if self.family == "apt":
            name, _, version = spec.partition("=")
            if version.endswith("*"):  # apt's version glob: the newest match
                versions = self.catalogue().get(name, {}).get("versions", [])
                matching = [v for v in versions if fnmatch.fnmatchcase(v, version)]
                if not matching:
                    raise DoubleError(f"E: Version '{version}' for '{name}' was not found")
                return name, matching[-1]
            return name, version or None
        if spec in self.catalogue():
            return spec, None
        for name, meta in self.catalogue().items():
            for version in meta["versions"]:
                plain = version.split(":", 1)[-1]
                if spec in (f"{name}-{version}", f"{name}-{plain}", f"{name}-{plain}.x86_64"):
                    return name, version
                if spec == f"{name}-{gpu_stack.package_version(version)}":
                    return name, version
        raise DoubleError(f"no package matches {spec!r}")

    def install(self, specs: list[str], replace_held: bool) -> None:
        todo = self._resolve_all(specs)
        for name, version in todo:
            self._check_fabricmanager(name, version, todo)
            self._remove_other_flavour(name, todo, replace_held)
        for name, version in todo:
            self._install_one(name, version, replace_held)

    def _pick_version(self, name: str, version: str | None) -> str:
        meta = self.catalogue()[name]
        if version is None:
            candidates = [v for v in meta["versions"] if self.branch_allowed(name, v)]
            if not candidates:
                raise DoubleError(f"{name}: no version allowed by the branch lock")
            current = self.packages.get(name, {}).get("version")
            return current if current in candidates else candidates[-1]
        if version not in meta["versions"]:
            raise DoubleError(f"{name}: version {version} not in the repository")
        if not self.branch_allowed(name, version):
            raise DoubleError(f"{name}={version} is outside the branch lock")
        return version

    def _resolve_all(self, specs: list[str]) -> list[tuple[str, str]]:
        """The packages an install brings, with their versions and dependencies."""
        cat = self.catalogue()
        todo: list[tuple[str, str]] = []
        pending = [self._resolve(spec) for spec in specs]
        seen = set()
        while pending:
            name, version = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            if name not in cat:
                raise DoubleError(f"E: Unable to locate package {name}")
            if cat[name]["nvidia"]:
                self._need_repository()
            if cat[name].get("component"):
                self._need_component(cat[name]["component"])
            version = self._pick_version(name, version)
            todo.append((name, version))
            deps = [d.format(branch=gpu_stack.branch_of(version)) for d in cat[name]["deps"]]
            pending += [(dep, None if cat[dep].get("exact") else version) for dep in deps]
        return todo

    def _check_fabricmanager(self, name: str, version: str, todo: list[tuple[str, str]]) -> None:
        """Fabric Manager depends on the driver at its own upstream version."""
        if not self.catalogue()[name].get("fabricmanager"):
            return
        upstream = gpu_stack.package_version(version)
        driver = self.packages.get("nvidia-driver", {}).get("version")
        versions = [v for n, v in todo if n == "nvidia-driver"] + ([driver] if driver else [])
        if not any(gpu_stack.package_version(v) == upstream for v in versions):
            raise DoubleError(f"{name} {version} depends on nvidia-driver (= {upstream})")

    def _remove_other_flavour(
        self, name: str, todo: list[tuple[str, str]], replace_held: bool
    ) -> None:
        for old in self.catalogue()[name].get("replaces", ()):  # a library of another branch
            if old in self.packages:
                self._remove_for_conflict(old, replace_held)
        flavour = self.catalogue()[name].get("flavour")
        if not flavour:
            return
        other = self.table.kernel_module["proprietary" if flavour == "open" else "open"][0]
        if other not in self.packages:
            return
        self._remove_for_conflict(other, replace_held)
        for meta_name in self.target.driver_meta.values():
            if meta_name in self.packages and meta_name not in dict(todo):
                self._remove_for_conflict(meta_name, replace_held)

    def _install_one(self, name: str, version: str, replace_held: bool) -> None:
        current = self.packages.get(name)
        if current and current["version"] == version:
            return
        if current and (current["held"] and not replace_held or name in self.locks):
            raise DoubleError(f"E: Held packages were changed: {name}")
        driver_names = ("nvidia-driver", *self.target.driver_meta.values())
        if self.archive == "nvidia" and self.target.pinning_package and name in driver_names:
            if not any(n.startswith("nvidia-driver-pinning-") for n in self.packages):
                raise DoubleError(f"{name} installed before nvidia-driver-pinning")
        self.packages[name] = {"version": version, "held": bool(current and current["held"])}
        if name == "nvidia-driver":
            self.dirs.add("/usr/lib/systemd")

    def _remove_for_conflict(self, name: str, replace_held: bool) -> None:
        if (self.packages[name]["held"] and not replace_held) or name in self.locks:
            raise DoubleError(f"E: Held packages were changed: {name} (removed)")
        del self.packages[name]

    def _need_repository(self) -> None:
        if self.family == "apt":
            if not any(
                p.startswith("/etc/apt/sources.list.d/nvidia-cuda")
                or (
                    p.startswith("/etc/apt/sources.list")
                    and f"/{self.target.repo_path}/" in f["content"]
                )
                for p, f in self.files.items()
            ):
                raise DoubleError("E: Unable to locate package: no NVIDIA source configured")
            if not self.lists_fresh:
                raise DoubleError(
                    "E: NVIDIA package lists missing: no apt-get update since the source"
                )
            if self.target.extra_components and not any(
                "contrib" in f["content"] for f in self.files.values()
            ):
                raise DoubleError("nvidia-kernel-dkms depends on a package from contrib")
        elif "/etc/yum.repos.d/nvidia-cuda.repo" not in self.files:
            raise DoubleError("Error: Unable to find a match (no NVIDIA repository)")

    def _check_signed_by(self) -> None:
        """apt refuses two sources for one URI with different Signed-By (the error a host
        with cuda-keyring gets from a second NVIDIA source)."""
        seen: dict[str, str] = {}
        for path, f in sorted(self.files.items()):
            if not path.startswith("/etc/apt/sources.list"):
                continue
            text = f["content"]
            pairs = re.findall(r"^deb \[signed-by=(\S+)\] (\S+)", text, re.M)
            uris = re.findall(r"^URIs: (.+)$", text, re.M)
            signed = re.findall(r"^Signed-By: (.+)$", text, re.M)
            pairs += [
                (by, uri)
                for uri_line, by in zip(uris, signed, strict=False)
                for uri in uri_line.split()
            ]
            for by, uri in pairs:
                uri = uri.rstrip("/") + "/"
                if seen.setdefault(uri, by) != by:
                    raise DoubleError(
                        f"E: Conflicting values set for option Signed-By regarding source {uri} "
                        f"/: {seen[uri]} != {by}"
                    )

    def _need_component(self, component: str) -> None:
        """A Debian package from contrib/non-free needs that component enabled, and fresh lists."""
        if component == "main":
            return
        enabled = any(
            component in f["content"].split()
            for p, f in self.files.items()
            if p.startswith("/etc/apt/sources.list")
        )
        if not enabled or not self.lists_fresh:
            raise DoubleError(f"E: Unable to locate package (component {component} not enabled)")

    # --- facts -----------------------------------------------------------------------------

    @property
    def table(self) -> gpu_stack.Distro:
        """The distro table of the driver packages this double's archive carries."""
        if self.archive == "debian":
            return gpu_stack.distro(f"{self.distro}{gpu_stack.DISTRO_SOURCE_SUFFIX}")
        return self.target

    def installed_driver(self) -> tuple[str | None, str | None]:
        for flavour in gpu_stack.FLAVOURS:
            kmod = self.table.kernel_module[flavour][0]
            if kmod in self.packages:
                return gpu_stack.package_version(self.packages[kmod]["version"]), flavour
        return None, None

    def fact_packages(self) -> list[str]:
        out = [f"##manager {'dpkg' if self.family == 'apt' else 'rpm'}"]
        for name, p in sorted(self.packages.items()):
            arch = "amd64" if self.family == "apt" else "x86_64"
            status = ("hi " if p["held"] else "ii ") if self.family == "apt" else "ii "
            out.append(f"pkg|{status}|{name}|{p['version']}|{arch}")
        for name, version in sorted(self.locks.items()):
            out.append(f"lock|{name}-{version}.*")
        if self.stream:
            out += [
                "module|[nvidia-driver]",
                f"module|stream={self.stream}",
                "module|state=enabled",
            ]
        return out

    def fact_smi(self, table: bool = True) -> list[str]:
        if "nvidia-driver" not in self.packages:
            return [nvidia_smi.MARK_ABSENT]
        version = self.nvml_version()
        if self.module is None:
            return [
                f"{nvidia_smi.MARK_QUERY}9",
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.",
            ]
        if self.module != version:
            return [
                f"{nvidia_smi.MARK_QUERY}18",
                "Failed to initialize NVML: Driver/library version mismatch",
                f"NVML library version: {version}",
            ]
        rows = []
        for i, device in enumerate(self.gpus):
            name, mem, cc = GPU_CATALOGUE[device]
            bus = f"00000000:{i + 1:02x}:00.0"
            rows.append(f"{i}, {name}, GPU-{i:08d}, {mem}, {cc}, {bus}, [N/A], {version}")
        if not table:
            return [f"{nvidia_smi.MARK_QUERY}0", *rows]
        return [
            f"{nvidia_smi.MARK_QUERY}0",
            *rows,
            f"{nvidia_smi.MARK_TABLE}0",
            f"| NVIDIA-SMI {version}   Driver Version: {version}   CUDA Version: 13.0 |",
        ]

    def fact_module(self) -> list[str]:
        out = []
        if self.module and self.sysfs:
            kind = "Open " if self.module_flavour == "open" else ""
            out.append(f"sysfs|{self.module}")
            out.append(
                f"procfs|NVRM version: NVIDIA UNIX {kind}Kernel Module for x86_64  {self.module}  "
                "Release Build  (dvs-builder@U22)  Wed Oct 29 2025"
                if kind
                else f"procfs|NVRM version: NVIDIA UNIX x86_64 Kernel Module  {self.module}  "
                "Wed Oct 29 2025"
            )
        if self.nouveau_loaded:
            out.append("nouveau|loaded")
        return out

    def file_sha256(self, path: str) -> str:
        f = self.files[path]
        return f["sha256"] or hashlib.sha256(f["content"].encode()).hexdigest()

    def stat(self, path: str) -> list[str]:
        if path in self.files:
            mode = self.files[path]["mode"]
            perms = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
            size = len(self.files[path]["content"])
            return [
                f"user=root group=root mode=-{perms} atime=0 mtime=0 ctime=0 size={size} '{path}'"
            ]
        if path in self.dirs:
            owner = self.owners.get(path, "root")
            return [
                f"user={owner} group={owner} mode=drwxr-xr-x atime=0 mtime=0 ctime=0 "
                f"size=4096 '{path}'"
            ]
        return []

    def sources(self) -> list[str]:
        out = []
        for path, f in sorted(self.files.items()):
            if path.startswith("/etc/apt/sources.list.d/") and path.endswith(".sources"):
                out.append(f"##PYINFRA_FILE {path}")
                out += f["content"].splitlines()
        return out

    # --- commands --------------------------------------------------------------------------

    def run(self, command: str) -> tuple[bool, list[str]]:
        if fact_cache.PROBE_MARK in command:
            return True, self._probe(command)
        command = unbound(command)
        try:
            out = self._fact(command)
            if out is not None:
                return True, out
            self.changes.append(command)
            self._change(command)
            return True, []
        except DoubleError as error:
            return False, [f"DOUBLE: {error}"]

    def _probe(self, command: str) -> list[str]:
        """A state probe (``fact_cache.probe_command``): each part answered as that fact alone
        would be, followed by the newline and the status line the shell prints: an empty line
        after every part, one that printed nothing or failed too (printf's leading newline;
        tests/conformance/gpu_stack/records.toml, sh.probe_output)."""
        out: list[str] = []
        for part, index, mark in PROBE_PART.findall(command):
            try:
                lines = self._fact(part)
            except DoubleError:
                lines = None
            out += [*(lines or []), "", f"{mark} {index} {0 if lines is not None else 1}"]
        return out

    def _sha1(self, path: str) -> list[str]:
        if path in self.files:
            return [f"{hashlib.sha1(self.files[path]['content'].encode()).hexdigest()}  {path}"]
        return []

    @staticmethod
    def _passwd_line(user: str) -> str:
        return f"{user}:x:{999 if user != 'root' else 0}:0::/home/{user}:/bin/sh|{user}|{user}||"

    def _fact(self, command: str) -> list[str] | None:  # noqa: C901 - one branch per fact
        stack = self._stack_fact(command)
        if stack is not None:
            return stack
        if command == OsInfo().command():
            return [*OS_RELEASE[self.os_release or self.distro], f"##arch {self.arch}"]
        if command == "uname -r":
            return [self.kernel]
        if command == "uname -s":
            return ["Linux"]
        if command.startswith('if [ -n "$TMPDIR" ]'):
            return ["/tmp"]
        if command == "cut -d. -f1 /proc/uptime":
            return [str(self.uptime)]
        if command.startswith("lock=") and "provisioner.lock" in command:  # host_lock: free
            return ["held"]
        if command == BootId().command():
            return [f"00000000-0000-0000-0000-{self.boots:012d}"]
        if command == NvidiaPciDevices().command():
            lines = [
                f"0000:{i + 1:02x}:00.0 0302: 10de:{d} (rev a1)" for i, d in enumerate(self.gpus)
            ]
            if self.nvswitch:
                lines.append(f"0000:80:00.0 0680: 10de:{self.nvswitch} (rev a1)")
            return lines
        if command == nvidia_smi.fact_script(cuda_version=True):
            return self.fact_smi()
        if command == nvidia_smi.fact_script(cuda_version=False):
            return self.fact_smi(table=False)
        if command == GpuStackPackages().command():
            return self.fact_packages()
        if command == NvidiaKernelModule().command():
            return self.fact_module()
        match = re.match(
            r"if command -v gpg >/dev/null 2>&1; then echo 'gpg\|yes'; fi; if \[ -f (\S+) \]",
            command,
        )
        if match:
            path = shlex.split(match.group(1))[0]
            out = ["gpg|yes"] if ("gpg" in self.packages or "gnupg2" in self.packages) else []
            if path in self.files:
                out.append(f"sha256|{self.file_sha256(path)}")
                if out[0] == "gpg|yes" and self.files[path].get("fingerprint"):
                    out += [
                        "gpg|pub:-:4096:1:A4B469963BF863CC:0:::-:::scESC::::::23::0:",
                        f"gpg|fpr:::::::::{self.files[path]['fingerprint'].upper()}:",
                    ]
            return out
        match = re.match(
            r"(?:command -v sha1sum \S+ 2>&1 \|\| exit 1; )?set --; for p in (.*?); do if test -e",
            command,
        )
        if match:  # fact_batch: one stat, or one sha1sum, of many paths
            paths = shlex.split(match.group(1))
            if "sha1sum" in command:
                return [line for path in paths for line in self._sha1(path)]
            sep = fact_batch.SEPARATOR
            return [f"{path}{sep}{line}" for path in paths for line in self.stat(path)]
        match = re.match(r"! \(test -e (\S+) \|\| test -L \S+ \) \|\|", command)
        if match:
            return self.stat(shlex.split(match.group(1))[0])
        match = re.match(r"test -e (\S+) && \( sha1sum ", command)
        if match:
            return self._sha1(shlex.split(match.group(1))[0])
        match = re.match(r"test -e (\S+) && \( (md5sum|sha256sum) ", command)
        if match:
            path = shlex.split(match.group(1))[0]
            if path in self.files:
                data = self.files[path]["content"].encode()
                digest = hashlib.md5(data) if match.group(2) == "md5sum" else hashlib.sha256(data)
                return [f"{digest.hexdigest()}  {path}"]
            return []
        match = re.match(r"command -v (\S+) \|\| true$", command)
        if match:
            tool = match.group(1)
            known = {
                "useradd": True,
                "update-initramfs": self.initramfs_tool,
                "dracut": self.initramfs_tool,
            }
            if tool not in known:
                raise DoubleError(f"unexpected Which fact: {tool}")
            return [f"/usr/sbin/{tool}"] if known[tool] else []
        if "##PYINFRA_FILE" in command and "sources.list" in command:
            return self.sources()
        if command == "cat /etc/group":
            return [f"{u}:x:{999 if u != 'root' else 0}:" for u in sorted(self.users)]
        if command.startswith("for i in `cat /etc/passwd"):
            return [self._passwd_line(u) for u in sorted(self.users)]
        match = re.match(r"e=; while IFS= read -r l; do case \"\$l\" in (\S+):\*\)", command)
        if match:  # UserAccount: one user's passwd line and what `id USER` prints, or nothing
            user = match[1].strip("'")
            if user not in self.users:
                return []
            uid = 999 if user != "root" else 0
            ids = f"uid={uid}({user}) gid={uid}({user}) groups={uid}({user})"
            return [f"{user}:x:{uid}:0::/home/{user}:/bin/sh|{ids}"]
        match = re.search(
            r"systemctl show --all --property Id ((?:--property (?:SubState|UnitFileState) )+)"
            r"(\S+)",
            command,
        )
        if match:  # one property, or both (fact_batch.widened), in the order asked
            unit = match.group(2).strip("')")
            lines = [f"Id={unit}"]
            for prop in match.group(1).split()[1::2]:
                if prop == "SubState":
                    lines.append(
                        f"SubState={'running' if unit in self.services_running else 'dead'}"
                    )
                else:
                    state = "enabled" if unit in self.services_enabled else "disabled"
                    lines.append(f"UnitFileState={state}")
            return lines
        # TorchVersion: the venv's torch METADATA, else the interpreter's importlib.metadata
        match = re.match(r"p=(\S+); v=\$\(sed -n '/\^Version: .*importlib\.metadata", command)
        if match:
            venv = shlex.split(match.group(1))[0].rsplit("/bin/python", 1)[0]
            return [self.torch[venv]] if venv in self.torch else []
        return None

    def _stack_fact(self, command: str) -> list[str] | None:
        """Secure Boot, MOK, the repository's index, the apt sources naming a URI."""
        if command == next_boot.FACT_SCRIPT:
            return self.fact_next_boot()
        if command.startswith("set -- ") and KERNEL_HOLD_RECORD in command:
            return self.fact_kernel_packages(command)
        if command == SecureBoot().command():
            # mokutil --sb-state's two answers (mokutil src/mokutil.c)
            return [f"mokutil|SecureBoot {'enabled' if self.secure_boot else 'disabled'}"]
        match = re.search(r"mokutil --test-key (\S+) 2>&1", command)
        if match:
            cert = shlex.split(match.group(1))[0]
            if cert not in self.mok_enrolled:
                return []
            state = "is already enrolled" if self.mok_enrolled[cert] else "is not enrolled"
            return ["exists|yes", f"mok|{cert} {state}"]
        match = re.match(
            r"if command -v dnf >/dev/null 2>&1; then if dnf -q list --available (\S+)", command
        )
        if match:
            name = shlex.split(match.group(1))[0]
            return ["yes" if self.headers_offered or name in self.packages else "no"]
        if command.startswith("d=$(mktemp -d); if ") and "Packages.gz" in command:
            if not self.repo_readable:
                return ["error|E: Failed to fetch Packages.gz  404  Not Found"]
            package = re.search(r"awk -v p=(\S+)", command).group(1)  # type: ignore[union-attr]
            versions = self.catalogue().get(package, {}).get("versions", [])
            return [f"version|{v}" for v in versions]
        match = re.match(r'grep -lsE -- "\(\^\|\[\[:space:\]\]\)(\S+?)/\?', command)
        if match:
            url = match.group(1).replace("\\", "")
            return [
                p
                for p, f in sorted(self.files.items())
                if p.startswith("/etc/apt/sources.list") and url in f.get("content", "")
            ]
        return None

    def _change(self, command: str) -> None:  # noqa: C901 - one branch per command
        t = self.target
        argv = shlex.split(command) if not command.startswith("set -e;") else []
        install = list(t.family.install)
        if argv[: len(install)] == install:
            rest = argv[len(install) :]
            replace = any(a in t.family.replace_held for a in rest)
            self.install([a for a in rest if not a.startswith("-")], replace)
        elif argv == ["apt-get", "update"]:
            self._check_signed_by()
            self.lists_fresh = True
        elif argv[: len(t.family.remove)] == list(t.family.remove):
            for name in argv[len(t.family.remove) :]:
                self.packages.pop(name, None)
        elif argv[:2] in (["apt-mark", "hold"], ["apt-mark", "unhold"]):
            for name in argv[2:]:
                (self.kernel_packages.get(name) or self.packages[name])["held"] = argv[1] == "hold"
        elif argv[:3] == ["dnf", "versionlock", "add"]:
            for name in argv[3:]:
                package = self.kernel_packages.get(name) or self.packages[name]
                self.locks[name] = package["version"]
                package["held"] = True
        elif argv[:3] == ["dnf", "versionlock", "delete"]:
            for name in argv[3:]:
                self.locks.pop(name)
                if name in self.kernel_packages:
                    self.kernel_packages[name]["held"] = False
        elif argv[:4] == ["dnf", "module", "enable", "-y"]:
            module, _, stream = argv[4].partition(":")
            if self.stream and self.stream != stream:
                raise DoubleError("Error: enabling a different stream requires a module reset")
            self.stream = stream
        elif argv[:4] == ["dnf", "module", "reset", "-y"]:
            self.stream = None
        elif command.startswith("set -e;"):
            self._fetch_key(command)
        elif argv[:2] == ["mkdir", "-p"]:
            self.dirs.add(argv[2])
        elif argv[:1] == ["chmod"]:
            self.files[argv[2]]["mode"] = int(argv[1], 8)
        elif argv[:2] == ["rm", "-f"]:
            self.files.pop(argv[2], None)
        elif command == "( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &":
            self.reboot()
        elif argv == ["systemctl", "daemon-reload"]:
            pass
        elif argv[:1] == ["systemctl"] and len(argv) == 3:
            self._systemctl(argv[1], argv[2])
        elif argv in (["update-initramfs", "-u"], ["dracut", "-f"]):
            pass
        elif argv[:1] == ["useradd"]:
            self.users.add(argv[-1])
        elif argv[:1] == ["chown"]:
            path, owner = argv[-1], argv[-2].rstrip(":")
            if owner not in self.users:
                raise DoubleError(f"chown: invalid user: {owner}")
            self.owners[path] = owner
        elif argv[:4] == ["runuser", "-u", argv[2] if len(argv) > 2 else "", "--"]:
            self._runuser(argv[2], argv[4:])
        else:
            self.unknown.append(command)
            raise DoubleError(f"unknown command: {command}")

    def _fetch_key(self, script: str) -> None:
        url = re.search(r"(?:download-file|-o \"\$d/key\") (\S+)", script).group(1)  # type: ignore[union-attr]
        url = shlex.split(url.rstrip(";"))[0]
        if url not in self.served_keys:
            raise DoubleError(f"404 {url}")
        key = self.served_keys[url]
        stripped = "sed -i '/^Version/d'" in script
        sha = key.sha256_stripped if stripped else key.sha256
        pinned = re.search(r"printf '%s  %s\\n' ([0-9a-f]{64})", script)
        if pinned and pinned.group(1) != sha:
            raise DoubleError(f"{url}: the key's sha256 is not the pinned {pinned.group(1)}")
        fpr = re.search(r'\[ "\$f" = ([0-9a-f]{40}) \]', script)
        if fpr:
            if "gpg" not in self.packages and "gnupg2" not in self.packages:
                raise DoubleError("gpg: not found")
            if fpr.group(1) != key.fingerprint:
                raise DoubleError(f"{url}: the key's fingerprint is not the pinned {fpr.group(1)}")
        dest = shlex.split(re.search(r'install -D -m 0644 "\$d/key" (\S+)$', script).group(1))[0]  # type: ignore[union-attr]
        self.files[dest] = {
            "content": f"KEY {url}",
            "sha256": sha,
            "mode": 0o644,
            "fingerprint": key.fingerprint,
        }

    def put_file(self, path: str, content: str) -> None:
        if path.startswith("/etc/apt/sources.list.d/"):
            self.lists_fresh = False
        parent = path.rsplit("/", 1)[0]
        if parent not in self.dirs:
            raise DoubleError(f"put_file: {parent} does not exist")
        self.files[path] = {"content": content, "sha256": None, "mode": 0o600}
        self.changes.append(f"upload {path}")

    def _systemctl(self, verb: str, unit: str) -> None:
        owner = {
            "nvidia-persistenced.service": "nvidia-driver",
            "nvidia-fabricmanager.service": self._fabricmanager_installed(),
        }
        if owner.get(unit) not in self.packages:
            raise DoubleError(f"Failed to {verb} {unit}: Unit {unit} not found.")
        if verb == "enable":
            self.services_enabled.add(unit)
        elif verb == "start":
            if not self._can_run(unit):
                raise DoubleError(f"Job for {unit} failed")
            self.services_running.add(unit)
        else:
            raise DoubleError(f"unexpected systemctl {verb}")

    def _fabricmanager_installed(self) -> str:
        names = [n for n in self.packages if self.catalogue().get(n, {}).get("fabricmanager")]
        return names[0] if names else "(no Fabric Manager)"

    def _can_run(self, unit: str) -> bool:
        if self.module is None:
            return False
        if unit == "nvidia-fabricmanager.service":
            fm = self.packages[self._fabricmanager_installed()]["version"]
            return bool(self.nvswitch) and gpu_stack.package_version(fm) == self.module
        return True

    def _check_python(self, venv: str, version: str) -> None:
        """pip finds no torch wheel for a venv's Python below the release's floor."""
        config = self.files[f"{venv}/pyvenv.cfg"]["content"]
        python = tuple(int(p) for p in config.split("version = ")[1].split()[0].split("."))
        torch = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
        for first, floor in TORCH_PYTHON_FLOOR:
            if torch >= tuple(int(p) for p in first.split(".")) and python < floor:
                raise DoubleError(
                    f"ERROR: No matching distribution found for torch=={version} (Python {python})"
                )

    def _runuser(self, user: str, argv: list[str]) -> None:
        if user not in self.users:
            raise DoubleError(f"runuser: user {user} does not exist")
        if argv[1:3] == ["-m", "venv"]:
            pythons = PYTHONS[self.distro]
            if argv[0] not in pythons or (argv[0] != "python3" and argv[0] not in self.packages):
                raise DoubleError(f"runuser: failed to execute {argv[0]}: No such file")
            self.files[f"{argv[3]}/pyvenv.cfg"] = {
                "content": f"home = /usr/bin\nversion = {pythons[argv[0]]}\n",
                "sha256": None,
                "mode": 0o644,
            }
            self.dirs.add(argv[3])
            self.owners[argv[3]] = user
            return
        if argv[0].endswith("/bin/pip") and argv[1] == "install":
            venv = argv[0].rsplit("/bin/pip", 1)[0]
            index = argv[argv.index("--index-url") + 1]
            spec = argv[-1]
            if spec.startswith("torch @ "):  # a direct reference: pip's PEP 440 `name @ URL`
                url, _, fragment = spec.removeprefix("torch @ ").partition("#")
                if not fragment.startswith("sha256="):
                    raise DoubleError(f"{spec}: the lock's wheel comes with its sha256")
                # the version is the wheel file name's second part (PEP 427); the hash is
                # pip's to check, not the double's (it downloads nothing)
                version = urllib.parse.unquote(url.rsplit("/", 1)[1]).split("-")[1]
            else:
                version = spec.split("==", 1)[1]
            if not version.endswith("+" + index.rsplit("/", 1)[1]):
                raise DoubleError(f"{spec} is not on {index}")
            self._check_python(venv, version)
            self.torch[venv] = version
            return
        raise DoubleError(f"unexpected runuser command {argv}")

    def _headers_installed(self) -> bool:
        headers = f"linux-headers-{self.kernel}" if self.family == "apt" else "kernel-devel"
        return headers in self.packages

    def fact_kernel_packages(self, command: str) -> list[str]:
        """KernelPackages: the asked and the recorded names that are installed, held or not."""
        words = shlex.split(command[len("set -- ") :].split("$(cat", 1)[0])
        record = self.files.get(KERNEL_HOLD_RECORD, {}).get("content", "")
        recorded = record.split()
        names = set(words) | set(recorded)
        out = [f"##manager {'dpkg' if self.family == 'apt' else 'rpm'}"] if names else []
        arch = "amd64" if self.family == "apt" else "x86_64"
        for name in sorted(names):
            p = self.kernel_packages.get(name) or self.packages.get(name)
            if p is None:
                continue
            status = "hi " if p["held"] and self.family == "apt" else "ii "
            out.append(f"pkg|{status}|{name}|{p['version']}|{arch}")
        if names and self.family == "dnf":
            out += [f"lock|{n}-{v}.*" for n, v in sorted(self.locks.items())]
        return out + [f"recorded|{name}" for name in recorded]

    def fact_next_boot(self) -> list[str]:
        """next_boot.FACT_SCRIPT's lines: the next kernel, its module (DKMS builds one for the
        running kernel at install when its headers are there), Secure Boot."""
        kernel = self.next_kernel or self.kernel
        running = kernel == self.kernel
        headers = self._headers_installed() if running else self.next_kernel_headers
        out = [f"kernel|{kernel}", *(["headers|yes"] if headers else []), "modinfo|yes"]
        version, flavour = self.installed_driver()
        built = (running and headers) or kernel in self.modules_built
        if version and built:
            where = "updates/dkms" if self.family == "apt" else "extra"
            name = DEBIAN_MODULE_NAMES[flavour or ""] if self.archive == "debian" else "nvidia"
            signature = "PKCS#7" if self._module_signed() else ""
            out.append(f"module|/lib/modules/{kernel}/{where}/{name}.ko.xz|{version}|{signature}")
        state = "enabled" if self.secure_boot else "disabled"
        return [*out, f"mokutil|SecureBoot {state}"]

    def _module_signed(self) -> bool:
        conf = self.files.get("/etc/dkms/framework.conf.d/provisioner-mok.conf")
        if conf is None:
            return False
        cert = re.search(r'mok_certificate="([^"]+)"', conf["content"])
        return bool(cert and self.mok_enrolled.get(cert.group(1)))

    def reboot(self) -> None:
        """What a reboot changes: the installed module loads when DKMS could build it (headers
        for the running kernel), nouveau stays off once blacklisted, enabled services start."""
        self.boots += 1
        self.uptime = 30
        version, flavour = self.installed_driver()
        headers = f"linux-headers-{self.kernel}" if self.family == "apt" else "kernel-devel"
        loads = self.module_loads and headers in self.packages
        if self.secure_boot:  # the kernel rejects a module not signed by an enrolled key
            loads = loads and self._module_signed()
        self.module = version if version and loads else None
        self.module_flavour = flavour if self.module else None
        if "/etc/modprobe.d/blacklist-nouveau.conf" in self.files:
            self.nouveau_loaded = False
        self.services_running = {u for u in self.services_enabled if self._can_run(u)}


# --------------------------------------------------------------------------------------------
# Wiring into pyinfra's @fake connector


def install_doubles(monkeypatch: pytest.MonkeyPatch) -> dict[str, GpuHostDouble]:
    """Route every ``@fake/<name>`` host to ``registry[name]`` (a GpuHostDouble); returns the
    registry. pyinfra's reboot waits are skipped."""
    registry: dict[str, GpuHostDouble] = {}

    def run_shell_command(self, command, print_output=False, print_input=False, **arguments):
        text = command if isinstance(command, str) else command.get_masked_value()
        self.executed_commands.append(text)
        double = registry[self.host.name.split("/", 1)[1]]
        ok, lines = double.run(text)
        return ok, CommandOutput([OutputLine("stdout" if ok else "stderr", line) for line in lines])

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, **kwargs):
        double = registry[self.host.name.split("/", 1)[1]]
        if hasattr(filename_or_io, "seek"):
            filename_or_io.seek(0)
        data = (
            filename_or_io.read()
            if hasattr(filename_or_io, "read")
            else open(filename_or_io).read()
        )
        if isinstance(data, bytes):
            data = data.decode()
        try:
            double.put_file(remote_filename, data)
        except DoubleError:
            return False
        return True

    monkeypatch.setattr(FakeConnector, "run_shell_command", run_shell_command)
    monkeypatch.setattr(FakeConnector, "put_file", put_file)
    monkeypatch.setattr("pyinfra.operations.server.sleep", lambda seconds: None)
    monkeypatch.setattr("provisioner.operations.system.sleep", lambda seconds: None)
    return registry


# --------------------------------------------------------------------------------------------
# The double's own tests


def test_double_serves_facts_in_the_real_formats():
    double = GpuHostDouble(distro="debian12", gpus=("2684",))
    assert nvidia_smi.parse_fact_output(double.fact_smi())["state"] == "no-driver"
    double.packages["nvidia-driver"] = {"version": "580.105.08-1", "held": False}
    assert nvidia_smi.parse_fact_output(double.fact_smi())["state"] == "no-driver"
    double.module = "580.105.08"
    smi = nvidia_smi.parse_fact_output(double.fact_smi())
    assert smi["state"] == "ok" and smi["driver_version"] == "580.105.08"
    assert smi["gpus"][0]["compute_cap"] == "8.9"
    double.module = "580.95.05"
    assert nvidia_smi.parse_fact_output(double.fact_smi())["state"] == "driver-mismatch"
    assert (
        GpuStackPackages().process(double.fact_packages())["packages"][0]["name"] == "nvidia-driver"
    )


def test_double_enforces_the_pinning_order_and_holds():
    double = GpuHostDouble(distro="debian12")
    double.files["/etc/apt/sources.list.d/nvidia-cuda.sources"] = {
        "content": "x",
        "sha256": None,
        "mode": 0o644,
    }
    double.files["/etc/apt/sources.list.d/contrib.sources"] = {
        "content": "contrib",
        "sha256": None,
        "mode": 0o644,
    }
    double.lists_fresh = True
    with pytest.raises(DoubleError, match="before nvidia-driver-pinning"):
        double.install(["nvidia-open"], replace_held=False)
    double.install(["nvidia-driver-pinning-580"], replace_held=False)
    double.install(["nvidia-open"], replace_held=False)
    assert double.packages["nvidia-kernel-open-dkms"]["version"] == "580.126.09-1"  # newest 580
    double.packages["nvidia-open"]["held"] = True
    with pytest.raises(DoubleError, match="Held packages"):
        double.install(["nvidia-open=580.105.08-1"], replace_held=False)


def test_double_refuses_unknown_commands():
    double = GpuHostDouble()
    ok, lines = double.run("curl http://example.invalid | sh")
    assert not ok and double.unknown == ["curl http://example.invalid | sh"]
