"""Connecting to a fleet: the one place that opens pyinfra connections to many hosts at once.

``provision facts``/``plan``/``verify`` (through :mod:`provisioner.gather`) and ``provision
models sync``/``update`` (:mod:`provisioner.models_sync`) all go through here:

- :func:`make_state` builds pyinfra's ``State`` over the selected hosts; its greenlet pool is
  the bound on how many hosts are worked on at once (``parallel``; 0: pyinfra's default, at
  most 20 per CPU and never more than the hosts).
- :func:`connect` connects every host in parallel; a host that cannot be reached is returned
  with its error and never stops the others.
- :func:`each` runs a function for every connected host in parallel, inside that host's pyinfra
  context; an exception is that host's error, never the others'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyinfra.api import Host, State

    from provisioner.inventory import LoadedInventory

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """One line for an exception: its type and message (``ConnectError: timed out``)."""
    return f"{type(exc).__name__}: {exc}".strip()


def make_state(
    loaded: LoadedInventory, parallel: int = 0, fail_percent: int | None = None
) -> State:
    """pyinfra's ``State`` over the selected hosts of ``loaded``.

    + parallel: hosts worked on at once (the greenlet pool's size; 0: pyinfra's default)
    + fail_percent: pyinfra's ``FAIL_PERCENT`` (None: a failed host never stops the others)
    """
    from pyinfra.api import Config, State

    state = State()
    config = Config(PARALLEL=parallel, FAIL_PERCENT=fail_percent)
    state.init(loaded.inventory, config, initial_limit=loaded.hosts)
    return state


def connect(state: State, hosts: Iterable[Host]) -> dict[str, str]:
    """Connect every host of ``hosts`` in parallel (at most the state's pool size at once).

    A host that connects is activated in ``state`` (``state.active_hosts``); the result holds,
    by host name, the error of each host that did not (refused, auth, DNS, timeout...).
    """
    import gevent

    errors: dict[str, str] = {}

    def one(target: Host) -> None:
        try:
            target.connect(raise_exceptions=True, show_errors=False)
        except Exception as exc:  # refused, auth, DNS...: reported, the others go on
            errors[target.name] = describe(exc)
            return
        state.activate_host(target)

    gevent.joinall([state.pool.spawn(one, target) for target in hosts])
    return errors


def in_context(state: State, target: Host, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func`` inside ``target``'s pyinfra context (facts and operations need it)."""
    from pyinfra.context import ctx_host, ctx_state

    with ctx_state.use(state), ctx_host.use(target):
        return func(*args, **kwargs)


def each(
    state: State, hosts: Iterable[Host], func: Callable[[Host], T]
) -> tuple[dict[str, T], dict[str, str]]:
    """Run ``func(host)`` for every host in parallel, each inside its own pyinfra context.

    Returns ``(results, errors)`` by host name: what ``func`` returned, or the exception it
    raised (:func:`describe`); one host's exception never stops the others.
    """
    import gevent

    results: dict[str, T] = {}
    errors: dict[str, str] = {}

    def one(target: Host) -> None:
        try:
            results[target.name] = in_context(state, target, func, target)
        except Exception as exc:
            errors[target.name] = describe(exc)

    gevent.joinall([state.pool.spawn(one, target) for target in hosts])
    return results, errors


def connected(state: State, hosts: Iterable[Host]) -> list[Host]:
    """The hosts of ``hosts`` that :func:`connect` connected, in their order."""
    return [target for target in hosts if target in state.active_hosts]


def disconnect(state: State) -> None:
    """Close every connection of ``state``."""
    from pyinfra.api.connect import disconnect_all

    disconnect_all(state)
