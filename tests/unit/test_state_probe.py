"""The state probes (``fact_cache.probe``, ``facts/gpu_state.py``): one remote command reads a
layer's state; a converged GPU stack costs a fixed, small number of commands; nothing is stale.

The probe's shell format is checked against the real ``/bin/sh`` (each part's output, split
back, reads exactly as the part run alone); the GPU stack runs for real against GpuHostDouble
(tests/unit/test_gpu_stack_double.py), which answers a probe part by part."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_gpu_stack_deploy import DISTROS, REBOOT, TOOLKIT, apply, failed
from test_gpu_stack_double import DoubleError, GpuHostDouble, install_doubles

from provisioner import fact_cache

PARTS = [
    "printf 'a\\nb'",  # no final newline
    "printf 'a\\nb\\n'",
    "printf ''",  # no output at all
    "printf '\\n'",  # one empty line
    "printf 'x\\n\\n'",  # a trailing empty line
    "printf 'out\\n'; exit 3",  # a failing part
    "echo '##provisioner-probe deadbeef'",  # looks like a mark, with another nonce
    "printf 'err\\n' >&2; printf 'ok\\n'",  # stderr stays out of stdout
]


def pyinfra_lines(text: str) -> list[str]:
    """stdout as pyinfra's connectors hand it to a fact: one entry per line, the final newline
    (if any) ending the last line (pyinfra.connectors.util.read_output_buffers)."""
    if not text:
        return []
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)


def test_each_part_of_a_probe_reads_as_it_would_alone_in_a_real_shell():
    nonce = "0123456789ab"
    command = fact_cache.probe_command(PARTS, nonce).get_raw_value()
    parts = fact_cache.split_output(pyinfra_lines(sh(command).stdout), nonce)
    assert sorted(parts) == list(range(len(PARTS)))
    for index, part in enumerate(PARTS):
        alone = sh(part)
        assert parts[index] == (alone.returncode, pyinfra_lines(alone.stdout)), part


@pytest.fixture
def doubles(monkeypatch):
    return install_doubles(monkeypatch)


@contextmanager
def removed_after_probe(host: GpuHostDouble, path: str, probes: int) -> Iterator[None]:
    """``path`` disappears from ``host`` once its ``probes``-th state probe has answered."""
    real_run = host.run
    seen = []

    def run(command):
        result = real_run(command)
        if fact_cache.PROBE_MARK in command:
            seen.append(command)
            if len(seen) == probes:
                host.files.pop(path)
        return result

    host.run = run
    try:
        yield
    finally:
        host.run = real_run


def commands_of(state) -> list[str]:
    return [c for host in state.inventory for c in host.connector.executed_commands]


@pytest.mark.parametrize("distro", DISTROS)
def test_a_converged_gpu_stack_reads_its_state_in_three_commands(doubles, distro):
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT})
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state) and host.changes == []
    commands = commands_of(state)
    # planning: the plan's facts, then what the operations read; executing: all of it again
    assert len(commands) <= 3, commands
    assert all(fact_cache.PROBE_MARK in c for c in commands)


@pytest.mark.parametrize("distro", DISTROS)
def test_as_provision_apply_plans_a_converged_gpu_stack_reads_its_state_twice(doubles, distro):
    """``provision apply`` runs pyinfra with ``-y``: operations are not run while planning, so
    what they read is registered, not read: one probe plans the host, one executes it."""
    host = GpuHostDouble(distro=distro, gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT}, check_for_changes=False)
    state = apply(doubles, {"a": host}, {"a": TOOLKIT}, check_for_changes=False)
    assert not failed(state) and host.changes == []
    commands = commands_of(state)
    assert len(commands) == 2, commands
    assert all(fact_cache.PROBE_MARK in c for c in commands)
    # the execution's probe reads the operations' state too: the torch venv, the profile
    assert "/etc/profile.d/cuda.sh" not in commands[0] and "/etc/profile.d/cuda.sh" in commands[1]


def test_as_provision_apply_plans_a_change_after_planning_is_seen(doubles):
    """The same as below without checks for changes while planning: the host changes after
    the one planning probe; the execution reads it again and puts the profile back."""
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT}, check_for_changes=False)
    profile = "/etc/profile.d/cuda.sh"
    # the planning probe (the only one) has answered
    with removed_after_probe(host, profile, probes=1):
        state = apply(doubles, {"a": host}, {"a": TOOLKIT}, check_for_changes=False)
    assert not failed(state)
    assert "upload /etc/profile.d/cuda.sh" in host.changes
    assert profile in host.files


def test_keys_registered_first_are_read_first_in_the_same_command(doubles):
    """What a site registers before the GPU stack plans (the host lock first) is read by the
    stack's planning probe, in registration order: one command, the lock before the state."""
    from pyinfra.api import deploy

    from provisioner.deploys.gpu import gpu_stack
    from provisioner.facts.system import KernelRelease, MemoryTotal

    class KernelAgain(KernelRelease):
        """Another fact with the same command: the command runs once, both read its output."""

    seen = {}

    @deploy("registers first")
    def site():
        fact_cache.register([(MemoryTotal, {}), (KernelRelease, {}), (KernelAgain, {})])
        gpu_stack()
        seen["again"] = fact_cache.get_fact(KernelAgain)
        seen["kernel"] = fact_cache.get_fact(KernelRelease)

    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT})  # converged first
    state = apply(doubles, {"a": host}, {"a": TOOLKIT}, deploy=site, check_for_changes=False)
    assert not failed(state) and host.changes == []
    first = commands_of(state)[0]
    assert first.index("/proc/meminfo") < first.index("cat /etc/os-release")
    assert first.count("uname -r") == 1  # registered twice, and another fact's same command
    assert seen["again"] == seen["kernel"] == host.kernel
    assert len(commands_of(state)) == 2  # no read alone of either


