"""vs_scpdac.py's report from a made-up summary: each pair of runs a row, and the spread
of the ratios over the pairs of one size (median and range, the speed-up at the median)."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from vs_scpdac_report import spread_table, write_results  # noqa: E402


def pair(cells: int, repeat: int, scpdac_s: float, atlasmap_s: float, repeats=3) -> dict:
    def tool(seconds, above, total):
        return {
            "seconds": seconds,
            "cells_per_second": cells / seconds,
            "peak_above_baseline_mb": above,
            "peak_rss_mb": total,
        }

    return {
        "mode": "frozen",
        "cells": cells,
        "repeat": repeat,
        "repeats": repeats,
        "scpdac": tool(scpdac_s, 3000.0, 5000.0),
        "atlasmap": {
            **tool(atlasmap_s, 750.0, 2900.0),
            "map_query_seconds": atlasmap_s - 0.5,
            "calls_seconds": 0.5,
        },
        "ratios": {
            "time_atlasmap_over_scpdac": atlasmap_s / scpdac_s,
            "time_map_query_only_over_scpdac": (atlasmap_s - 0.5) / scpdac_s,
            "peak_above_baseline_atlasmap_over_scpdac": 0.25,
            "total_peak_atlasmap_over_scpdac": 0.58,
        },
        "agreement": {
            "label_agreement_where_atlasmap_calls": 1.0,
            "atlasmap_unknown_fraction": 0.88,
            "argmax_agreement_all_cells": 1.0,
            "latent_max_abs_difference": 0.0,
        },
    }


def summary(runs: list[dict]) -> dict:
    return {
        "date": "2026-12-07",
        "command": "python benchmarks/vs_scpdac.py --repeats 3",
        "machine": {"cpu": "test CPU", "cores": 2, "memory_gb": 23.5},
        "versions": {"atlasmap": "test"},
        "torch_threads": 2,
        "atlas_cells": 0,
        "runs": runs,
        "notes": ["## A finding written by hand\n\nKept by --tables-only."],
    }


def test_the_spread_is_the_median_and_range_of_each_size_run_more_than_once(tmp_path):
    # 200k three times (ratios 0.08, 0.10, 0.09), 10k once: only 200k has a spread.
    runs = [pair(10_000, 1, 10.0, 0.7, repeats=1)] + [
        pair(200_000, r, 50.0, s) for r, s in ((1, 4.0), (2, 5.0), (3, 4.5))
    ]
    table = spread_table(summary(runs))
    rows = [line for line in table.splitlines() if line.startswith("| frozen")]
    assert rows == [
        "| frozen | 200,000 | 3 | 0.090 (0.080–0.100) | 0.080 (0.070–0.090) "
        "| 0.250 (0.250–0.250) | 11.1x |"
    ]
    path = tmp_path / "vs_scpdac.md"
    write_results(path, summary(runs))
    text = path.read_text()
    assert "| frozen | 200,000 (#1) | atlasmap | 4.0 (3.5 + 0.5) |" in text
    assert "| frozen | 200,000 (#3) | atlasmap | 4.5 (4.0 + 0.5) |" in text
    assert "| frozen | 10,000 | atlasmap |" in text
    assert "## Spread over the pairs of runs" in text
    assert text.rstrip().endswith("Kept by --tables-only.")
    assert json.loads(path.with_suffix(".json").read_text())["runs"][3]["repeat"] == 3


def test_no_spread_where_every_size_ran_once():
    runs = [pair(10_000, 1, 10.0, 0.7, repeats=1), pair(200_000, 1, 50.0, 4.0, repeats=1)]
    assert spread_table(summary(runs)) == ""
