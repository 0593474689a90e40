"""Stopping a run that was interrupted (Ctrl-C), on the controller and on the hosts.

``models sync`` runs pyinfra in this process: Ctrl-C raises ``KeyboardInterrupt`` in the main
greenlet only, while each host's greenlet would go on streaming its download. :func:`stop_run`
kills those greenlets (a killed stream closes its SSH channel or its local pipe, and the fetch
helper on the host, finding nobody reading its progress within a second, stops its curl and
exits) and closes every connection. ``provision apply`` runs pyinfra as a child process:
:func:`stop_child` passes the interrupt on and bounds the wait for it to end.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from provisioner import bounds

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


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
