"""The model table: every catalog model, the VRAM it needs, and which cards hold it.

``provision models table [--context N] [--tiers 8,16,24,48,80] [--format md|csv|json]`` prints,
for every catalog model, its parameters, quantisation, download size, the VRAM it needs at that
context (``estimator.estimate`` with the default settings of ``data/keys``: parallel 1, f16 KV,
flash attention on, the default ``ollama_version``) and, per tier, whether it fits one card of
that size (``1 GPU``), only two of them (``split``) or not (``no``). A tier's memory is what
nvidia-smi reports for a real card of that class (``data/gpu_tiers.toml``); the fit is the
planner's own (``estimator.place``: headroom x (memory - reserve - llama-server fit margin)).

``docs/model-table.md`` is this table at the default context (a unit test fails when it is stale;
regenerate it with ``provision models table --format md > docs/model-table.md``). ``chart``
draws VRAM against context for the most used models (matplotlib, an optional dependency:
``pip install 'provisioner[charts]'``).
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from . import settings
from .catalog import ModelEntry, cached_catalog
from .estimator import estimate, place, rules_for

DEFAULT_TIERS = (8, 16, 24, 48, 80)
FORMATS = ("md", "csv", "json")
# The models the chart draws: one per common size class (the seed blog's tiers).
CHART_MODELS = (
    "llama3.1:8b",
    "qwen2.5-coder:7b",
    "qwen3:8b",
    "gemma3:12b",
    "gpt-oss:20b",
    "qwen3:30b-a3b",
    "gemma3:27b",
    "qwen2.5-coder:32b",
    "llama3.3:70b",
)
CHART_CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)


class TableError(ValueError):
    """A bad ``--tiers`` or ``--context``."""


@cache
def _tier_table() -> dict[str, Any]:
    text = (resources.files("provisioner") / "data" / "gpu_tiers.toml").read_text("utf-8")
    return tomllib.loads(text)["tier"]


def tier_memory_mib(tier_gb: int) -> int:
    """nvidia-smi's memory.total of a card of this size class (N x 1024 MiB when not listed)."""
    row = _tier_table().get(str(tier_gb))
    return int(row["memory_total_mib"]) if row else tier_gb * 1024


def parse_tiers(text: str) -> tuple[int, ...]:
    """``"8,16,24"`` -> ``(8, 16, 24)``; raises ``TableError`` for anything else."""
    tiers: list[int] = []
    for part in str(text).split(","):
        part = part.strip().lower().removesuffix("gb").strip()
        if not part.isdigit() or not 1 <= int(part) <= 1024:
            raise TableError(f"--tiers: expected GB sizes like 8,16,24 (1 to 1024), got {text!r}")
        if int(part) not in tiers:
            tiers.append(int(part))
    return tuple(tiers)


def _fit(entry_est: Any, memory_mib: int, values: Mapping[str, Any]) -> str:
    reserve = int(values["vram_reserve_mib"])
    headroom = float(values["vram_headroom"])
    margin = rules_for(str(values["ollama_version"])).fit_margin_mib
    if place(entry_est, [(0, memory_mib)], reserve, headroom, margin):
        return "1 GPU"
    if place(entry_est, [(0, memory_mib), (1, memory_mib)], reserve, headroom, margin):
        return "split"
    return "no"


def _estimate(entry: ModelEntry, context: int, values: Mapping[str, Any]):
    return estimate(
        entry,
        context,
        int(values["ollama_num_parallel"]),
        str(values["ollama_kv_cache_type"]),
        int(values["ollama_batch_size"]),
        version=str(values["ollama_version"]),
        flash_attention=bool(values["ollama_flash_attention"]),
    )