def test_a_change_between_planning_and_executing_is_seen(doubles):
    """The probe read at planning time says the profile script is in place; it is removed
    before the operations execute: the execution reads the host again and puts it back."""
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT})
    profile = "/etc/profile.d/cuda.sh"
    assert profile in host.files

    # the planning probe of the operations' state has answered
    with removed_after_probe(host, profile, probes=2):
        state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state)
    assert profile in host.files
    assert "upload /etc/profile.d/cuda.sh" in host.changes


def test_a_change_made_by_an_operation_is_seen_by_the_operations_after_it(doubles):
    """An operation upgrades the driver within its branch: the operations after it read the
    host again (one more probe after the install, not the values from before it), so the
    reboot into the new module happens and the packages end held."""
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": {"nvidia_driver_version": "580.105.08-1"}})
    state = apply(doubles, {"a": host}, {"a": {"nvidia_driver_version": "580.126.09-1"}})
    assert not failed(state)
    commands = commands_of(state)
    install = next(i for i, c in enumerate(commands) if "nvidia-open=580.126.09-1" in c)
    assert any(fact_cache.PROBE_MARK in c for c in commands[install + 1 :])
    assert host.changes[-1] == REBOOT and host.module == "580.126.09"
    assert host.packages["nvidia-open"]["held"]


def test_a_part_that_fails_is_read_alone_as_pyinfra_would(doubles):
    """A probe part that exits non-zero is not kept: the fact is read by itself afterwards."""
    host = GpuHostDouble(distro="debian12", gpus=("2684",))
    apply(doubles, {"a": host}, {"a": TOOLKIT})
    real_fact = host._fact
    answered = []

    def fact(command):
        if command.startswith("uname -r") and not answered:
            answered.append(command)
            raise DoubleError("uname: simulated failure")
        return real_fact(command)

    host._fact = fact
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state) and host.changes == []
    alone = [c for c in commands_of(state) if c == "uname -r"]
    assert answered and alone == ["uname -r"]


def test_a_read_after_a_command_of_the_same_operation_sees_the_host_anew(doubles):
    """Ubuntu's nvidia-persistenced drop-in: the operation makes the folder, then pyinfra's
    files.put reads it inside the same operation: it must see the folder, not the probe's
    "missing" (a second mkdir would follow)."""
    host = GpuHostDouble(distro="ubuntu2204", gpus=("2684",))
    state = apply(doubles, {"a": host}, {"a": TOOLKIT})
    assert not failed(state)
    folder = "/etc/systemd/system/nvidia-persistenced.service.d"
    assert host.changes.count(f"mkdir -p {folder}") == 1
    assert host.changes.count(f"upload {folder}/provisioner.conf") == 1


def test_changes_so_far_counts_what_pyinfra_says_changed():
    """The count read from ``OperationMeta``'s fields is what its methods say: complete and
    changed operations only; a meta without those fields is asked through its methods."""
    from types import SimpleNamespace

    from pyinfra.api.operation import OperationMeta
    from pyinfra.connectors.util import CommandOutput

    def meta(success, commands):
        m = OperationMeta("hash", None)
        if success is not None:
            m.set_complete(success, commands, CommandOutput([]))
        return m

    metas = [
        meta(None, None),  # not run yet
        meta(True, ["apt-get install -y x"]),  # changed
        meta(True, []),  # no change
        meta(False, ["false"]),  # failed
        meta(True, ["touch /x", "chmod 644 /x"]),  # changed
    ]
    plain = SimpleNamespace(is_complete=lambda: True, did_change=lambda: True)  # other fields
    host = object()
    state = SimpleNamespace(
        ops={host: {i: SimpleNamespace(operation_meta=m) for i, m in enumerate([*metas, plain])}}
    )
    public = sum(m.is_complete() and m.did_change() for m in metas)
    assert public == 2
    assert fact_cache.changes_so_far(state, host) == public + 1
    assert fact_cache.changes_so_far(state, object()) == 0
