"""Tests for the mutations that survived the suite (issue 17, "The suite's blind spots").

Each block names the one-line bug it kills:
- CPU-mode budgets counting weights only (a RAM-size grid, like the VRAM grid of
  test_planner.py);
- the sliding-window KV term not multiplied by parallel requests (gemma3:27b at 32K x 4);
- the Ollama cross-key checks dropped from validation (each rule of
  ``deploys/ollama.settings_from`` must still give exit 2 naming file, host and key).
The ``--limit`` survivors are killed in test_limit.py, ``libnvidia-*`` in
test_nvidia_libraries.py.
"""

from __future__ import annotations

import pytest

from provisioner import settings
from provisioner.catalog import load_catalog
from provisioner.estimator import MIB, estimate, kv_cache_bytes, usable_mib
from provisioner.planner import plan_host
from tests.unit.test_cli_bad_input import recorder, run, write_inventory  # noqa: F401

CATALOG = load_catalog()
GIB = 1024 * MIB

# --- CPU mode: a RAM-size grid ------------------------------------------------------------------

RAM_SIZES = [2048, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 98304]
RAM_SIZES += [131072, 196608, 262144, 524288]
# every catalog tag named explicitly, so each one is judged against the RAM budget
ALL_TAGS = sorted(CATALOG)


def cpu_facts(memory_mib: int) -> dict:
    return {
        "gpu_state": "no-gpu",
        "gpus": [],
        "driver_version": None,
        "cuda_version": None,
        "os": {"id": "debian", "version": "12"},
        "memory_total_mib": memory_mib,
        "pci_devices": [],
    }


def expected_total(tag: str, data: dict) -> int:
    """What the planner must count for a model on a CPU host: weights + KV + graph."""
    return estimate(
        CATALOG[tag],
        data["ollama_context_length"],
        data["ollama_num_parallel"],
        data["ollama_kv_cache_type"] if data["ollama_flash_attention"] else "f16",
        data["ollama_batch_size"],
    ).total_mib


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ollama_context_length": 32768, "ollama_num_parallel": 4},
        {"ollama_context_length": 131072},
        {"ollama_kv_cache_type": "q8_0", "ollama_flash_attention": True},
    ],
    ids=["defaults", "32k-x4", "128k", "q8_0"],
)
def test_cpu_budget_counts_kv_and_graph_on_every_ram_size(overrides):
    data = settings.resolve({"models": ALL_TAGS, "models_max": len(ALL_TAGS), **overrides})
    boundary = 0  # grid points where weights alone fit but weights + KV + graph do not
    for ram in RAM_SIZES:
        plan = plan_host("cpu", cpu_facts(ram), data)
        budget = usable_mib(ram, data["ram_reserve_mib"], data["vram_headroom"])
        assert plan["mode"] == "cpu" and plan["budget_mib"] == budget
        planned = {m["tag"]: m for m in plan["models"]}
        skipped = {s["tag"]: s["reason"] for s in plan["skipped"]}
        assert set(planned) | set(skipped) == set(ALL_TAGS), ram
        for tag in ALL_TAGS:
            total = expected_total(tag, data)
            weights = estimate(CATALOG[tag], 1, 1, "f16", 1).weights_mib
            if tag in planned:
                assert planned[tag]["estimated_vram_mib"] == total, (ram, tag)
                assert total <= budget and planned[tag]["gpus"] == []
            else:
                assert total > budget, (ram, tag, total, budget)
                assert f"needs {total} MiB" in skipped[tag] and f"{budget} MiB" in skipped[tag]
            boundary += weights <= budget < total
    assert boundary >= 3, "the grid must hold models whose weights fit but whose KV does not"


def test_cpu_profile_plan_never_exceeds_the_ram_budget_at_long_context():
    data = settings.resolve({"ollama_context_length": 131072, "ollama_num_parallel": 2})
    for ram in RAM_SIZES:
        plan = plan_host("cpu", cpu_facts(ram), data)
        for model in plan["models"]:
            assert model["estimated_vram_mib"] == expected_total(model["tag"], data)
            assert model["estimated_vram_mib"] <= plan["budget_mib"], (ram, model)


# --- sliding-window KV at parallel > 1 ----------------------------------------------------------


def test_gemma3_27b_at_32k_by_4_keeps_a_window_per_sequence():
    """gemma3:27b: 10 full-attention and 52 sliding-window layers, 16 KV heads x 128, window 1024.

    At 32K x 4 the full layers cache 131072 cells; each sliding-window layer keeps the window of
    each of the 4 sequences plus one 512 batch: 4 x 1024 + 512 = 4608 cells (llama.cpp's iSWA
    cache, ``n_swa * n_seq_max + n_ubatch``). Without the x 4 it would be 1536 cells, 1.2 GiB less.
    """
    entry = CATALOG["gemma3:27b"]
    assert (entry.full_layers, entry.swa_layers, entry.swa_window) == (10, 52, 1024)
    per_cell_layer = 2 * 16 * 128 * 2  # K and V, f16
    expected = per_cell_layer * (10 * 32768 * 4 + 52 * (4 * 1024 + 512))
    assert kv_cache_bytes(entry, 32768, 4, "f16", 512) == expected
    assert expected / GIB == pytest.approx(11.83, abs=0.01)


