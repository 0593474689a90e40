"""Run a packaged deploy over an inventory with pyinfra's own CLI, and summarise the result.

``provision apply`` runs ``pyinfra INVENTORY provisioner/entrypoints/site.py`` as a subprocess
so that group_data, ``--limit``, ordering and failure handling are exactly pyinfra's. pyinfra's
progress goes straight to the terminal (stderr); its ``--json`` result (stdout) is turned into a
per-host summary: changed / unchanged / failed operations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner.inventory import LoadedInventory


# What the driver deploy logs for a host that needs a reboot it may not do (--no-reboot).
# Operations that record a run rather than change the host (deploys/monitoring.py).
BOOKKEEPING_OPERATIONS = ("Record the successful apply (monitoring)",)
PENDING_REBOOT = re.compile(r"\[(?P<host>[^\]]+)\]\s+PENDING REBOOT (?P<why>.*)")

EXIT_PENDING_REBOOT = 3


@dataclass
class HostRun:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending_reboot: str | None = None

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
            where = f" at '{run.failed[0]}'" if run and run.failed else ""
            lines.append(
                f"provision: host {name} failed{where}; the reason is in pyinfra's output above. "
                f"Fix it and re-run with --limit {name}."
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
    command = [sys.executable, "-m", "pyinfra", loaded.source, entrypoint(deploy), "--json"]
    # --dry without -y: pyinfra detects changes, prints the plan and executes nothing.
    command.append("--dry" if dry else "-y")
    for pattern in limit:
        command += ["--limit", pattern]
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
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    pending: dict[str, str] = {}
    # pyinfra's progress goes on to the terminal as it comes; pending reboots are noted on the way.
    reader = threading.Thread(target=_relay_stderr, args=(proc.stderr, pending), daemon=True)
    reader.start()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    reader.join()
    names = [host.name for host in loaded.hosts]
    try:
        raw = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        sys.stderr.write(out)
        raw = None
    if raw is None:
        hosts = {name: HostRun(failed=["pyinfra run"]) for name in names}
        return RunResult(deploy, dry, proc.returncode or 1, hosts, names, None)
    hosts, failed = parse_results(raw, names)
    for name, why in pending.items():
        if name in hosts:
            hosts[name].pending_reboot = why
    return RunResult(deploy, dry, proc.returncode, hosts, failed, raw)


def _relay_stderr(stream, pending: dict[str, str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        match = PENDING_REBOOT.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if match:
            pending[match["host"]] = match["why"].strip()
    sys.stderr.flush()
