"""Two costs pyinfra 3.10 pays for every operation on every host, made cheap with the same
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

``tests/unit/test_pyinfra_speed.py`` checks both against pyinfra's own functions, called from
the same frames.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from typing import Any

import pyinfra

# the modules themselves (``pyinfra.api`` exports a function named ``operation``)
arguments = importlib.import_module("pyinfra.api.arguments")
facts = importlib.import_module("pyinfra.api.facts")
operation = importlib.import_module("pyinfra.api.operation")
util = importlib.import_module("pyinfra.api.util")

_original_order = util.get_operation_order_from_stack
_original_arguments = arguments.all_global_arguments


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


def install() -> None:
    """Use :func:`operation_order` and :func:`all_global_arguments` where pyinfra calls its
    own (idempotent)."""
    operation.get_operation_order_from_stack = operation_order
    arguments.all_global_arguments = all_global_arguments
    facts.all_global_arguments = all_global_arguments
