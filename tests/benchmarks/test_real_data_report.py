"""real_data.py --tables-only on a small run folder made here: every table of the report is
filled into its template (benchmarks/templates/real_data.md.tmpl), and the hand-written
findings of an earlier report are kept."""

import json
import sys

import numpy as np
import pytest
from atlasmap.contract import MODES, UNKNOWN
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import real_data_report as report  # noqa: E402
import real_data_run as run  # noqa: E402
from real_data_data import MARKERS, QUERY_B_DROP, tuning_folds  # noqa: E402
from real_data_steps import score  # noqa: E402

LABELS = list(MARKERS)


def metrics(rng, reference, truth_labels=LABELS, cells=200) -> dict:
    """The scores of made-up calls, by the benchmark's own scoring."""
    truth = rng.choice(truth_labels, cells)
    called = np.where(rng.random(cells) < 0.7, truth, rng.choice([*reference, UNKNOWN], cells))
    candidate = np.where(called == UNKNOWN, truth, called)
    return score(truth, called, candidate, rng.random(cells), reference)


def write(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, default=float))


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    defaults = run.library_defaults()
    chosen = {**defaults, "n_neighbors": 15}
    for fold in tuning_folds():
        rows = [
            {
                "fold": fold["name"],
                "mode": mode,
                "method": method,
                "n_neighbors": k,
                "novelty_false_positive_rate": defaults["novelty_false_positive_rate"],
                "novelty_batch_quantile": run.quantile_name(defaults["novelty_batch_quantile"]),
                "unknown_threshold": defaults["unknown_threshold"],
                "accuracy_seen": rng.random(),
                "macro_f1_seen": rng.random(),
                "share_unknown_seen": rng.random(),
                "share_unknown_unseen": rng.random() if fold["drop"] else None,
                "ece": rng.random(),
            }
            for mode in MODES
            for method in run.CALL_METHODS
            for k in (15, defaults["n_neighbors"])
        ]
        write(tmp_path / "tuning" / f"{fold['name']}.json", {"rows": rows})
    labels = [label for label in LABELS if label != "pDC"]
    for name in ("A", "B"):
        reference = [x for x in labels if name == "A" or x != QUERY_B_DROP]
        settings = [f"default_{m}" for m in run.CALL_METHODS] + ["no_batch_correction", "tuned"]
        for mode in MODES:
            calls = {s: {"seconds": 1.0, "metrics": metrics(rng, reference)} for s in settings}
            record = {"query": name, "seed": 0, "mode": mode, "map_seconds": 2.0, "calls": calls}
            write(tmp_path / "queries" / f"{name}_seed0_{mode}.json", record)
        baseline = {"seconds": 3.0, "as_called": metrics(rng, reference)}
        baseline["p<0.5_unknown"] = metrics(rng, reference)
        write(
            tmp_path / "baselines" / f"{name}.json",
            {"logistic_regression": baseline, "celltypist": {"skipped": "not installed"}},
        )
    write(tmp_path / "models" / "queryA_seed0.json", {"cells": 9, "seconds": 4.0, "epochs": []})
    info = {
        "cells_in_file": 100,
        "cells_after_qc": 90,
        "label_counts": {label: 10 for label in labels},
        "unlabelled": 0,
        "clustering": "k-means",
        "min_score": 0.2,
    }
    meta = {
        "labels": {name: info for name in ("kang_ctrl", "kang_stim", "pbmc3k")},
        "chosen": chosen,
        "plan": {"quick": True, "seeds": [0], "training": {"scvi_max_epochs": 2}},
        "finished": "2000-01-01 00:00",
        "minutes": 1.0,
    }
    write(tmp_path / "run.json", meta)
    return tmp_path


def test_the_report_fills_every_table_and_keeps_the_findings(run_dir):
    results = run_dir / "real_data.md"
    results.write_text(
        f"earlier tables\n{report.FINDINGS_START}\nwhat the run showed\n{report.FINDINGS_END}\n"
    )
    report.write_tables(run_dir, results)
    text = results.read_text()
    assert text.startswith("# Real-data benchmark: cell-type calls on PBMC (QUICK RUN")
    assert "what the run showed" in text and "earlier tables" not in text
    assert "{" not in text.replace("{'scvi_max_epochs': 2}", "")  # no field left unfilled
    for row in (
        "| atlasmap surgery, tuned calls |",
        "| atlasmap embed, knn, defaults |",
        "| logistic regression (p < 0.5 → Unknown) |",
        "| map query A seed 0, surgery |",
    ):
        assert row in text, row
    assert "CellTypist (best label)" not in text  # skipped: not installed
    assert "## Runtime" in text and text.endswith("|\n")
