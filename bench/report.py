"""Reports of a benchmark run: ``<date>.json`` (everything), ``<date>.md`` (tables) and
``<date>.png`` (fleet scaling, drawn by :mod:`bench.chart` with matplotlib, when installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import chart
from bench.timeline import add


def _s(summary: dict[str, Any] | None, unit: str = "", digits: int = 2) -> str:
    """``1.23 s (1.10–1.40)`` from a Summary's JSON; ``–`` when missing."""
    if not summary:
        return "–"
    median = f"{summary['median']:.{digits}f}{unit}"
    if summary.get("n", 1) < 2:
        return median
    return f"{median} ({summary['min']:.{digits}f}–{summary['max']:.{digits}f})"


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def target_rows(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | goal | measured | verdict |", "| --- | --- | --- | --- |"]
    for row in targets:
        unit = row["unit"]
        goal = row.get("goal") or f"{row.get('op', '≤')} {row['target']:g} {unit}"
        if row.get("value") is None:
            lines.append(f"| {row['what']} | {goal} | not measured | – |")
            continue
        value = f"{row['value']:.3g} {unit}"
        if row.get("goal"):  # a goal without a number: met when measured (see the note)
            value += f" ({row['note']})" if row.get("note") else ""
            verdict = "met" if row["met"] else "**missed**: not measured in full"
        elif row["met"]:
            verdict = "met"
        else:
            verdict = f"**missed by {row.get('miss_percent', 0):g} %** (×{row.get('miss_factor')})"
        lines.append(f"| {row['what']} | {goal} | {value} | {verdict} |")
    return lines


def render(results: dict[str, Any]) -> str:
    """The markdown report of ``results``: one section per part of the run that has results."""
    out = _header(results)
    for section in (_lab, _first_apply, _converged, _rtt, _models, _planner, _startup, _notes):
        out += section(results)
    return "\n".join(out)


def _header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    m = meta["machine"]
    opts = meta["options"]
    ansible = results.get("lab", {}).get("ansible_core")
    waited = meta.get("lock_wait_s", 0)
    return [
        f"# Benchmark {meta['date']}",
        "",
        f"Revision `{meta.get('revision')}`; machine: {m['cpus']} CPUs, {m['memory_mib']} MiB, "
        f"kernel {m['kernel']}, Python {m['python']}, pyinfra {m['pyinfra']}"
        + (f", ansible-core {ansible}" if ansible else "")
        + f". {opts['reps']} repetitions; the run took {meta.get('duration_s', 0):.0f} s"
        + (f" ({waited:.0f} s of it waiting for the lab lock)." if waited >= 1 else "."),
        "",
        "Figures are medians with (min–max); a ratio is computed run by run from measurements "
        "taken side by side in the same run, then summarised the same way.",
        "",
        "## Targets (issues 8 and 15)",
        "",
        *target_rows(results.get("targets", [])),
        "",
    ]


def _lab(results: dict[str, Any]) -> list[str]:
    lab = results.get("lab")
    if not lab:
        return []
    out = [
        "## Lab",
        "",
        f"{lab['hosts']} hosts, each a {lab['host']}, serving "
        f"{', '.join(lab['role']['models'] + lab['role']['models_always'])} with CUDA "
        f"toolkit {lab['role']['cuda_toolkit_version']} (the whole stack: driver, toolkit, "
        f"PyTorch, Ollama, models). Lab up in {lab.get('up_s')} s.",
        "",
    ]
    first = results.get("first_apply")
    if first:
        out.append(
            f"First `provision apply` on {first['hosts']} bare hosts: {first['wall_s']} s "
            f"(exit {first['exit_code']})."
        )
    warm = results.get("ansible_first_run")
    if warm:
        out.append(
            f"First Ansible run on the converged hosts (not a figure): {warm['wall_s']} s, "
            f"exit {warm['exit_code']}, changed: {warm['changed'] or 'none'}."
        )
    settle = results.get("ours_settle_run")
    if settle:
        out.append(
            f"`provision apply` after it: {settle['wall_s']} s, changed: "
            f"{settle['changed'] or 'none'}."
        )
    out.append("")
    return out


def _mib_range(values: list[int | None]) -> str:
    """``12.3 (11.0–14.1)`` MiB over hosts: median (min–max); ``–`` when none was read."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "–"
    mid = len(known) // 2
    median = known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2
    if len(known) == 1:
        return f"{median / 2**20:.1f}"
    return f"{median / 2**20:.1f} ({known[0] / 2**20:.1f}–{known[-1] / 2**20:.1f})"


def _first_apply_layers(first: dict[str, Any]) -> list[str]:
    out = [
        "| layer | wall s | plan s | execute s | operations | MiB received per host |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    phases = first.get("phases") or {}
    connect = phases.get("connect")
    if connect:
        received = _mib_range(list(connect["bytes"].values()))
        out.append(f"| *connect* | {connect['wall_s']:.1f} | | | | {received} |")
    for layer, row in first["layers"].items():
        out.append(
            f"| {layer} | {row['wall_s']:.1f} | {row['plan_s']:.1f} | {row['execute_s']:.1f} | "
            f"{row['ops']} | {_mib_range(list((row.get('bytes') or {}).values()))} |"
        )
    rest = phases.get("disconnect")
    if rest:
        out.append(f"| *results, disconnect* | {rest['wall_s']:.1f} | | | | |")
    if phases:  # the stages in all: the plan stage's bytes (facts) are in no layer's
        hosts: dict[str, int | None] = {}
        for phase in phases.values():
            for name, value in phase["bytes"].items():
                hosts[name] = add(hosts.get(name, 0), value)
        wall = sum(phase["wall_s"] for phase in phases.values())
        plan, execute = phases.get("plan", {}), phases.get("execute", {})
        out.append(
            f"| **pyinfra, in all** | **{wall:.1f}** | {plan.get('wall_s', 0):.1f} | "
            f"{execute.get('wall_s', 0):.1f} | | {_mib_range(list(hosts.values()))} |"
        )
    return out


def _first_apply_mirrors(first: dict[str, Any]) -> list[str]:
    out = [
        "| mirror | MiB served | requests | upstream MiB |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in first["mirrors"].items():
        unsized = f" ({row['unsized']} of unknown size)" if row.get("unsized") else ""
        upstream = f"{row['upstream_bytes'] / 2**20:.1f}" if name == "apt-cacher-ng" else "–"
        out.append(
            f"| {name} | {row['bytes'] / 2**20:.1f}{unsized} | {row['requests']} | {upstream} |"
        )
    total = sum(row["bytes"] for row in first["mirrors"].values())
    out.append(f"| **all** | **{total / 2**20:.1f}** | | |")
    return out


def _first_apply_hosts(first: dict[str, Any]) -> list[str]:
    out = [
        "| host | MiB downloaded from the mirrors | MiB received on its interface |",
        "| --- | --- | --- |",
    ]
    for name, row in first["by_host"].items():
        received = row.get("received_bytes")
        total = "–" if received is None else f"{received / 2**20:.1f}"
        out.append(f"| {name} | {row['from_mirrors_bytes'] / 2**20:.1f} | {total} |")
    return out


def _first_apply(results: dict[str, Any]) -> list[str]:
    """The first apply by layer, the bytes the mirrors served and each host received."""
    first = results.get("first_apply")
    if not first or not first.get("layers"):
        return []
    out = [
        f"## First apply on {first['hosts']} bare hosts, by layer",
        "",
        f"`provision apply` on {first['hosts']} bare hosts (pyinfra's CLI as `provision apply` "
        f"runs it, through `bench/layers.py` with its timeline on): {first['wall_s']} s, exit "
        f"{first['exit_code']}. *plan*: the median over hosts of the time each spent preparing "
        "the layer's operations (hosts plan side by side; `site` has the rest of the plan "
        "stage); *execute*: the sum of the layer's operations, each from its start on all hosts "
        "to its end on the last. Bytes received: what the machine's end of each host's veth sent "
        "it during the layer's operations (mirrors and SSH alike; the last row also counts "
        "what it received while pyinfra planned); median (min–max) over hosts.",
        "",
        *_first_apply_layers(first),
        "",
    ]
    if first.get("mirrors"):
        out += [
            "Bytes the site mirrors served during the run, from their own logs (apt-cacher-ng: "
            "*upstream* is what it fetched from Debian's mirrors for the hosts):",
            "",
            *_first_apply_mirrors(first),
            "",
        ]
    if first.get("by_host"):
        out += [*_first_apply_hosts(first), ""]
    return out


def _converged_row(
    conv: dict[str, Any], who: str, n: str, row: dict[str, Any], cpu: bool, remote: bool = False
) -> str:
    ratio = conv.get("fanout_ratio", {}).get(who, {}).get(n)
    name = "provision apply" if who == "ours" else "ansible-playbook"
    return (
        f"| {n} | {name} | {_s(row['wall_s'])} | "
        f"{_s(ratio) if ratio else ('1' if n == '1' else '–')} | "
        f"{_s(row['commands_per_host'], digits=0)} | "
        f"{_s(row['logins_per_host'], digits=0)} | "
        f"{_s(row['sftp_per_host'], digits=0)} | "
        f"{row['runs_with_changes']} of {len(row['runs'])}"
        + (f", {row['failed_runs']} failed" if row["failed_runs"] else "")
        + " |"
        + (f" {_s(row.get('controller_cpu_s'))} |" if cpu else "")
        + (f" {_s(row.get('remote_cpu_s_per_host'))} |" if remote else "")
    )


def _baseline(conv: dict[str, Any]) -> list[str]:
    base = conv.get("pyinfra_baseline")
    one = (conv.get("ours") or {}).get("1")
    if not (base and one):
        return []
    extra = one["commands_per_host"]["median"] - base["commands_per_host"]["median"]
    spent = one["wall_s"]["median"] - base["wall_s"]["median"]
    return [
        "",
        f"A bare `pyinfra INVENTORY exec -- true` on 1 host (interpreter, inventory, one "
        f"SSH connection, {base['commands_per_host']['median']:g} command): "
        f"{_s(base['wall_s'])} s. The converged `provision apply` on 1 host spends "
        f"{spent:.2f} s more, for {extra:g} more remote commands "
        + (f"({spent / extra * 1000:.0f} ms each, everything included)." if extra else "."),
    ]


def _layers(layers: dict[str, Any] | None) -> list[str]:
    """Remote commands of one converged run on 1 host per layer and phase (bench/layers.py)."""
    if not layers or not layers.get("by_layer"):
        return []
    by_layer = layers["by_layer"]
    total = sum(by_layer.values())
    out = [
        "",
        "Remote commands of one converged `provision apply` on 1 host, per layer, counted on "
        "the controller (`bench/layers.py`; *plan*: pyinfra preparing the operations, "
        "*execute*: running them):",
        "",
        "| phase | layer | commands |",
        "| --- | --- | --- |",
    ]
    for key, value in by_layer.items():
        phase, _, layer = key.partition(" ")
        out.append(f"| {phase} | {layer} | {value} |")
    sshd = (layers.get("sshd") or {}).get("commands")
    out.append(f"| | **total** | **{total}** (the host's sshd counted {sshd}) |")
    return out


def _converged(results: dict[str, Any]) -> list[str]:
    conv = results.get("converged")
    if not conv:
        return []
    rows = [r for who in ("ours", "ansible") for r in (conv.get(who) or {}).values()]
    cpu = any("controller_cpu_s" in r for r in rows)
    remote = any("remote_cpu_s_per_host" in r for r in rows)
    out = [
        "## Converged re-run, fan-out, against Ansible",
        "",
        "Remote commands per host are `exec` channels seen by the host's sshd (its VERBOSE "
        "log), the same count for both tools; logins and sftp sessions beside them. Remote CPU "
        "is what the host's SSH sessions used (login, commands and all they ran: the children "
        "CPU its sshd reaped); the lab's hosts share the machine's CPUs with the controller.",
        "",
        "| hosts | tool | wall time (s) | time(N)/time(1) | commands/host | logins/host "
        "| sftp/host | runs with changes |"
        + (" controller CPU (s) |" if cpu else "")
        + (" remote CPU/host (s) |" if remote else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- |" if cpu else "")
        + (" --- |" if remote else ""),
    ]
    for who in ("ours", "ansible"):
        for n, row in (conv.get(who) or {}).items():
            out.append(_converged_row(conv, who, n, row, cpu, remote))
    out += _baseline(conv)
    out += _layers(conv.get("layers"))
    versus = conv.get("ours_over_ansible")
    if versus:
        out += ["", "| hosts | ours / Ansible |", "| --- | --- |"]
        out += [f"| {n} | {_s(v, digits=3)} |" for n, v in versus.items()]
    out.append("")
    return out


def _rtt(results: dict[str, Any]) -> list[str]:
    """The converged re-run on 1 host against added round-trip time (bench/relay.py)."""
    rtt = results.get("rtt")
    if not rtt:
        return []
    out = [
        "## Round-trip time",
        "",
        "The converged re-run on 1 host with a user-space TCP relay in front of its sshd that "
        "holds every chunk for half the added round-trip time in each direction "
        "(`bench/relay.py`; this kernel has no netem).",
        "",
        "| added RTT (ms) | ours (s) | commands/host | Ansible (s) | commands/host "
        "| ours / Ansible |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ms, row in rtt.items():
        ours, theirs = row.get("ours") or {}, row.get("ansible") or {}
        out.append(
            f"| {ms} | {_s(ours.get('wall_s'))} | {_s(ours.get('commands_per_host'), digits=0)} "
            f"| {_s(theirs.get('wall_s')) if theirs else '–'} "
            f"| {_s(theirs.get('commands_per_host'), digits=0) if theirs else '–'} "
            f"| {_s(row.get('ours_over_ansible'), digits=3) if theirs else '–'} |"
        )
    out.append("")
    return out


def _models(results: dict[str, Any]) -> list[str]:
    models = results.get("models")
    if not models:
        return []
    out = [
        "## Model distribution",
        "",
        f"One model ({models['model']}, {_mib(models['model_bytes'])} of blobs, pushed anew "
        "for every run so nothing is cached) onto N hosts. *direct*: every host fetches from "
        "the upstream registry; *mirror*: `provision models mirror` copies it into the site "
        "registry once, then the hosts fetch from the site. Bytes are response bodies counted "
        "by a proxy in front of each registry.",
        "",
        "| hosts | path | wall time (s) | upstream blob bytes | × model size "
        "| site blob bytes | hosts that got it |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in ("direct", "mirror"):
        for n, row in models.get(scenario, {}).items():
            up = row["upstream_blob_bytes"]["median"]
            site = row["site_blob_bytes"]["median"]
            out.append(
                f"| {n} | {scenario} | {_s(row['wall_s'])} | {_mib(up)} | "
                f"{_s(row['upstream_factor'])} | {_mib(site)} | "
                f"{_s(row.get('hosts_served'), digits=0)} |"
                + (f" ({row['failed_runs']} failed)" if row["failed_runs"] else "")
            )
    out.append("")
    return out


def _planner(results: dict[str, Any]) -> list[str]:
    planner = results.get("planner")
    if not planner:
        return []
    return [
        "## Planner scale",
        "",
        f"`provision plan` on recorded facts of {planner['hosts']:,} hosts (no connections; "
        f"a fresh interpreter: import, load the facts, resolve each host's data, plan, JSON): "
        f"wall time {_s(planner['wall_s'])} s, of which `plan_fleet` "
        f"{_s(planner['plan_fleet_s'])} s; peak RSS {_s(planner['max_rss_mib'], ' MiB', 0)}; "
        f"{planner['models_planned']:,} models planned.",
        "",
    ]


def _startup(results: dict[str, Any]) -> list[str]:
    start = results.get("startup")
    if not start:
        return []
    return [
        "## Start-up",
        "",
        f"`provision --help`: {_s(start['provision_help_s'], ' s', 3)}; a bare "
        f"`python -c pass` beside it: {_s(start['python_bare_s'], ' s', 3)}.",
        "",
    ]


def _notes(results: dict[str, Any]) -> list[str]:
    if not results.get("notes"):
        return []
    return ["## Notes", "", *[f"* {note}" for note in results["notes"]], ""]


def scaling_series(results: dict[str, Any]) -> list[chart.Series]:
    conv = results.get("converged") or {}
    series = []
    for who, label in (("ours", "provision apply (pyinfra)"), ("ansible", "ansible-playbook")):
        rows = conv.get(who) or {}
        points = [
            (float(n), r["wall_s"]["median"], r["wall_s"]["min"], r["wall_s"]["max"])
            for n, r in rows.items()
        ]
        if points:
            series.append(chart.Series(label, points))
    return series


def write(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``<date>.json``, ``<date>.md`` and (when there is a fan-out) ``<date>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = results["meta"]["date"][:10]
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    series = scaling_series(results)
    if series and not chart.AVAILABLE:
        text += f"\n({chart.MISSING})\n"
    elif series:
        paths["png"] = folder / f"{stem}.png"
        chart.write_chart(
            paths["png"],
            series,
            title="Converged re-run vs fleet size",
            x_label="lab hosts (N)",
            y_label="seconds: median, min-max",
        )
        text += (
            f"\n![fleet scaling]({paths['png'].name}) "
            "(the PNG is not committed: bench/results/*.png is gitignored)\n"
        )
    paths["md"].write_text(text)
    return paths
