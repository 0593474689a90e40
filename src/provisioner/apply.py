"""Run a packaged deploy over an inventory with pyinfra's own CLI, and summarise the result.

``provision apply`` runs ``pyinfra INVENTORY provisioner/entrypoints/site.py`` as a subprocess
so that group_data, ``--limit``, ordering and failure handling are exactly pyinfra's. pyinfra's
progress goes straight to the terminal (stderr); its ``--json`` result (stdout) is turned into a
per-host summary: changed / unchanged / failed operations. pyinfra runs through
:mod:`provisioner.run_outcome`, which writes each failed host's reason (and the results when
every host failed and pyinfra printed none) to a side file this module reads back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import run_events
from provisioner.interrupts import stop_child
from provisioner.inventory import pyinfra_limit
from provisioner.run_outcome import OUTCOME_ENV
from provisioner.run_outcome import read as read_outcome

if TYPE_CHECKING:
    from provisioner.inventory import LoadedInventory


# Operations that record a run rather than change the host (deploys/monitoring.py).
BOOKKEEPING_OPERATIONS = ("Record the successful apply (monitoring)",)

EXIT_PENDING_REBOOT = 3


@dataclass
class HostRun:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending_reboot: str | None = None
    #: Why the host failed: the step and its cause, in one sentence (None when it did not fail).
    error: str | None = None

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.pending_reboot:
            return "pending-reboot"
        return "changed" if self.changed else "unchanged"


@dataclass
class RunResult:
    """What a pyinfra run did on each host."""

    deploy: str
    dry: bool
    returncode: int
    hosts: dict[str, HostRun]
    failed_hosts: list[str]
    raw: dict[str, Any] | None

    @property
    def exit_code(self) -> int:
        """0 done; 1 a host failed; 3 every host succeeded but some wait for a reboot."""
        if self.returncode or self.failed_hosts:
            return 1
        if any(run.pending_reboot for run in self.hosts.values()):
            return EXIT_PENDING_REBOOT
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "deploy": self.deploy,
            "dry": self.dry,
            "hosts": {
                name: {
                    "status": run.status,
                    "changed": run.changed,
                    "unchanged": len(run.unchanged),
                    "failed": run.failed,
                    "pending_reboot": run.pending_reboot,
                    "error": run.error,
                }
                for name, run in self.hosts.items()
            },
            "failed_hosts": self.failed_hosts,
            "exit_code": self.exit_code,
        }

    def advice(self) -> list[str]:
        lines = []
        for name in self.failed_hosts:
            run = self.hosts.get(name)
            if run and run.error:
                why = f": {run.error}"
            else:
                where = f" at '{run.failed[0]}'" if run and run.failed else ""
                why = f"{where}; the reason is in pyinfra's output above"
            lines.append(
                f"provision: host {name} failed{why}. Fix it and re-run with --limit {name}."
            )
        for name, run in self.hosts.items():
            if run.pending_reboot and name not in self.failed_hosts:
                lines.append(
                    f"provision: host {name} is PENDING REBOOT ({run.pending_reboot}): it is not "
                    f"done until it reboots; re-run without --no-reboot, or reboot it and re-run."
                )
        return lines


def entrypoint(deploy: str) -> str:
    """Path of a packaged pyinfra deploy file (``provisioner/entrypoints/<deploy>.py``)."""
    return str(resources.files("provisioner") / "entrypoints" / f"{deploy}.py")


def pyinfra_command(
    loaded: LoadedInventory,
    deploy: str,
    *,
    limit: tuple[str, ...] = (),
    dry: bool = False,
    serial: bool = False,
    batch: int | None = None,
    data: dict[str, Any] | None = None,
) -> list[str]:
    # pyinfra's own CLI, through the launcher that reports each failed host's reason
    command = [sys.executable, "-m", "provisioner.run_outcome", loaded.source, entrypoint(deploy)]
    command.append("--json")
    # --dry without -y: pyinfra detects changes, prints the plan and executes nothing.
    command.append("--dry" if dry else "-y")
    if limit:  # pyinfra is given the hosts we selected, in a form its --limit understands
        for value in pyinfra_limit(loaded):
            command += ["--limit", value]
    if serial:
        command.append("--serial")
    if batch:
        command += ["--parallel", str(batch)]
    for key, value in (data or {}).items():
        # JSON even for strings: pyinfra's --data parser would turn "2.10" into the float 2.1
        command += ["--data", f"{key}={json.dumps(value)}"]
    return command


def parse_results(
    raw: dict[str, Any], host_names: list[str]
) -> tuple[dict[str, HostRun], list[str]]:
    hosts = {name: HostRun() for name in host_names}
    results = raw.get("results") or {}
    for op in results.get("operations", []):
        name = op.get("name", "?")
        if name.rsplit(" | ", 1)[-1] in BOOKKEEPING_OPERATIONS:  # changes on every run by nature
            continue
        for host in op.get("success", []):
            hosts.setdefault(host, HostRun()).changed.append(name)
        for host in op.get("no_change", []):
            hosts.setdefault(host, HostRun()).unchanged.append(name)
        for host in op.get("error", []):
            hosts.setdefault(host, HostRun()).failed.append(name)
    if not results:  # --dry: only the plan
        for op in raw.get("plan", []):
            for host in op.get("hosts_with_change", []):
                hosts.setdefault(host, HostRun()).changed.append(op.get("name", "?"))
    failed = sorted(
        set(results.get("failed_hosts", [])) | {n for n, r in hosts.items() if r.failed}
    )
    return hosts, failed


def run_deploy(loaded: LoadedInventory, deploy: str, **options: Any) -> RunResult:
    """Run a packaged deploy with pyinfra over ``loaded``; pyinfra's log streams to stderr.

    + options: those of :func:`pyinfra_command` (limit, dry, serial, batch, data)
    """
    dry = bool(options.get("dry"))
    command = pyinfra_command(loaded, deploy, **options)
    with tempfile.TemporaryDirectory(prefix="provision-apply-") as folder:
        events_file = Path(folder) / "events.jsonl"
        events_file.touch()
        outcome_file = Path(folder) / "outcome.json"
        env = {**os.environ, run_events.ENV: str(events_file), OUTCOME_ENV: str(outcome_file)}
        out, returncode = _run_pyinfra(command, env)
        pending = run_events.pending_reboots(run_events.read(events_file))
        outcome = read_outcome(str(outcome_file))
    names = [host.name for host in loaded.hosts]
    return summarise(deploy, dry, returncode, out, outcome, names, pending)


def summarise(
    deploy: str,
    dry: bool,
    returncode: int,
    out: str,
    outcome: dict[str, Any],
    names: list[str],
    pending: dict[str, str],
) -> RunResult:
    """Turn pyinfra's --json output (``out``) and the launcher's outcome into a :class:`RunResult`.

    When pyinfra printed no result (every host failed: ``No hosts remaining!``), the results the
    launcher rebuilt from pyinfra's state stand in, so the counts stay true.
    """
    try:
        raw = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        sys.stderr.write(out)
        raw = None
    if raw is None and outcome.get("results"):
        raw = {"plan": [], "results": outcome["results"]}
    told = {
        name: entry
        for name, entry in (outcome.get("hosts") or {}).items()
        if isinstance(entry, dict) and entry.get("error")
    }
    if raw is None:
        hosts = {name: HostRun(failed=["pyinfra run"]) for name in names}
        failed = list(names)
        returncode = returncode or 1
    else:
        hosts, failed = parse_results(raw, names)
        failed = sorted(set(failed) | set(told) & set(names))
    for name in failed:
        run = hosts.setdefault(name, HostRun())
        entry = told.get(name) or {}
        if not run.failed:  # failed before any operation ran: the step the launcher named
            run.failed.append(str(entry.get("step") or "pyinfra run"))
        run.error = str(entry["error"]) if entry else _unexplained(run, returncode)
    for name, why in pending.items():
        if name in hosts:
            hosts[name].pending_reboot = why
    return RunResult(deploy, dry, returncode, hosts, failed, raw)


def _unexplained(run: HostRun, returncode: int) -> str:
    step = run.failed[0] if run.failed else "pyinfra run"
    return (
        f"step '{step}' failed (pyinfra exited {returncode}); no reason was reported: "
        "see pyinfra's output above"
    )


def _run_pyinfra(command: list[str], env: dict[str, str]) -> tuple[str, int]:
    """Run pyinfra; its progress (stderr) goes on to the terminal as it comes. Returns its
    stdout (the ``--json`` result) and exit status."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    reader = threading.Thread(target=_relay_stderr, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait()
    except KeyboardInterrupt:  # pyinfra got the terminal's Ctrl-C too: bound its exit
        stop_child(proc)
        raise
    reader.join()
    return out, proc.returncode


def _relay_stderr(stream: Iterable[str]) -> None:
    """Copy pyinfra's log to our stderr, line by line."""
    for line in stream:
        sys.stderr.write(line)
    sys.stderr.flush()
