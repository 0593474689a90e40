"""Driver layer: nvidia-smi answers, the loaded module is the installed driver, the branch is
the pinned one and locked, the GPUs are those expected, persistence mode, Fabric Manager on
NVSwitch systems, no nouveau, and the kernel booted next has the driver's module."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from provisioner import gpu_stack
from provisioner.gpu_stack import REBOOT_MARKER, branch_of, package_version
from provisioner.verify import parse
from provisioner.verify.context import HostContext

pytestmark = pytest.mark.layer("driver")


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


def _stack_facts(target: HostContext) -> tuple[Any, dict, dict, dict]:
    """The facts apply decides with: the driver table, installed packages, module, nvidia-smi."""
    from provisioner.facts.nvidia import GpuStackPackages, NvidiaKernelModule

    return (
        _driver_table(target),
        target.fact(GpuStackPackages),
        target.fact(NvidiaKernelModule),
        target.smi(),
    )


def _driver_table(target: HostContext) -> Any:
    """The distro table apply uses for this host (NVIDIA's repository or the distribution's
    own packages), or None for a distribution the GPU stack does not know."""
    release = target.distro()
    if release is None:
        return None
    try:
        return gpu_stack.driver_table(target.data, release, str(target.key("nvidia_driver_branch")))
    except gpu_stack.GpuStackError:
        return release


def test_module_matches_userspace(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The loaded kernel module is the installed driver, as apply judges it before deciding on
    a reboot (``gpu_stack.module_problem`` on the same facts)."""
    target.require_gpu()
    table, packages, module, smi = _stack_facts(target)
    if table is None:
        target.skip("a distribution the GPU stack does not support: no installed driver to judge")
    installed = gpu_stack.installed_driver(table, packages)
    problem = gpu_stack.module_problem(installed, module, smi)
    if problem:
        hint = (
            "reboot to load the installed driver (provision apply does)"
            if installed.driver_version
            else "install the driver with provision apply"
        )
        if smi.get("state") == "driver-mismatch":
            from provisioner.nvidia_smi import nvml_library_version

            library = nvml_library_version(smi.get("error") or "")
            problem += f"; NVML library {library or '?'}"
        target.fail("driver versions", "the installed driver's module loaded", problem, hint)
    running = gpu_stack.loaded_module_version(module, smi)
    target.passed(request, f"{running} loaded and installed ({installed.package})")


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
    """The branch cannot move on an upgrade: the branch lock (pinning package / module stream)
    and every driver package held, exactly what the driver deploy sets up
    (``gpu_stack.lock_problems`` on the same package fact)."""
    target.require_gpu()
    branch = _pinned_branch(target)
    table, packages, _, _ = _stack_facts(target)
    if table is None:
        target.skip("a distribution the GPU stack does not support: its locks are not known")
    problems = gpu_stack.lock_problems(table, packages, branch)
    if problems:
        target.fail(
            f"lock of driver branch {branch}",
            "the branch lock and holds on every driver package",
            "; ".join(problems) + " (the next upgrade may replace the driver under the module)",
        )
    held = [p["name"] for p in gpu_stack.find_packages(packages, table.hold_globs) if p["held"]]
    target.passed(request, f"branch {branch} locked, {len(held)} packages held")


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


def test_next_boot_has_the_module(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The kernel the host boots next has the installed driver's module (signed under Secure
    Boot): the check ``provision apply`` makes before a reboot (``provisioner.next_boot``)."""
    from provisioner import next_boot
    from provisioner.facts.nvidia import NextBootModule

    target.require_gpu()
    table, packages, _, _ = _stack_facts(target)
    installed = gpu_stack.installed_driver(table, packages) if table is not None else None
    if installed is None or not installed.driver_version:
        target.skip("no NVIDIA driver package installed: no module to look for")
    fact = target.fact(NextBootModule)
    kernel = fact.get("kernel")
    if not kernel:
        target.skip("no kernel image in /boot (a container?): the next boot is unknown")
    headers = table.headers.format(kernel=kernel)
    found = next_boot.problem(fact, installed.driver_version, headers)
    if found:
        reason, step = found
        target.fail("next boot", f"an NVIDIA module in kernel {kernel}", reason, step)
    target.passed(request, f"kernel {kernel} has the {installed.driver_version} module")


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
