"""How much GPU memory one model needs, and on which GPUs of a host it goes.

The formula follows the Ollama release being installed (data key ``ollama_version``); the rules
of each release are data, ``data/ollama_sizing.toml``, each value with the line of ollama/ollama
(read at fb30760, v0.33.0-rc2) or of the llama.cpp it runs that it copies. Component by
component (docs/model-sizing.md has the same list with the sources)::

    ctx     = num_ctx of the model's params layer, else OLLAMA_CONTEXT_LENGTH
              (server/routes.go: model options override the server default);
              at least 2048 for a vision model (server/sched.go getRunner);
              at most the trained context (effectiveModelContext)
    cells   = ctx x OLLAMA_NUM_PARALLEL                 (effectiveLlamaServerContext)
    batch   = the -b/-ub Ollama passes (llm/llama_server.go appendBatchArgs):
              >= 0.30, text/vision, no num_batch set: 512; 1024 when cells > 4096; 2048 when
                cells > 32768, stepped down while the model would not leave the headroom Ollama
                asks for (server/sched.go automaticGenerationBatch, generationBatchFits);
                512 on CUDA without flash attention
              >= 0.30, embedding: min(2048, cells)      (DefaultEmbeddingNumBatchForContext)
              < 0.30: 512                               (api.DefaultOptions NumBatch)
              ollama_batch_size > 0 pins it (a num_batch option)
    weights = the GGUF blob (the tag's download size, projector included), less the token
              embeddings llama.cpp keeps in host memory when the output layer does not reuse
              them: vocab x embd x bytes of the quantisation (``token_embd_bytes``)
    KV      = 2 (K and V) x kv_heads x head_dim x bytes
              x (full_layers x cells + swa_layers x min(cells, swa_window x parallel + batch))
              0 for an embedding model (non-causal: llama.cpp allocates no KV cache)
    graph   = batch x 4 B x (widest + hidden), per GPU the model uses, where
              widest = max(vocab, ctx x heads)  without flash attention (logits | attention scores)
                     = vocab                     with flash attention
                     = ctx x heads or 0          for an embedding model (no logits)
              hidden = embd (the activation alive beside the widest buffer)
    vision  = 1 GiB on the first GPU for the projector's own buffers (mmprojOffloadHeadroom;
              llm/memory.go's projector.graph before 0.30)
    total   = weights + KV + graph + vision             (the need on one GPU)

``bytes`` per KV element: f16 2; q8_0 34/32 and q4_0 18/32, the size of a ggml block of 32
elements. Quantised KV needs flash attention: the planner passes ``f16`` when it is off (data
key false, or a GPU whose compute capability lacks it: ml/device.go FlashAttentionSupported).
The sliding-window term is llama.cpp's iSWA cache: it keeps the window of every sequence plus one
micro-batch, never more than the full cache.

``Estimate.footprint_mib(n)`` is what the model occupies loaded on ``n`` GPUs (one graph each):
the ``estimated_vram_mib`` of the plan. It never includes the per-GPU reserve.

Placement (``place``): each GPU offers ``usable = headroom x (memory - reserve - margin)``, where
the reserve is the CUDA context Ollama keeps free per GPU (``MinimumMemory`` 457 MiB, plus
``OLLAMA_GPU_OVERHEAD``) and the margin what llama-server's ``--fit`` leaves free per device since
0.30 (llama.cpp ``fit_params_target``, 1024 MiB). A vision model's fit target is its projector
plus 1 GiB instead; the plan keeps the 1024 MiB margin for it too, on top of the 1 GiB it counts
as ``vision`` (conservative by up to 1 GiB on a vision model's first GPU). The model
goes on one GPU when ``total <= usable`` of the GPU with the most usable memory (Ollama pins a
single GPU when the model fits one). Otherwise it is split by layers over the fewest GPUs, largest
first, each paying its own graph: ``weights + KV + vision <= sum(usable_i - graph)``. A model that
no placement holds gets ``None``: the planner never plans a partial CPU offload.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from .catalog import ModelEntry

MIB = 1024 * 1024
F32_BYTES = 4

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
DEFAULT_OLLAMA_VERSION = "0.32.15"


# --- the rules of each Ollama release ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizingRules:
    """How one range of Ollama releases sizes a model (an ``[[era]]`` of ollama_sizing.toml)."""

    since: tuple[int, ...]
    engine: str
    auto_batch: bool
    batch_default: int
    batch_medium: int
    batch_large: int
    batch_medium_above: int
    batch_large_above: int
    batch_no_flash_attention: int
    embedding_batch: int
    fit_margin_mib: int
    vision_headroom_mib: int
    vision_min_context: int
    source: str


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.32.15"`` or ``"v0.30.0-rc2"`` -> ``(0, 32, 15)`` (a pre-release as its release)."""
    core = str(version).strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
    parts = []
    for part in core.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


