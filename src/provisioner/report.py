"""Human tables (rich) for facts, plans and runs. JSON output never goes through here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from provisioner.apply import RunResult

_STATE_STYLE = {"ok": "green", "no-gpu": "cyan", "no-driver": "yellow", "driver-mismatch": "red"}


def _gib(mib: int | float | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.1f} GiB"


def facts_table(hosts: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="GPU facts", title_justify="left")
    for column in ("host", "state", "GPUs", "driver", "CUDA", "OS", "memory"):
        table.add_column(column)
    for name, facts in hosts.items():
        state = facts.get("gpu_state", "?")
        gpus = facts.get("gpus") or []
        gpu_text = "\n".join(
            f"{g['index']}: {g['name']} {g['memory_total_mib']} MiB"
            + (" MIG" if g.get("mig") == "Enabled" else "")
            for g in gpus
        ) or (facts.get("error") or "-")
        os_info = facts.get("os") or {}
        os_text = " ".join(
            filter(None, [os_info.get("id"), os_info.get("version_id"), os_info.get("arch")])
        )
        table.add_row(
            name,
            f"[{_STATE_STYLE.get(state, 'red')}]{state}[/]",
            gpu_text,
            facts.get("driver_version") or "-",
            facts.get("cuda_version") or "-",
            os_text or "-",
            _gib(facts.get("memory_total_mib")),
        )
    return table


def plan_table(plan: dict[str, Any]) -> Table:
    table = Table(title="Model plan", title_justify="left")
    for column in ("host", "GPUs", "budget", "models (estimated need, GPUs)", "skipped"):
        table.add_column(column)
    for name, host in plan["hosts"].items():
        gpus = host.get("gpus") or []
        gpu_text = "\n".join(f"{g['index']}: {g['name']}" for g in gpus) or host.get("mode", "-")
        models = (
            "\n".join(
                f"{m['tag']}  {_gib(m['estimated_vram_mib'])}  {m.get('gpus') or 'CPU'}"
                + ("  resident" if m.get("resident") else "")
                for m in host.get("models", [])
            )
            or f"[yellow]{host.get('reason', 'none')}[/]"
        )
        resident = host.get("resident") or {}
        for out in resident.get("left_out") or []:
            models += f"\n[yellow]not resident: {out['tag']}: {out['reason']}[/]"
        skipped = "\n".join(f"{s['tag']}: {s['reason']}" for s in host.get("skipped", [])) or "-"
        table.add_row(name, gpu_text, _gib(host.get("budget_mib")), models, skipped)
    return table


def run_table(result: RunResult) -> Table:
    verb = "would change" if result.dry else "changed"
    table = Table(
        title=f"provision {result.deploy}{' (dry run)' if result.dry else ''}", title_justify="left"
    )
    for column in ("host", "status", verb, "unchanged", "failed at"):
        table.add_column(column)
    table.add_column("reason", overflow="fold")
    style = {"changed": "yellow", "unchanged": "green", "failed": "red", "pending-reboot": "red"}
    for name, run in result.hosts.items():
        table.add_row(
            name,
            f"[{style[run.status]}]{run.status}[/]",
            str(len(run.changed)),
            str(len(run.unchanged)),
            ", ".join(run.failed) or "-",
            run.error or "-",
        )
    return table
