"""The VRAM estimator and GPU placement, against the reference figures (model-sizing.md §2)."""

from __future__ import annotations

import math

import pytest

from provisioner.catalog import load_catalog
from provisioner.estimator import (
    MIB,
    batch_surcharge_mib,
    choose_batch,
    estimate,
    flash_attention_supported,
    gpu_weights_mib,
    graph_bytes,
    host_embedding_bytes,
    kv_cache_bytes,
    largest_offer,
    model_context,
    place,
    preflight_mib,
    rules_for,
    usable_mib,
)

GIB = 1024 * MIB
CATALOG = load_catalog()


def kv_gib(tag: str, ctx: int, parallel: int = 1, kv: str = "f16", batch: int = 512) -> float:
    return kv_cache_bytes(CATALOG[tag], ctx, parallel, kv, batch) / GIB


def test_llama31_8b_caches_128_kib_per_token():
    assert kv_cache_bytes(CATALOG["llama3.1:8b"], 1, 1, "f16", 512) == 128 * 1024
    assert kv_gib("llama3.1:8b", 8192) == 1.0
    assert kv_gib("llama3.1:8b", 32768) == 4.0
    assert kv_gib("llama3.1:8b", 131072) == 16.0


def test_llama33_70b_at_8k_needs_2_5_gib_of_kv():
    assert kv_gib("llama3.3:70b", 8192) == 2.5
    assert kv_gib("llama3.3:70b", 131072) == 40.0


def test_context_is_capped_at_the_trained_context():
    # qwen2.5-coder:7b was trained for 32K: 56 KiB per token, 1.75 GiB at 32K, no more beyond.
    assert kv_cache_bytes(CATALOG["qwen2.5-coder:7b"], 1, 1, "f16", 512) == 56 * 1024
    assert kv_gib("qwen2.5-coder:7b", 32768) == 1.75
    assert kv_gib("qwen2.5-coder:7b", 131072) == 1.75


def test_moe_kv_uses_its_attention_geometry():
    assert kv_cache_bytes(CATALOG["qwen3:30b-a3b"], 1, 1, "f16", 512) == 96 * 1024
    assert kv_gib("qwen3:30b-a3b", 131072) == 12.0


@pytest.mark.parametrize(
    ("tag", "ctx", "reference_gib"),
    [
        # the reference table: sliding-window layers keep window + one batch, not the context
        ("gemma3:27b", 8192, 1.2),
        ("gemma3:27b", 32768, 3.1),
        ("gemma3:27b", 131072, 10.6),
        ("gpt-oss:20b", 8192, 0.2),
        ("gpt-oss:20b", 32768, 0.76),
        ("gpt-oss:20b", 131072, 3.0),
    ],
)
def test_sliding_window_models_match_the_reference(tag, ctx, reference_gib):
    assert kv_gib(tag, ctx) == pytest.approx(reference_gib, abs=0.06)


def test_sliding_window_is_far_below_the_naive_size():
    entry = CATALOG["gemma3:27b"]
    naive = 2 * entry.layers * entry.kv_heads * entry.head_dim * 2 * 131072 / GIB
    assert naive == 62.0
    assert kv_gib("gemma3:27b", 131072) < naive / 5


def test_sliding_window_never_exceeds_the_full_cache():
    # starcoder2 slides on every layer; below its window it caches the context itself
    entry = CATALOG["starcoder2:3b"]
    full = 2 * entry.layers * entry.kv_heads * entry.head_dim * 2
    assert kv_cache_bytes(entry, 1024, 1, "f16", 512) == full * 1024
    assert kv_cache_bytes(entry, 16384, 1, "f16", 512) == full * (4096 + 512)


def test_parallel_multiplies_the_cache():
    one = kv_cache_bytes(CATALOG["llama3.1:8b"], 8192, 1, "f16", 512)
    assert kv_cache_bytes(CATALOG["llama3.1:8b"], 8192, 4, "f16", 512) == 4 * one


def test_quantised_kv_uses_ggml_block_sizes():
    f16 = kv_cache_bytes(CATALOG["llama3.3:70b"], 8192, 1, "f16", 512)
    assert kv_cache_bytes(CATALOG["llama3.3:70b"], 8192, 1, "q8_0", 512) == f16 * 17 // 32
    assert kv_cache_bytes(CATALOG["llama3.3:70b"], 8192, 1, "q4_0", 512) == f16 * 9 // 32


def test_unknown_kv_type_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown KV cache type 'q2'"):
        kv_cache_bytes(CATALOG["llama3.1:8b"], 8192, 1, "q2", 512)
    with pytest.raises(ValueError, match="positive"):
        kv_cache_bytes(CATALOG["llama3.1:8b"], 0, 1, "f16", 512)


