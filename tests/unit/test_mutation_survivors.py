"""Tests written for the mutants that survived ``make mutation`` (docs/testing.md).

Each test names the behaviour a surviving mutant changed without any test noticing. Mutants
that cannot change behaviour (equivalent ones) are listed in docs/testing.md instead.
"""

from __future__ import annotations

import pytest

from provisioner import settings
from provisioner.planner import (
    WHAT_IF_MAX_GPUS,
    WHAT_IF_MAX_MIB,
    WhatIfError,
    parse_what_if,
    plan_host,
)

MIG_TEXT = "MIG enabled: Ollama sees its MIG instances, not the whole GPU"


def data(**values):
    return settings.resolve(values)


def facts(gpus: list, memory_mib: int | None = 65536, state: str = "ok") -> dict:
    return {
        "gpu_state": state,
        "gpus": gpus,
        "driver_version": "580.126.09",
        "cuda_version": "13.0",
        "os": {"id": "debian", "version": "12"},
        "memory_total_mib": memory_mib,
        "pci_devices": [],
    }


def gpu(index, memory, mig="Disabled", name="NVIDIA Test GPU") -> dict:
    out = {"name": name, "uuid": f"GPU-{index}", "memory_total_mib": memory, "mig": mig}
    if index is not None:
        out["index"] = index
    return out


# --- planner: the GPU entries of a plan (README: plan --json) -----------------------------------


def test_plan_lists_every_gpu_with_why_one_is_left_out():
    raw = [
        gpu(0, 81559, name="NVIDIA H100 80GB HBM3"),
        gpu(1, 40960, mig="Enabled", name="NVIDIA A100-SXM4-40GB"),
        gpu(2, None, name="broken"),
        gpu(3, 0, name="zero"),
        "not a mapping",  # a garbled facts entry: kept, by its position, as unknown
        gpu(None, 24564, name="no index"),  # no index: its position
    ]
    plan = plan_host("h", facts(raw), data(models=[]))
    usable = int(0.9 * (81559 - 457 - 1024))  # reserve and llama-server's fit margin
    assert plan["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-0",
            "memory_total_mib": 81559,
            "usable_mib": usable,
        },
        {
            "index": 1,
            "name": "NVIDIA A100-SXM4-40GB",
            "uuid": "GPU-1",
            "memory_total_mib": 40960,
            "usable_mib": 0,
            "excluded": MIG_TEXT,
        },
        {
            "index": 2,
            "name": "broken",
            "uuid": "GPU-2",
            "memory_total_mib": None,
            "usable_mib": 0,
            "excluded": "memory.total unknown",
        },
        {
            "index": 3,
            "name": "zero",
            "uuid": "GPU-3",
            "memory_total_mib": 0,
            "usable_mib": 0,
            "excluded": "memory.total unknown",
        },
        {
            "index": 4,
            "name": None,
            "uuid": None,
            "memory_total_mib": None,
            "usable_mib": 0,
            "excluded": "memory.total unknown",
        },
        {
            "index": 5,
            "name": "no index",
            "uuid": "GPU-None",
            "memory_total_mib": 24564,
            "usable_mib": int(0.9 * (24564 - 457 - 1024)),
        },
    ]
    assert plan["vram_mib"] == 81559 + 40960 + 24564
    assert plan["budget_mib"] == usable + int(0.9 * (24564 - 457 - 1024))
    assert plan["reason"].endswith(
        "left out: GPU 1 (MIG enabled), GPU 2 (memory unknown), GPU 3 (memory unknown), "
        "GPU 4 (memory unknown)"
    )


@pytest.mark.parametrize(
    ("mig", "excluded"),
    [
        ("Enabled", True),
        (" enabled ", True),
        ("On", True),
        (True, True),
        ("Disabled", False),
        ("[N/A]", False),
        (None, False),
        (False, False),
    ],
)
def test_mig_mode_values(mig, excluded):
    plan = plan_host("h", facts([gpu(0, 81920, mig=mig)]), data(models=[]))
    assert ("excluded" in plan["gpus"][0]) is excluded
    assert plan["mode"] == ("none" if excluded else "gpu")


@pytest.mark.parametrize("ram", [0, None])
def test_cpu_host_without_memory_plans_nothing(ram):
    plan = plan_host("vm", facts([], memory_mib=ram, state="no-gpu"), data())
    assert plan["mode"] == "cpu" and plan["budget_mib"] == 0 and plan["models"] == []
    assert "host memory unknown" in plan["reason"]
    assert plan["vram_mib"] == 0 and plan["ram_mib"] == ram


