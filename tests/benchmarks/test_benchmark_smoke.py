"""The benchmark script at 5k cells: it runs, times every stage and measures each ratio."""

import json

import pytest
from atlasmap.settings import EmbeddingSettings
from conftest import run_benchmark_script

pytestmark = pytest.mark.workflow


def test_smoke_benchmark_times_every_stage_and_measures_the_ratios(tmp_path):
    results = tmp_path / "results.md"
    run_benchmark_script(
        "run_benchmark.py",
        "--smoke",
        "--out",
        tmp_path / "runs",
        "--results",
        results,
        timeout=1200,
    )
    text = results.read_text()
    for rule in (
        "download_query",
        "load_query",
        "subset_query",
        "train_reference",
        "map_query",
        "neighbors_umap",
        "plot_mapping",
        "compare_modes",
        "predict_baseline",
    ):
        assert rule in text, rule
    ratios = json.loads(results.with_suffix(".json").read_text())["ratios"]
    neighbours = ratios["neighbours"]
    assert neighbours["cells"] == 10_000  # 5k query + 5k atlas cells in the mapped latent
    for method in ("annoy", "annoy_1_thread", "scanpy_default", "scanpy_default_2_jobs"):
        assert 0.9 <= neighbours[f"{method}_label_agreement_with_exact"] <= 1, method
        assert 0.5 <= neighbours[f"{method}_truth_agreement_with_exact"] <= 1, method
        assert neighbours[f"{method}_seconds"] > 0, method
        # timed in 3 rounds, the methods in turn; the median reported
        rounds = neighbours[f"{method}_seconds_per_round"]
        assert len(rounds) == 3 and min(rounds) <= neighbours[f"{method}_seconds"] <= max(rounds)
    defaults = EmbeddingSettings()
    assert neighbours["annoy_settings"] == {
        "n_trees": defaults.n_trees,
        "search_k": defaults.search_k,
        "refine": defaults.refine,
    }
    assert len(neighbours["annoy_speedup_per_round"]) == 3
    # The plain script did the same work as the workflow: the same calls, the same seed.
    overhead = ratios["workflow_overhead"]
    assert overhead["same_predictions"] == {"surgery": True, "embed": True}
    assert overhead["workflow_over_plain"] > 0
    memory = ratios["gene_alignment_memory"]
    assert memory["sparse_peak_mb"] < memory["dense_peak_mb"]
    assert ratios["embed_throughput"]["cells_per_second_batch_1024"] > 0

    # Measured again (as --neighbours-only keeps earlier measurements): the speed target
    # holds only if every measurement of the same latent meets it.
    saved = json.loads(results.with_suffix(".json").read_text())
    slow = {**neighbours, "annoy_seconds": 9.9, "annoy_speedup_vs_scanpy_default": 1.5}

    def speed_row(measurement):
        saved["ratios"]["neighbours"] = measurement
        results.with_suffix(".json").write_text(json.dumps(saved))
        run_benchmark_script(
            "run_benchmark.py",
            "--smoke",
            "--tables-only",
            "--out",
            tmp_path / "runs",
            "--results",
            results,
            timeout=300,
        )
        lines = results.read_text().splitlines()
        return next(line for line in lines if "faster than scanpy" in line)

    row = speed_row({**neighbours, "annoy_speedup_vs_scanpy_default": 4.5, "earlier": [slow]})
    assert "earlier measurement: 9.9 s" in row and "1.5x" in row
    assert row.endswith("| **no** |")
    # A measurement of other Annoy settings (before a retuning) is shown, not counted.
    other = {**slow, "annoy_settings": {"n_trees": 5, "search_k": 320, "refine": 0}}
    assert neighbours["annoy_settings"] != other["annoy_settings"]
    fast = {**neighbours, "annoy_speedup_vs_scanpy_default": 4.5, "other_settings": [other]}
    row = speed_row(fast)
    assert "not counted (5 trees, search_k 320; median of 3 rounds, " in row
    assert "): 9.9 s vs" in row
    assert row.endswith("| yes |")


def test_a_rerun_benchmarks_the_current_code_not_an_earlier_runs_copy(tmp_path):
    """A run folder holds a copy of the workflow; rerun in the same folder, the benchmark
    once kept the earlier copy and so measured the earlier code."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    from run_benchmark import workflow_copy

    run = workflow_copy(tmp_path / "run_200000")
    copied = run / "workflow" / "scripts" / "atlasmap" / "embedding.py"
    copied.write_text("# the code of an earlier run\n")
    (run / "workflow" / "scripts" / "atlasmap" / "gone.py").write_text("# removed since\n")
    (run / "results").mkdir()
    (run / "results" / "mapped.h5ad").write_text("an earlier result")
    workflow_copy(run)
    current = REPO / "workflow" / "scripts" / "atlasmap" / "embedding.py"
    assert copied.read_text() == current.read_text()
    assert not (run / "workflow" / "scripts" / "atlasmap" / "gone.py").exists()
    assert (run / "results" / "mapped.h5ad").read_text() == "an earlier result"
