"""The resident set: models that must stay loaded together (issue 14, item 4)."""

from __future__ import annotations

import pytest

from provisioner import settings
from provisioner.catalog import load_catalog
from provisioner.estimator import estimate
from provisioner.planner import plan_host

CATALOG = load_catalog()
RTX_4090 = 24564


def data(**values):
    return settings.resolve(values)


def gpu_facts(*memories: int, cap: str = "8.9") -> dict:
    return {
        "gpu_state": "ok",
        "gpus": [
            {"index": i, "name": "NVIDIA Test GPU", "uuid": f"GPU-{i}", "memory_total_mib": m,
             "compute_cap": cap, "mig": None}
            for i, m in enumerate(memories)
        ],
        "memory_total_mib": 65536,
        "pci_devices": [],
    }  # fmt: skip


def by_tag(plan: dict) -> dict:
    return {m["tag"]: m for m in plan["models"]}


def test_chat_and_embedding_model_fit_together_and_are_marked_resident():
    plan = plan_host(
        "h",
        gpu_facts(RTX_4090),
        data(models=["qwen3:14b"], models_resident=["qwen3:14b", "nomic-embed-text:v1.5"]),
    )
    models = by_tag(plan)
    assert models["qwen3:14b"]["resident"] and models["nomic-embed-text:v1.5"]["resident"]
    assert models["nomic-embed-text:v1.5"]["via"] == "models_resident"  # added by the set
    res = plan["resident"]
    assert res["fits"] and res["models"] == ["qwen3:14b", "nomic-embed-text:v1.5"]
    together = sum(models[t]["estimated_vram_mib"] for t in res["models"])
    assert res["total_mib"] == together <= plan["budget_mib"]
    assert res["left_mib"]["0"] == plan["budget_mib"] - together


def test_two_models_that_fit_alone_but_not_together():
    # a 24 GB card (20774 MiB usable), a 19 GB and a 9 GB model
    wanted = ["qwen3:30b-a3b", "qwen3:14b"]
    plan = plan_host("h", gpu_facts(RTX_4090), data(models=wanted, models_resident=wanted))
    assert [m["tag"] for m in plan["models"]] == wanted  # each fits alone
    res = plan["resident"]
    assert res["models"] == ["qwen3:30b-a3b"] and not res["fits"]
    (out,) = res["left_out"]
    assert out["tag"] == "qwen3:14b"
    assert "beside the resident models" in out["reason"]
    other = by_tag(plan)["qwen3:14b"]
    assert other["resident"] is False and other["fits_beside_resident"] is False
    # on demand: its blob is read from the store, 9.3 GB at the default 500 MB/s
    assert other["cold_load_s"] == pytest.approx(9.3e9 / 500e6, abs=0.1)


def test_a_second_gpu_holds_the_second_resident_model():
    wanted = ["qwen3:30b-a3b", "qwen3:14b"]
    plan = plan_host(
        "h", gpu_facts(RTX_4090, RTX_4090), data(models=wanted, models_resident=wanted)
    )
    models = by_tag(plan)
    assert plan["resident"]["fits"]
    assert {tuple(models[t]["gpus"]) for t in wanted} == {(0,), (1,)}


def test_max_loaded_models_limits_the_set():
    wanted = ["llama3.2:1b", "qwen3:0.6b", "nomic-embed-text:v1.5"]
    plan = plan_host(
        "h",
        gpu_facts(RTX_4090),
        data(models=wanted, models_resident=wanted, ollama_max_loaded_models=2),
    )
    res = plan["resident"]
    assert res["max_loaded_models"] == 2 and res["models"] == wanted[:2]
    assert "OLLAMA_MAX_LOADED_MODELS allows 2" in res["left_out"][0]["reason"]
    # 0 is Ollama's automatic 3 per GPU (server/sched.go defaultModelsPerGPU)
    auto = plan_host("h", gpu_facts(RTX_4090, RTX_4090), data(models_resident=wanted))
    assert auto["resident"]["max_loaded_models"] == 6


def test_a_resident_model_that_does_not_fit_at_all_is_skipped_and_left_out():
    plan = plan_host("h", gpu_facts(RTX_4090), data(models=[], models_resident=["llama3.3:70b"]))
    assert plan["models"] == []
    assert plan["skipped"][0]["tag"] == "llama3.3:70b"
    assert plan["resident"]["left_out"][0]["reason"].startswith("not in the plan")


def test_parallel_users_size_the_kv_cache_of_each_model():
    one = by_tag(plan_host("h", gpu_facts(RTX_4090), data(models=["qwen3:8b"])))["qwen3:8b"]
    four = by_tag(
        plan_host("h", gpu_facts(RTX_4090), data(models=["qwen3:8b"], ollama_num_parallel=4))
    )["qwen3:8b"]
    assert (one["parallel"], four["parallel"]) == (1, 4)
    entry = CATALOG["qwen3:8b"]
    kv_one = estimate(entry, 8192, 1, "f16", 0).kv_mib
    kv_four = estimate(entry, 8192, 4, "f16", 0).kv_mib
    assert kv_four == 4 * kv_one
    assert four["estimated_vram_mib"] - one["estimated_vram_mib"] >= kv_four - kv_one


def test_no_resident_set_keeps_the_old_shape():
    plan = plan_host("h", gpu_facts(RTX_4090), data(models=["qwen3:8b"]))
    assert plan["resident"] is None
    model = plan["models"][0]
    assert model["resident"] is False and "fits_beside_resident" not in model
    assert model["cold_load_s"] == pytest.approx(5.2e9 / 500e6, abs=0.1)


def test_flash_attention_is_off_on_gpus_without_it():
    old = plan_host("h", gpu_facts(RTX_4090, cap="5.2"), data(ollama_kv_cache_type="q8_0"))
    assert old["settings"]["flash_attention"] is False
    assert old["settings"]["kv_cache_type"] == "f16"
    new = plan_host("h", gpu_facts(RTX_4090), data(ollama_kv_cache_type="q8_0"))
    assert new["settings"]["flash_attention"] is True
    assert new["settings"]["kv_cache_type"] == "q8_0"
