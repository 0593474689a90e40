"""The model catalog: packaged data, operator entries, Ollama names."""

from __future__ import annotations

from collections import defaultdict

import pytest

from provisioner.catalog import (
    CATEGORIES,
    CatalogError,
    _csv_rows,
    check_host_data,
    is_valid_ollama_name,
    load_catalog,
    normalise_tag,
)

# The 40 tags of the reference table (shared/reference/models.csv) the catalog starts from.
REFERENCE_TAGS = """
llama3.2:3b llama3.1:8b llama3.3:70b llama3.1:405b llama3.2-vision:11b qwen2.5:7b qwen2.5:72b
qwen2.5-coder:7b qwen2.5-coder:14b qwen2.5-coder:32b qwen3:8b qwen3:14b qwen3:32b qwen3:30b-a3b
qwen3:235b qwen3-coder:30b deepseek-r1:8b deepseek-r1:14b deepseek-r1:32b deepseek-r1:70b
qwq:32b gpt-oss:20b gpt-oss:120b gemma2:9b gemma2:27b gemma3:4b gemma3:12b gemma3:27b mistral:7b
mistral-small:24b mistral-small3.2:24b mixtral:8x7b mixtral:8x22b phi3:3.8b phi4:14b llava:7b
nomic-embed-text:v1.5 mxbai-embed-large:335m codellama:7b starcoder2:3b
""".split()

EXTRA = {
    "tag": "myorg/mymodel:7b-q8_0",
    "size_bytes": 8_000_000_000,
    "context": 32768,
    "layers": 32,
    "kv_heads": 8,
    "head_dim": 128,
}


def test_packaged_catalog_holds_the_reference_tags_and_more():
    catalog = load_catalog()
    assert len(REFERENCE_TAGS) == 40
    assert set(REFERENCE_TAGS) <= set(catalog)
    assert len(catalog) >= 30


@pytest.mark.parametrize(
    ("tag", "size_bytes", "context"),
    [
        ("llama3.1:8b", 4_900_000_000, 131072),
        ("llama3.3:70b", 43_000_000_000, 131072),
        ("qwen3:235b", 142_000_000_000, 262144),
        ("gemma2:9b", 5_400_000_000, 8192),
        ("mxbai-embed-large:335m", 670_000_000, 512),
    ],
)
def test_sizes_and_contexts_come_from_the_reference(tag, size_bytes, context):
    entry = load_catalog()[tag]
    assert entry.size_bytes == size_bytes
    assert entry.context == context


def test_catalog_covers_8gb_to_two_80gb_hosts():
    sizes = sorted(e.size_bytes for e in load_catalog().values())
    assert sizes[0] < 1e9  # embedding and tiny models
    assert any(4e9 < s < 6e9 for s in sizes)  # 8 GB cards
    assert any(100e9 < s < 150e9 for s in sizes)  # 2 x 80 GB


def test_every_entry_is_consistent():
    for tag, entry in load_catalog().items():
        assert entry.tag == tag == normalise_tag(tag)
        assert entry.categories and set(entry.categories) <= set(CATEGORIES)
        assert 0 <= entry.swa_layers <= entry.layers
        assert entry.swa_window > 0 if entry.swa_layers else entry.swa_window == 0
        assert 0 <= entry.rank <= 100
        assert entry.source


def test_rank_never_decreases_with_size_within_a_family():
    families = defaultdict(list)
    for entry in load_catalog().values():
        families[entry.family].append(entry)
    for family, entries in families.items():
        entries.sort(key=lambda e: e.params_b)
        for small, large in zip(entries, entries[1:], strict=False):
            if large.params_b > small.params_b:
                assert large.rank >= small.rank, (family, small.tag, large.tag)


