"""Verify judges a host with the facts and functions apply uses (issue 17).

A GpuHostDouble host is brought to a converged state by the real driver deploy, then broken in
three ways (a driver upgrade without a reboot: module and user space mismatch; a package no
longer held; a stale module of the old version), and two judges look at the same host:

* apply: the operations' own decisions, from a dry run (``reboot_if_needed`` and ``hold``
  would change the host) and ``gpu_stack.reboot_reasons``/``packages_to_hold``;
* verify: the real checks ``test_module_matches_userspace`` and ``test_driver_locked`` on a
  HostContext whose commands run on the same double.

They must agree, case by case, and name the same reason.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from _pytest.outcomes import Failed

from provisioner import gpu_stack
from provisioner.facts.nvidia import GpuStackPackages, NvidiaKernelModule
from provisioner.nvidia_smi import gpus_on_bus, parse_fact_output
from provisioner.verify.checks import test_driver as checks
from provisioner.verify.context import HostContext
from tests.unit.test_gpu_stack_deploy import apply
from tests.unit.test_gpu_stack_double import GpuHostDouble, install_doubles


class DoubleContext(HostContext):
    """A verify HostContext whose commands run on a GpuHostDouble (facts only)."""

    def __init__(self, double: GpuHostDouble, data: dict[str, Any]):
        backend = SimpleNamespace(get_pytest_id=lambda: "double")
        super().__init__(SimpleNamespace(backend=backend), {"name": "double", "data": data})
        self.double = double

    def run(self, script: str, timeout: int = 0) -> Any:
        ok, lines = self.double.run(script)
        return SimpleNamespace(rc=0 if ok else 1, stdout="\n".join(lines) + "\n", stderr="")

    def smi(self) -> dict:
        return parse_fact_output(self.double.fact_smi())

    def gpu_expected(self) -> tuple[bool, str]:
        return True, "gpu: true"


REQUEST = SimpleNamespace(node=SimpleNamespace(user_properties=[]))


def verdict(check: Any, ctx: HostContext) -> str | None:
    """None when the verify check passes, else its failure message."""
    try:
        check(ctx, REQUEST)
    except Failed as failure:
        return str(failure)
    return None


def apply_view(double: GpuHostDouble) -> tuple[list[str], list[str]]:
    """What apply decides on this host: reboot reasons and packages to hold."""
    target = double.target
    packages = GpuStackPackages().process(double.fact_packages())
    module = NvidiaKernelModule().process(double.fact_module())
    installed = gpu_stack.installed_driver(target, packages)
    smi = parse_fact_output(double.fact_smi())
    return (
        gpu_stack.reboot_reasons(installed, module, smi),
        gpu_stack.packages_to_hold(target, packages),
    )


@pytest.fixture
def converged(monkeypatch):
    registry = install_doubles(monkeypatch)
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    state = apply(registry, {"a": host}, {"a": {"nvidia_driver_version": "580.105.08-1"}})
    assert not state.failed_hosts
    assert host.module == "580.105.08"
    return host


def test_a_converged_host_passes_both(converged):
    ctx = DoubleContext(converged, {})
    assert apply_view(converged) == ([], [])
    assert verdict(checks.test_module_matches_userspace, ctx) is None
    assert verdict(checks.test_driver_locked, ctx) is None


def test_driver_mismatch_missing_hold_and_stale_module_agree(converged):
    host = converged
    # 1. an unattended upgrade replaced the user space (580.126.09) under the loaded module
    #    (580.105.08 stays loaded: a stale module); nvidia-smi reports the NVML mismatch
    loaded = host.module
    host.packages["nvidia-driver"]["version"] = host.pkg_version("580.126.09")
    for name in host.target.kernel_module["open"]:
        host.packages[name]["version"] = host.pkg_version("580.126.09")
    for name in [n for n in host.packages if n.startswith("libnvidia")]:  # NVML and friends
        host.packages[name]["version"] = host.pkg_version("580.126.09")
    # 2. and one driver package lost its hold
    host.packages["nvidia-open"]["held"] = False
    reasons, unheld = apply_view(host)
    assert reasons == [
        "nvidia-smi reports a driver/library version mismatch (installed 580.126.09)"
    ]
    assert unheld == ["nvidia-open"]

    ctx = DoubleContext(host, {})
    module = verdict(checks.test_module_matches_userspace, ctx)
    locked = verdict(checks.test_driver_locked, ctx)
    assert module is not None and all(reason in module for reason in reasons)
    assert locked is not None and "not held: nvidia-open" in locked

    # 3. a stale module: the kernel module package moved on (DKMS built 580.126.09), the
    #    user space and the loaded module are still 580.105.08, nvidia-smi answers
    user_space = ["nvidia-driver", *(n for n in host.packages if n.startswith("libnvidia"))]
    for name in user_space:
        host.packages[name]["version"] = host.pkg_version(loaded)
    reasons, _ = apply_view(host)
    assert reasons == [f"the loaded NVIDIA module is {loaded}, the installed driver is 580.126.09"]
    stale = verdict(checks.test_module_matches_userspace, DoubleContext(host, {}))
    assert stale is not None and reasons[0] in stale
    for name in user_space:
        host.packages[name]["version"] = host.pkg_version("580.126.09")

    # 4. apply repairs exactly that (hold, reboot into the installed module); then both pass
    registry = install_doubles(pytest.MonkeyPatch())
    state = apply(registry, {"a": host}, {"a": {"nvidia_reboot": True}})
    assert not state.failed_hosts
    assert "apt-mark hold nvidia-open" in host.changes
    assert host.module == "580.126.09"
    assert apply_view(host) == ([], [])
    ctx = DoubleContext(host, {})
    assert verdict(checks.test_module_matches_userspace, ctx) is None
    assert verdict(checks.test_driver_locked, ctx) is None


def test_one_answer_to_a_gpu_on_the_pci_bus():
    """gather, planner, gpu_stack and verify all ask nvidia_smi.gpus_on_bus."""
    from provisioner import gather, planner

    bus = [
        {"slot": "0000:01:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
        {"slot": "0000:80:00.0", "class_id": "0680", "vendor_id": "10de", "device_id": "1af1"},
    ]
    switch_only = bus[1:]
    assert len(gpus_on_bus(bus)) == 1 and gpus_on_bus(switch_only) == []
    assert planner._nvidia_pci_gpus(bus) == 1 and planner._nvidia_pci_gpus(switch_only) == 0
    assert gpu_stack.gpu_presence({}, bus, None)[0] is True
    assert gpu_stack.gpu_presence({}, switch_only, None)[0] is False
    no_smi = {"state": "no-driver", "error": None}
    assert gather.shape(no_smi, bus, {}, None)["gpu_state"] == "no-driver"
    assert gather.shape(no_smi, switch_only, {}, None)["gpu_state"] == "no-gpu"


def test_next_boot_without_the_module_agrees(converged):
    """A kernel update without its headers: apply does not reboot into it (pending, with the
    reason) and verify fails the next-boot check with the same reason and next step."""
    host = converged
    ctx = DoubleContext(host, {})
    assert verdict(checks.test_next_boot_has_the_module, ctx) is None
    host.next_kernel = "6.1.0-29-amd64"
    failure = verdict(checks.test_next_boot_has_the_module, DoubleContext(host, {}))
    reason = "kernel 6.1.0-29-amd64, which the host boots next, has no NVIDIA module"
    step = "install the kernel headers linux-headers-6.1.0-29-amd64"
    assert failure is not None and reason in failure and step in failure
    host.module = "580.95.05"  # and a reboot is due
    registry = install_doubles(pytest.MonkeyPatch())
    apply(registry, {"a": host}, {"a": {"nvidia_driver_version": "580.105.08-1"}})
    assert host.boots == 1  # no reboot into it
    marker = host.files["/var/lib/provisioner/reboot-required"]["content"]
    assert reason in marker and step in marker
    host.modules_built.add("6.1.0-29-amd64")  # dkms autoinstall -k 6.1.0-29-amd64
    assert verdict(checks.test_next_boot_has_the_module, DoubleContext(host, {})) is None
