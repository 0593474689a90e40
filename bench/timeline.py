"""Seconds and bytes per layer of one ``provision apply`` run, from the timeline that
:class:`bench.layers.Timeline` records (``BENCH_LAYERS_TIMELINE``).

* a layer's **execute** seconds are the sum of its operations' spans (an operation runs on
  every host at once and the next starts when all are done, so the spans add up to the execute
  stage); its **plan** seconds are the median over hosts of the time each host spent inside the
  layer's deploy while pyinfra prepared the operations (hosts plan side by side, so the layers'
  plan seconds add up to about the plan stage, not to N times it); ``wall_s`` is both;
* a layer's **bytes** on a host are the sum, over its operations, of what the host's counter
  (the machine's end of its veth: every byte the host received, from the mirrors and over SSH)
  grew by between the operation's start and end;
* the run's **phases** are pyinfra's stages: ``connect``, ``plan`` (prepare), ``execute``,
  ``disconnect`` (results and disconnecting), each with its seconds and bytes per host.

Pure functions: the bench's tests feed them a synthetic timeline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.stats import summarize

#: pyinfra's stage names as the report calls them (``prepare`` is when it plans).
SITE = "site"  # the site's own operations (bench.layers names them so)
PHASES = {"connect": "connect", "prepare": "plan", "execute": "execute", "disconnect": "disconnect"}


def delta(before: int | None, after: int | None) -> int | None:
    """How much a counter grew; ``None`` when either end was not read."""
    if before is None or after is None:
        return None
    return max(0, after - before)


def add(total: int | None, more: int | None) -> int | None:
    """``total + more``; ``None`` (unknown) wins."""
    return None if total is None or more is None else total + more


def op_span(op: Mapping[str, Any]) -> float:
    """Seconds an operation took: start to end for all hosts at once, else the first host's
    start to the last host's end (serial runs record only per host)."""
    if "start" in op and "end" in op:
        return max(0.0, op["end"] - op["start"])
    hosts = [h for h in op.get("hosts", {}).values() if "end" in h]
    if not hosts:
        return 0.0
    return max(0.0, max(h["end"] for h in hosts) - min(h["start"] for h in hosts))


def op_bytes(op: Mapping[str, Any]) -> dict[str, int | None]:
    """Bytes each host received during an operation (from the samples taken for all hosts at
    its start and end, else from each host's own)."""
    if "bytes_start" in op and "bytes_end" in op:
        return {
            name: delta(before, op["bytes_end"].get(name))
            for name, before in op["bytes_start"].items()
        }
    return {
        name: delta(h.get("bytes_start"), h.get("bytes_end"))
        for name, h in op.get("hosts", {}).items()
    }


def plan_seconds(plan: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per layer: the summary over hosts of the seconds each host spent planning it."""
    per_layer: dict[str, dict[str, float]] = {}
    for entry in plan:
        hosts = per_layer.setdefault(entry["layer"], {})
        hosts[entry["host"]] = hosts.get(entry["host"], 0.0) + entry["end"] - entry["start"]
    return {layer: summarize(list(h.values())).to_json(3) for layer, h in per_layer.items()}


def phases(stages: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Seconds and bytes per host of each pyinfra stage (to the next stage's start)."""
    out: dict[str, dict[str, Any]] = {}
    for this, after in zip(stages, stages[1:], strict=False):
        name = PHASES.get(this["stage"], this["stage"])
        out[name] = {
            "wall_s": round(after["at"] - this["at"], 3),
            "bytes": {h: delta(b, after["bytes"].get(h)) for h, b in this["bytes"].items()},
        }
    return out


def _bytes_summary(by_host: Mapping[str, int | None]) -> dict[str, Any]:
    known = [b for b in by_host.values() if b is not None]
    total: int | None = None if len(known) < len(by_host) or not known else sum(known)
    return {
        "bytes": dict(by_host),
        "bytes_total": total,
        "bytes_per_host": summarize(known).to_json(0) if known else None,
    }


def layers(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per layer, in the order the run met them: ``plan_s`` (median over hosts), ``execute_s``,
    ``wall_s``, ``ops``, and the bytes each host received during its operations (``bytes``,
    ``bytes_total``, ``bytes_per_host``: median, min, max over hosts)."""
    planned = plan_seconds(doc.get("plan", []))
    rows: dict[str, dict[str, Any]] = {}
    received: dict[str, dict[str, int | None]] = {}
    for op in doc.get("ops", []):
        layer = op["layer"]
        row = rows.setdefault(layer, {"plan_s": 0.0, "execute_s": 0.0, "ops": 0})
        row["execute_s"] += op_span(op)
        row["ops"] += 1
        mine = received.setdefault(layer, {})
        for name, value in op_bytes(op).items():
            mine[name] = add(mine.get(name, 0), value)
    for layer, seconds in planned.items():  # a layer planned without operations comes last
        row = rows.setdefault(layer, {"plan_s": 0.0, "execute_s": 0.0, "ops": 0})
        row.update(plan_s=seconds["median"], plan_s_hosts=seconds)
    for layer, row in rows.items():
        row["execute_s"] = round(row["execute_s"], 3)
        row["wall_s"] = round(row["plan_s"] + row["execute_s"], 3)
        row.update(_bytes_summary(received.get(layer, {})))
    return rows


def summarise(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"phases": ..., "layers": ...}`` of one recorded run (see the module docstring). The
    plan stage's seconds outside every layer's deploy (the deploy file's own work: the lock,
    the host's facts) are the ``site`` layer's plan seconds, so that the layers' ``wall_s`` add
    up to the plan and execute stages."""
    stages = phases(doc.get("stages", []))
    rows = layers(doc)
    plan = stages.get("plan")
    if plan:
        inside = sum(row["plan_s"] for layer, row in rows.items() if layer != SITE)
        rest = round(max(0.0, plan["wall_s"] - inside), 3)
        empty = {"plan_s": 0.0, "execute_s": 0.0, "ops": 0, **_bytes_summary({})}
        site = rows.setdefault(SITE, empty)
        site.update(plan_s=rest, wall_s=round(rest + site["execute_s"], 3))
    return {"phases": stages, "layers": rows}


def main(argv: list[str]) -> int:
    """``python -m bench.timeline FILE``: the summary of a recorded timeline, as JSON."""
    if len(argv) != 1:
        print("usage: python -m bench.timeline TIMELINE.json", file=sys.stderr)
        return 2
    print(json.dumps(summarise(json.loads(Path(argv[0]).read_text())), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
