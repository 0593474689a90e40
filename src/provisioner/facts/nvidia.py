"""
Facts about the installed NVIDIA stack: the driver packages with their versions and holds,
the kernel module that is loaded, the repository signing key.

The GPUs themselves (``nvidia-smi``, ``lspci``) are in :mod:`provisioner.facts.gpu`. None of
these facts raises from ``process()``: pyinfra aborts every host of a run when a parser raises.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any

from pyinfra.api import FactBase

from provisioner import next_boot

__all__ = [
    "AptSourcesFor",
    "GpuStackPackages",
    "KernelPackages",
    "NamedPackages",
    "NvidiaKernelModule",
    "RepoDriverBranches",
    "RepoKey",
    "STACK_PACKAGE_GLOBS",
    "MokEnrolled",
    "NextBootModule",
    "PackageAvailable",
    "SecureBoot",
]

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
        return _package_query(_GLOBS)

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        try:
            packages: list[dict[str, Any]] = []
            locks: dict[str, set[str]] = {}
            module: dict[str, str] = {}
            for line in output:
                if line.startswith("##manager "):
                    result["manager"] = line.split(" ", 1)[1].strip()
                else:
                    _take_line(line, packages, locks, module)
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


def _package_query(names: str) -> str:
    """The shell query of GpuStackPackages for ``names`` (shell words: globs or names)."""
    return (
        "if command -v dpkg-query >/dev/null 2>&1; then echo '##manager dpkg'; "
        f"dpkg-query -W -f={_DPKG_FORMAT} {names} 2>/dev/null; "
        "elif command -v rpm >/dev/null 2>&1; then echo '##manager rpm'; "
        f"rpm -qa --qf {_RPM_FORMAT} {names} 2>/dev/null; "
        f"if [ -r {VERSIONLOCK_LIST} ]; then sed 's/^/lock|/' {VERSIONLOCK_LIST}; fi; "
        f"if [ -r {DNF_MODULE_FILE} ]; then sed 's/^/module|/' {DNF_MODULE_FILE}; fi; "
        "fi; true"
    )


class NamedPackages(GpuStackPackages):
    """
    Returns which of the packages ``names`` are installed (dpkg's state ``i``, or in the rpm
    database) and held, in GpuStackPackages' shape: one ``dpkg-query``/``rpm -q`` of those
    names, where pyinfra's ``DebPackages``/``RpmPackages`` list every package of the host
    (``dpkg -l``: thousands of lines on a server, parsed on the controller on every run).

    .. code:: python

        {"manager": "dpkg", "packages": [{"name": "curl", ...}], "locks": [], "stream": None}
    """

    def command(self, names: list[str]) -> str:  # type: ignore[override]
        return _package_query(" ".join(shlex.quote(name) for name in names))


# the package families system.packages answers with NamedPackages, in the order it looks for
# their package manager (``Which``)
PACKAGE_FAMILIES = ("apt", "dnf")


def package_names(packages: Iterable[str]) -> list[str]:
    """The ``names`` argument ``system.packages`` reads ``NamedPackages`` with (a probe key)."""
    return sorted(set(packages))


KERNEL_HOLD_RECORD = "/var/lib/provisioner/kernel-hold"


class KernelPackages(GpuStackPackages):
    """
    Returns which of the packages ``names`` and of the recorded ones are installed and held,
    in GpuStackPackages' shape, plus ``recorded``: the packages ``nvidia_hold_kernel`` held on
    this host (the record ``/var/lib/provisioner/kernel-hold``, one name a line), so that
    turning the key off releases exactly those and never a hold the operator made:

    .. code:: python

        {"manager": "dpkg", "packages": [{"name": "linux-image-amd64", ..., "held": True}],
         "locks": [], "stream": None, "recorded": ["linux-image-amd64"]}
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {**GpuStackPackages.default(), "recorded": []}

    def command(self, names: list[str]) -> str:  # type: ignore[override]
        # the recorded names are queried too (package names: no blanks to split on)
        words = " ".join(shlex.quote(name) for name in names)
        return (
            f"set -- {words} $(cat {KERNEL_HOLD_RECORD} 2>/dev/null); "
            f"if [ $# -gt 0 ]; then {_package_query(chr(34) + '$@' + chr(34))}; fi; "
            f"if [ -r {KERNEL_HOLD_RECORD} ]; then "
            f"sed 's/^/recorded|/' {KERNEL_HOLD_RECORD}; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        recorded = [line[9:].strip() for line in output if line.startswith("recorded|")]
        result = super().process([line for line in output if not line.startswith("recorded|")])
        result["recorded"] = sorted({name for name in recorded if name})
        return result


def _package_line(line: str) -> dict[str, Any] | None:
    """``pkg|<status>|<name>|<version>|<arch>`` -> an installed package, or None."""
    fields = line.split("|")
    if len(fields) != 5:
        return None
    _, status, name, version, arch = fields
    # db:Status-Abbrev: selection (i/h/...), state (i = installed), error flag
    if len(status) < 2 or status[1] != "i" or not name or not version:
        return None
    return {"name": name, "version": version, "arch": arch, "held": status[0] == "h"}


def _take_line(
    line: str,
    packages: list[dict[str, Any]],
    locks: dict[str, set[str]],
    module: dict[str, str],
) -> None:
    """One line of GpuStackPackages' output into the package, lock and module tables."""
    if line.startswith("pkg|"):
        package = _package_line(line)
        if package:
            packages.append(package)
    elif line.startswith("lock|"):
        entry = _lock_entry(line[5:])
        if entry:
            locks.setdefault(entry[0], set()).add(entry[1])
    elif line.startswith("module|") and "=" in line:
        key, _, value = line[7:].partition("=")
        module[key.strip()] = value.strip()


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


SECURE_BOOT_EFIVAR = next_boot.SECURE_BOOT_EFIVAR


class SecureBoot(FactBase[dict[str, Any]]):
    """
    Returns whether UEFI Secure Boot is enforcing, from ``mokutil --sb-state`` (package
    ``mokutil``), else from the SecureBoot EFI variable:

    .. code:: python

        {"enabled": True, "source": "mokutil", "detail": "SecureBoot enabled"}

    ``enabled`` is False on a legacy-BIOS host or a container without EFI variables, None when
    neither source answers. Under Secure Boot the kernel rejects an unsigned DKMS module
    (``Key was rejected by service``) after the reboot. The script and its parser are
    :mod:`provisioner.next_boot`'s (the health collector runs the same).
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"enabled": None, "source": None, "detail": None}

    def command(self) -> str:
        return next_boot.SECURE_BOOT_SCRIPT

    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            return next_boot.parse_secure_boot(output)
        except Exception:  # a fact must never abort the run
            return self.default()


class NextBootModule(FactBase[dict[str, Any]]):
    """
    Returns the kernel the host boots next (the newest ``/boot/vmlinuz-*``), its NVIDIA
    modules with their versions and signatures, and Secure Boot
    (:func:`provisioner.next_boot.parse_fact_output`, the same script and parser the health
    collector runs):

    .. code:: python

        {"kernel": "6.1.0-29-amd64", "headers": True, "modinfo": True,
         "modules": [{"path": "/lib/modules/6.1.0-29-amd64/updates/dkms/nvidia.ko.xz",
                      "version": "580.126.09", "signature": ""}],
         "secure_boot": {"enabled": False, "source": "mokutil", "detail": "SecureBoot disabled"}}

    ``kernel`` is None when ``/boot`` has no kernel image (a container).
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return next_boot.parse_fact_output([])

    def command(self) -> str:
        return next_boot.FACT_SCRIPT

    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            return next_boot.parse_fact_output(output)
        except Exception:  # a fact must never abort the run
            return self.default()


class AptSourcesFor(FactBase[list[str]]):
    """
    Returns the apt source files (one-line ``.list`` and deb822 ``.sources``) that name a
    repository URL, e.g. the ``cuda-<distro>-<arch>.list`` that NVIDIA's cuda-keyring package
    installs: ``["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"]``. A second source for the
    same URI with another ``Signed-By`` makes ``apt-get update`` fail.
    """

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, url: str) -> str:
        return (
            f'grep -lsE -- "(^|[[:space:]]){_ere(url.rstrip("/"))}/?([[:space:]]|$)" '
            "/etc/apt/sources.list /etc/apt/sources.list.d/*.list "
            "/etc/apt/sources.list.d/*.sources 2>/dev/null; true"
        )

    def process(self, output: list[str]) -> list[str]:
        return sorted({line.strip() for line in output if line.strip().startswith("/")})


