"""The planner: modes, profiles, explicit lists, properties of every plan, --what-if."""

from __future__ import annotations

import copy
import json

import pytest

from provisioner import settings
from provisioner.catalog import CatalogError, load_catalog
from provisioner.estimator import gpu_weights_mib
from provisioner.planner import (
    WhatIfError,
    load_profiles,
    parse_what_if,
    plan_fleet,
    plan_host,
    plan_what_if,
    what_if_facts,
)

CATALOG = load_catalog()
PROFILES = sorted(load_profiles())
GPU_PROFILES = [p for p in PROFILES if p != "cpu"]
KEYS = {"gpus", "vram_mib", "budget_mib", "mode", "reason", "models", "skipped"}
H100 = 81559
A100_80 = 81920


def data(**values):
    return settings.resolve(values)


def gpu_facts(*memories: int, name: str = "NVIDIA Test GPU") -> dict:
    facts = what_if_facts(
        [
            {
                "index": i,
                "name": name,
                "uuid": f"GPU-{i}",
                "memory_total_mib": mem,
                "compute_cap": "9.0",
                "pci_bus_id": f"00000000:0{i}:00.0",
                "mig": "Disabled",
            }
            for i, mem in enumerate(memories)
        ]
    )
    facts["memory_total_mib"] = 257_000
    return facts


def cpu_facts(memory_mib: int | None = 32_000, state: str = "no-gpu") -> dict:
    return {
        "gpu_state": state,
        "gpus": [],
        "driver_version": None,
        "cuda_version": None,
        "os": {"id": "debian", "version": "12"},
        "memory_total_mib": memory_mib,
        "pci_devices": [],
    }


NVIDIA_PCI = [{"slot": "17:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"}]


def tags(plan: dict) -> list[str]:
    return [m["tag"] for m in plan["models"]]


def best_rank(plan: dict) -> int:
    return max((CATALOG[m["tag"]].rank for m in plan["models"]), default=-1)


# --- shape and modes ----------------------------------------------------------------------------


def test_gpu_plan_has_the_documented_shape():
    plan = plan_host("gpu1", gpu_facts(24564), data())
    assert KEYS <= set(plan)
    assert plan["mode"] == "gpu"
    assert plan["vram_mib"] == 24564
    # issue 14: llama-server's fit (Ollama >= 0.30) leaves 1024 MiB per GPU on top of the reserve
    assert plan["budget_mib"] == int(0.9 * (24564 - 457 - 1024))
    assert [g["index"] for g in plan["gpus"]] == [0]
    assert plan["gpus"][0]["uuid"] == "GPU-0"
    for model in plan["models"]:
        assert {"tag", "estimated_vram_mib", "gpus", "reason"} <= set(model)
    assert json.loads(json.dumps(plan)) == plan


def test_cpu_only_when_gpu_is_false_in_data():
    plan = plan_host("h", gpu_facts(H100), data(gpu=False))
    assert plan["mode"] == "cpu"
    assert "gpu: false" in plan["reason"]
    assert plan["gpus"] == [] and plan["vram_mib"] == 0
    assert plan["budget_mib"] == int(0.9 * (257_000 - 4096))
    assert plan["profile"] == "cpu"
    assert plan["models"] and all(m["gpus"] == [] for m in plan["models"])


def test_cpu_only_when_the_host_has_no_nvidia_gpu():
    plan = plan_host("vm", cpu_facts(16_384), data())
    assert plan["mode"] == "cpu"
    assert "no NVIDIA GPU" in plan["reason"]
    assert plan["budget_mib"] == int(0.9 * (16_384 - 4096))
    for model in plan["models"]:
        assert model["estimated_vram_mib"] <= plan["budget_mib"]
        assert CATALOG[model["tag"]].params_b <= 8


def test_cpu_profile_stays_small_on_a_large_memory_host():
    plan = plan_host("big", cpu_facts(1_000_000), data())
    assert plan["models"]
    assert all(CATALOG[t].params_b <= 8 for t in tags(plan))


def test_cpu_host_keeps_a_profile_the_operator_chose():
    plan = plan_host("rag", cpu_facts(16_384), data(model_profile="embedding"))
    assert plan["profile"] == "embedding"
    assert tags(plan) and all("embedding" in CATALOG[t].categories for t in tags(plan))