def test_cpu_host_reports_its_memory():
    plan = plan_host("vm", facts([], memory_mib=1, state="no-gpu"), data())
    assert "host memory unknown" not in plan["reason"] and plan["ram_mib"] == 1
    plan = plan_host("vm", facts([], memory_mib=32768, state="no-gpu"), data())
    assert plan["ram_mib"] == 32768 and plan["vram_mib"] == 0


# --- planner: skip reasons an operator reads ----------------------------------------------------


def test_a_model_too_large_says_what_it_needs_at_which_settings():
    plan = plan_host(
        "h",
        facts([gpu(0, 8188)]),
        data(models=["llama3.3:70b"], ollama_context_length=8192, ollama_num_parallel=2),
    )
    (skip,) = plan["skipped"]
    assert skip["tag"] == "llama3.3:70b"
    assert "at context 8192 x 2 parallel, f16 KV" in skip["reason"]
    assert skip["reason"].startswith("needs ")


def test_the_same_bad_name_is_reported_once():
    plan = plan_host("h", facts([gpu(0, 24564)]), data(models=["Not A Model!!", "Not A Model!!"]))
    assert plan["skipped"] == [
        {
            "tag": "Not A Model!!",
            "reason": "not a valid Ollama model name ([host/][namespace/]model[:tag])",
        }
    ]


@pytest.mark.parametrize(
    ("tag", "hint"),
    [
        ("llama3.1:13b", "llama3.1:8b"),
        ("myorg/llama3.1:13b", "llama3.1:8b"),
        ("registry.example/myorg/llama3.1:13b", "llama3.1:8b"),
    ],
)
def test_an_unknown_tag_of_a_known_model_names_the_known_tags(tag, hint):
    plan = plan_host("h", facts([gpu(0, 24564)]), data(models=[tag]))
    (skip,) = plan["skipped"]
    assert skip["reason"].startswith("not in the model catalog, so it cannot be sized: ")
    assert "add an entry to model_catalog_extra (the catalog has " in skip["reason"]
    known = skip["reason"].split("(the catalog has ", 1)[1].rstrip(")").split(", ")
    assert hint in known and all(k.startswith("llama3.1:") for k in known)


def test_an_unknown_model_gets_no_hint():
    plan = plan_host("h", facts([gpu(0, 24564)]), data(models=["nosuchmodel:7b"]))
    (skip,) = plan["skipped"]
    assert skip["reason"].endswith("add an entry to model_catalog_extra")


def test_a_listed_model_says_it_was_listed():
    plan = plan_host("h", facts([gpu(0, 24564)]), data(models=["llama3.1:8b"]))
    (model,) = plan["models"]
    assert model["reason"].startswith("listed in models; ")
    assert model["via"] == "models"


# --- planner: --what-if bounds and the GPU shape ------------------------------------------------


def test_what_if_bounds_are_inclusive():
    assert len(parse_what_if(f"{WHAT_IF_MAX_GPUS}x GPU:1")) == WHAT_IF_MAX_GPUS
    assert parse_what_if(f"GPU:{WHAT_IF_MAX_MIB}")[0]["memory_total_mib"] == WHAT_IF_MAX_MIB
    assert parse_what_if("GPU:1 MiB")[0]["memory_total_mib"] == 1
    with pytest.raises(WhatIfError, match="count must be 1 to 64"):
        parse_what_if(f"{WHAT_IF_MAX_GPUS + 1}x GPU:1")
    with pytest.raises(WhatIfError, match="absurd"):
        parse_what_if(f"GPU:{WHAT_IF_MAX_MIB + 1}")


@pytest.mark.parametrize("spec", [None, 81920, ["GPU:1"]])
def test_what_if_that_is_not_text_is_a_what_if_error(spec):
    with pytest.raises(WhatIfError, match=r"expected \[N x \]GPU-NAME:MiB"):
        parse_what_if(spec)


def test_what_if_gpus_have_the_facts_shape():
    (one,) = parse_what_if("NVIDIA L40S:46068")
    assert one == {
        "index": 0,
        "name": "NVIDIA L40S",
        "uuid": "GPU-what-if-0",
        "memory_total_mib": 46068,
        "compute_cap": None,
        "pci_bus_id": None,
        "mig": None,
    }