@cache
def _table() -> dict:
    text = (resources.files("provisioner") / "data" / "ollama_sizing.toml").read_text("utf-8")
    return tomllib.loads(text)


@cache
def _eras() -> tuple[SizingRules, ...]:
    eras = []
    for era in _table()["era"]:
        fields = {k: v for k, v in era.items() if k != "since"}
        eras.append(SizingRules(since=_version_tuple(era["since"]), **fields))
    return tuple(sorted(eras, key=lambda e: e.since, reverse=True))


@cache
def rules_for(version: str | None) -> SizingRules:
    """The sizing rules of an Ollama release (the newest era that began at or before it)."""
    wanted = _version_tuple(version or DEFAULT_OLLAMA_VERSION)
    for era in _eras():
        if era.since <= wanted:
            return era
    return _eras()[-1]


def flash_attention_supported(compute_caps: Iterable[str | float | None]) -> bool:
    """False when a GPU's compute capability lacks flash attention (unknown ones count as able)."""
    table = _table()["flash_attention"]
    minimum = _version_tuple(table["min_compute"])
    unsupported = {_version_tuple(c) for c in table["unsupported_compute"]}
    for cap in compute_caps:
        if cap is None or str(cap).strip() == "":
            continue
        cc = _version_tuple(str(cap))
        if cc < minimum or cc in unsupported:
            return False
    return True


# --- one model -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """The memory one loaded model needs, in MiB (reserve and fit margin not included)."""

    weights_mib: int
    kv_mib: int
    graph_mib: int  # per GPU the model uses
    total_mib: int  # weights + KV + one graph + vision: the need on a single GPU
    vision_mib: int = 0  # the projector's buffers, on the first GPU only
    context: int = 0  # tokens per sequence the model is loaded with
    batch: int = 0  # -b/-ub Ollama passes

    def footprint_mib(self, gpu_count: int = 1) -> int:
        """Memory the model occupies when spread over ``gpu_count`` GPUs (one graph each)."""
        return self.weights_mib + self.kv_mib + self.vision_mib + self.graph_mib * max(1, gpu_count)


def model_context(entry: ModelEntry, context: int, version: str | None = None) -> int:
    """The context Ollama loads ``entry`` with for a request without options.

    The model's params ``num_ctx`` wins over the server's ``OLLAMA_CONTEXT_LENGTH``; a vision
    model gets at least 2048 (>= the rule of the release); the trained context caps it.
    """
    ctx = entry.num_ctx or context
    if entry.kind == "vision":
        ctx = max(ctx, rules_for(version).vision_min_context)
    return max(1, min(ctx, entry.context))


def batch_surcharge_mib(batch: int) -> int:
    """Ollama's pre-flight surcharge for a batch (server/sched.go generationBatchSurcharge)."""
    if batch >= 2048:
        return 2048
    if batch >= 1024:
        return 768
    return 0


def _batch_fits(batch: int, predicted_mib: int, available_mib: int, rules: SizingRules) -> bool:
    """server/sched.go generationBatchFits / generationBatchHasHeadroom."""
    if not predicted_mib or not available_mib:
        return True
    threshold = available_mib * 80 // 100
    if predicted_mib > threshold:
        return False
    if batch >= rules.batch_large and predicted_mib > available_mib * 60 // 100:
        return False
    if batch >= rules.batch_medium and predicted_mib > available_mib * 75 // 100:
        return False
    return batch_surcharge_mib(batch) <= threshold - predicted_mib