def test_cpu_ram_reserve_is_configurable():
    plan = plan_host("vm", cpu_facts(8192), data(ram_reserve_mib=1024))
    assert plan["budget_mib"] == int(0.9 * (8192 - 1024))


def test_cpu_host_with_unknown_memory_plans_nothing():
    plan = plan_host("vm", cpu_facts(None), data())
    assert plan["mode"] == "cpu" and plan["budget_mib"] == 0 and plan["models"] == []
    assert "memory unknown" in plan["reason"]


def test_nvidia_hardware_without_a_driver_plans_nothing_yet():
    facts = cpu_facts(64_000, state="no-driver")
    facts["pci_devices"] = NVIDIA_PCI
    plan = plan_host("new", facts, data(models=["llama3.1:8b"]))
    assert plan["mode"] == "none"
    assert plan["models"] == []
    assert plan["reason"].startswith("driver not installed yet: 1 NVIDIA PCI GPU(s) found")
    assert "run provision apply first" in plan["reason"]


def test_driver_mismatch_plans_nothing():
    facts = cpu_facts(64_000, state="driver-mismatch")
    facts["pci_devices"] = NVIDIA_PCI
    plan = plan_host("h", facts, data())
    assert plan["mode"] == "none" and "version mismatch" in plan["reason"]


def test_non_gpu_pci_devices_of_nvidia_do_not_count_as_gpus():
    facts = cpu_facts(32_000)
    facts["pci_devices"] = [
        {"slot": "01:00.1", "class_id": "0403", "vendor_id": "10de", "device_id": "10f0"},
        {"slot": "00:02.0", "class_id": "0300", "vendor_id": "8086", "device_id": "3e92"},
    ]
    assert plan_host("h", facts, data())["mode"] == "cpu"


def test_gpu_true_without_a_gpu_plans_nothing():
    plan = plan_host("h", cpu_facts(), data(gpu=True))
    assert plan["mode"] == "none" and "gpu: true" in plan["reason"]


def test_missing_facts_plan_nothing():
    plan = plan_host("h", None, data())
    assert plan["mode"] == "none" and plan["models"] == []


def test_mig_enabled_gpus_are_left_out():
    facts = gpu_facts(H100, 24564)
    facts["gpus"][0]["mig"] = "Enabled"
    plan = plan_host("h", facts, data())
    assert plan["mode"] == "gpu"
    assert "GPU 0 (MIG enabled)" in plan["reason"]
    assert plan["budget_mib"] == plan["gpus"][1]["usable_mib"]
    assert all(m["gpus"] == [1] for m in plan["models"])


# --- properties over many hosts -----------------------------------------------------------------

VRAM_SIZES = [4096, 6144, 8188, 10240, 12288, 16380, 20480, 24564, 32768, 40960, 46068]
VRAM_SIZES += [49140, 65536, H100, 98304, 143771]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("gpu_count", [1, 2])
def test_every_chosen_model_fits_its_budget(profile, gpu_count):
    for vram in VRAM_SIZES:
        plan = plan_host("h", gpu_facts(*[vram] * gpu_count), data(model_profile=profile))
        offers = {g["index"]: g["usable_mib"] for g in plan["gpus"]}
        assert len(plan["models"]) <= 2  # models_max
        for model in plan["models"]:
            entry = CATALOG[model["tag"]]
            # estimate >= the weights on the GPU (issue 14: the blob less host-side embeddings)
            assert model["estimated_vram_mib"] >= gpu_weights_mib(entry)
            assert model["estimated_vram_mib"] <= sum(offers[i] for i in model["gpus"])
            assert model["estimated_vram_mib"] <= plan["budget_mib"]
            if len(model["gpus"]) == 1:
                assert model["estimated_vram_mib"] <= offers[model["gpus"][0]]
            assert set(entry.categories) & set(load_profiles()[profile].categories)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("gpu_count", [1, 2, 4])
def test_more_vram_never_gives_a_weaker_best_model(profile, gpu_count):
    previous = -1
    for vram in range(2048, 160_000, 1536):
        plan = plan_host("h", gpu_facts(*[vram] * gpu_count), data(model_profile=profile))
        assert best_rank(plan) >= previous, (profile, gpu_count, vram)
        previous = best_rank(plan)
    assert previous > 0


