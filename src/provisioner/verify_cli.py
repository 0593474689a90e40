"""Glue between the CLI and the verification runner: inventory → facts → plan → testinfra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner.apply import RunResult
    from provisioner.inventory import LoadedInventory
    from provisioner.verify.report import VerifyReport


def verify_inventory(
    loaded: LoadedInventory, *, workers: int | None = None, junit: Path | None = None
) -> VerifyReport:
    """Verify every selected host against its data and its plan, hosts in parallel."""
    from provisioner.gather import gather
    from provisioner.planner import plan_host
    from provisioner.verify.runner import VerifyTarget, run_verify

    facts = gather(loaded)
    targets = []
    for host in loaded.hosts:
        data = loaded.data_of(host)
        resolved = loaded.resolved(host)
        connection = {k: v for k, v in data.items() if k.startswith("ssh_")}
        targets.append(
            VerifyTarget(
                name=host.name,
                connection=connection,
                data=resolved,
                plan=plan_host(host.name, facts[host.name], resolved),
                facts=facts[host.name],
            )
        )
    return run_verify(targets, workers=workers or len(targets), junit=junit)


def broken_hosts(report: VerifyReport) -> list[str]:
    """The hosts a verify run found broken, in inventory order."""
    from provisioner.verify.report import PASS

    return [host for host in report.hosts if report.host_status(host) != PASS]


@dataclass
class Repair:
    """``provision verify --repair``: what was broken, the apply on those hosts, the re-check."""

    broken: list[str]
    run: RunResult | None
    after: VerifyReport | None

    @property
    def exit_code(self) -> int:
        """0 when nothing was broken or every repaired host now passes; 3 when the apply left
        hosts waiting for a reboot it was not allowed; else 1."""
        if not self.broken:
            return 0
        if self.run is not None and self.run.exit_code not in (0, 3):
            return 1
        if self.after is None or self.after.exit_code != 0:
            return 3 if self.run is not None and self.run.exit_code == 3 else 1
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "broken": self.broken,
            "apply": self.run.to_json() if self.run is not None else None,
            "after": self.after.to_json() if self.after is not None else None,
        }


def repair(
    reload: Any, report: VerifyReport, *, batch: int | None = None, workers: int | None = None
) -> Repair:
    """Apply the whole stack to the hosts ``report`` found broken (only those), batched like
    reboots (``batch`` hosts at a time), then verify them again.

    + reload: ``reload(hosts)`` → the inventory loaded with ``--limit`` those hosts
    """
    from provisioner.apply import run_deploy

    broken = broken_hosts(report)
    if not broken:
        return Repair([], None, None)
    loaded = reload(tuple(broken))
    data = {"nvidia_reboot_batch": batch} if batch else None
    run = run_deploy(loaded, "site", limit=tuple(broken), batch=batch, data=data)
    return Repair(broken, run, verify_inventory(reload(tuple(broken)), workers=workers))