def preflight_mib(entry: ModelEntry, cells: int) -> int:
    """Ollama's own pre-flight prediction (llm/llama_server.go ``PredictServerVRAM``).

    File size plus an f16 KV cache on every layer: ``2 x layers x kv_heads x (embd / heads) x
    cells x 2`` (no sliding window, and ``embd / heads`` as the head size, as Ollama computes it).
    Ollama steps its automatic batch down against this figure, not against the real need.
    """
    head = entry.hidden // max(1, entry.attention_heads)
    kv = 2 * entry.layers * entry.kv_heads * head * cells * 2
    return math.ceil((entry.size_bytes + kv) / MIB)


def choose_batch(
    entry: ModelEntry,
    cells: int,
    rules: SizingRules,
    *,
    pinned: int = 0,
    flash_attention: bool = True,
    predicted_mib: int = 0,
    available_mib: int = 0,
) -> int:
    """The batch (-b and -ub) Ollama runs ``entry`` with at ``cells`` = context x parallel."""
    if entry.kind == "embedding":
        return max(1, min(pinned or rules.embedding_batch, cells))
    if pinned:
        return pinned
    if not rules.auto_batch:
        return rules.batch_default
    if not flash_attention:
        return rules.batch_no_flash_attention
    if cells > rules.batch_large_above:
        batch = rules.batch_large
    elif cells > rules.batch_medium_above:
        batch = rules.batch_medium
    else:
        batch = rules.batch_default
    while batch > rules.batch_default and not _batch_fits(
        batch, predicted_mib, available_mib, rules
    ):
        batch = rules.batch_medium if batch > rules.batch_medium else rules.batch_default
    return batch


def kv_cache_bytes(
    entry: ModelEntry, context: int, parallel: int, kv_cache_type: str, batch_size: int
) -> int:
    """Bytes of K and V cache for ``parallel`` sequences of ``context`` tokens."""
    if kv_cache_type not in KV_BYTES_PER_ELEMENT:
        raise ValueError(
            f"unknown KV cache type {kv_cache_type!r} (one of {', '.join(KV_BYTES_PER_ELEMENT)})"
        )
    if context < 1 or parallel < 1 or batch_size < 1:
        raise ValueError("context, parallel and batch size must be positive")
    if entry.kind == "embedding":
        return 0
    cells = min(context, entry.context) * parallel
    swa_cells = min(cells, entry.swa_window * parallel + batch_size) if entry.swa_layers else 0
    per_cell = 2 * entry.kv_heads * entry.head_dim * KV_BYTES_PER_ELEMENT[kv_cache_type]
    return math.ceil(per_cell * (entry.full_layers * cells + entry.swa_layers * swa_cells))


def graph_bytes(entry: ModelEntry, context: int, batch: int, flash_attention: bool) -> int:
    """The compute buffer of one GPU: batch x 4 B x (widest intermediate + hidden state)."""
    attention = 0 if flash_attention else min(context, entry.context) * entry.attention_heads
    widest = attention if entry.kind == "embedding" else max(entry.vocab, attention)
    return batch * F32_BYTES * (widest + entry.hidden)


def host_embedding_bytes(entry: ModelEntry) -> int:
    """Bytes of the blob llama.cpp keeps in host memory: the untied token-embedding matrix."""
    if entry.tied:
        return 0
    per_element = _table()["token_embd_bytes"].get(entry.quant, 0.0)
    return math.floor(entry.vocab * entry.hidden * per_element)


def gpu_weights_mib(entry: ModelEntry) -> int:
    """The part of the blob that goes to the GPU(s), in MiB."""
    return math.ceil((entry.size_bytes - host_embedding_bytes(entry)) / MIB)


