"""`provision models table`: the catalog with the VRAM each model needs, and docs/model-table.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import model_table
from provisioner.catalog import load_catalog
from provisioner.estimator import estimate

ROOT = Path(__file__).resolve().parents[2]
PROVISION = [sys.executable, "-m", "provisioner.cli"]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        PROVISION + args, capture_output=True, text=True, env=dict(os.environ), timeout=60
    )


def test_docs_model_table_is_not_stale():
    committed = (ROOT / "docs" / "model-table.md").read_text(encoding="utf-8")
    assert committed == model_table.markdown_page(), (
        "docs/model-table.md is stale: provision models table --format md > docs/model-table.md"
    )


def test_every_catalog_model_has_a_row_with_its_estimate():
    rows = model_table.rows(8192)
    catalog = load_catalog()
    assert sorted(r["tag"] for r in rows) == sorted(catalog)
    row = next(r for r in rows if r["tag"] == "llama3.1:8b")
    est = estimate(catalog["llama3.1:8b"], 8192, 1, "f16", 0)
    assert row["vram_mib"] == est.footprint_mib(1)
    assert (row["params_b"], row["quant"], row["download_gb"]) == (8.0, "Q4_K_M", 4.9)
    assert list(row["fits"]) == ["8GB", "16GB", "24GB", "48GB", "80GB"]


def test_fit_follows_the_planner_rule():
    rows = {r["tag"]: r for r in model_table.rows(8192, (8, 24, 48, 80))}
    assert rows["llama3.1:8b"]["fits"]["8GB"] == "1 GPU"
    # 42.5 GiB at 8k: one 80 GB card, two 48 GB cards (the L40S offers 46068 MiB), no 24 GB pair
    assert rows["llama3.3:70b"]["fits"] == {
        "8GB": "no",
        "24GB": "no",
        "48GB": "split",
        "80GB": "1 GPU",
    }
    assert rows["llama3.1:405b"]["fits"]["80GB"] == "no"


def test_context_grows_the_need_up_to_the_trained_context():
    short = {r["tag"]: r for r in model_table.rows(4096)}
    long = {r["tag"]: r for r in model_table.rows(131072)}
    assert long["llama3.1:8b"]["vram_mib"] > short["llama3.1:8b"]["vram_mib"] + 15 * 1024
    assert long["qwen2.5-coder:7b"]["context"] == 32768  # trained context caps it


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_cli_formats(fmt):
    result = run(["models", "table", "--context", "16384", "--tiers", "24,80", "--format", fmt])
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        payload = json.loads(result.stdout)
        assert payload["context"] == 16384
        assert {m["tag"] for m in payload["models"]} == set(load_catalog())
    elif fmt == "csv":
        assert result.stdout.splitlines()[0].endswith("fits 24GB,fits 80GB")
    else:
        assert "| llama3.1:8b |" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tiers", "8,big"], "--tiers: expected GB sizes"),
        (["--tiers", "0"], "--tiers: expected GB sizes"),
        (["--data", "ollama_num_paralel=2"], "--data ollama_num_paralel: unknown data key"),
    ],
)
def test_cli_bad_input_exits_2(args, needle):
    result = run(["models", "table", *args])
    assert result.returncode == 2
    assert needle in result.stderr


def test_chart_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    model_table.chart(str(path), ["llama3.1:8b", "qwen2.5-coder:7b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