@pytest.mark.parametrize(
    ("batch", "surcharge"),
    [(1, 0), (512, 0), (1023, 0), (1024, 768), (2047, 768), (2048, 2048)],
)
def test_ollamas_preflight_batch_surcharge(batch, surcharge):
    # server/sched.go generationBatchSurcharge
    assert batch_surcharge_mib(batch) == surcharge


@pytest.mark.parametrize(
    ("cells", "batch"),
    [(2048, 512), (4096, 512), (4097, 1024), (32768, 1024), (32769, 2048), (262144, 2048)],
)
def test_ollama_030_chooses_the_batch_from_context_times_parallel(cells, batch):
    rules = rules_for("0.32.15")
    assert choose_batch(CATALOG["llama3.1:8b"], cells, rules) == batch


def test_batch_rules_follow_the_release_and_the_options():
    entry = CATALOG["llama3.1:8b"]
    new, old = rules_for("0.32.15"), rules_for("0.12.3")
    assert old.engine != new.engine
    assert choose_batch(entry, 65536, old) == 512  # before 0.30: num_batch 512, always
    assert choose_batch(entry, 65536, new, pinned=256) == 256  # a num_batch option wins
    assert choose_batch(entry, 65536, new, flash_attention=False) == 512
    # embedding models: 2048, capped at context x parallel
    assert choose_batch(CATALOG["nomic-embed-text:v1.5"], 8192, new) == 2048
    assert choose_batch(CATALOG["nomic-embed-text:v1.5"], 1024, new) == 1024


def test_preflight_is_ollamas_predict_server_vram():
    # file size + 2 x layers x kv_heads x (embd / heads) x cells x 2 B, every layer at f16
    entry = CATALOG["gemma3:27b"]
    head = 5376 // 32  # 168, not the real 128: Ollama's embedding / heads
    kv = 2 * 62 * 16 * head * 8192 * 2
    assert preflight_mib(entry, 8192) == math.ceil((entry.size_bytes + kv) / MIB)


def test_automatic_batch_steps_down_when_the_gpu_is_tight():
    rules = rules_for("0.32.15")
    entry = CATALOG["llama3.1:8b"]
    # 2048 needs the prediction under 60 % of the free memory, 1024 under 75 %
    assert choose_batch(entry, 65536, rules, predicted_mib=6500, available_mib=10000) == 1024
    assert choose_batch(entry, 65536, rules, predicted_mib=7600, available_mib=10000) == 512
    assert choose_batch(entry, 65536, rules, predicted_mib=1000, available_mib=10000) == 2048


def test_graph_grows_with_batch_times_the_widest_intermediate():
    entry = CATALOG["qwen2.5-coder:7b"]
    # logits: vocab x 4 B per token, plus the hidden state
    assert graph_bytes(entry, 8192, 512, True) == 512 * 4 * (152064 + 28 * 128)
    # without flash attention the attention scores win at long context: ~1.8 GiB at 32k (issue 14)
    no_fa = graph_bytes(entry, 32768, 512, False) / GIB
    assert no_fa == pytest.approx(1.77, abs=0.02)
    assert graph_bytes(entry, 32768, 1024, True) == 2 * graph_bytes(entry, 32768, 512, True)


def test_embedding_models_have_no_kv_cache_and_a_tiny_graph():
    entry = CATALOG["nomic-embed-text:v1.5"]
    est = estimate(entry, 8192, 1, "f16", 0)
    assert est.kv_mib == 0
    assert est.graph_mib < 16
    assert est.total_mib < 300


def test_vision_models_get_1_gib_for_the_projector_buffers():
    entry = CATALOG["gemma3:12b"]
    est = estimate(entry, 8192, 1, "f16", 0)
    assert est.vision_mib == 1024
    assert est.total_mib == est.weights_mib + est.kv_mib + est.graph_mib + 1024
    assert est.footprint_mib(2) == est.total_mib + est.graph_mib


def test_untied_token_embeddings_stay_in_host_memory():
    # Ollama logs "CPU_Mapped model buffer size = 281.81 MiB" for llama3.1:8b Q4_K_M
    assert host_embedding_bytes(CATALOG["llama3.1:8b"]) / MIB == pytest.approx(281.81, abs=0.01)
    # qwen2.5-coder:7b: 292.36 MiB (ollama 0.2x server log, CPU_Mapped model buffer)
    assert host_embedding_bytes(CATALOG["qwen2.5-coder:7b"]) / MIB == pytest.approx(
        292.36, abs=0.01
    )
    # tied models keep the matrix on the GPU too (it is the output layer)
    assert host_embedding_bytes(CATALOG["gemma3:12b"]) == 0
    # gpt-oss (MXFP4 experts) keeps an f16 token_embd: 201088 x 2880 x 2 B
    assert host_embedding_bytes(CATALOG["gpt-oss:20b"]) == 201088 * 2880 * 2


