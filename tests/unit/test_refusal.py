"""provisioner.operations.system.fail_host: the one way to refuse a host while a run goes on
(operations yield ``system.refusal(reason)``, a command running it)."""

from __future__ import annotations

import logging

from pyinfra.api import BaseStateCallback, FunctionCommand, Inventory
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from provisioner import fleet
from provisioner.deploys import _gpu_plan
from provisioner.inventory import LoadedInventory
from provisioner.operations import ollama, system


class Refusals(BaseStateCallback):
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def host_refused(self, state, host, reason):
        self.reasons.append((host.name, reason))


class Silent(BaseStateCallback):
    """A handler without ``host_refused``: it is left alone."""


class FakeHost:
    name = "gpu-1"

    def __init__(self) -> None:
        self.logged: list[tuple[str, str | None]] = []

    def log_styled(self, message, fg=None, log_func=None):
        self.logged.append((message, fg))


class FakeState:
    def __init__(self, *handlers) -> None:
        self.callback_handlers = list(handlers)


def test_fail_host_is_a_command_that_fails_the_host_and_announces_the_reason():
    command = system.refusal("no sha256 known for 0.32.15")
    assert isinstance(command, FunctionCommand) and command.function is system.fail_host
    refusals, host = Refusals(), FakeHost()
    assert command.function(FakeState(Silent(), refusals), host, *command.args) is False
    assert host.logged == [("no sha256 known for 0.32.15", "red")]
    assert refusals.reasons == [("gpu-1", "no sha256 known for 0.32.15")]


def _loaded(*names: str) -> LoadedInventory:
    inventory = Inventory(([(name, {}) for name in names], {}))
    return LoadedInventory(source="test", inventory=inventory, hosts=list(inventory))


def test_a_refused_host_fails_alone_and_its_reason_reaches_the_handlers(caplog):
    loaded = _loaded("@local")
    state = fleet.make_state(loaded)
    refusals = Refusals()
    state.add_callback_handler(refusals)
    assert not fleet.connect(state, loaded.hosts)
    try:
        add_op(state, ollama.refuse, reason="no sha256 known for 0.32.15")
        with caplog.at_level(logging.ERROR, logger="pyinfra"):
            run_ops(state)
    except Exception as exc:  # pyinfra stops when every host failed: here the only one
        assert "No hosts remaining" in str(exc) or state.failed_hosts
    finally:
        fleet.disconnect(state)
    assert [h.name for h in state.failed_hosts] == ["@local"]
    assert refusals.reasons == [("@local", "no sha256 known for 0.32.15")]
    assert "no sha256 known for 0.32.15" in caplog.text


def test_a_prepare_time_refusal_is_announced_the_same_way():
    loaded = _loaded("gpu-1", "gpu-2")
    state = fleet.make_state(loaded)
    refusals = Refusals()
    state.add_callback_handler(refusals)
    for each in loaded.hosts:
        state.activate_host(each)  # as a connection does
    target = loaded.hosts[0]
    fleet.in_context(state, target, _gpu_plan.refuse, "GPU stack", ValueError("unknown GPU"))
    reason = "GPU stack: refused, nothing was changed on this host: unknown GPU"
    assert refusals.reasons == [("gpu-1", reason)]
    assert state.failed_hosts == {target}
    assert [h.name for h in fleet.connected(state, loaded.hosts)] == ["gpu-2"]
