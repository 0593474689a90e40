"""
Facts about the installed NVIDIA stack: the driver packages with their versions and holds,
the kernel module that is loaded, the repository signing key.

The GPUs themselves (``nvidia-smi``, ``lspci``) are in :mod:`provisioner.facts.gpu`. None of
these facts raises from ``process()``: pyinfra aborts every host of a run when a parser raises.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra.api import FactBase

__all__ = ["GpuStackPackages", "NvidiaKernelModule", "RepoKey", "STACK_PACKAGE_GLOBS"]

# Every package the GPU stack installs or inspects: driver, toolkit, headers, helpers.
STACK_PACKAGE_GLOBS = (
    "nvidia-*",
    "libnvidia-*",
    "cuda-*",
    "libcuda*",
    "libnvcuvid*",
    "libnvoptix*",
    "libxnvctrl*",
    "xserver-xorg-video-nvidia*",
    "firmware-nvidia-gsp*",
    "kmod-nvidia*",
    "linux-headers-*",
    "kernel-devel*",
    "python3*-venv",
    "gpg",
    "gnupg2",
    "python3-dnf-plugin-versionlock",
    "epel-release",
    "dkms",
)

_GLOBS = " ".join(shlex.quote(glob) for glob in STACK_PACKAGE_GLOBS)
_DPKG_FORMAT = shlex.quote(r"pkg|${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\n")
_RPM_FORMAT = shlex.quote(r"pkg|ii |%{NAME}|%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}|%{ARCH}\n")
VERSIONLOCK_LIST = "/etc/dnf/plugins/versionlock.list"
DNF_MODULE_FILE = "/etc/dnf/modules.d/nvidia-driver.module"


def _lock_entry(line: str) -> tuple[str, str] | None:
    """``kmod-nvidia-open-dkms-3:580.105.08-1.el9.*`` -> (name, version-release)."""
    entry = line.strip()
    if not entry or entry.startswith("#"):
        return None
    entry = entry.removeprefix("!")
    if entry.endswith(".*"):
        entry = entry[:-2]
    parts = entry.rsplit("-", 2)
    if len(parts) != 3:
        return None
    name, version, release = parts
    return name, f"{version.split(':', 1)[-1]}-{release}"


class GpuStackPackages(FactBase[dict[str, Any]]):
    """
    Returns the installed packages of the GPU stack (names in ``STACK_PACKAGE_GLOBS``), whether
    each is held against upgrades, and the enabled ``nvidia-driver`` dnf module stream:

    .. code:: python

        {
            "manager": "dpkg",  # or "rpm", None when neither exists
            "packages": [
                {"name": "nvidia-open", "version": "580.105.08-1", "arch": "amd64", "held": True},
            ],
            "locks": [],  # dnf versionlock entries for these packages: names
            "stream": None,  # e.g. "580-open" (EL: /etc/dnf/modules.d/nvidia-driver.module)
        }

    Held means ``apt-mark hold`` (dpkg's "h" selection) or a dnf versionlock entry for exactly
    the installed version. Versions keep the epoch (``3:580.105.08-1.el9``) where there is one.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"manager": None, "packages": [], "locks": [], "stream": None}

    def command(self) -> str:
        return (
            "if command -v dpkg-query >/dev/null 2>&1; then echo '##manager dpkg'; "
            f"dpkg-query -W -f={_DPKG_FORMAT} {_GLOBS} 2>/dev/null; "
            "elif command -v rpm >/dev/null 2>&1; then echo '##manager rpm'; "
            f"rpm -qa --qf {_RPM_FORMAT} {_GLOBS} 2>/dev/null; "
            f"if [ -r {VERSIONLOCK_LIST} ]; then sed 's/^/lock|/' {VERSIONLOCK_LIST}; fi; "
            f"if [ -r {DNF_MODULE_FILE} ]; then sed 's/^/module|/' {DNF_MODULE_FILE}; fi; "
            "fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        try:
            packages: list[dict[str, Any]] = []
            locks: dict[str, set[str]] = {}
            module: dict[str, str] = {}
            for line in output:
                if line.startswith("##manager "):
                    result["manager"] = line.split(" ", 1)[1].strip()
                elif line.startswith("pkg|"):
                    fields = line.split("|")
                    if len(fields) != 5:
                        continue
                    _, status, name, version, arch = fields
                    # db:Status-Abbrev: selection (i/h/...), state (i = installed), error flag
                    if len(status) < 2 or status[1] != "i" or not name or not version:
                        continue
                    packages.append(
                        {"name": name, "version": version, "arch": arch, "held": status[0] == "h"}
                    )
                elif line.startswith("lock|"):
                    entry = _lock_entry(line[5:])
                    if entry:
                        locks.setdefault(entry[0], set()).add(entry[1])
                elif line.startswith("module|") and "=" in line:
                    key, _, value = line[7:].partition("=")
                    module[key.strip()] = value.strip()
            if result["manager"] == "rpm":
                for package in packages:
                    plain = package["version"].split(":", 1)[-1]
                    package["held"] = plain in locks.get(package["name"], set())
            result["packages"] = sorted(packages, key=lambda p: (p["name"], p["version"]))
            result["locks"] = sorted(locks)
            if module.get("state") == "enabled" and module.get("stream"):
                result["stream"] = module["stream"]
        except Exception:  # a fact must never abort the run
            return self.default()
        return result


_PROCFS_RE = re.compile(
    r"NVRM version:\s+NVIDIA UNIX\s+(?P<open>Open\s+)?Kernel Module\s+for\s+\S+\s+(?P<v>\d[\d.]*)"
    r"|NVRM version:\s+NVIDIA UNIX\s+\S+\s+(?P<open2>Open\s+)?Kernel Module\s+(?P<v2>\d[\d.]*)"
)


class NvidiaKernelModule(FactBase[dict[str, Any]]):
    """
    Returns the NVIDIA kernel module the running kernel has loaded, and whether nouveau is
    loaded:

    .. code:: python

        {
            "loaded": True,
            "version": "580.105.08",  # /sys/module/nvidia/version, else /proc/driver/nvidia/version
            "flavour": "open",  # from /proc/driver/nvidia/version; None when unknown
            "source": "sysfs",  # sysfs | procfs | None
            "nouveau_loaded": False,
        }

    A host where neither file exists (no module, or a container) reports ``loaded: False``;
    the deploys then take the driver version from ``nvidia-smi`` when it works (see
    ``provisioner.gpu_stack.loaded_module_version``).
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {
            "loaded": False,
            "version": None,
            "flavour": None,
            "source": None,
            "nouveau_loaded": False,
        }

    def command(self) -> str:
        return (
            "if [ -r /sys/module/nvidia/version ]; then "
            "sed 's/^/sysfs|/' /sys/module/nvidia/version; fi; "
            "if [ -r /proc/driver/nvidia/version ]; then "
            "head -n 1 /proc/driver/nvidia/version | sed 's/^/procfs|/'; fi; "
            "if [ -d /sys/module/nouveau ]; then echo 'nouveau|loaded'; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        try:
            for line in output:
                kind, _, value = line.partition("|")
                value = value.strip()
                if kind == "sysfs" and value:
                    result.update(loaded=True, version=value, source="sysfs")
                elif kind == "procfs" and value:
                    result["loaded"] = True
                    match = _PROCFS_RE.search(value)
                    if match:
                        is_open = bool(match.group("open") or match.group("open2"))
                        result["flavour"] = "open" if is_open else "proprietary"
                        if not result["version"]:
                            result["version"] = match.group("v") or match.group("v2")
                            result["source"] = "procfs"
                elif kind == "nouveau":
                    result["nouveau_loaded"] = True
        except Exception:  # a fact must never abort the run
            return self.default()
        return result


class RepoKey(FactBase[dict[str, Any]]):
    """
    Returns the sha256 of an installed repository signing key and, where ``gpg`` exists, the
    fingerprints of the primary keys in it:

    .. code:: python

        {"exists": True, "sha256": "d066...", "fingerprints": ["eb69...63cc"], "gpg": True}
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"exists": False, "sha256": None, "fingerprints": [], "gpg": False}

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            "if command -v gpg >/dev/null 2>&1; then echo 'gpg|yes'; fi; "
            f"if [ -f {quoted} ]; then sha256sum {quoted} | sed 's/ .*//; s/^/sha256|/'; "
            "if command -v gpg >/dev/null 2>&1; then "
            'g=$(mktemp -d); GNUPGHOME="$g" gpg --batch --quiet --show-keys --with-colons '
            f"{quoted} 2>/dev/null | grep -E '^(pub|fpr):' | sed 's/^/gpg|/'; "
            'rm -rf "$g"; fi; fi; true'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        try:
            expect_primary = False
            for line in output:
                kind, _, value = line.partition("|")
                if kind == "gpg" and value == "yes":
                    result["gpg"] = True
                elif kind == "sha256" and value.strip():
                    result.update(exists=True, sha256=value.strip().lower())
                elif kind == "gpg":
                    fields = value.split(":")
                    if fields[0] == "pub":
                        expect_primary = True
                    elif fields[0] == "fpr" and expect_primary and len(fields) > 9:
                        result["fingerprints"].append(fields[9].lower())
                        expect_primary = False
        except Exception:  # a fact must never abort the run
            return self.default()
        return result