def test_model_context_follows_params_then_pinned_then_trained():
    assert model_context(CATALOG["llama3.1:8b"], 8192) == 8192
    assert model_context(CATALOG["qwen2.5-coder:7b"], 131072) == 32768
    # nomic-embed-text's params set num_ctx 8192; its trained context caps it at 2048
    assert model_context(CATALOG["nomic-embed-text:v1.5"], 512) == 2048
    # vision models load with at least 2048
    assert model_context(CATALOG["gemma3:12b"], 1024) == 2048


@pytest.mark.parametrize(
    ("caps", "supported"),
    [(["8.6", "9.0"], True), (["7.5"], True), (["5.2"], False), (["7.2"], False), ([None], True)],
)
def test_flash_attention_by_compute_capability(caps, supported):
    assert flash_attention_supported(caps) is supported


def test_estimate_is_weights_plus_kv_plus_graph_for_every_model():
    for entry in CATALOG.values():
        est = estimate(entry, 8192, 1, "f16", 0)
        assert est.weights_mib == gpu_weights_mib(entry) <= math.ceil(entry.size_bytes / MIB)
        assert est.total_mib == est.weights_mib + est.kv_mib + est.graph_mib + est.vision_mib
        assert est.total_mib >= est.weights_mib
        assert est.footprint_mib(2) == est.total_mib + est.graph_mib


def test_llama33_70b_at_8k_is_about_43_gib():
    est = estimate(CATALOG["llama3.3:70b"], 8192, 1, "f16", 512)
    # issue 14: the 128256 x 8192 q4_K token embeddings (563.6 MiB) stay in host memory
    assert (est.weights_mib, est.kv_mib) == (41008 - 563, 2560)
    # the graph is now batch x (vocab + hidden) x 4 B: 512 x (128256 + 8192) x 4 = 266.5 MiB
    assert est.graph_mib == 267
    assert est.total_mib / 1024 == pytest.approx(42.3, abs=0.1)


def test_usable_memory():
    assert usable_mib(81559, 457, 0.9) == 72991
    assert usable_mib(400, 457, 0.9) == 0
    assert usable_mib(8192, 0, 1.0) == 8192


def _est(total_weights_kv: int, graph: int = 384):
    from provisioner.estimator import Estimate

    return Estimate(
        weights_mib=total_weights_kv, kv_mib=0, graph_mib=graph, total_mib=total_weights_kv + graph
    )


def test_place_prefers_one_gpu_the_one_with_most_memory():
    est = _est(10_000)
    assert place(est, [(0, 16384), (1, 24576)], 457, 0.9) == [1]
    # ties go to the lower index, whatever the input order
    assert place(est, [(3, 24576), (1, 24576)], 457, 0.9) == [1]


def test_place_fits_within_headroom_of_memory_minus_reserve():
    usable = usable_mib(24576, 457, 0.9)
    assert place(_est(usable - 384), [(0, 24576)], 457, 0.9) == [0]
    assert place(_est(usable - 383), [(0, 24576)], 457, 0.9) is None


def test_place_splits_over_the_fewest_largest_gpus():
    gpus = [(0, 24576), (1, 81920), (2, 81920), (3, 81920)]
    est = _est(130_000)
    assert place(est, gpus, 457, 0.9) == [1, 2]
    assert place(_est(200_000), gpus, 457, 0.9) == [1, 2, 3]


def test_every_gpu_of_a_split_pays_its_own_graph():
    usable = usable_mib(81920, 457, 0.9)
    gpus = [(0, 81920), (1, 81920)]
    assert place(_est(2 * (usable - 1000), graph=1000), gpus, 457, 0.9) == [0, 1]
    assert place(_est(2 * (usable - 1000) + 1, graph=1000), gpus, 457, 0.9) is None
    assert largest_offer(gpus, 457, 0.9, 1000) == 2 * usable - 1000


def test_place_returns_none_when_nothing_holds_the_model():
    assert place(_est(10_000), [], 457, 0.9) is None
    assert place(_est(10_000), [(0, 8192)], 457, 0.9) is None
    assert largest_offer([], 457, 0.9, 384) == 0
