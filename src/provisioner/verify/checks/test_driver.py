"""Driver layer: nvidia-smi answers, the loaded module is the installed driver, the branch is
the pinned one and locked, the GPUs are those expected, persistence mode, Fabric Manager on
NVSwitch systems, no nouveau."""

from __future__ import annotations

import re
import shlex

import pytest

from provisioner.gpu_stack import REBOOT_MARKER, branch_of, package_version
from provisioner.verify import parse
from provisioner.verify.context import HostContext

pytestmark = pytest.mark.layer("driver")

# Packages that carry the driver's own version, for a distribution the GPU stack does not know
# (for the known ones, data/distros.toml's driver_globs, kernel_module and fabricmanager).
FALLBACK_DRIVER_GLOBS = (
    "nvidia-driver*",
    "nvidia-open*",
    "cuda-drivers*",
    "nvidia-kernel*",
    "nvidia-dkms*",
    "kmod-nvidia*",
    "nvidia-fabricmanager*",
    "nvidia-fabric-manager*",
)


def _ok_smi(target: HostContext) -> dict:
    """The nvidia-smi fact, failing the check (with nvidia-smi's own words) unless it answers."""
    target.require_gpu()
    smi = target.smi()
    if smi["state"] != "ok":
        target.fail("nvidia-smi", "an answer listing the GPUs", _smi_problem(smi))
    return smi


def _smi_problem(smi: dict) -> str:
    state = smi.get("state")
    error = (smi.get("error") or "").strip().replace("\n", " / ")
    if state == "no-driver" and not error:
        return "no-driver: nvidia-smi is not installed"
    return f"{state}: {error}" if error else str(state)


def _driver_globs(target: HostContext) -> list[str]:
    distro = target.distro()
    if distro is None:
        return list(FALLBACK_DRIVER_GLOBS)
    globs = list(distro.driver_globs)
    globs += [glob for flavour in distro.kernel_module.values() for glob in flavour]
    globs += list(distro.fabricmanager_globs())
    return list(dict.fromkeys(globs))


def _driver_packages(target: HostContext) -> dict[str, str]:
    """Installed packages that carry a driver version (``NNN.x``), pinning packages left out."""
    packages = target.installed_packages(_driver_globs(target))
    return {
        name: version
        for name, version in packages.items()
        if "pinning" not in name and re.match(r"(\d+:)?\d{3}\.", version)
    }


def test_nvidia_smi_answers(target: HostContext, request: pytest.FixtureRequest) -> None:
    """nvidia-smi talks to the driver: no "couldn't communicate", no NVML mismatch."""
    target.require_gpu()
    smi = target.smi()
    if smi["state"] != "ok":
        hint = ""
        if smi["state"] == "driver-mismatch":
            hint = (
                "the loaded kernel module is not the installed userspace driver "
                "(upgraded without a reboot?); reboot or run provision apply"
            )
        elif smi["state"] == "no-driver":
            hint = "the kernel module is not loaded (DKMS build for this kernel? Secure Boot?)"
        target.fail("nvidia-smi", "state ok", _smi_problem(smi), hint)
    target.passed(request, f"driver {smi['driver_version']}, {len(smi['gpus'])} GPU(s)")