@pytest.mark.parametrize("profile", PROFILES)
def test_more_ram_never_gives_a_weaker_best_model_on_cpu(profile):
    previous = -1
    for ram in range(4096, 200_000, 2048):
        plan = plan_host("h", cpu_facts(ram), data(model_profile=profile))
        assert best_rank(plan) >= previous
        previous = best_rank(plan)


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_an_8gb_card_gets_no_70b_model(profile):
    plan = plan_host("h", gpu_facts(8188), data(model_profile=profile))
    assert plan["models"]
    assert all(CATALOG[t].params_b < 70 for t in tags(plan))
    explicit = plan_host("h", gpu_facts(8188), data(models=["llama3.3:70b", "deepseek-r1:70b"]))
    assert explicit["models"] == []
    assert [s["tag"] for s in explicit["skipped"]] == ["llama3.3:70b", "deepseek-r1:70b"]


def test_an_80gb_card_can_serve_a_70b_model_at_8k_context():
    plan = plan_host(
        "h", gpu_facts(H100), data(models=["llama3.3:70b"], ollama_context_length=8192)
    )
    assert tags(plan) == ["llama3.3:70b"]
    assert plan["models"][0]["gpus"] == [0]
    assert plan["skipped"] == []


def test_two_80gb_cards_split_qwen3_235b_over_both():
    plan = plan_host("h", gpu_facts(A100_80, A100_80), data(model_profile="chat"))
    assert plan["models"][0]["tag"] == "qwen3:235b"
    assert plan["models"][0]["gpus"] == [0, 1]
    assert "split over GPUs 0,1" in plan["models"][0]["reason"]
    one = plan_host("h", gpu_facts(A100_80), data(models=["qwen3:235b"]))
    assert one["models"] == [] and one["skipped"][0]["tag"] == "qwen3:235b"


def test_long_context_can_push_a_70b_model_off_an_80gb_card():
    plan = plan_host(
        "h", gpu_facts(H100), data(models=["llama3.3:70b"], ollama_context_length=131072)
    )
    assert plan["models"] == []
    assert "KV cache 40960" in plan["skipped"][0]["reason"]


def test_quantised_kv_cache_shrinks_the_estimate_only_with_flash_attention():
    def mib(**values):
        plan = plan_host("h", gpu_facts(H100), data(models=["llama3.3:70b"], **values))
        return plan["models"][0]["estimated_vram_mib"], plan["settings"]["kv_cache_type"]

    f16, _ = mib(ollama_kv_cache_type="f16")
    q8, kind = mib(ollama_kv_cache_type="q8_0")
    assert kind == "q8_0" and q8 == f16 - 2560 + 1360
    # issue 14: without flash attention the KV cache is f16 and the graph holds attention scores
    no_fa, kind = mib(ollama_kv_cache_type="q8_0", ollama_flash_attention=False)
    assert kind == "f16" and no_fa > f16


def test_general_profile_picks_a_chat_model_and_a_code_model():
    plan = plan_host("h", gpu_facts(24564), data(model_profile="general"))
    first, second = (CATALOG[t] for t in tags(plan))
    assert "chat" in first.categories and "code" in second.categories


def test_models_max_limits_the_profile():
    plan = plan_host("h", gpu_facts(H100), data(model_profile="chat", models_max=4))
    assert len(plan["models"]) == 4
    ranks = [m["rank"] for m in plan["models"]]
    assert ranks == sorted(ranks, reverse=True)
    assert len(plan_host("h", gpu_facts(H100), data(models_max=1))["models"]) == 1


def test_nothing_fits_says_so():
    plan = plan_host("h", gpu_facts(1024), data())
    assert plan["models"] == []
    assert "no model of profile general fits" in plan["reason"]


# --- explicit lists, always, pinned ------------------------------------------------------------


