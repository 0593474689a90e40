"""Facts read by many operations of one run, fetched again only after something changed.

pyinfra 3 does not cache facts: each ``host.get_fact`` is a remote command, and the GPU stack's
operations read the same package fact (``dpkg-query``) nine times on a converged host. A value
cached here stays valid while no operation has changed the host since it was read: the key is
the number of completed operations on the host that executed commands. Use it only for reads at
the top of an operation (before it yields), never to poll for a change inside one.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from pyinfra.api import FactBase, Host, State
from pyinfra.context import ctx_host, ctx_state

_CACHE: WeakKeyDictionary[Host, tuple[int, dict[Any, Any]]] = WeakKeyDictionary()


def changes_so_far(state: State, host: Host) -> int:
    """How many completed operations changed ``host`` in this run."""
    return sum(
        1
        for data in state.ops.get(host, {}).values()
        if data.operation_meta.is_complete() and data.operation_meta.did_change()
    )


def get_fact(cls: type[FactBase], **kwargs: Any) -> Any:
    """``host.get_fact(cls, **kwargs)`` for the current host, re-used until an operation
    changes that host."""
    host, state = ctx_host.get(), ctx_state.get()
    if not isinstance(getattr(state, "ops", None), dict):  # no run to follow (test doubles)
        return host.get_fact(cls, **kwargs)
    generation = changes_so_far(state, host)
    cached_generation, values = _CACHE.get(host, (-1, {}))
    if cached_generation != generation:
        values = {}
        _CACHE[host] = (generation, values)
    key = (cls, tuple(sorted(kwargs.items())))
    if key not in values:
        values[key] = host.get_fact(cls, **kwargs)
    return values[key]
