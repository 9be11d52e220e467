"""The real-data benchmark's report: its tables, from the run folder's JSON, in the
template benchmarks/templates/real_data.md.tmpl; and the tables every tuning script
writes of its folds (``fold_tables``).
"""

from __future__ import annotations

import json
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
from atlasmap.contract import MODES
from bench import REPO, say, template
from real_data_data import MARKERS, PBMC3K_TUTORIAL, TUNING_DROP, tuning_folds
from real_data_run import CALL_METHODS, library_defaults, quantile_name, tuning_summary

# The report's fixed text: str.format fields for the run's figures and tables.
REPORT = "real_data.md.tmpl"


def fold_tables(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> list[str]:
    """Markdown lines of a tuning run: each setting's mean (sd) over folds, modes and
    seeds, then its mean over seeds per fold and mode."""
    summary = frame.groupby(keys)[metrics].agg(["mean", "std"]).round(3)
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    per_fold = frame.groupby(["fold", "mode", *keys])[metrics].mean().round(3).reset_index()
    return [
        "## Mean (sd) over folds, modes and seeds",
        "",
        summary.to_markdown(),
        "",
        "## Per fold and mode (mean over seeds)",
        "",
        per_fold.to_markdown(index=False),
        "",
    ]


# --------------------------------------------------------------------------- real_data.md


def _fmt(values, digits=3) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


COLUMNS = [
    ("accuracy_seen", "accuracy (seen)"),
    ("macro_f1_seen", "macro-F1 (seen)"),
    ("share_unknown_seen", "Unknown, seen cells"),
    ("share_unknown_unseen", "Unknown, unseen cells"),
    ("ece", "ECE (seen)"),
]


def result_rows(run_dir: Path, query: str) -> list[tuple[str, list[dict]]]:
    """(row name, metrics of each seed) for every method on one query."""
    runs = [
        json.loads(p.read_text()) for p in sorted((run_dir / "queries").glob(f"{query}_seed*.json"))
    ]
    rows = []
    names = {"tuned": "tuned calls", "no_batch_correction": "defaults without batch correction"}
    for label in ("tuned", *[f"default_{m}" for m in CALL_METHODS], "no_batch_correction"):
        for mode in MODES:
            mine = [
                r["calls"][label]["metrics"]
                for r in runs
                if r["mode"] == mode and label in r["calls"]
            ]
            if mine:
                what = names.get(label) or label.replace("default_", "") + ", defaults"
                rows.append((f"atlasmap {mode}, {what}", mine))
    base_path = run_dir / "baselines" / f"{query}.json"
    if base_path.is_file():
        base = json.loads(base_path.read_text())
        names = {"logistic_regression": "logistic regression", "celltypist": "CellTypist"}
        for key, name in names.items():
            if "skipped" in base.get(key, {}):
                continue
            rows.append((f"{name} (best label)", [base[key]["as_called"]]))
            rows.append((f"{name} (p < 0.5 → Unknown)", [base[key]["p<0.5_unknown"]]))
    return rows


SHIFTED = "CD14 Mono"  # the type IFN-beta moves most (see the findings)


def accuracy_without(metrics: dict, label: str) -> float | None:
    """Accuracy on seen cells other than ``label``'s, from the confusion counts."""
    confusion = metrics.get("confusion")
    if confusion is None:
        return None
    seen = [t for t in confusion if t != label and metrics["recall"].get(t) is not None]
    seen = [t for t in seen if t in metrics.get("reference_labels", seen)]
    right = sum(confusion[t].get(t, 0) for t in seen)
    total = sum(sum(confusion[t].values()) for t in seen)
    return right / total if total else None


def results_table(run_dir: Path, query: str, unseen: bool) -> str:
    columns = [c for c in COLUMNS if unseen or c[0] != "share_unknown_unseen"]
    columns = [
        *columns[:2],
        ("without_shifted", f"accuracy (seen, without {SHIFTED})"),
        *columns[2:],
    ]
    lines = [
        "| method | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, metrics in result_rows(run_dir, query):
        cells = [
            _fmt(
                [
                    accuracy_without(m, SHIFTED) if key == "without_shifted" else m[key]
                    for m in metrics
                ]
            )
            for key, _ in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_table(run_dir: Path, query: str, picks: list[str], labels: list[str]) -> str:
    """For each of ``labels``: what its query cells were called (shares, mean over seeds)."""
    rows = {name: metrics for name, metrics in result_rows(run_dir, query) if name in picks}
    lines = ["| true label | method | called as |", "|---|---|---|"]
    for label in labels:
        for name, ms in rows.items():
            counts = [pd.Series(m.get("confusion", {}).get(label, {})) for m in ms]
            if not any(len(c) for c in counts):
                continue
            mean = pd.concat(counts, axis=1).fillna(0).mean(axis=1).sort_values(ascending=False)
            share = mean / mean.sum()
            shown = ", ".join(f"{k} {v:.1%}" for k, v in share.items() if v >= 0.005)
            lines.append(f"| {label} | {name} | {shown} |")
    return "\n".join(lines)


def recall_table(run_dir: Path, query: str, picks: list[str]) -> str:
    rows = {name: metrics for name, metrics in result_rows(run_dir, query) if name in picks}
    labels = sorted({k for ms in rows.values() for m in ms for k in m["recall"]})
    lines = ["| label | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for label in labels:
        cells = [_fmt([m["recall"].get(label) for m in ms], 2) for ms in rows.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unseen_calls_table(run_dir: Path, picks: list[str]) -> str:
    rows = {name: metrics for name, metrics in result_rows(run_dir, "B") if name in picks}
    lines = ["| method | B cells called as (mean over seeds) |", "|---|---|"]
    for name, ms in rows.items():
        total = pd.concat([pd.Series(m.get("unseen_called_as", {})) for m in ms], axis=1).fillna(0)
        mean = total.mean(axis=1).sort_values(ascending=False)
        share = (mean / mean.sum()).round(3)
        lines.append(f"| {name} | " + ", ".join(f"{k} {v:.1%}" for k, v in share.items()) + " |")
    return "\n".join(lines)


def tuning_tables(run_dir: Path, chosen: dict) -> str:
    summary = tuning_summary(run_dir)
    show = [
        "method",
        "n_neighbors",
        "novelty_false_positive_rate",
        "novelty_batch_quantile",
        "unknown_threshold",
        "macro_f1_seen",
        "accuracy_seen",
        "share_unknown_seen",
        "detection",
        "ece",
        "h_surgery",
        "h_embed",
        "h",
    ]
    titles = [
        "method",
        "k",
        "novelty FPR",
        "batch quantile",
        "unknown threshold",
        "macro-F1 seen",
        "accuracy seen",
        "Unknown seen",
        "NK detected",
        "ECE",
        "H surgery",
        "H embed",
        "H",
    ]

    def table(frame: pd.DataFrame) -> str:
        lines = ["| " + " | ".join(titles) + " |", "|---" * len(titles) + "|"]
        for _, r in frame.iterrows():
            cells = [
                str(r[c])
                if c in ("method", "n_neighbors", "novelty_batch_quantile")
                else f"{float(r[c]):.3g}"
                if c in ("novelty_false_positive_rate", "unknown_threshold")
                else f"{float(r[c]):.3f}"
                for c in show
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    defaults = library_defaults()
    default = summary[
        (summary["n_neighbors"] == defaults["n_neighbors"])
        & (summary["novelty_false_positive_rate"] == defaults["novelty_false_positive_rate"])
        & (summary["novelty_batch_quantile"] == quantile_name(defaults["novelty_batch_quantile"]))
        & (summary["unknown_threshold"] == defaults["unknown_threshold"])
    ]
    per_method = summary.groupby("method", sort=False).head(1)
    same = summary[
        (summary["method"] == chosen["method"]) & (summary["n_neighbors"] == chosen["n_neighbors"])
    ].sort_values(["novelty_batch_quantile", "novelty_false_positive_rate", "unknown_threshold"])
    by_k = summary[
        (summary["method"] == chosen["method"])
        & (summary["novelty_false_positive_rate"] == chosen["novelty_false_positive_rate"])
        & (summary["novelty_batch_quantile"] == quantile_name(chosen.get("novelty_batch_quantile")))
        & (summary["unknown_threshold"] == chosen["unknown_threshold"])
    ].sort_values("n_neighbors")
    parts = [
        f"The {len(summary)} call settings ranked by H; the ten best:\n\n"
        + table(summary.head(10)),
        "The library's defaults ({}), each method:\n\n".format(
            ", ".join(f"{k} {v}" for k, v in defaults.items() if k != "method")
        )
        + table(default),
        "The best setting of each method:\n\n" + table(per_method),
        f"{chosen['method']}, k {chosen['n_neighbors']}: every FPR × batch correction × "
        "threshold:\n\n" + table(same),
        f"{chosen['method']}, FPR {chosen['novelty_false_positive_rate']}, threshold "
        f"{chosen['unknown_threshold']}: each k:\n\n" + table(by_k),
    ]
    return "\n\n".join(parts)


def tuning_fold_table(run_dir: Path, chosen: dict) -> str:
    lines = [
        "| fold | mode | accuracy seen | macro-F1 seen | Unknown seen | NK detected | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    wanted = {**chosen, "novelty_batch_quantile": quantile_name(chosen["novelty_batch_quantile"])}
    for fold in tuning_folds():
        rows = json.loads((run_dir / "tuning" / f"{fold['name']}.json").read_text())["rows"]
        for r in rows:
            if all(r[k] == v for k, v in wanted.items()):
                unseen = (
                    "–" if r["share_unknown_unseen"] is None else f"{r['share_unknown_unseen']:.3f}"
                )
                lines.append(
                    f"| {fold['name']} | {r['mode']} | {r['accuracy_seen']:.3f} | "
                    f"{r['macro_f1_seen']:.3f} | {r['share_unknown_seen']:.3f} | {unseen} | "
                    f"{r['ece']:.3f} |"
                )
    return "\n".join(lines)


def labels_table(info: dict) -> str:
    names = list(MARKERS)
    sets = list(info)
    lines = [
        "| label | " + " | ".join(sets) + " | PBMC 3k, Seurat tutorial |",
        "|---" * (len(sets) + 2) + "|",
    ]
    for label in names:
        cells = [str(info[s]["label_counts"].get(label, 0)) for s in sets]
        tutorial = PBMC3K_TUTORIAL.get(label, "–" if label != "pDC" else "(in DC)")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {tutorial} |")
    lines.append(
        "| no label (weak cluster) | "
        + " | ".join(str(info[s]["unlabelled"]) for s in sets)
        + " | – |"
    )
    lines.append(
        "| cells (after QC) | "
        + " | ".join(f"{info[s]['cells_after_qc']} of {info[s]['cells_in_file']}" for s in sets)
        + " | 2638 of 2700 |"
    )
    return "\n".join(lines)


def runtime_table(run_dir: Path) -> str:
    rows = []
    for path in sorted((run_dir / "models").glob("*.json")):
        record = json.loads(path.read_text())
        rows.append(
            f"| train {path.stem} | {record['cells']} | {record['seconds']:.0f} | "
            + "; ".join(record["epochs"])
            + " |"
        )
    for path in sorted((run_dir / "queries").glob("*.json")):
        record = json.loads(path.read_text())
        calls = sum(c["seconds"] for c in record["calls"].values())
        rows.append(
            f"| map query {record['query']} seed {record['seed']}, {record['mode']} | – | "
            f"{record['map_seconds']:.0f} | + {calls:.0f} s for {len(record['calls'])} call settings |"
        )
    for path in sorted((run_dir / "baselines").glob("*.json")):
        record = json.loads(path.read_text())
        for key, value in record.items():
            if "seconds" in value:
                rows.append(f"| {key} query {path.stem} | – | {value['seconds']:.0f} | |")
    head = "| step | cells | seconds | note |\n|---|---|---|---|\n"
    return head + "\n".join(rows)


FINDINGS_START = "<!-- findings: written by hand after reading the run; kept by --tables-only -->"
FINDINGS_END = "<!-- /findings -->"


def kept_findings(results: Path) -> str:
    """The hand-written summary of an earlier real_data.md, kept when the tables are rewritten."""
    text = results.read_text() if results.is_file() else ""
    if FINDINGS_START in text and FINDINGS_END in text:
        start = text.index(FINDINGS_START)
        return text[start : text.index(FINDINGS_END) + len(FINDINGS_END)]
    return f"{FINDINGS_START}\n(no summary written for this run yet)\n{FINDINGS_END}"


def write_tables(run_dir: Path, results: Path) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    info = meta["labels"]
    chosen = meta["chosen"]
    plan = meta["plan"]
    seeds = plan["seeds"]
    picks = [
        "atlasmap surgery, knn, defaults",
        "atlasmap embed, knn, defaults",
        "atlasmap surgery, tuned calls",
        "logistic regression (best label)",
        "CellTypist (best label)",
    ]
    quick = (
        " (QUICK RUN: subsampled cells, short training; not the benchmark)" if plan["quick"] else ""
    )
    text = template(REPORT).format(
        quick=quick,
        date=meta.get("finished", meta.get("started", "")),
        minutes=meta.get("minutes", float("nan")),
        rescored="".join(
            f"; then the tuning and the calls rerun on the saved models in "
            f"{r['minutes']:.0f} min ({r['finished']})"
            for r in meta.get("invocations", [])[1:]
        ),
        labels=labels_table(info),
        clustering=info["pbmc3k"]["clustering"],
        min_score=info["pbmc3k"]["min_score"],
        seeds=len(seeds),
        defaults=", ".join(f"{k} {v}" for k, v in library_defaults().items() if k != "method"),
        chosen=", ".join(f"{k} = {v}" for k, v in chosen.items()),
        tuning=tuning_tables(run_dir, chosen),
        folds=tuning_fold_table(run_dir, chosen),
        default_folds=tuning_fold_table(run_dir, library_defaults()),
        query_a=results_table(run_dir, "A", unseen=False),
        query_b=results_table(run_dir, "B", unseen=True),
        recall_a=recall_table(run_dir, "A", picks),
        confusion_a=confusion_table(run_dir, "A", picks, [SHIFTED, "CD8 T", "DC"]),
        unseen_b=unseen_calls_table(run_dir, picks[:3] + ["logistic regression (best label)"]),
        runtime=runtime_table(run_dir),
        run_dir=run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir,
        training=plan["training"],
        celltypist=meta.get("celltypist", "not installed"),
        tuning_drop=TUNING_DROP,
        findings=kept_findings(results),
    )
    results.write_text(text)
    say(f"tables written to {results}")
