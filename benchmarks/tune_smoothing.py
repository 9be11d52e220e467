"""Smoothing the calls over the query's own neighbours, chosen on held-out reference
batches only.

    .venv/bin/python benchmarks/tune_smoothing.py            # ~15 min on 2 cores

The tuning folds of benchmarks/tune_ensemble.py (a reference of one PBMC data set, the
other lab's as the query; schema-rule reference models, 3 seeds, both modes) and the
library's default calls, with each query cell's member probabilities averaged over its
``query_smoothing`` nearest cells of the same query batch in the latent (0: none). No
query of the real-data benchmark is used.

The rule, fixed before the run: the setting with the highest closed-set accuracy (the
best label, before Unknown) on the seen cells, averaged over folds, modes and seeds;
among settings within 0.005 of it, the one with the highest accuracy as called; on a
tie, the fewer neighbours. Writes benchmarks/tune_smoothing.md (rows in benchmarks/runs/).
"""

from __future__ import annotations

import json
import time

import bench  # noqa: F401  (first: the library on the path)
import pandas as pd
from atlasmap.contract import MODES
from bench import BENCHMARKS, RUNS, say, write_json
from real_data_data import TRUTH, tuning_fold
from real_data_report import fold_tables
from real_data_steps import (
    call_table,
    map_once,
    schema_model_dir,
    seen_scores,
    train_model,
    tuning_rows,
)

SMOOTHING = (0, 10, 30, 50)
SEEDS = (0, 1, 2)
FOLDS = (("kang_ctrl", "pbmc3k"), ("pbmc3k", "kang_ctrl"))
METRICS = ["closed_set_accuracy", "accuracy_as_called", "share_unknown", "ece"]
OUT = BENCHMARKS / "tune_smoothing.md"
RUN = RUNS / "tune_smoothing"


def run_fold(data, train: str, test: str, seed: int) -> list[dict]:
    from atlasmap.metrics import calibration_error
    from atlasmap.settings import TrainingSettings

    grid = "-".join(map(str, SMOOTHING))
    out = RUN / f"{train}_to_{test}_seed{seed}_{grid}.json"
    if out.is_file():
        return json.loads(out.read_text())
    atlas, query, seen = tuning_fold(data, train, test)
    model_dir = schema_model_dir(train, test, seed)
    train_model(atlas, model_dir, TrainingSettings(), seed=seed)
    rows = []
    for mode in MODES:
        result, _ = map_once(query, atlas, model_dir, mode, seed, 10)
        for smoothing in SMOOTHING:
            table, report, _ = call_table(
                result, atlas, query, query_smoothing=smoothing, seed=seed
            )
            ece = calibration_error(
                table[TRUTH].astype("string"),
                table["candidate_celltype"],
                table["prediction_probability"],
                seen,
            )
            rows.append(
                {
                    "fold": f"{train} → {test}",
                    "seed": seed,
                    "mode": mode,
                    "query_smoothing": smoothing,
                    **seen_scores(table, seen),
                    "ece": ece,
                    "held_out_accuracy_reference": report["held_out_accuracy"],
                }
            )
        say(f"{train} -> {test} seed {seed} {mode}: called")
    write_json(out, rows)
    return rows


def choose(frame: pd.DataFrame) -> int:
    means = frame.groupby("query_smoothing")[["closed_set_accuracy", "accuracy_as_called"]].mean()
    near = means[means["closed_set_accuracy"] >= means["closed_set_accuracy"].max() - 0.005]
    best = near["accuracy_as_called"].max()
    return int(near.index[near["accuracy_as_called"] == best].min())


def main() -> None:
    start = time.time()
    frame = tuning_rows(run_fold, SEEDS, FOLDS)
    chosen = choose(frame)
    gain = frame.pivot_table(
        index=["fold", "mode", "seed"], columns="query_smoothing", values="closed_set_accuracy"
    )
    gain = gain.sub(gain[0], axis=0).drop(columns=0).round(3)
    lines = [
        "# Smoothing the calls over the query's own neighbours, chosen on held-out "
        "reference batches",
        "",
        f"Written by `benchmarks/tune_smoothing.py` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.time() - start) / 60:.0f} min on 2 CPU cores this run; saved folds are "
        "reused). Folds as in `benchmarks/tune_ensemble.md`: a reference of one PBMC data "
        "set, the other (another lab and chemistry) as the query, labels derived per data "
        "set by marker genes; reference models trained by the schema's own rule, seeds 0, "
        "1, 2; surgery 10 epochs; the library's default calls otherwise. `query_smoothing` "
        "n: each query cell's kNN vote averaged with those of its n nearest cells of the "
        "same query batch in the latent, weighted by the vote's own distance kernel "
        "(held-out atlas batches alike, for the calibration). Accuracy on the query cells of labels the reference has: "
        "closed-set (best label, before Unknown) and as called; share Unknown among them; "
        "ECE of the calibrated probability of the best label.",
        "",
        "Rule, fixed before the run: the highest closed-set accuracy averaged over folds, "
        "modes and seeds; among settings within 0.005 of it, the highest accuracy as "
        "called; on a tie, the fewer neighbours.",
        "",
        f"**Chosen: query_smoothing {chosen}.**",
        "",
        "A caveat these folds cannot remove: their labels are the query data set's own "
        "expression clusters (`derive_labels`), so any smoothing over the query's "
        "structure is partly rewarded by construction. What is offered smooths in the "
        "mapping's latent, not in the space the labels came from; a one-seed probe "
        "(2026-12-06, not kept) that smoothed over the query's own expression PCs instead, "
        "nearly that space, gained 4-9 points, an upper bound of the circularity, and is "
        "not offered. The smoothing is checked on the authors' labels of another study in "
        "`benchmarks/authors_labels.md`, where nothing was chosen.",
        "",
        "Two earlier runs of this script (2026-12-06 23:39 and 2026-12-07 00:03), each "
        "changed for a failure a test showed, not for these folds' figures. The first "
        "smoothed the expression member too, a plain mean, and chose 30 neighbours "
        "(closed-set 0.800, as called 0.749, ECE 0.134); but where the latent mixes two "
        "types that expression tells apart, averaging the expression member over latent "
        "neighbours undoes it (`test_the_expression_member_calls_right_what_the_latent_"
        "confuses` failed). The second smoothed the vote alone, a plain mean, and chose 50 "
        "(0.798, 0.747, 0.123); on the 300-cell real query of "
        "`tests/integration/test_real_data.py` it cost the seen cells 4.6 points (0.628 "
        "to 0.582, mean of 3 seeds): in a small query the 50th neighbour is often another "
        "type. Weighted by the kernel, the loss there is 2.1 points (0.607).",
        "",
        *fold_tables(frame, ["query_smoothing"], METRICS),
        "## Closed-set gain over no smoothing, per fold, mode and seed",
        "",
        gain.to_markdown(),
        "",
    ]
    OUT.write_text("\n".join(lines))
    say(f"wrote {OUT}: chosen query_smoothing {chosen}")


if __name__ == "__main__":
    main()