def test_sliding_window_geometry_of_known_models():
    catalog = load_catalog()
    gemma3 = catalog["gemma3:27b"]
    assert (gemma3.layers, gemma3.kv_heads, gemma3.head_dim) == (62, 16, 128)
    assert (gemma3.swa_layers, gemma3.swa_window) == (52, 1024)  # 5 of 6 layers
    gpt_oss = catalog["gpt-oss:20b"]
    assert (gpt_oss.swa_layers, gpt_oss.swa_window) == (12, 128)  # every other layer
    assert catalog["llama3.1:8b"].swa_layers == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.1", "llama3.1:latest"),
        ("llama3.1:8b", "llama3.1:8b"),
        ("library/llama3.1:8b", "llama3.1:8b"),
        ("registry.ollama.ai/library/qwen3:8b", "qwen3:8b"),
        ("Qwen3:8B", "qwen3:8b"),
        ("myorg/mymodel", "myorg/mymodel:latest"),
        ("registry.ollama.ai/myorg/mymodel:v2", "myorg/mymodel:v2"),
        ("mirror.example.com:5000/library/qwen3:8b", "mirror.example.com:5000/library/qwen3:8b"),
        ("mirror.example.com:5000/team/m", "mirror.example.com:5000/team/m:latest"),
        ("hf.co/bartowski/Some-GGUF:Q4_K_M", "hf.co/bartowski/some-gguf:q4_k_m"),
    ],
)
def test_normalise_tag(name, expected):
    assert is_valid_ollama_name(name)
    assert normalise_tag(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        " llama3",
        "llama 3",
        "-llama",
        "llama3:",
        ":8b",
        "a/b/c/d",
        "name.space/model",  # no dot in a namespace
        "model@sha256:abc",
        "x" * 81,
        "model:" + "t" * 81,
        None,
        42,
    ],
)
def test_invalid_ollama_names(name):
    assert not is_valid_ollama_name(name)
    if isinstance(name, str):
        with pytest.raises(ValueError, match="not a valid Ollama model name"):
            normalise_tag(name)


def test_extra_entry_is_added_with_defaults():
    catalog = load_catalog([EXTRA])
    entry = catalog["myorg/mymodel:7b-q8_0"]
    assert entry.family == "mymodel"
    assert entry.categories == ("chat",)
    assert entry.rank == 0 and entry.swa_layers == 0
    assert entry.source == "model_catalog_extra"
    assert "llama3.1:8b" in catalog


def test_extra_entry_replaces_a_packaged_tag_without_touching_the_package():
    packaged = load_catalog()["llama3.1:8b"]
    catalog = load_catalog([dict(EXTRA, tag="llama3.1:8b", size_bytes=1234, category="chat;code")])
    assert catalog["llama3.1:8b"].size_bytes == 1234
    assert catalog["llama3.1:8b"].categories == ("chat", "code")
    assert load_catalog()["llama3.1:8b"] == packaged


def test_extra_entry_accepts_a_category_list_and_numeric_strings():
    entry = load_catalog([dict(EXTRA, category=["code", "chat"], size_bytes="8000")])[
        "myorg/mymodel:7b-q8_0"
    ]
    assert entry.categories == ("code", "chat")
    assert entry.size_bytes == 8000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("not a list", "expected a list of dicts"),
        (["not a dict"], "entry 0: expected a dict"),
        ([{k: v for k, v in EXTRA.items() if k != "layers"}], "missing column(s) layers"),
        ([dict(EXTRA, layer=3)], "unknown column(s) 'layer'"),
        ([dict(EXTRA, tag="not valid!")], "is not a valid Ollama model name"),
        ([dict(EXTRA, category="poetry")], "category 'poetry' is not one of"),
        ([dict(EXTRA, size_bytes=-5)], "size_bytes must be between"),
        ([dict(EXTRA, size_bytes=True)], "size_bytes must be a whole number"),
        ([dict(EXTRA, context="lots")], "context must be a whole number"),
        ([dict(EXTRA, swa_layers=40)], "swa_layers must be between 0 and 32"),
        ([dict(EXTRA, swa_layers=4)], "swa_window must be set"),
        ([dict(EXTRA, rank=101)], "rank must be between 0 and 100"),
        (
            [EXTRA, dict(EXTRA, tag="MyOrg/mymodel:7b-q8_0")],
            "entry 1 (tag 'MyOrg/mymodel:7b-q8_0'): tag 'myorg/mymodel:7b-q8_0' is listed twice",
        ),
    ],
)
def test_malformed_extra_entries_are_rejected_with_a_clear_message(extra, message):
    with pytest.raises(CatalogError) as info:
        load_catalog(extra)
    assert info.value.key == "model_catalog_extra"
    assert message in info.value.message
    assert str(info.value).startswith("model_catalog_extra: ")


def test_packaged_csv_format_errors_name_the_line():
    with pytest.raises(CatalogError, match="header must be"):
        list(_csv_rows("# comment\ntag,family\nx,y\n"))


def test_check_host_data():
    assert check_host_data({"models": ["llama3.1:8b", "myorg/unknown:1b"]}) == []
    problems = check_host_data(
        {
            "models": ["llama3.1:8b", "not a model"],
            "models_always": ["-bad"],
            "model_catalog_extra": [{"tag": "x"}],
        }
    )
    keys = [key for key, _ in problems]
    assert keys == ["model_catalog_extra", "models", "models_always"]
    message = "'not a model' is neither in the model catalog nor a valid Ollama model name"
    assert problems[1][1] == message
