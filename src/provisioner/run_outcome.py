"""Why each failed host failed, told by the pyinfra process itself (a structured side channel).

``provision apply`` does not run ``python -m pyinfra`` but ``python -m provisioner.run_outcome``:
the same pyinfra CLI (:func:`pyinfra_cli.main.main`, unchanged arguments, unchanged stdout), with
two additions while it runs, and one file written when it ends, however it ends:

- a :class:`logging.Handler` on pyinfra's logger keeps each host's error messages (the
  connection that failed, the command that timed out, the reason an operation refused the host);
- when pyinfra stops, even with ``No hosts remaining!`` (every host failed, so pyinfra prints no
  ``--json`` result), the run's per-operation results are built from pyinfra's own state with
  pyinfra's own ``build_results_json`` (so counts stay true), and each failed host gets one
  sentence: the step that failed and its cause, from the error messages and the step's output.

The file named by ``$PROVISIONER_RUN_OUTCOME`` receives ``{"results": ..., "hosts": {NAME:
{"step": ..., "error": ...}}}``; :func:`read` loads it back in ``apply.py``. Causes (a full
disk, a host that stopped answering, a checksum mismatch) are named from
``data/failure_causes.toml``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tomllib
from functools import cache
from importlib import resources
from typing import Any

#: Environment variable naming the file the outcome is written to (set by ``apply.py``).
OUTCOME_ENV = "PROVISIONER_RUN_OUTCOME"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s*(?:nested\s+)?(?P<text>.*)$", re.S)
# pyinfra's own summary lines, which say that something failed but not why.
_GENERIC = re.compile(
    r"^(Error(?: \(ignored[^)]*\))?(?:: executed \d+ commands.*)?|Error in nested operation)$"
)
_MAX_DETAIL = 400


@cache
def causes() -> list[tuple[re.Pattern[str], str]]:
    """The cause table of ``data/failure_causes.toml``: (pattern, what it means)."""
    text = (resources.files("provisioner") / "data" / "failure_causes.toml").read_text()
    return [(re.compile(c["match"], re.I), c["says"]) for c in tomllib.loads(text)["cause"]]


def clean(text: str) -> str:
    """``text`` without terminal colours, on one line, without surrounding blanks."""
    return " ".join(_ANSI.sub("", text).split())


class ErrorLog(logging.Handler):
    """Keeps, per host, the error messages pyinfra logs (``[host] message``)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.by_host: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            match = _PREFIX.match(_ANSI.sub("", record.getMessage()))
        except Exception:  # a message that does not format is not ours to report
            return
        if not match:
            return
        text = clean(match["text"])
        if text and not _GENERIC.match(text):
            self.by_host.setdefault(match["host"].strip(), []).append(text)


def _op_name(state: Any, op_hash: str) -> str:
    names = sorted(state.get_op_meta(op_hash).names)
    return ", ".join(names) or op_hash


def _first_failure(state: Any, host: Any) -> tuple[str | None, list[str]]:
    """The first operation that failed on ``host`` and its output (stderr first)."""
    for op_hash in state.get_op_order():
        data = state.ops.get(host, {}).get(op_hash)
        if data is None:
            continue
        meta = data.operation_meta
        if meta.is_complete() and meta.did_error():
            output = meta._combined_output
            lines: list[str] = []
            if output is not None:
                lines = [*output.stderr_lines, *output.stdout_lines]
            return _op_name(state, op_hash), lines
    return None, []


def _detail(messages: list[str], output: list[str]) -> str:
    """The most telling text: the last error pyinfra logged, else the step's last output."""
    meaningful = [clean(line) for line in output if clean(line)]
    text = messages[-1] if messages else " ".join(meaningful[-3:])
    if messages and meaningful and meaningful[-1] not in text:
        text = f"{text} ({meaningful[-1]})"
    return text[:_MAX_DETAIL] or "no output"


def sentence(step: str, detail: str) -> str:
    """``step 'X' failed: <cause>: <detail>`` with the cause from the table when one matches."""
    for pattern, says in causes():
        if pattern.search(detail):
            return f"step '{step}' failed: {says}: {detail}"
    return f"step '{step}' failed: {detail}"


def host_errors(state: Any, log: ErrorLog) -> dict[str, dict[str, str]]:
    """For each host that failed: the step (``connect`` before any operation) and the sentence."""
    activated = set(getattr(state, "activated_hosts", ()))
    failed = set(getattr(state, "failed_hosts", ()))
    errors: dict[str, dict[str, str]] = {}
    for host in getattr(state, "inventory", None) or ():
        if limit := getattr(state, "limit_hosts", None):
            if host not in limit:
                continue
        messages = log.by_host.get(host.name, [])
        if host not in activated:
            detail = messages[-1] if messages else "the host did not accept the connection"
            errors[host.name] = {"step": "connect", "error": sentence("connect", detail)}
            continue
        step, output = _first_failure(state, host)
        if step is None and host not in failed:
            continue
        step = step or "run"
        errors[host.name] = {"step": step, "error": sentence(step, _detail(messages, output))}
    return errors


def results(state: Any) -> dict[str, Any] | None:
    """pyinfra's own ``--json`` results for what ran, or None before anything could run."""
    if not getattr(state, "initialised", False) or not getattr(state, "is_executing", False):
        return None
    from pyinfra_cli.prints import build_results_json

    try:
        return build_results_json(state)
    except Exception:  # a state pyinfra itself could not summarise: the counts stay unknown
        return None


def write(path: str, state: Any, log: ErrorLog) -> None:
    """Write the outcome of the run ``state`` describes to ``path`` (JSON)."""
    document: dict[str, Any] = {"results": None, "hosts": {}}
    if state is not None and getattr(state, "initialised", False):
        document = {"results": results(state), "hosts": host_errors(state, log)}
    elif log.by_host:  # stopped before the state was set up: what was logged is all there is
        document["hosts"] = {
            name: {"step": "connect", "error": sentence("connect", messages[-1])}
            for name, messages in log.by_host.items()
        }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle)


def read(path: str) -> dict[str, Any]:
    """The outcome written by :func:`write`; an empty outcome when the file is missing or torn
    (the pyinfra process was killed)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return {"results": None, "hosts": {}}
    return document if isinstance(document, dict) else {"results": None, "hosts": {}}


def main() -> None:
    """Run pyinfra's CLI on ``sys.argv`` and write the outcome file on the way out."""
    from pyinfra.context import ctx_state
    from pyinfra_cli.main import main as pyinfra_main

    from provisioner import pyinfra_speed

    pyinfra_speed.install()
    path = os.environ.get(OUTCOME_ENV)
    log = ErrorLog()
    logging.getLogger("pyinfra").addHandler(log)
    sys.argv[0] = "pyinfra"
    try:
        pyinfra_main()
    finally:
        if path:
            state = ctx_state.get() if ctx_state.isset() else None
            write(path, state, log)


if __name__ == "__main__":
    main()