# --- estimator ----------------------------------------------------------------------------------


def test_footprint_defaults_to_one_gpu():
    from provisioner.estimator import Estimate

    est = Estimate(weights_mib=1000, kv_mib=200, graph_mib=384, total_mib=1584)
    assert est.footprint_mib() == 1584 == est.total_mib
    assert est.footprint_mib(0) == 1584 and est.footprint_mib(3) == 1000 + 200 + 3 * 384


@pytest.mark.parametrize(
    ("context", "parallel", "batch"), [(0, 1, 512), (8192, 0, 512), (8192, 1, 0), (-1, 1, 512)]
)
def test_every_kv_size_must_be_positive(context, parallel, batch):
    from provisioner.catalog import load_catalog
    from provisioner.estimator import kv_cache_bytes

    with pytest.raises(ValueError) as error:
        kv_cache_bytes(load_catalog()["llama3.1:8b"], context, parallel, "f16", batch)
    assert str(error.value) == "context, parallel and batch size must be positive"


def test_unknown_kv_type_lists_the_known_ones():
    from provisioner.catalog import load_catalog
    from provisioner.estimator import kv_cache_bytes

    with pytest.raises(ValueError) as error:
        kv_cache_bytes(load_catalog()["llama3.1:8b"], 8192, 1, "q2", 512)
    assert str(error.value) == "unknown KV cache type 'q2' (one of f16, q8_0, q4_0)"


# --- inventory: what apply hands pyinfra's --limit ----------------------------------------------


class _Host:
    def __init__(self, name: str) -> None:
        self.name = name


class _Loaded:
    """The two attributes of LoadedInventory that pyinfra_limit reads."""

    def __init__(self, names: list[str], groups: list[str]) -> None:
        self.hosts = [_Host(n) for n in names]

        class Inventory:
            pass

        self.inventory = Inventory()
        self.inventory.groups = {g: [] for g in groups}


@pytest.mark.parametrize(
    ("name", "groups", "value"),
    [
        ("gpu1", [], "gpu1"),
        ("gpu*", [], "gpu[*]"),
        ("gpu?", [], "gpu[?]"),
        ("gpu[1]", [], "gpu[[]1]"),
        ("edge", ["edge"], "[e]dge"),  # a group of that name would win in pyinfra
        ("edge", ["edges"], "edge"),
    ],
)
def test_pyinfra_limit_values_match_exactly_their_host(name, groups, value):
    import fnmatch

    from provisioner.inventory import pyinfra_limit

    (given,) = pyinfra_limit(_Loaded([name], groups))
    assert given == value
    assert fnmatch.fnmatchcase(name, given) and given not in groups


# --- planner: budgets at their boundary, splits, profiles, PCI counting --------------------------


def test_a_model_exactly_the_size_of_the_ram_budget_fits():
    from provisioner.catalog import load_catalog
    from provisioner.estimator import estimate

    resolved = data(models=["llama3.1:8b"])
    total = estimate(
        load_catalog()["llama3.1:8b"],
        resolved["ollama_context_length"],
        resolved["ollama_num_parallel"],
        resolved["ollama_kv_cache_type"] if resolved["ollama_flash_attention"] else "f16",
        resolved["ollama_batch_size"],
    ).total_mib
    ram = next(r for r in range(4096, 200_000) if int(0.9 * (r - 4096)) >= total)
    cpu = facts([], memory_mib=ram, state="no-gpu")
    plan = plan_host("vm", cpu, resolved)
    assert plan["budget_mib"] == total and [m["tag"] for m in plan["models"]] == ["llama3.1:8b"]
    plan = plan_host("vm", dict(cpu, memory_total_mib=ram - 1), resolved)
    assert plan["models"] == [] and plan["budget_mib"] < total


def test_a_split_model_counts_one_graph_per_gpu():
    from provisioner.catalog import load_catalog
    from provisioner.estimator import estimate

    resolved = data(models=["qwen3:235b"])
    plan = plan_host("h", facts([gpu(0, 81920), gpu(1, 81920)]), resolved)
    (model,) = plan["models"]
    est = estimate(
        load_catalog()["qwen3:235b"],
        resolved["ollama_context_length"],
        resolved["ollama_num_parallel"],
        resolved["ollama_kv_cache_type"] if resolved["ollama_flash_attention"] else "f16",
        resolved["ollama_batch_size"],
    )
    assert model["gpus"] == [0, 1]
    assert model["estimated_vram_mib"] >= est.weights_mib + est.kv_mib + est.graph_mib
    usable = 2 * int(0.9 * (81920 - 457 - 1024))
    assert f"split over GPUs 0,1 ({usable} MiB usable; " in model["reason"]