def rows(
    context: int | None = None,
    tiers: Iterable[int] = DEFAULT_TIERS,
    data: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One dict per catalog model: what it is, what it needs, and the fit on each tier."""
    values = settings.resolve(dict(data or {}))
    ctx = int(context or values["ollama_context_length"])
    if ctx < 1:
        raise TableError(f"--context must be positive, got {ctx}")
    catalog = cached_catalog(values.get("model_catalog_extra") or None)
    tiers = tuple(tiers)
    out = []
    for entry in sorted(catalog.values(), key=lambda e: (e.categories[0], e.family, e.params_b)):
        est = _estimate(entry, ctx, values)
        out.append(
            {
                "tag": entry.tag,
                "category": "/".join(entry.categories),
                "params_b": entry.params_b,
                "quant": entry.quant,
                "download_gb": round(entry.size_bytes / 1e9, 1),
                "context": est.context,
                "vram_mib": est.footprint_mib(1),
                "fits": {f"{t}GB": _fit(est, tier_memory_mib(t), values) for t in tiers},
            }
        )
    return out


def render(table: list[dict[str, Any]], fmt: str, context: int) -> str:
    """The table as Markdown, CSV or JSON."""
    if fmt == "json":
        return json.dumps({"context": context, "models": table}, indent=2) + "\n"
    tiers = list(table[0]["fits"]) if table else []
    header = ["model", "category", "params (B)", "quant", "download (GB)", "context", "VRAM (GiB)"]
    header += [f"fits {t}" for t in tiers]
    body = [
        [
            r["tag"],
            r["category"],
            f"{r['params_b']:g}",
            r["quant"],
            f"{r['download_gb']:g}",
            str(r["context"]),
            f"{r['vram_mib'] / 1024:.1f}",
            *(r["fits"][t] for t in tiers),
        ]
        for r in table
    ]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([header, *body])
        return buf.getvalue()
    if fmt != "md":
        raise TableError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def markdown_page(tiers: Iterable[int] = DEFAULT_TIERS) -> str:
    """docs/model-table.md: the table at the default context, with how it was made."""
    values = settings.resolve({})
    context = int(values["ollama_context_length"])
    tier_list = tuple(tiers)
    cards = ", ".join(f"{t} GB = {tier_memory_mib(t)} MiB" for t in tier_list)
    intro = [
        "# Models, parameters, VRAM required",
        "",
        "Generated by `provision models table --format md` (provisioner.model_table); a unit test",
        "fails when this page is stale. Every catalog model at the default settings: context",
        f"{context} (`ollama_context_length`; a model's own `num_ctx` wins, vision models get at",
        f"least 2048), {values['ollama_num_parallel']} parallel request,"
        f" {values['ollama_kv_cache_type']} KV cache, flash attention on, Ollama"
        f" {values['ollama_version']}.",
        "",
        "- **VRAM** is what the model occupies loaded on one GPU: weights on the GPU, KV cache,",
        "  compute graph and, for vision models, the projector's buffers (docs/model-sizing.md).",
        "- **fits N GB**: `1 GPU` when one card of that class holds it, `split` when only two do,",
        "  `no` otherwise; the same rule as `provision plan` (90 % of memory less the 457 MiB",
        "  reserve and llama-server's 1024 MiB fit margin). Card memory as nvidia-smi reports it:",
        f"  {cards}",
        "  (data/gpu_tiers.toml).",
        "- Other contexts: `provision models table --context 32768`; other cards: `--tiers`.",
        "",
        "![VRAM against context](vram-vs-context.png)",
        "",
        "",
    ]
    return "\n".join(intro) + render(rows(context, tier_list), "md", context)


def chart(path: str, models: Iterable[str] = CHART_MODELS) -> None:
    """Draw VRAM against context for ``models`` into ``path`` (PNG), with the tier lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise TableError("the chart needs matplotlib: pip install 'provisioner[charts]'") from exc
    values = settings.resolve({})
    catalog = cached_catalog(None)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for tag in models:
        entry = catalog[tag]
        gib = [_estimate(entry, c, values).footprint_mib(1) / 1024 for c in CHART_CONTEXTS]
        ax.plot(CHART_CONTEXTS, gib, marker="o", markersize=3, label=tag)
    for tier in DEFAULT_TIERS:
        ax.axhline(tier_memory_mib(tier) / 1024, color="grey", linewidth=0.6, linestyle=":")
        ax.text(CHART_CONTEXTS[0], tier_memory_mib(tier) / 1024, f" {tier} GB card", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(CHART_CONTEXTS, [f"{c // 1024}k" for c in CHART_CONTEXTS])
    ax.set_xlabel("context (tokens per request; capped at each model's trained context)")
    ax.set_ylabel("VRAM occupied (GiB)")
    ax.set_title(f"VRAM against context (Ollama {values['ollama_version']}, f16 KV, parallel 1)")
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
