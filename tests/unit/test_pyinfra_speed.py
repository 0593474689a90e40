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


def test_install_replaces_the_names_pyinfra_calls(monkeypatch):
    for module, name in [
        (operation_module, "get_operation_order_from_stack"),
        (arguments, "all_global_arguments"),
        (facts_module, "all_global_arguments"),
    ]:
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    pyinfra_speed.install()
    assert operation_module.get_operation_order_from_stack is pyinfra_speed.operation_order
    assert arguments.all_global_arguments is pyinfra_speed.all_global_arguments
    assert facts_module.all_global_arguments is pyinfra_speed.all_global_arguments


def test_provision_apply_installs_them(monkeypatch):
    from provisioner import run_outcome

    called = []
    monkeypatch.setattr(pyinfra_speed, "install", lambda: called.append(True))
    monkeypatch.setattr("pyinfra_cli.main.main", lambda: None)
    monkeypatch.setattr("sys.argv", ["provision"])
    run_outcome.main()
    assert called == [True]