@pytest.mark.parametrize("parallel", [2, 3, 4, 8])
@pytest.mark.parametrize(
    "tag", sorted(t for t, e in CATALOG.items() if e.swa_layers and e.full_layers)
)
def test_sliding_window_term_grows_with_parallel(tag, parallel):
    """Every sequence keeps its own window: the SWA term is at least parallel x window."""
    entry = CATALOG[tag]
    ctx = min(entry.context, 32768)
    per_cell_layer = 2 * entry.kv_heads * entry.head_dim * 2
    full = per_cell_layer * entry.full_layers * ctx * parallel
    swa = kv_cache_bytes(entry, ctx, parallel, "f16", 512) - full
    windows = per_cell_layer * entry.swa_layers * min(ctx, entry.swa_window) * parallel
    assert swa >= windows
    assert swa <= per_cell_layer * entry.swa_layers * (min(ctx, entry.swa_window) * parallel + 512)


def test_plan_counts_the_window_of_every_parallel_sequence():
    data = settings.resolve(
        {"models": ["gemma3:27b"], "ollama_context_length": 32768, "ollama_num_parallel": 4}
    )
    facts = cpu_facts(262144)
    model = plan_host("h", facts, data)["models"][0]
    weights = estimate(CATALOG["gemma3:27b"], 1, 1, "f16", 512).weights_mib
    kv = -(-kv_cache_bytes(CATALOG["gemma3:27b"], 32768, 4, "f16", 512) // MIB)
    graph = model["estimated_vram_mib"] - weights - kv  # the compute graph (issue 14's formula)
    assert 0 < graph < 4096, graph
    assert kv == 12112  # 11.83 GiB, of which 1.83 GiB are the four windows


# --- Ollama cross-key rules: exit 2 naming file, host and key -----------------------------------

CROSS_KEY = [
    ({"ollama_listen_address": "ollama.lan"}, "ollama_listen_address", "is not an IP address"),
    ({"ollama_listen_address": "0.0.0.0"}, "ollama_listen_address", "is not loopback"),
    (
        {"ollama_listen_address": "10.0.0.5", "ollama_expose": "proxy"},
        "ollama_listen_address",
        "is not loopback",
    ),
    ({"ollama_expose": "allowlist"}, "ollama_allow_networks", "needs networks"),
    (
        {"ollama_expose": "allowlist", "ollama_allow_networks": ["10.0.0.0/33"]},
        "ollama_allow_networks",
        "is not a network",
    ),
    ({"ollama_expose": "proxy"}, "ollama_htpasswd_file", "never runs without authentication"),
    (
        {"ollama_expose": "proxy", "ollama_htpasswd_file": "/nonexistent/htpasswd"},
        "ollama_htpasswd_file",
        "does not exist on this machine",
    ),
    (
        {"ollama_expose": "proxy", "ollama_htpasswd_env": "PROVISIONER_TEST_UNSET_VAR"},
        "ollama_htpasswd_env",
        "is not set",
    ),
    (
        {"ollama_expose": "proxy", "ollama_htpasswd_env": "PATH", "ollama_tls_cert": "/etc/hosts"},
        "ollama_tls_cert",
        "set both ollama_tls_cert and ollama_tls_key",
    ),
    (
        {
            "ollama_expose": "proxy",
            "ollama_htpasswd_env": "PATH",
            "ollama_tls_cert": "/nonexistent/cert.pem",
            "ollama_tls_key": "/etc/hosts",
        },
        "ollama_tls_cert",
        "/nonexistent/cert.pem does not exist",
    ),
    (
        {"ollama_expose": "proxy", "ollama_htpasswd_env": "PATH", "ollama_proxy_port": 11434},
        "ollama_proxy_port",
        "need different ports",
    ),
    ({"ollama_models_dir": "models"}, "ollama_models_dir", "is not an absolute path"),
    ({"ollama_extra_env": {"BAD-NAME": "1"}}, "ollama_extra_env", "not an environment variable"),
    ({"ollama_extra_env": {"OLLAMA_HOST": "0.0.0.0"}}, "ollama_extra_env", "is set by its own"),
    ({"ollama_extra_env": {"A": "x\ny"}}, "ollama_extra_env", "one line of text"),
    ({"ollama_keep_alive": "forever"}, "ollama_keep_alive", "is not a duration"),
    ({"ollama_cuda_visible_devices": "GPU-1, GPU-2"}, "ollama_cuda_visible_devices", "no spaces"),
    ({"ollama_registry": "http://10.0.0.5:5000"}, "ollama_registry_insecure", "plain HTTP"),
    ({"ollama_registry": "http://10.0.0.5:5000/site"}, "ollama_registry", "namespace"),
    ({"ollama_version": "latest"}, "ollama_version", "is not an Ollama version"),
]


@pytest.mark.parametrize(("host_data", "key", "needle"), CROSS_KEY, ids=lambda v: str(v)[:40])
def test_ollama_cross_key_rule_exits_2_naming_file_host_key(
    tmp_path,
    recorder,  # noqa: F811
    host_data,
    key,
    needle,
):
    inv = write_inventory(tmp_path, recorder.port, repr(host_data))
    result = run(["apply", str(inv)], tmp_path)
    assert result.returncode == 2, result.stderr
    line = next(
        (
            x
            for x in result.stderr.splitlines()
            if x.startswith(f"provision: error: {inv}: host bad-1: key {key}: ")
        ),
        None,
    )
    assert line is not None, result.stderr
    assert needle in line
    assert "good-1" not in result.stderr
    assert "no host was contacted" in result.stderr
    assert recorder.accepted == 0