def test_a_profile_fills_models_max_and_says_why_each_was_chosen():
    plan = plan_host("h", facts([gpu(0, 81559)]), data(model_profile="general", models_max=4))
    reasons = [m["reason"] for m in plan["models"]]
    assert len(reasons) == 4
    assert reasons[0].startswith("profile general: strongest ")
    assert " model that fits (rank " in reasons[0]
    later = [r for r in reasons if r.startswith("profile general: next strongest ")]
    assert later, reasons
    for reason in later:
        cats = reason.removeprefix("profile general: next strongest ").split(" model")[0]
        assert cats and set(cats.split("/")) <= {"chat", "code", "reasoning", "vision"}, reason


def test_nvidia_pci_gpus_are_counted_among_other_devices():
    pci = [
        "garbled",
        {"slot": "17:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
        {"slot": "18:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"},
        {"slot": "19:00.0", "class_id": "0680", "vendor_id": "10de", "device_id": "22a3"},
        {"slot": "1a:00.0", "vendor_id": "10de", "device_id": "2330"},  # no class: not counted
        {"slot": "00:02.0", "class_id": "0300", "vendor_id": "8086", "device_id": "46a6"},
    ]
    plan = plan_host("h", dict(facts([], state="no-driver"), pci_devices=pci), data())
    assert plan["mode"] == "none"
    assert plan["reason"].startswith("driver not installed yet: 2 NVIDIA PCI GPU(s) found")


def test_what_if_facts_have_the_facts_shape():
    from provisioner.planner import what_if_facts

    assert what_if_facts([]) == {
        "gpu_state": "ok",
        "gpus": [],
        "driver_version": None,
        "cuda_version": None,
        "os": {},
        "memory_total_mib": None,
        "pci_devices": [],
    }


# --- gpu_stack: what apply (and verify) say about the running module ----------------------------


def _driver(version: str = "580.105.08-1"):
    from provisioner import gpu_stack

    return gpu_stack.installed_driver(
        gpu_stack.distro("debian12"),
        {"packages": [{"name": "nvidia-kernel-open-dkms", "version": version, "held": True}]},
    )


def test_module_problem_names_every_reason():
    from provisioner import gpu_stack

    module = {"version": "580.95.05", "flavour": "open", "nouveau_loaded": True}
    assert gpu_stack.module_problem(_driver(), module, None) == (
        "the nouveau module is loaded; "
        "the loaded NVIDIA module is 580.95.05, the installed driver is 580.105.08"
    )


def test_module_problem_without_a_driver_and_with_an_nvidia_smi_error():
    from provisioner import gpu_stack

    none = gpu_stack.InstalledDriver()
    assert gpu_stack.module_problem(none, None, None) == "no NVIDIA driver package is installed"
    loaded = {"version": "580.105.08", "flavour": "open", "nouveau_loaded": False}
    smi = {"state": "error", "error": "Unable to determine the device handle for GPU0"}
    assert gpu_stack.module_problem(_driver(), loaded, smi) == (
        "nvidia-smi state is error: Unable to determine the device handle for GPU0"
    )


@pytest.mark.parametrize(("cc", "arch"), [("99.9", None), ("", None), (None, None)])
def test_an_unknown_compute_capability_has_no_architecture(cc, arch):
    from provisioner import gpu_stack

    assert gpu_stack.architecture_for_cc(cc) is arch


@pytest.mark.parametrize(
    ("version", "upstream"),
    [
        ("580.126.09-1", "580.126.09"),
        ("3:580.105.08-1.el9", "580.105.08"),
        ("580.126.09-0ubuntu0.24.04.1", "580.126.09"),
        ("1:2.4-rc1-3", "2.4-rc1"),  # Debian: the revision follows the last hyphen
        ("2:1:0.5-1", "1:0.5"),  # the epoch is before the first colon
        ("580.126.09", "580.126.09"),
    ],
)
def test_package_version_is_the_upstream_version(version, upstream):
    from provisioner import gpu_stack

    assert gpu_stack.package_version(version) == upstream


def test_hex_keys_accept_spaces_and_treat_empty_as_unset():
    from provisioner import gpu_stack

    spaced = "EB69 3B30 35CD 5710 E231  E123 A4B4 6996 3BF8 63CC"
    assert gpu_stack._check_hex(spaced, 40, "k") == "eb693b3035cd5710e231e123a4b469963bf863cc"
    assert gpu_stack._check_hex("", 40, "k") is None
    assert gpu_stack._check_hex(None, 40, "k") is None
    with pytest.raises(gpu_stack.GpuStackError, match="k must be 40 hex digits"):
        gpu_stack._check_hex("xyz", 40, "k")


def test_compute_capabilities_at_the_bounds_are_inside():
    from provisioner import gpu_stack

    assert gpu_stack._caps_outside(["7.5", "9.0", "12.0"], "7.5", "12.0") == []
    assert gpu_stack._caps_outside(["7.0", "12.1"], "7.5", "12.0") == ["7.0", "12.1"]


# --- planner: the mode of a host and the reason given (GPU presence) ----------------------------

NVIDIA_GPU = {"slot": "17:00.0", "class_id": "0302", "vendor_id": "10de", "device_id": "2330"}


@pytest.mark.parametrize(
    ("host_facts", "mode", "reason"),
    [
        ({}, "none", "no facts were gathered for this host"),
        ({"gpu_state": "unreachable"}, "none", "host unreachable: no connection"),
        (
            {"gpu_state": "unreachable", "error": "timed out"},
            "none",
            "host unreachable: timed out",
        ),
        (
            dict(facts([], state="no-driver"), pci_devices=None),
            "none",
            "driver not installed yet: no lspci device list but nvidia-smi cannot talk to a "
            "driver; run provision apply first, then plan again",
        ),
        (
            dict(facts([], state="no-gpu"), pci_devices=None),
            "cpu",
            "CPU-only (no NVIDIA GPU: nvidia-smi no-gpu, lspci shows none)",
        ),
        (
            dict(facts([gpu(0, 81559)], state="driver-mismatch"), pci_devices=[NVIDIA_GPU]),
            "none",
            "driver/library version mismatch (1 NVIDIA PCI GPU(s) found): the loaded kernel "
            "module is not the installed driver; run provision apply (it reboots or reloads), "
            "then plan again",
        ),
        (
            dict(facts([], state="error"), pci_devices=[NVIDIA_GPU], error="GPU is lost"),
            "none",
            "nvidia-smi failed (1 NVIDIA PCI GPU(s) found): GPU is lost; "
            "run provision apply first, then plan again",
        ),
        (
            dict(facts([], state="error"), pci_devices=[NVIDIA_GPU]),
            "none",
            "nvidia-smi failed (1 NVIDIA PCI GPU(s) found): unknown error; "
            "run provision apply first, then plan again",
        ),
        (
            dict(facts([], state="ok"), pci_devices=[NVIDIA_GPU]),
            "none",
            "1 NVIDIA PCI GPU(s) found but nvidia-smi lists no GPU (state ok); "
            "run provision apply first, then plan again",
        ),
    ],
    ids=[
        "no-facts",
        "unreachable",
        "unreachable-why",
        "no-driver-no-lspci",
        "no-gpu-no-lspci",
        "mismatch",
        "error",
        "error-unknown",
        "ok-without-gpus",
    ],
)
def test_each_host_state_gives_its_mode_and_reason(host_facts, mode, reason):
    plan = plan_host("h", host_facts, data())
    assert plan["mode"] == mode
    assert plan["reason"].startswith(reason), plan["reason"]
    if mode == "none":
        assert plan["models"] == [] and plan["profile"] is None
        assert plan["gpus"] == [] and plan["vram_mib"] == 0 and plan["budget_mib"] == 0
        assert plan["ram_mib"] == host_facts.get("memory_total_mib")


def test_plan_reports_the_ollama_settings_it_sized_with():
    plan = plan_host(
        "h",
        facts([gpu(0, 24564)]),
        data(ollama_context_length=16384, ollama_num_parallel=3, ollama_batch_size=1024),
    )
    keys = ("context_length", "num_parallel", "kv_cache_type", "batch_size")
    assert {k: plan["settings"][k] for k in keys} == {
        "context_length": 16384,
        "num_parallel": 3,
        "kv_cache_type": "f16",
        "batch_size": 1024,
    }
    assert plan["profile"] == "general" and plan["ram_mib"] == 65536