def _ere(text: str) -> str:
    """``text`` as a literal inside a double-quoted extended regular expression."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text).replace('"', '\\"').replace("$", "\\$")


class RepoDriverBranches(FactBase[dict[str, Any]]):
    """
    Returns the driver branches an apt repository offers, read from its ``Packages.gz`` before
    anything is configured (fetched with the package manager's own transport):

    .. code:: python

        {"read": True, "branches": ["580", "590"], "error": None}

    ``read`` is False (and ``error`` says why) when the index could not be fetched; the plan
    then falls back to the branches recorded in ``data/distros.toml``.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"read": False, "branches": [], "error": None}

    def command(self, url: str, fetch: list[str], package: str) -> str:
        target = '"$d/Packages.gz"'
        argv = " ".join(
            target
            if arg == "{dest}"
            else shlex.quote(f"{url}Packages.gz")
            if arg == "{url}"
            else shlex.quote(arg)
            for arg in fetch
        )
        return (
            "d=$(mktemp -d); "
            f'if {argv} >"$d/log" 2>&1; then '
            f"gzip -dc {target} | awk -v p={shlex.quote(package)} "
            "'/^Package: /{n=$2} /^Version: /{if (n==p) print \"version|\" $2}'; "
            'else sed \'s/^/error|/\' "$d/log" | tail -n 3; fi; rm -rf "$d"; true'
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        try:
            branches: set[str] = set()
            errors = []
            for line in output:
                kind, _, value = line.partition("|")
                if kind == "version":
                    match = re.match(r"(?:\d+:)?(\d+)\.", value.strip())
                    if match:
                        branches.add(match.group(1))
                elif kind == "error":
                    errors.append(value.strip())
            if errors:
                result["error"] = " / ".join(errors) or "the index could not be fetched"
                return result
            result.update(read=True, branches=sorted(branches, key=int))
        except Exception:  # a fact must never abort the run
            return self.default()
        return result


class MokEnrolled(FactBase[dict[str, Any]]):
    """
    Returns whether a Machine Owner Key certificate is enrolled (``mokutil --test-key``):

    .. code:: python

        {"exists": True, "enrolled": False, "detail": "... is not enrolled"}
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"exists": False, "enrolled": False, "detail": None}

    def command(self, cert: str) -> str:
        quoted = shlex.quote(cert)
        return (
            'PATH="$PATH:/usr/sbin:/sbin:/usr/bin"; '
            f"if [ -r {quoted} ]; then echo 'exists|yes'; "
            f"command -v mokutil >/dev/null 2>&1 && mokutil --test-key {quoted} 2>&1 "
            "| sed 's/^/mok|/'; fi; true"
        )

    def process(self, output: list[str]) -> dict[str, Any]:
        result = self.default()
        for line in output:
            kind, _, value = line.partition("|")
            if kind == "exists":
                result["exists"] = True
            elif kind == "mok" and value.strip():
                result["detail"] = value.strip()
                result["enrolled"] = "already enrolled" in value
        return result


class PackageAvailable(FactBase[bool | None]):
    """
    Returns whether the configured repositories offer a package (``kernel-devel-$(uname -r)``
    on EL: an image older than the current minor release no longer finds it there):
    ``True``, ``False``, or ``None`` when no package manager answers.
    """

    @staticmethod
    def default() -> bool | None:
        return None

    def command(self, package: str) -> str:
        quoted = shlex.quote(package)
        return (
            "if command -v dnf >/dev/null 2>&1; then "
            f"if dnf -q list --available {quoted} >/dev/null 2>&1 "
            f"|| rpm -q {quoted} >/dev/null 2>&1; then echo yes; else echo no; fi; "
            "elif command -v apt-cache >/dev/null 2>&1; then "
            f"if apt-cache show {quoted} >/dev/null 2>&1; then echo yes; else echo no; fi; fi; true"
        )

    def process(self, output: list[str]) -> bool | None:
        answer = "".join(output).strip()
        return {"yes": True, "no": False}.get(answer)
