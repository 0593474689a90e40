"""How much GPU memory one model needs, and on which GPUs of a host it goes.

The formula follows how Ollama sizes and places a model (ollama/ollama ``llm/server.go``,
``ml/device.go``, ``server/sched.go``; the llama.cpp KV cache it runs since v0.30) and the
reference notes ``model-sizing.md`` §2 and ``ollama.md`` §4::

    weights = size of the GGUF blob (the tag's download size; projector included)
    ctx     = min(OLLAMA_CONTEXT_LENGTH, trained context)
    cells   = ctx x OLLAMA_NUM_PARALLEL                       (full-attention layers)
    swa     = min(cells, swa_window x OLLAMA_NUM_PARALLEL + batch)   (sliding-window layers)
    KV      = 2 (K and V) x kv_heads x head_dim x bytes
              x (full_layers x cells + swa_layers x swa)
    graph   = 384 MiB per GPU (a CUDA compute buffer of a few hundred MiB; the reference log
              shows 378 MiB) + Ollama's batch surcharge: 768 MiB at batch >= 1024,
              2048 MiB at batch >= 2048 (``generationBatchSurcharge``)
    total   = weights + KV + graph                            (the need on one GPU)

``bytes`` per KV element: f16 2; q8_0 34/32 and q4_0 18/32, the size of a ggml block of 32
elements (Ollama's own pre-flight uses 1 and 0.5; the block size is what llama.cpp allocates).
Quantised KV needs flash attention: the planner passes ``f16`` when flash attention is off.
The sliding-window term is llama.cpp's iSWA cache: it keeps the window of every sequence plus
one micro-batch (Ollama's ubatch is its batch size), never more than the full cache.

Placement (``place``): each GPU offers ``usable = headroom x (memory - reserve)``, where the
reserve is the CUDA context Ollama keeps free per GPU (``MinimumMemory`` 457 MiB, plus
``OLLAMA_GPU_OVERHEAD``). The model goes on one GPU when ``total <= usable`` of the GPU with
the most usable memory (Ollama pins a single GPU when the model fits one). Otherwise it is split
by layers over the fewest GPUs, largest first, each paying its own graph and reserve:
``weights + KV <= sum(usable_i - graph)`` over the chosen GPUs. A model that no placement holds
gets ``None``: the planner never plans a partial CPU offload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .catalog import ModelEntry

MIB = 1024 * 1024

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
GRAPH_BASE_MIB = 384
BATCH_SURCHARGES_MIB = ((2048, 2048), (1024, 768))  # (batch at least, extra MiB), largest first


@dataclass(frozen=True, slots=True)
class Estimate:
    """The memory one loaded model needs, in MiB (reserve not included)."""

    weights_mib: int
    kv_mib: int
    graph_mib: int  # per GPU the model uses
    total_mib: int  # weights + KV + one graph: the need on a single GPU

    def footprint_mib(self, gpu_count: int = 1) -> int:
        """Memory the model occupies when spread over ``gpu_count`` GPUs (one graph each)."""
        return self.weights_mib + self.kv_mib + self.graph_mib * max(1, gpu_count)


def graph_mib(batch_size: int) -> int:
    """Compute graph per GPU for a batch size, with Ollama's batch surcharge."""
    for threshold, extra in BATCH_SURCHARGES_MIB:
        if batch_size >= threshold:
            return GRAPH_BASE_MIB + extra
    return GRAPH_BASE_MIB


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
    cells = min(context, entry.context) * parallel
    swa_cells = min(cells, entry.swa_window * parallel + batch_size) if entry.swa_layers else 0
    per_cell = 2 * entry.kv_heads * entry.head_dim * KV_BYTES_PER_ELEMENT[kv_cache_type]
    return math.ceil(per_cell * (entry.full_layers * cells + entry.swa_layers * swa_cells))


@lru_cache(maxsize=65536)
def estimate(
    entry: ModelEntry, context: int, parallel: int, kv_cache_type: str, batch_size: int
) -> Estimate:
    """The memory ``entry`` needs at these Ollama settings (see the module docstring)."""
    weights = math.ceil(entry.size_bytes / MIB)
    kv = math.ceil(kv_cache_bytes(entry, context, parallel, kv_cache_type, batch_size) / MIB)
    graph = graph_mib(batch_size)
    return Estimate(weights_mib=weights, kv_mib=kv, graph_mib=graph, total_mib=weights + kv + graph)


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
    est: Estimate, gpus: tuple[tuple[int, int], ...], reserve_mib: int, headroom: float
) -> tuple[int, ...] | None:
    offers = _ordered(gpus, reserve_mib, headroom)
    if not offers:
        return None
    if est.total_mib <= offers[0][0]:
        return (offers[0][1],)
    need = est.weights_mib + est.kv_mib
    capacity = 0
    for count, (offer, _) in enumerate(offers, 1):
        if offer <= est.graph_mib:
            break
        capacity += offer - est.graph_mib
        if count >= 2 and need <= capacity:
            return tuple(sorted(idx for _, idx in offers[:count]))
    return None


def place(
    est: Estimate, gpus: list[tuple[int, int]], reserve_mib: int, headroom: float
) -> list[int] | None:
    """GPU indexes the model goes on (sorted), or None when it does not fit the host.

    ``gpus`` are ``(index, memory_total_mib)`` pairs.
    """
    found = _place(est, tuple((int(i), int(m)) for i, m in gpus), reserve_mib, headroom)
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
    """The largest ``total_mib`` any placement on these GPUs holds (for "does not fit" reasons)."""
    return _largest_offer(tuple((int(i), int(m)) for i, m in gpus), reserve_mib, headroom, graph)
