"""``provisioner.pyinfra_speed``: pyinfra's per-operation helpers, made cheap, give exactly
what pyinfra's own give, called from the same frames; and ``provision apply`` (run_outcome)
installs them."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pyinfra
import pytest

from provisioner import pyinfra_speed

util = importlib.import_module("pyinfra.api.util")
arguments = importlib.import_module("pyinfra.api.arguments")
operation_module = importlib.import_module("pyinfra.api.operation")
facts_module = importlib.import_module("pyinfra.api.facts")


def _both(state):
    # one line: both are called from the same line of the same frames
    return pyinfra_speed._original_order(state), pyinfra_speed.operation_order(state)


def _nested(state, depth):
    if depth:
        return _nested(state, depth - 1)
    return _both(state)


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", [None, __file__, "/nowhere/deploy.py"])
@pytest.mark.parametrize("depth", [0, 3])
def test_the_operation_order_is_pyinfras(monkeypatch, is_cli, deploy_file, depth):
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = _nested(state, depth)
    assert ours == theirs
    prefix = [7] if is_cli else []
    assert ours[: len(prefix)] == prefix
    if deploy_file == "/nowhere/deploy.py":  # not on the stack: no frame is counted
        assert ours == prefix
    else:  # this test's frames are counted, pyinfra's are not
        assert len(ours) >= len(prefix) + 2 + depth


def test_frames_inside_pyinfra_are_left_out(monkeypatch):
    """Called through a frame in pyinfra's package (``util.memoize``'s wrapper), as operations
    are: that frame adds no line number, the test's frames around it do."""
    monkeypatch.setattr(pyinfra, "is_cli", False)
    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=0)
    theirs, ours = util.memoize(_both)(state)
    assert ours == theirs
    direct = _both(state)[1]
    assert len(ours) == len(direct)  # memoize's frame left out, the test's frames kept


def test_the_global_arguments_are_pyinfras_and_each_call_gets_its_own_list():
    first = pyinfra_speed.all_global_arguments()
    assert first == pyinfra_speed._original_arguments()
    first.clear()
    assert pyinfra_speed.all_global_arguments() == pyinfra_speed._original_arguments()


def _inventory_state():
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(
        (
            [
                ("a", {"_sudo": True, "_env": {"FROM": "host"}, "plain": 1}),
                ("b", {"_shell_executable": "bash"}),
                "c",
            ],
            {"_sudo_password": "not-a-secret", "_env": {"FROM": "inventory"}},
        ),
        {"_get_pty": True},  # override data (pyinfra's --data)
        gpu=(["a", "b"], {"_sudo_user": "ops", "_env": {"FROM": "group"}, "_timeout": 30}),
        slow=(["b"], {"_timeout": 90, "_retries": 2}),
    )
    return inventory, State(inventory, Config())


def _pop_both(state, host, kwargs):
    theirs = pyinfra_speed._original_pop(state, host, dict(kwargs))
    ours = pyinfra_speed.pop_global_arguments(state, host, dict(kwargs))
    return theirs, ours


@pytest.mark.parametrize(
    "kwargs", [{}, {"_sudo": False, "_timeout": 5}, {"_env": {"FROM": "call"}, "name": "x"}]
)
def test_the_global_arguments_popped_are_pyinfras(kwargs):
    """Each layer of host data (host, its groups, the inventory, an override set during the
    deploy, the deploy's data) and the call's own arguments: the same arguments and keys."""
    inventory, state = _inventory_state()
    hosts = {h.name: h for h in inventory}
    hosts["c"].data._timeout = 7  # override, as ``host.data.x = ...`` in a deploy
    hosts["b"].current_deploy_data = {"_retries": 5, "_sudo": True}
    for host in hosts.values():
        data = host.data
        theirs, ours = _pop_both(state, host, kwargs)
        assert ours == theirs, host.name
        assert host.data is data  # put back
    popped = pyinfra_speed.pop_global_arguments(state, hosts["a"], dict(kwargs))[0]
    assert popped["_env"] == kwargs.get("_env", {"FROM": "host"})
    b = pyinfra_speed.pop_global_arguments(state, hosts["b"], {})[0]
    # the group's _retries over the deploy's (its data are defaults); _sudo from the deploy
    assert (b["_timeout"], b["_retries"], b["_sudo_user"], b["_sudo"]) == (90, 2, "ops", True)
    assert pyinfra_speed.pop_global_arguments(state, hosts["c"], {})[0]["_timeout"] == 7


def test_a_host_data_value_is_a_copy_as_pyinfra_gives_it():
    inventory, state = _inventory_state()
    host = next(h for h in inventory if h.name == "a")
    popped = pyinfra_speed.pop_global_arguments(state, host, {})[0]
    popped["_env"]["FROM"] = "changed"
    merged = pyinfra_speed._MergedData(host.data)
    merged._env["FROM"] = "changed too"
    assert host.data._env == {"FROM": "host"} == merged._env
    with pytest.raises(AttributeError):
        merged._no_such_argument  # noqa: B018 - as getattr(host.data, key, default) reads it


def test_install_replaces_the_names_pyinfra_calls(monkeypatch):
    deploy_module = importlib.import_module("pyinfra.api.deploy")
    replaced = [
        (operation_module, "get_operation_order_from_stack", pyinfra_speed.operation_order),
        (arguments, "all_global_arguments", pyinfra_speed.all_global_arguments),
        (facts_module, "all_global_arguments", pyinfra_speed.all_global_arguments),
        (operation_module, "pop_global_arguments", pyinfra_speed.pop_global_arguments),
        (facts_module, "pop_global_arguments", pyinfra_speed.pop_global_arguments),
        (deploy_module, "pop_global_arguments", pyinfra_speed.pop_global_arguments),
    ]
    for module, name, _ in replaced:
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    pyinfra_speed.install()
    for module, name, ours in replaced:
        assert getattr(module, name) is ours, (module.__name__, name)


def test_provision_apply_installs_them(monkeypatch):
    from provisioner import run_outcome

    called = []
    monkeypatch.setattr(pyinfra_speed, "install", lambda: called.append(True))
    monkeypatch.setattr("pyinfra_cli.main.main", lambda: None)
    monkeypatch.setattr("sys.argv", ["provision"])
    run_outcome.main()
    assert called == [True]


def test_through_pyinfra_s_host_proxy_the_host_itself_is_read():
    """Operations pass ``pyinfra.host`` (a context proxy): the same arguments, and the real
    host's data is put back."""
    from pyinfra import host as proxy
    from pyinfra.context import ctx_host

    inventory, state = _inventory_state()
    real = next(h for h in inventory if h.name == "b")
    data = real.data
    with ctx_host.use(real):
        theirs, ours = _pop_both(state, proxy, {"_timeout": 3})
    assert ours == theirs and ours[0]["_timeout"] == 3
    assert real.data is data
