"""Structured per-host events from a deploy run back to ``provision apply``.

``provision apply`` runs pyinfra's CLI as a subprocess (see :mod:`provisioner.apply`). What a
deploy must tell ``apply`` beyond pyinfra's ``--json`` result (today: a host that waits for a
reboot it may not do) travels through a JSON-lines file on the control machine, never through
pyinfra's log:

1. ``apply`` creates an empty file and passes its path to pyinfra in the environment
   variable :data:`ENV` (``PROVISIONER_EVENTS``);
2. an operation calls :func:`record` while it executes; each call appends one line
   ``{"host": NAME, "event": KIND, ...fields}`` (one ``write`` of a whole line to a file opened
   for appending, so the greenlets of a run never interleave);
3. after pyinfra exits, ``apply`` reads the lines back with :func:`read`.

Without the variable (``pyinfra`` run by hand, the API-mode tests) :func:`record` does nothing:
the log line the operation writes beside it is then the only trace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ENV", "PENDING_REBOOT", "read", "record"]

#: The environment variable that names the events file.
ENV = "PROVISIONER_EVENTS"
#: A host needs a reboot that the run may not do (``reason`` says why and what).
PENDING_REBOOT = "pending-reboot"


def record(host_name: str, event: str, **fields: Any) -> bool:
    """Append one event for ``host_name`` to the events file; False when there is none."""
    path = os.environ.get(ENV)
    if not path:
        return False
    line = json.dumps({"host": host_name, "event": event, **fields}, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line)
    return True


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every event of the file, in order. A line that is not a JSON object with ``host`` and
    ``event`` (a run killed mid-write) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "host" in event and "event" in event:
            events.append(event)
    return events


def pending_reboots(events: list[dict[str, Any]]) -> dict[str, str]:
    """The reason of each host's pending reboot (the last one recorded wins)."""
    return {
        str(e["host"]): str(e.get("reason", "")) for e in events if e["event"] == PENDING_REBOOT
    }