def test_explicit_list_reports_what_does_not_fit_instead_of_dropping_it():
    wanted = ["llama3.1:8b", "llama3.1:405b", "myorg/custom:1b", "qwen3", "not valid!"]
    plan = plan_host("h", gpu_facts(24564), data(models=wanted))
    assert tags(plan) == ["llama3.1:8b"]
    skipped = {s["tag"]: s["reason"] for s in plan["skipped"]}
    assert list(skipped) == ["llama3.1:405b", "myorg/custom:1b", "qwen3:latest", "not valid!"]
    assert skipped["llama3.1:405b"].startswith("needs ")
    assert "the largest placement on this host offers 20774 MiB" in skipped["llama3.1:405b"]
    assert "cannot be sized" in skipped["myorg/custom:1b"]
    assert "model_catalog_extra" in skipped["myorg/custom:1b"]
    assert "qwen3:8b" in skipped["qwen3:latest"]  # hint: the sized tags of that model
    assert "not a valid Ollama model name" in skipped["not valid!"]
    assert plan["profile"] is None


def test_explicit_list_normalises_and_deduplicates():
    plan = plan_host(
        "h", gpu_facts(24564), data(models=["library/qwen3:8b", "qwen3:8b", "QWEN3:8B"])
    )
    assert tags(plan) == ["qwen3:8b"] and plan["skipped"] == []


def test_explicit_empty_list_means_no_models():
    plan = plan_host("h", gpu_facts(H100), data(models=[]))
    assert plan["models"] == [] and plan["skipped"] == [] and plan["profile"] is None


def test_always_and_pinned_models_are_added_when_they_fit():
    plan = plan_host(
        "h",
        gpu_facts(8188),
        data(
            model_profile="coding",
            models_always=["nomic-embed-text:v1.5", "qwen2.5-coder:7b"],
            models_pinned=["llama3.3:70b", "llama3.2:3b"],
        ),
    )
    vias = {m["tag"]: m["via"] for m in plan["models"]}
    assert vias["nomic-embed-text:v1.5"] == "models_always"
    assert vias["qwen2.5-coder:7b"] == "profile:coding"  # already chosen, not twice
    assert vias["llama3.2:3b"] == "models_pinned"
    assert [s["tag"] for s in plan["skipped"]] == ["llama3.3:70b"]


def test_catalog_extra_entries_are_planned():
    extra = {
        "tag": "myorg/coder:13b",
        "category": "code",
        "rank": 100,
        "size_bytes": 8_000_000_000,
        "context": 16384,
        "layers": 40,
        "kv_heads": 8,
        "head_dim": 128,
    }
    plan = plan_host(
        "h", gpu_facts(24564), data(model_profile="coding", model_catalog_extra=[extra])
    )
    assert tags(plan)[0] == "myorg/coder:13b"
    explicit = plan_host(
        "h", gpu_facts(24564), data(models=["myorg/coder:13b"], model_catalog_extra=[extra])
    )
    assert tags(explicit) == ["myorg/coder:13b"]
    # the packaged catalog is untouched for the next host
    assert "myorg/coder:13b" not in tags(plan_host("h", gpu_facts(24564), data()))


def test_catalog_extra_can_resize_a_packaged_tag():
    bigger = dict(
        tag="llama3.1:8b", size_bytes=30_000_000_000, context=131072, layers=32, kv_heads=8,
        head_dim=128,
    )  # fmt: skip
    plan = plan_host(
        "h", gpu_facts(24564), data(models=["llama3.1:8b"], model_catalog_extra=[bigger])
    )
    assert plan["models"] == [] and plan["skipped"][0]["tag"] == "llama3.1:8b"


def test_malformed_catalog_extra_raises_catalog_error():
    with pytest.raises(CatalogError, match="model_catalog_extra: entry 0"):
        plan_host("h", gpu_facts(24564), data(model_catalog_extra=[{"tag": "x"}]))


# --- determinism and fleets ---------------------------------------------------------------------


def test_plans_are_deterministic_whatever_the_gpu_order():
    facts = gpu_facts(24564, H100, 46068)
    shuffled = copy.deepcopy(facts)
    shuffled["gpus"].reverse()
    d = data(model_profile="general", models_always=["nomic-embed-text:v1.5"])
    first = json.dumps(plan_host("h", facts, d), sort_keys=True)
    assert json.dumps(plan_host("h", shuffled, d), sort_keys=True) == first
    assert json.dumps(plan_host("h", copy.deepcopy(facts), d), sort_keys=True) == first


