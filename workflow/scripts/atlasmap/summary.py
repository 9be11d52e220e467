"""One summary across every query, mode and reference: a table and a label-share figure.

Each mapping (one query in one mode onto one reference) has already written its
per-sample tables (``samples.tsv``, ``qc.tsv``), its per-cell ``predictions.tsv`` and,
when the query has known labels, ``metrics.json``. This module reads the totals of
each (the rows with sample ``all``) into one row per mapping, and counts each
mapping's predicted labels for one figure in which every mapping is a bar.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .contract import UNKNOWN
from .errors import AtlasmapInputError
from .io import atomic_path

log = logging.getLogger(__name__)

TOTAL = "all"  # the sample name of the totals row of samples.tsv and qc.tsv
SEPARATOR = " · "
COLUMNS = [
    "query",
    "reference",
    "mode",
    "cells_loaded",
    "cells_kept",
    "gene_overlap",
    "share_unknown",
    "mean_probability",
    "accuracy",
    "macro_f1",
    "baseline_accuracy",
    "baseline_macro_f1",
]
SAMPLE_COLUMNS = ["cells_loaded", "cells_kept"]  # from samples.tsv, whole numbers
QC_COLUMNS = ["gene_overlap", "share_unknown", "mean_probability"]  # from qc.tsv
METRICS = {  # table column -> (metrics.json section, key)
    "accuracy": ("mapping", "accuracy"),
    "macro_f1": ("mapping", "macro_f1"),
    "baseline_accuracy": ("baseline", "accuracy"),
    "baseline_macro_f1": ("baseline", "macro_f1"),
}
DECIMALS = 4  # as qc.tsv and metrics.json round them


@dataclass(frozen=True)
class MappingRun:
    """The files of one query mapped in one mode onto one reference."""

    query: str
    mode: str
    reference: str
    samples: Path
    qc: Path
    predictions: Path
    metrics: Path | None = None

    @classmethod
    def from_mapping(cls, entry: Mapping) -> MappingRun:
        """A run from a dict (the rule's ``params.runs``): keys as the fields, paths as str."""
        missing = [
            k
            for k in ("query", "mode", "reference", "samples", "qc", "predictions")
            if k not in entry
        ]
        if missing:
            raise AtlasmapInputError(f"a summary run lacks {missing}: {dict(entry)}")
        metrics = entry.get("metrics")
        return cls(
            query=str(entry["query"]),
            mode=str(entry["mode"]),
            reference=str(entry["reference"]),
            samples=Path(entry["samples"]),
            qc=Path(entry["qc"]),
            predictions=Path(entry["predictions"]),
            metrics=None if metrics in (None, "") else Path(metrics),
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return self.query, self.mode, self.reference


def _distinct(runs: Sequence[MappingRun]) -> list[MappingRun]:
    runs = list(runs)
    if not runs:
        raise AtlasmapInputError("no mapping to summarise: the list of runs is empty")
    seen: set[tuple[str, str, str]] = set()
    for run in runs:
        if run.key in seen:
            raise AtlasmapInputError(
                f"mapping {SEPARATOR.join(run.key)} is listed twice in the summary's runs"
            )
        seen.add(run.key)
    return runs


def _read_tsv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise AtlasmapInputError(f"{path}: not a readable TSV table ({err})") from err


def total_row(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, float]:
    """The numbers in ``columns`` of the row whose sample is ``all`` in the TSV ``path``.

    A missing column, a missing or repeated ``all`` row, or a value that is not a
    number is refused, naming the file and the column.
    """
    path = Path(path)
    # Sample names as written: a sample called "NA" is a name, not a missing value.
    table = _read_tsv(path, dtype={"sample": str}, keep_default_na=False, na_values=[""])
    for column in ["sample", *columns]:
        if column not in table.columns:
            raise AtlasmapInputError(
                f"{path} has no column {column!r} (columns: {', '.join(map(str, table.columns))})"
            )
    rows = table[table["sample"] == TOTAL]
    if len(rows) != 1:
        what = "no" if rows.empty else f"{len(rows)}"
        raise AtlasmapInputError(
            f"{path} has {what} row with sample == {TOTAL!r} in column 'sample' "
            "(the totals over all samples); one is needed"
        )
    row = rows.iloc[0]
    values = {}
    for column in columns:
        value = pd.to_numeric(pd.Series([row[column]]), errors="coerce").iloc[0]
        if pd.isna(value) and not pd.isna(row[column]):
            raise AtlasmapInputError(
                f"{path}: column {column!r} of the {TOTAL!r} row is {row[column]!r}, not a number"
            )
        values[column] = float(value)
    return values


def read_metrics(path: str | os.PathLike | None) -> dict[str, float]:
    """Accuracy and macro-F1 of the mapping and of the baseline from ``metrics.json``;
    all NaN when there is none (a query without known labels)."""
    if path is None:
        return dict.fromkeys(METRICS, math.nan)
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AtlasmapInputError(f"{path}: not readable JSON ({err})") from err
    values = {}
    for column, (section, key) in METRICS.items():
        part = document.get(section) if isinstance(document, dict) else None
        if not isinstance(part, dict) or key not in part:
            raise AtlasmapInputError(f"{path} has no {section}.{key} (for column {column!r})")
        value = part[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise AtlasmapInputError(f"{path}: {section}.{key} is {value!r}, not a number")
        values[column] = math.nan if value is None else float(value)
    return values


def summary_table(runs: Sequence[MappingRun]) -> pd.DataFrame:
    """One row per run, in the given order, with the columns of :data:`COLUMNS`.

    Cells loaded and kept come from the ``all`` row of ``samples.tsv``; gene overlap,
    share Unknown and mean probability from the ``all`` row of ``qc.tsv``; accuracy
    and macro-F1 (mapping and baseline) from ``metrics.json``, NaN without one.
    """
    runs = _distinct(runs)
    rows = []
    for run in runs:
        row: dict[str, object] = {"query": run.query, "reference": run.reference, "mode": run.mode}
        row.update(total_row(run.samples, SAMPLE_COLUMNS))
        row.update(total_row(run.qc, QC_COLUMNS))
        row.update(read_metrics(run.metrics))
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in SAMPLE_COLUMNS:
        values = table[column]
        whole = values.isna() | (values == values.round())
        if not whole.all():
            run = runs[int((~whole).to_numpy().argmax())]
            raise AtlasmapInputError(
                f"{run.samples}: column {column!r} of the {TOTAL!r} row is not a whole number"
            )
        table[column] = values.astype("Int64")
    return table


def write_summary_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """``table`` as TSV, whole or not at all: floats to 4 decimals, NaN as an empty field."""
    rounded = table.copy()
    floats = rounded.select_dtypes("float").columns
    rounded[floats] = rounded[floats].round(DECIMALS)
    with atomic_path(path) as tmp:
        rounded.to_csv(tmp, sep="\t", index=False, na_rep="")


def run_labels(runs: Sequence[MappingRun]) -> list[str]:
    """Each run's name in the figure: ``query · mode · reference``, the reference left
    out when every run has the same one."""
    runs = _distinct(runs)
    one_reference = len({run.reference for run in runs}) == 1
    return [SEPARATOR.join((run.query, run.mode) if one_reference else run.key) for run in runs]


def read_predictions(path: str | os.PathLike, column: str) -> pd.Series:
    """The calls in ``column`` of a predictions TSV, as written (a label "NA" stays "NA")."""
    path = Path(path)
    header = _read_tsv(path, nrows=0)
    if column not in header.columns:
        raise AtlasmapInputError(
            f"{path} has no column {column!r} (predictions at other levels: "
            f"{', '.join(c for c in header.columns if str(c).startswith('predicted_')) or 'none'})"
        )
    calls = _read_tsv(path, usecols=[column], dtype=str, keep_default_na=False)[column]
    empty = int((calls.str.strip() == "").sum())
    if empty:
        raise AtlasmapInputError(f"{path}: {empty} cells have no call in column {column!r}")
    return calls


def label_order(labels: Iterable[str]) -> list[str]:
    """Labels sorted as :func:`atlasmap.plots.label_palette` orders them: Unknown last."""
    labels = set(labels)
    return sorted(labels - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in labels else [])


def label_counts(runs: Sequence[MappingRun], column: str) -> pd.DataFrame:
    """Cells per predicted label (columns: every label any run called, Unknown last)
    for each run (rows, in the given order, named by :func:`run_labels`); 0 where a
    run never called a label."""
    runs = _distinct(runs)
    counts = {}
    for run, name in zip(runs, run_labels(runs), strict=True):
        calls = read_predictions(run.predictions, column)
        if calls.empty:
            raise AtlasmapInputError(f"{run.predictions} has no cells")
        counts[name] = calls.value_counts()
    table = pd.DataFrame(counts).T.fillna(0).astype(int)
    table = table[label_order(table.columns)]
    table.index.name = "run"
    table.columns.name = "label"
    return table


def shares_of(counts: pd.DataFrame) -> pd.DataFrame:
    """Label counts (runs x labels) as each run's shares: every row sums to 1."""
    return counts.div(counts.sum(axis=1), axis=0)


def label_shares(runs: Sequence[MappingRun], column: str) -> pd.DataFrame:
    """Each run's share of query cells per predicted label: :func:`label_counts`
    divided by the run's cells, so every row sums to 1."""
    return shares_of(label_counts(runs, column))


def atlas_labels(atlases: Sequence[str | os.PathLike], level: str) -> set[str]:
    """Every label at ``level`` of the atlases' cells (obs alone is read)."""
    from .io import read_annotations

    labels: set[str] = set()
    for path in atlases:
        obs = read_annotations(path, obsm=(), uns=False).obs
        if level in obs:
            labels |= set(obs[level].dropna().astype(str))
    return labels


def summarize_queries_files(
    runs: Sequence[MappingRun],
    *,
    table: str | os.PathLike,
    figure: Sequence[str | os.PathLike],
    level: str | None,
    labels_key: str,
    colors: Mapping[str, str] | None = None,
    dpi: int = 300,
    atlases: Sequence[str | os.PathLike] = (),
) -> pd.DataFrame:
    """Write the summary table (TSV) and the label-share figure (every path in
    ``figure``, one per format) of ``runs``; returns the table.

    The figure shows the calls at ``level`` (the labels key when None) of every run
    as one 100%-stacked bar, coloured with one palette for all bars. With the
    references' ``atlases`` (h5ad), the palette also counts their labels at ``level``,
    as each mapping's own figures do, so that a label has their colour here too.
    """
    from .plots import label_distribution_across, label_palette, prediction_column, save_figure

    runs = _distinct(runs)
    summary = summary_table(runs)
    level = level or labels_key
    column = prediction_column(level, labels_key)
    counts = label_counts(runs, column)
    shares = shares_of(counts)
    palette = label_palette([*shares.columns, *atlas_labels(atlases, level)], colors)
    references = sorted({run.reference for run in runs})
    title = f"Predicted {level}: share of query cells in each mapping"
    if len(references) == 1:
        title += f" onto {references[0]}"
    fig = label_distribution_across(shares, palette, title, cells=counts.sum(axis=1))
    # The table last: a rule whose figure failed leaves no table that looks complete.
    save_figure(fig, figure, dpi)
    write_summary_table(summary, table)
    log.info(
        "summarised %d mappings (%d labels at %s) into %s", len(runs), shares.shape[1], level, table
    )
    return summary