def test_module_matches_userspace(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The loaded kernel module, the userspace library and the installed packages are one
    driver version."""
    target.require_gpu()
    smi = target.smi()
    module_text = target.output(
        "cat /sys/module/nvidia/version 2>/dev/null"
        " || cat /proc/driver/nvidia/version 2>/dev/null; true"
    )
    module = parse.kernel_module_version(module_text)
    if smi["state"] == "driver-mismatch":
        from provisioner.nvidia_smi import nvml_library_version

        library = nvml_library_version(smi.get("error") or "")
        target.fail(
            "driver versions",
            "kernel module == userspace library",
            f"NVML mismatch: kernel module {module or '?'}, NVML library {library or '?'}",
            "reboot to load the installed driver",
        )
    smi = _ok_smi(target)
    running = smi.get("driver_version")
    if module and running and not parse.same_version(module, running):
        target.fail("driver versions", f"kernel module {running}", f"kernel module {module}")
    packages = _driver_packages(target)
    if not packages:
        target.fail(
            "driver package",
            f"an installed NVIDIA driver package at {running}",
            f"none found ({target.package_manager() or 'no dpkg or rpm'})",
        )
    wrong = {
        name: version
        for name, version in packages.items()
        if not parse.same_version(package_version(version), running)
    }
    if wrong:
        target.fail(
            "driver packages",
            f"version {running} (what nvidia-smi runs)",
            ", ".join(f"{name} {version}" for name, version in sorted(wrong.items())),
            "installed but not loaded: reboot, or finish the partial upgrade",
        )
    target.passed(request, f"{running} loaded and installed ({len(packages)} packages)")


def _pinned_branch(target: HostContext) -> str:
    branch = target.key("nvidia_driver_branch")
    if branch in (None, ""):
        target.skip("nvidia_driver_branch is not set")
    return str(branch)


def test_driver_branch(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The running driver is of the pinned branch (and the pinned version, when
    ``nvidia_driver_version`` is set)."""
    target.require_gpu()
    branch = _pinned_branch(target)
    smi = _ok_smi(target)
    running = str(smi.get("driver_version") or "")
    if not running or branch_of(running) != branch:
        target.fail(
            "driver branch",
            branch,
            f"{branch_of(running) if running else '?'} ({running or 'no version'})",
        )
    exact = target.key("nvidia_driver_version")
    if exact and not parse.same_version(package_version(str(exact)), running):
        target.fail(
            "driver version", f"{package_version(str(exact))} (nvidia_driver_version)", running
        )
    target.passed(request, f"branch {branch} ({running})")


def test_driver_locked(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The branch cannot move on an upgrade: NVIDIA's pinning package or every driver package
    held (apt); the module stream or a versionlock (dnf)."""
    target.require_gpu()
    branch = _pinned_branch(target)
    manager = target.package_manager()
    distro = target.distro()
    locks: list[str] = []
    held: set[str] = set()
    if manager == "dpkg":
        pinning = (
            distro.pinning(branch)
            if distro and distro.pinning_package
            else f"nvidia-driver-pinning-{branch}"
        )
        if target.installed_packages([pinning]):
            locks.append(pinning)
        held = set(target.output("apt-mark showhold 2>/dev/null; true").split())
        packages = sorted(_driver_packages(target))
        if packages and set(packages) <= held:
            locks.append(f"apt-mark hold on {len(packages)} driver packages")
    elif manager == "rpm":
        modules = target.output("dnf -q module list --enabled nvidia-driver 2>/dev/null; true")
        streams = [
            s
            for s in parse.dnf_module_streams(modules, "nvidia-driver")
            if s.startswith(f"{branch}-")
        ]
        if streams:
            locks.append("dnf module stream nvidia-driver:" + streams[0])
        versionlock = target.output("dnf -q versionlock list 2>/dev/null; true")
        if any(
            "nvidia" in line and (f":{branch}." in line or f"-{branch}." in line)
            for line in versionlock.splitlines()
        ):
            locks.append("dnf versionlock")
    if not locks:
        held_text = ""
        if manager == "dpkg":
            unheld = sorted(set(_driver_packages(target)) - held)
            held_text = f"; not held: {', '.join(unheld)}" if unheld else ""
        target.fail(
            f"lock of driver branch {branch}",
            "a pinning package, holds, a module stream or a versionlock",
            f"none (the next upgrade may replace the driver under the loaded module){held_text}",
        )
    target.passed(request, "; ".join(locks))


def test_no_pending_reboot(target: HostContext, request: pytest.FixtureRequest) -> None:
    """No reboot is pending (``provision apply`` with ``nvidia_reboot: false`` leaves a marker)."""
    target.require_gpu()
    result = target.run(f"cat {shlex.quote(REBOOT_MARKER)}")
    if result.rc == 0:
        reason = result.stdout.strip().replace("\n", "; ") or "no reason recorded"
        target.fail(
            "reboot", "none pending", f"pending: {reason} ({REBOOT_MARKER})", "reboot the host"
        )
    target.passed(request, "no reboot pending")


def test_gpu_count(target: HostContext, request: pytest.FixtureRequest) -> None:
    """nvidia-smi sees as many GPUs as the inventory states (``gpu_count``)."""
    target.require_gpu()
    expected = target.key("gpu_count")
    if expected is None:
        target.skip("gpu_count is not set in the inventory")
    smi = _ok_smi(target)
    if len(smi["gpus"]) != int(expected):
        names = ", ".join(f"{g['index']}: {g['name']}" for g in smi["gpus"]) or "none"
        target.fail("GPU count", expected, f"{len(smi['gpus'])} ({names})")
    target.passed(request, f"{expected} GPU(s)")


def test_gpu_memory(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Every GPU has the memory the inventory states (``gpu_memory_mib``, nvidia-smi's MiB)."""
    target.require_gpu()
    expected = target.key("gpu_memory_mib")
    if expected is None:
        target.skip("gpu_memory_mib is not set in the inventory")
    smi = _ok_smi(target)
    wrong = [g for g in smi["gpus"] if g.get("memory_total_mib") != int(expected)]
    if wrong:
        seen = ", ".join(f"GPU {g['index']} {g.get('memory_total_mib')} MiB" for g in wrong)
        target.fail("GPU memory", f"{expected} MiB per GPU", seen)
    target.passed(request, f"{expected} MiB on each of {len(smi['gpus'])} GPU(s)")


def test_persistence_mode(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Persistence mode is on for every GPU (nvidia-persistenced)."""
    _ok_smi(target)
    result = target.run("nvidia-smi --query-gpu=index,persistence_mode --format=csv,noheader")
    if result.rc != 0:
        target.fail(
            "persistence mode",
            "Enabled",
            f"nvidia-smi failed: {result.stdout or result.stderr}".strip(),
        )
    modes = {}
    for line in result.stdout.splitlines():
        index, _, mode = line.partition(",")
        if index.strip():
            modes[index.strip()] = mode.strip()
    off = {index: mode for index, mode in modes.items() if mode != "Enabled"}
    if off or not modes:
        seen = ", ".join(f"GPU {i} {m}" for i, m in off.items()) or "no GPU listed"
        target.fail("persistence mode", "Enabled on every GPU", seen, "enable nvidia-persistenced")
    target.passed(request, f"Enabled on {len(modes)} GPU(s)")


def test_fabric_manager(target: HostContext, request: pytest.FixtureRequest) -> None:
    """On NVSwitch systems, nvidia-fabricmanager runs (without it CUDA fails with error 802)."""
    target.require_gpu()
    if not target.has_nvswitch():
        target.skip("no NVSwitch on this host (Fabric Manager not needed)")
    state = target.unit_state("nvidia-fabricmanager.service")
    if state != "enabled, active":
        target.fail("nvidia-fabricmanager.service", "enabled, active", state)
    target.passed(request, "nvidia-fabricmanager enabled and active")


def test_nouveau_not_loaded(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The nouveau module does not hold the GPUs."""
    target.require_gpu()
    if target.run("test -d /sys/module/nouveau").rc == 0:
        target.fail("nouveau", "not loaded", "loaded", "blacklist it and rebuild the initramfs")
    target.passed(request, "nouveau not loaded")