def test_equal_gpus_tie_break_on_the_lower_index():
    plan = plan_host("h", gpu_facts(H100, H100), data(model_profile="coding"))
    assert all(m["gpus"] == [0] for m in plan["models"])


def test_fleet_plans_every_host_with_its_own_gpus():
    hosts = {
        f"host-{n}": (gpu_facts(24564) if n % 2 else cpu_facts(32_000), data()) for n in range(6)
    }
    for n, (facts, _) in hosts.items():
        for gpu in facts["gpus"]:
            gpu["uuid"] = f"GPU-{n}"
    fleet = plan_fleet(hosts)
    assert list(fleet) == ["hosts"]
    assert list(fleet["hosts"]) == sorted(hosts)
    assert fleet["hosts"]["host-1"]["gpus"][0]["uuid"] == "GPU-host-1"
    assert fleet["hosts"]["host-3"]["gpus"][0]["uuid"] == "GPU-host-3"
    assert fleet["hosts"]["host-0"]["mode"] == "cpu"
    # hosts of the same shape share a cached selection but never the same objects
    fleet["hosts"]["host-1"]["models"][0]["tag"] = "changed"
    assert fleet["hosts"]["host-3"]["models"][0]["tag"] != "changed"
    assert plan_host("x", gpu_facts(24564), data())["models"][0]["tag"] != "changed"


# --- profiles -----------------------------------------------------------------------------------


def test_profiles_match_the_model_profile_choices():
    assert set(PROFILES) == set(settings.all_keys()["model_profile"].choices)
    for profile in load_profiles().values():
        assert profile.doc and profile.categories


# --- what-if ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "name", "mib"),
    [
        ("2x NVIDIA A100-SXM4-80GB:81920", 2, "NVIDIA A100-SXM4-80GB", 81920),
        ("NVIDIA GeForce RTX 4090:24564", 1, "NVIDIA GeForce RTX 4090", 24564),
        ("1 x T4:15360", 1, "T4", 15360),
        ("8X H100 : 81559 MiB", 8, "H100", 81559),
    ],
)
def test_parse_what_if(spec, count, name, mib):
    gpus = parse_what_if(spec)
    assert [g["index"] for g in gpus] == list(range(count))
    assert {g["name"] for g in gpus} == {name}
    assert {g["memory_total_mib"] for g in gpus} == {mib}
    assert set(gpus[0]) >= {"index", "name", "uuid", "memory_total_mib", "mig"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("NVIDIA A100", "expected [N x ]GPU-NAME:MiB"),
        (":81920", "the GPU name is empty"),
        ("0x A100:81920", "GPU count must be 1 to 64, got 0"),
        ("65x A100:81920", "GPU count must be 1 to 64, got 65"),
        ("-2x A100:81920", "GPU count must be 1 to 64, got -2"),
        ("A100:-81920", "memory must be positive, got -81920 MiB"),
        ("A100:0", "memory must be positive"),
        ("A100:80GB", "memory must be a whole number of MiB"),
        ("A100:81920.5", "memory must be a whole number of MiB"),
        ("A100:2000000", "is absurd (more than 1 TiB"),
    ],
)
def test_parse_what_if_rejects_bad_specs(spec, message):
    with pytest.raises(WhatIfError) as info:
        parse_what_if(spec)
    assert message in str(info.value)


def test_fleet_hosts_come_in_natural_order():
    hosts = {name: (cpu_facts(), data()) for name in ["web-10", "web-2", "db", "web-1"]}
    assert list(plan_fleet(hosts)["hosts"]) == ["db", "web-1", "web-2", "web-10"]


def test_unreachable_host_plans_nothing():
    facts = cpu_facts(None, state="unreachable")
    facts["error"] = "ConnectError: timed out"
    plan = plan_host("h", facts, data())
    assert plan["mode"] == "none" and plan["models"] == []
    assert plan["reason"] == "host unreachable: ConnectError: timed out"


def test_plan_what_if_names_hosts_in_order():
    specs = [f"T4:{15360 + n}" for n in range(11)]
    plan = plan_what_if(specs, data())
    assert list(plan["hosts"]) == [f"what-if-{n}" for n in range(1, 12)]
    assert plan["hosts"]["what-if-11"]["vram_mib"] == 15370
    assert plan["hosts"]["what-if-1"]["mode"] == "gpu"