@lru_cache(maxsize=65536)
def estimate(
    entry: ModelEntry,
    context: int,
    parallel: int,
    kv_cache_type: str,
    batch_size: int,
    *,
    version: str | None = None,
    flash_attention: bool = True,
    available_mib: int = 0,
) -> Estimate:
    """The memory ``entry`` needs at these Ollama settings (see the module docstring).

    ``context`` is the pinned ``OLLAMA_CONTEXT_LENGTH`` (the model's own ``num_ctx`` wins);
    ``batch_size`` pins num_batch (0: Ollama's choice); ``available_mib`` is the memory of the GPU
    the model would go on, for Ollama's batch step-down (0: not known, no step-down).
    """
    rules = rules_for(version)
    ctx = model_context(entry, context, version)
    cells = ctx * parallel
    weights = gpu_weights_mib(entry)
    vision = rules.vision_headroom_mib if entry.kind == "vision" else 0
    batch = choose_batch(
        entry,
        cells,
        rules,
        pinned=batch_size,
        flash_attention=flash_attention,
        predicted_mib=preflight_mib(entry, cells),
        available_mib=available_mib,
    )
    kv = math.ceil(kv_cache_bytes(entry, ctx, parallel, kv_cache_type, batch) / MIB)
    graph = math.ceil(graph_bytes(entry, ctx, batch, flash_attention) / MIB)
    return Estimate(
        weights_mib=weights,
        kv_mib=kv,
        graph_mib=graph,
        total_mib=weights + kv + graph + vision,
        vision_mib=vision,
        context=ctx,
        batch=batch,
    )


# --- placement -----------------------------------------------------------------------------------


def usable_mib(memory_mib: int, reserve_mib: int, headroom: float) -> int:
    """What one GPU (or the host RAM) offers a model: ``headroom x (memory - reserve)``."""
    return max(0, math.floor((memory_mib - reserve_mib) * headroom))


def _ordered(
    gpus: tuple[tuple[int, int], ...], reserve_mib: int, headroom: float
) -> list[tuple[int, int]]:
    """``(usable, index)`` largest first, ties by the lower index."""
    offers = [(usable_mib(mem, reserve_mib, headroom), idx) for idx, mem in gpus]
    return sorted(offers, key=lambda t: (-t[0], t[1]))


@lru_cache(maxsize=65536)
def _place(
    est: Estimate,
    gpus: tuple[tuple[int, int], ...],
    reserve_mib: int,
    headroom: float,
    margin_mib: int,
) -> tuple[int, ...] | None:
    offers = _ordered(gpus, reserve_mib + margin_mib, headroom)
    if not offers:
        return None
    if est.total_mib <= offers[0][0]:
        return (offers[0][1],)
    need = est.weights_mib + est.kv_mib + est.vision_mib
    capacity = 0
    for count, (offer, _) in enumerate(offers, 1):
        if offer <= est.graph_mib:
            break
        capacity += offer - est.graph_mib
        if count >= 2 and need <= capacity:
            return tuple(sorted(idx for _, idx in offers[:count]))
    return None


def place(
    est: Estimate,
    gpus: list[tuple[int, int]],
    reserve_mib: int,
    headroom: float,
    margin_mib: int = 0,
) -> list[int] | None:
    """GPU indexes the model goes on (sorted), or None when it does not fit the host.

    ``gpus`` are ``(index, memory_total_mib)`` pairs; ``margin_mib`` is the free memory the
    release's fit leaves per GPU (``SizingRules.fit_margin_mib``).
    """
    found = _place(est, tuple((int(i), int(m)) for i, m in gpus), reserve_mib, headroom, margin_mib)
    return list(found) if found is not None else None


@lru_cache(maxsize=4096)
def _largest_offer(
    gpus: tuple[tuple[int, int], ...], reserve_mib: int, headroom: float, graph: int
) -> int:
    offers = _ordered(gpus, reserve_mib, headroom)
    if not offers:
        return 0
    best = offers[0][0]
    capacity = 0
    for count, (offer, _) in enumerate(offers, 1):
        if offer <= graph:
            break
        capacity += offer - graph
        if count >= 2:
            best = max(best, capacity + graph)
    return best


def largest_offer(
    gpus: list[tuple[int, int]], reserve_mib: int, headroom: float, graph: int
) -> int:
    """The largest ``total_mib`` any placement on these GPUs holds (for "does not fit" reasons).

    Pass the reserve plus the fit margin as ``reserve_mib``.
    """
    return _largest_offer(tuple((int(i), int(m)) for i, m in gpus), reserve_mib, headroom, graph)
