"""The real-data benchmark's run: the plan, the tuning folds, the queries, the baselines,
in worker processes; each unit of work saved as JSON in the run folder.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import pandas as pd
from atlasmap.calls import METHODS
from atlasmap.contract import MODES
from atlasmap.settings import CallSettings
from bench import say, write_json
from real_data_data import (
    BATCH_KEY,
    DATASETS,
    LABELS_KEY,
    as_query,
    concat_reference,
    queries,
    tuning_folds,
)
from real_data_steps import (
    call_table,
    celltypist_baseline,
    h_score,
    logistic_regression,
    map_once,
    score_table,
    train_model,
)

# --------------------------------------------------------------------------- the plan

# The library's call methods, its default first: the order of the tuning grid and of
# the tables' rows.
CALL_METHODS = (CallSettings().method, *(m for m in METHODS if m != CallSettings().method))
# The batch correction of the novelty score as the tuning grid and the tables name it.
OFF = "off"


def library_defaults() -> dict:
    """The call settings a user gets without touching the config (atlasmap.settings.CallSettings)."""
    d = CallSettings()
    return {
        "method": d.method,
        "n_neighbors": d.n_neighbors,
        "unknown_threshold": d.unknown_threshold,
        "novelty_false_positive_rate": d.novelty_false_positive_rate,
        "novelty_batch_quantile": d.novelty_batch_quantile,
    }


def quantile_name(quantile) -> str:
    return OFF if quantile is None else f"{float(quantile):g}"


def quantile_value(name: str):
    return None if name == OFF else float(name)


def plan_for(quick: bool) -> dict:
    from atlasmap.settings import TrainingSettings

    if quick:
        return {
            "quick": True,
            "seeds": [0],
            "cells_per_dataset": 700,
            "training": TrainingSettings(n_top_genes=2000, scvi_max_epochs=25, scanvi_max_epochs=3),
            "surgery_epochs": 10,
            "grid": {
                "method": list(CALL_METHODS),
                "n_neighbors": [15, 30],
                "novelty_false_positive_rate": [0.03, 0.05],
                "novelty_batch_quantile": [None, 0.5],
                "unknown_threshold": [0.3, 0.5],
            },
        }
    return {
        "quick": False,
        "seeds": [0, 1, 2],
        "cells_per_dataset": None,
        # scVI capped at 100 epochs (the library's rule would allow 400, with early
        # stopping): on the full reference the validation ELBO was 516.7 at epoch 59,
        # 515.8 at 69 and 515.1 at 109, flat within 0.3 %; 400 epochs per model would not
        # fit 10 models into the hour on 2 cores. scANVI keeps the rule's 10.
        "training": TrainingSettings(n_top_genes=2000, scvi_max_epochs=100),
        "surgery_epochs": 10,
        "grid": {
            "method": list(CALL_METHODS),
            "n_neighbors": [15, 30, 50],
            "novelty_false_positive_rate": [0.01, 0.02, 0.03, 0.05, 0.1],
            "novelty_batch_quantile": [None, 0.5],
            "unknown_threshold": [0.3, 0.4, 0.5],
        },
    }


def plan_record(plan: dict) -> dict:
    return {**plan, "training": asdict(plan["training"])}


# --------------------------------------------------------------------------- tuning


def run_tuning_fold(data, plan, run_dir: Path, fold: dict) -> str:
    out = run_dir / "tuning" / f"{fold['name']}.json"
    if out.is_file():
        return f"tuning {fold['name']}: done before"
    grid = plan["grid"]
    say(f"tuning {fold['name']}: start")
    atlas = concat_reference({fold["train"]: data[fold["train"]]}, drop=fold["drop"])
    query = as_query(data[fold["test"]], f"heldout_{fold['test']}")
    reference_labels = set(atlas.obs[LABELS_KEY])
    model_dir = run_dir / "models" / f"tuning_{fold['name']}"
    training = train_model(atlas, model_dir, plan["training"], seed=0)
    rows, seconds = [], {"training": training["seconds"]}
    for mode in MODES:
        result, mapped = map_once(query, atlas, model_dir, mode, 0, plan["surgery_epochs"])
        seconds[f"map_{mode}"] = mapped
        start = time.time()
        for method in grid["method"]:
            for k in grid["n_neighbors"]:
                for fpr, quantile in itertools.product(
                    grid["novelty_false_positive_rate"], grid["novelty_batch_quantile"]
                ):
                    table, report, _ = call_table(
                        result,
                        atlas,
                        query,
                        method=method,
                        n_neighbors=k,
                        novelty_false_positive_rate=fpr,
                        novelty_batch_quantile=quantile,
                        seed=0,
                    )
                    for threshold in grid["unknown_threshold"]:
                        metrics = score_table(
                            table, reference_labels, threshold, report["novelty_cutoff"]
                        )
                        metrics.pop("recall")
                        rows.append(
                            {
                                "fold": fold["name"],
                                "mode": mode,
                                "method": method,
                                "n_neighbors": k,
                                "novelty_false_positive_rate": fpr,
                                "novelty_batch_quantile": quantile_name(quantile),
                                "unknown_threshold": threshold,
                                **metrics,
                            }
                        )
        seconds[f"calls_{mode}"] = round(time.time() - start, 1)
    write_json(out, {"fold": fold, "rows": rows, "seconds": seconds, "training": training})
    return f"tuning {fold['name']}: done ({seconds})"


def tuning_summary(run_dir: Path) -> pd.DataFrame:
    """One row per call setting: mean over folds and modes; H of seen macro-F1 and detection."""
    rows = []
    for fold in tuning_folds():
        rows += json.loads((run_dir / "tuning" / f"{fold['name']}.json").read_text())["rows"]
    frame = pd.DataFrame(rows)
    frame["novelty_fold"] = frame["fold"].str.contains("_without_")
    keys = [
        "method",
        "n_neighbors",
        "novelty_false_positive_rate",
        "novelty_batch_quantile",
        "unknown_threshold",
    ]
    out = []
    for setting, group in frame.groupby(keys):
        novel = group[group["novelty_fold"]]
        row = dict(zip(keys, setting, strict=True))
        row["macro_f1_seen"] = group["macro_f1_seen"].mean()
        row["accuracy_seen"] = group["accuracy_seen"].mean()
        row["share_unknown_seen"] = group["share_unknown_seen"].mean()
        row["detection"] = novel["share_unknown_unseen"].mean()
        row["ece"] = group["ece"].mean()
        for mode in MODES:
            mine = group[group["mode"] == mode]
            row[f"h_{mode}"] = h_score(
                mine["macro_f1_seen"].mean(),
                mine[mine["novelty_fold"]]["share_unknown_unseen"].mean(),
            )
        row["h"] = h_score(row["macro_f1_seen"], row["detection"])
        out.append(row)
    return pd.DataFrame(out).sort_values(["h", "macro_f1_seen"], ascending=False)


def choose_settings(summary: pd.DataFrame) -> dict:
    best = summary.iloc[0]
    return {
        "method": str(best["method"]),
        "n_neighbors": int(best["n_neighbors"]),
        "novelty_false_positive_rate": float(best["novelty_false_positive_rate"]),
        "novelty_batch_quantile": quantile_value(best["novelty_batch_quantile"]),
        "unknown_threshold": float(best["unknown_threshold"]),
    }


# --------------------------------------------------------------------------- the queries


def run_query(data, plan, run_dir: Path, chosen: dict, name: str, seed: int) -> str:
    outs = {mode: run_dir / "queries" / f"{name}_seed{seed}_{mode}.json" for mode in MODES}
    if all(p.is_file() for p in outs.values()):
        return f"query {name} seed {seed}: done before"
    q = queries(data)[name]
    atlas, query = q["atlas"], q["query"]
    reference_labels = set(atlas.obs[LABELS_KEY])
    model_dir = run_dir / "models" / f"query{name}_seed{seed}"
    say(f"query {name} seed {seed}: reference model ({atlas.n_obs} cells)")
    training = train_model(atlas, model_dir, plan["training"], seed)
    lines = []
    for mode, out in outs.items():
        result, mapped = map_once(query, atlas, model_dir, mode, seed, plan["surgery_epochs"])
        record = {
            "query": name,
            "seed": seed,
            "mode": mode,
            "training": training,
            "map_seconds": mapped,
            "calls": {},
        }
        defaults = library_defaults()
        settings = {f"default_{m}": {**defaults, "method": m} for m in CALL_METHODS}
        # What the batch correction of the novelty score changes, all else the defaults.
        settings["no_batch_correction"] = {**defaults, "novelty_batch_quantile": None}
        settings["tuned"] = chosen
        for label, s in settings.items():
            table, report, seconds = call_table(result, atlas, query, **s, seed=seed)
            record["calls"][label] = {
                "settings": s,
                "seconds": seconds,
                "metrics": score_table(table, reference_labels),
                "reference_held_out_label_detection": report.get(
                    "held_out_label_detection", {}
                ).get("mean"),
                "novelty_cutoff": report.get("novelty_cutoff"),
            }
        write_json(out, record)
        m = record["calls"]["default_knn"]["metrics"]
        lines.append(
            f"{mode} mapped in {mapped:.0f} s, default knn accuracy {m['accuracy_seen']}, "
            f"Unknown seen {m['share_unknown_seen']}, unseen {m['share_unknown_unseen']}"
        )
    return f"query {name} seed {seed}: " + "; ".join(lines)


def run_baseline(data, plan, run_dir: Path, name: str) -> str:
    from atlasmap.reference import select_genes

    out = run_dir / "baselines" / f"{name}.json"
    if out.is_file():
        return f"baselines {name}: done before"
    q = queries(data)[name]
    atlas, query = q["atlas"], q["query"]
    genes = select_genes(atlas, 2000, BATCH_KEY, "counts")
    say(f"baselines {name}: logistic regression on {len(genes)} HVGs")
    record = {"logistic_regression": logistic_regression(atlas, query, genes)}
    say(f"baselines {name}: CellTypist on {atlas.n_vars} genes")
    record["celltypist"] = celltypist_baseline(atlas, query)
    write_json(out, record)
    return f"baselines {name}: done"


# --------------------------------------------------------------------------- workers

_DATA: dict = {}


def saved_data(run_dir: Path) -> dict:
    if str(run_dir) not in _DATA:
        _DATA.clear()
        _DATA[str(run_dir)] = {
            name: ad.read_h5ad(run_dir / "data" / f"{name}.h5ad") for name in DATASETS
        }
    return _DATA[str(run_dir)]


def task(kind: str, run_dir: Path, plan: dict, *args) -> str:
    """One unit of work in a worker process: it reads the labelled data the main process saved."""
    start = time.time()
    data = saved_data(run_dir)
    if kind == "tuning":
        message = run_tuning_fold(data, plan, run_dir, *args)
    elif kind == "query":
        message = run_query(data, plan, run_dir, *args)
    else:
        message = run_baseline(data, plan, run_dir, *args)
    return f"{message} [{(time.time() - start) / 60:.1f} min]"
