"""Three costs pyinfra 3.10 pays for every operation on every host, made cheap with the same
results; :func:`install` is called by ``provision apply`` (``run_outcome``) before the deploy
runs.

* ``get_operation_order_from_stack``: the line numbers that order an operation. pyinfra
  builds ``inspect.stack()`` (every frame with its source lines read) and calls
  ``getframeinfo`` again on each frame, for each operation call: 52 operations on 8 hosts
  took 0.6 s of a converged run's 1.5 s of controller CPU. :func:`operation_order` walks the
  same frames and reads the same two values (``co_filename``, ``f_lineno``).
* ``all_global_arguments``: ``typing.get_type_hints`` of pyinfra's argument classes, evaluated
  again on every operation and fact call; the classes do not change in a run, so the answer
  is computed once.
* ``pop_global_arguments``: each of the 33 global arguments (``_sudo``, ``_env``, ...) looked
  up in ``host.data``, for each operation and fact call. Each lookup calls the host's five data
  layers (override, host, groups, inventory, deploy) and merges every group's data again:
  1,700 lookups per host in a converged run, a quarter of the controller's CPU per host.
  :func:`pop_global_arguments` answers them from one merge of the layers (``HostData.dict``,
  the same precedence), made once per call.

``tests/unit/test_pyinfra_speed.py`` checks all three against pyinfra's own functions, called from
the same frames.
"""

from __future__ import annotations

import importlib
import os
import sys
from copy import copy
from functools import cache
from typing import Any

import pyinfra
from pyinfra.context import ContextObject

# the modules themselves (``pyinfra.api`` exports a function named ``operation``)
arguments = importlib.import_module("pyinfra.api.arguments")
deploy = importlib.import_module("pyinfra.api.deploy")
facts = importlib.import_module("pyinfra.api.facts")
operation = importlib.import_module("pyinfra.api.operation")
util = importlib.import_module("pyinfra.api.util")

_original_order = util.get_operation_order_from_stack
_original_arguments = arguments.all_global_arguments
_original_pop = arguments.pop_global_arguments


def _filename(frame: Any) -> str:
    """The file ``inspect.getframeinfo`` names for ``frame``: its code's file, a compiled
    ``.pyc`` named by its source (``inspect.getsourcefile``)."""
    name = frame.f_code.co_filename
    if name.endswith((".pyc", ".pyo")) and os.path.exists(name[:-1]):
        return name[:-1]
    return name


def operation_order(state: Any) -> list[int]:
    """pyinfra's ``get_operation_order_from_stack(state)`` (pyinfra 3.10 ``api/util.py``):
    from the first frame of the deploy file being run (outermost first), the line number of
    each frame outside pyinfra's own package, after the file number of the CLI's deploy file."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    start = 0
    if state.current_deploy_filename:
        # pyinfra's loop ends on its own frame (inside pyinfra) when no frame is the file's
        wanted = state.current_deploy_filename
        start = next((i for i, f in enumerate(frames) if _filename(f) == wanted), len(frames))
    lines = [state.current_op_file_number] if pyinfra.is_cli else []
    lines += [
        item.f_lineno
        for item in frames[start:]
        if not _filename(item).startswith(util.PYINFRA_INSTALL_DIR)
    ]
    return lines


@cache
def _global_arguments() -> tuple[tuple[str, type], ...]:
    return tuple(_original_arguments())


def all_global_arguments() -> list[tuple[str, type]]:
    """pyinfra's ``all_global_arguments()``, computed once."""
    return list(_global_arguments())


class _MergedData:
    """``host.data`` for one ``pop_global_arguments`` call: attribute lookups answered from
    one ``HostData.dict()`` (its layers merged once, the first layer that has a key winning,
    as ``HostData.__getattr__`` reads them), a shallow copy of the value as it returns."""

    def __init__(self, data: Any) -> None:
        self._merged = data.dict()

    def __getattr__(self, key: str) -> Any:
        try:
            return copy(self._merged[key])
        except KeyError:
            raise AttributeError(key) from None


def pop_global_arguments(state: Any, host: Any, kwargs: dict[str, Any]) -> Any:
    """pyinfra's ``pop_global_arguments``, reading the host's data once (no I/O runs inside
    it, so no other greenlet sees the stand-in ``host.data``)."""
    # the host itself, not pyinfra's context proxy (``pyinfra.host``): each attribute read
    # through the proxy is a call
    host = host._get_module() if isinstance(host, ContextObject) else host
    data = host.data
    host.data = _MergedData(data)
    try:
        return _original_pop(state, host, kwargs)
    finally:
        host.data = data


def install() -> None:
    """Use :func:`operation_order`, :func:`all_global_arguments` and
    :func:`pop_global_arguments` where pyinfra calls its own (idempotent)."""
    operation.get_operation_order_from_stack = operation_order
    arguments.all_global_arguments = all_global_arguments
    facts.all_global_arguments = all_global_arguments
    for module in (operation, facts, deploy):
        module.pop_global_arguments = pop_global_arguments
