"""Stopping a run that was interrupted (Ctrl-C), on the controller and on the hosts.

``models sync`` runs pyinfra in this process: Ctrl-C raises ``KeyboardInterrupt`` in the main
greenlet only, while each host's greenlet would go on streaming its download. :func:`stop_run`
kills those greenlets (a killed stream closes its SSH channel or its local pipe, and the fetch
helper on the host, finding nobody reading its progress within a second, stops its curl and
exits) and closes every connection. ``provision apply`` runs pyinfra as a child process:
:func:`stop_child` passes the interrupt on and bounds the wait for it to end.

Python's own Ctrl-C raises ``KeyboardInterrupt`` in whichever greenlet runs when the signal is
handled: in one of the threads gevent turned into greenlets (paramiko's transport, a progress
refresher) it is swallowed by ``threading``'s exception hook, and the run goes on. And a
process started with SIGINT ignored (a background job of a shell script) never sees it.
:func:`delivered_to_main` makes both SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main
greenlet, where the run's own handlers stop it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

from provisioner import bounds

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


#: The signals that stop a run like Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: Any) -> None:
    """Raise ``KeyboardInterrupt`` in the main greenlet: here when it is the one running, else
    thrown into it from gevent's hub on its next turn (the running greenlet goes on)."""
    import greenlet
    from gevent import get_hub

    if greenlet.getcurrent().parent is None:  # the main greenlet
        raise KeyboardInterrupt
    hub = get_hub()
    hub.loop.run_callback(hub.parent.throw, KeyboardInterrupt)


@contextlib.contextmanager
def delivered_to_main() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main greenlet,
    whatever greenlet runs when they arrive, even if the process started with them ignored."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_run(state: Any) -> None:
    """Kill every greenlet of the run ``state`` and close its hosts' connections."""
    pool = getattr(state, "pool", None)
    if pool is not None:
        pool.kill(block=True, timeout=bounds.get("interrupt", "grace_s"))
    for target in list(getattr(state, "activated_hosts", ())):
        try:
            target.disconnect()
        except Exception:  # a connection already gone is what we want
            pass


def stop_child(proc: subprocess.Popen) -> None:
    """Pass an interrupt on to ``proc`` (pyinfra) and wait ``grace_s`` for it; kill it after."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=bounds.get("interrupt", "grace_s"))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def message(what: str) -> str:
    """What the operator is told after an interrupt."""
    return (
        f"provision: {what} interrupted; the steps running on the hosts were stopped. "
        "Re-run the same command to finish: every step is safe to repeat."
    )
