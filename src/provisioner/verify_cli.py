"""Glue between the CLI and the verification runner: inventory → facts → plan → testinfra."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
