"""benchmarks/vs_scpdac.py at its smoke size: both tools run, the ratios are measured."""

import json

import pytest
from conftest import run_benchmark_script

pytestmark = pytest.mark.workflow


def test_smoke_benchmark_against_scpdac_reports_ratios_and_agreement(tmp_path):
    results = tmp_path / "vs_scpdac.md"
    run_benchmark_script(
        "vs_scpdac.py", "--smoke", "--work", tmp_path / "work", "--results", results, timeout=900
    )
    text = results.read_text()
    assert "| path | cells | tool | seconds |" in text and "## Ratios" in text
    runs = json.loads(results.with_suffix(".json").read_text())["runs"]
    assert [(r["mode"], r["cells"]) for r in runs] == [("frozen", 1_000), ("surgery", 300)]
    for run in runs:
        for tool in ("scpdac", "atlasmap"):
            assert run[tool]["seconds"] > 0 and run[tool]["peak_rss_mb"] > 0, (run["mode"], tool)
        for key in (
            "time_atlasmap_over_scpdac",
            "peak_above_baseline_atlasmap_over_scpdac",
            "total_peak_atlasmap_over_scpdac",
        ):
            assert run["ratios"][key] > 0, (run["mode"], key)
    frozen = runs[0]["agreement"]
    assert frozen["argmax_agreement_all_cells"] == 1.0
    assert frozen["latent_max_abs_difference"] < 1e-4
