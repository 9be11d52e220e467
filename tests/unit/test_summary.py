"""The summary over every query, mode and reference: its table comes from the files,
its figure's bars are each a whole mapping, one palette for all of them."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from atlasmap.errors import AtlasmapInputError
from atlasmap.plots import UNKNOWN_COLOUR, label_distribution_across, label_palette
from atlasmap.summary import (
    COLUMNS,
    MappingRun,
    label_counts,
    label_shares,
    run_labels,
    summarize_queries_files,
    summary_table,
)
from conftest import assert_valid_figure


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def write_run(root, query, mode, *, calls, level_calls=None, samples=None, qc=None, metrics=None):
    """A mapping's files as the workflow writes them; ``samples``/``qc``: per-sample values,
    the "all" row their totals (means for the qc shares, weighted by cells)."""
    samples = samples or {"S1": (5, 4), "S2": (3, 3)}
    loaded = sum(a for a, _ in samples.values())
    kept = sum(b for _, b in samples.values())
    samples_path = write_tsv(
        root / query / "query" / "samples.tsv",
        [{"sample": s, "cells_loaded": a, "cells_kept": b} for s, (a, b) in samples.items()]
        + [{"sample": "all", "cells_loaded": loaded, "cells_kept": kept}],
    )
    qc = qc or {"gene_overlap": 0.9, "mean_probability": 0.8, "share_unknown": 0.1}
    qc_rows = [
        {"sample": s, "mode": mode, "cells": b, "genes_matched": 90, **qc}
        for s, (_, b) in samples.items()
    ]
    qc_rows.append({"sample": "all", "mode": mode, "cells": kept, "genes_matched": 90, **qc})
    qc_path = write_tsv(root / query / mode / "qc.tsv", qc_rows)
    predictions = {
        "barcode": [f"{query}-{i}" for i in range(len(calls))],
        "predicted_celltype": calls,
        "prediction_probability": np.linspace(0.2, 1.0, len(calls)),
    }
    if level_calls is not None:
        predictions["predicted_Level_1"] = level_calls
    predictions_path = write_tsv(root / query / mode / "predictions.tsv", predictions)
    metrics_path = None
    if metrics is not None:
        metrics_path = root / query / mode / "metrics.json"
        metrics_path.write_text(
            json.dumps(
                {
                    "truth_column": "author_cell_type",
                    "mapping": {"cells": kept, **metrics["mapping"]},
                    "baseline": {"cells": kept, **metrics["baseline"]},
                }
            )
        )
    return MappingRun(
        query=query,
        mode=mode,
        reference="atlasA",
        samples=samples_path,
        qc=qc_path,
        predictions=predictions_path,
        metrics=metrics_path,
    )


METRICS = {
    "mapping": {"accuracy": 0.8125, "macro_f1": 0.7431},
    "baseline": {"accuracy": 0.6875, "macro_f1": 0.6012},
}


@pytest.fixture
def runs(tmp_path):
    """Two queries, two modes each; only query "qa" has known labels (metrics.json).
    "Mast cell" is called by one mapping only."""
    calls_a = ["T cell", "T cell", "B cell", "Unknown", "T cell", "B cell", "T cell"]
    calls_b = ["Macrophage", "T cell", "Unknown", "Unknown", "Mast cell"]
    level_a = ["Immune"] * 6 + ["Unknown"]
    level_b = ["Immune", "Immune", "Stromal", "Unknown", "Immune"]
    return [
        write_run(
            tmp_path,
            "qa",
            "surgery",
            calls=calls_a,
            level_calls=level_a,
            metrics=METRICS,
            qc={"gene_overlap": 0.912, "mean_probability": 0.8421, "share_unknown": 0.1429},
        ),
        write_run(
            tmp_path,
            "qa",
            "embed",
            calls=calls_a[::-1],
            level_calls=level_a[::-1],
            metrics={
                "mapping": {"accuracy": 0.75, "macro_f1": 0.7},
                "baseline": METRICS["baseline"],
            },
        ),
        write_run(
            tmp_path,
            "qb",
            "surgery",
            calls=calls_b,
            level_calls=level_b,
            samples={"P1": (10, 2), "P2": (7, 3), "P3": (4, 0)},
            qc={"gene_overlap": 0.7654, "mean_probability": 0.6, "share_unknown": 0.4},
        ),
        write_run(
            tmp_path,
            "qb",
            "embed",
            calls=calls_b[:4] + ["T cell"],
            level_calls=level_b,
            samples={"P1": (10, 2), "P2": (7, 3), "P3": (4, 0)},
        ),
    ]


def test_the_table_has_one_row_per_run_in_order_with_the_files_totals(runs):
    table = summary_table(runs)
    assert list(table.columns) == COLUMNS
    assert list(zip(table["query"], table["mode"], strict=True)) == [
        (r.query, r.mode) for r in runs
    ]
    assert (table["reference"] == "atlasA").all()
    for row, run in zip(table.itertuples(index=False), runs, strict=True):
        samples = pd.read_csv(run.samples, sep="\t").set_index("sample").loc["all"]
        qc = pd.read_csv(run.qc, sep="\t").set_index("sample").loc["all"]
        assert row.cells_loaded == samples["cells_loaded"]
        assert row.cells_kept == samples["cells_kept"]
        for column in ("gene_overlap", "share_unknown", "mean_probability"):
            assert getattr(row, column) == pytest.approx(qc[column])
    # The per-sample rows are not what is read: qb's "all" row is 21 loaded, 5 kept.
    assert table.loc[2, ["cells_loaded", "cells_kept"]].tolist() == [21, 5]


def test_metrics_come_from_metrics_json_and_are_empty_without_one(runs):
    table = summary_table(runs)
    first = json.loads(runs[0].metrics.read_text())
    assert table.loc[0, "accuracy"] == first["mapping"]["accuracy"]
    assert table.loc[0, "macro_f1"] == first["mapping"]["macro_f1"]
    assert table.loc[0, "baseline_accuracy"] == first["baseline"]["accuracy"]
    assert table.loc[0, "baseline_macro_f1"] == first["baseline"]["macro_f1"]
    assert (
        table.loc[1, "accuracy"] == json.loads(runs[1].metrics.read_text())["mapping"]["accuracy"]
    )
    metric_columns = ["accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1"]
    assert runs[2].metrics is None and runs[3].metrics is None
    assert table.loc[2:3, metric_columns].isna().all().all()
    assert table.loc[0:1, metric_columns].notna().all().all()


def test_a_value_changed_in_a_file_is_the_value_in_the_table(runs):
    before = summary_table(runs)
    qc = pd.read_csv(runs[1].qc, sep="\t")
    qc.loc[qc["sample"] == "all", "share_unknown"] = 0.3333
    qc.to_csv(runs[1].qc, sep="\t", index=False)
    samples = pd.read_csv(runs[3].samples, sep="\t")
    samples.loc[samples["sample"] == "all", "cells_kept"] = 4
    samples.to_csv(runs[3].samples, sep="\t", index=False)
    metrics = json.loads(runs[0].metrics.read_text())
    metrics["baseline"]["macro_f1"] = 0.1234
    runs[0].metrics.write_text(json.dumps(metrics))
    after = summary_table(runs)
    assert after.loc[1, "share_unknown"] == 0.3333 != before.loc[1, "share_unknown"]
    assert after.loc[3, "cells_kept"] == 4 != before.loc[3, "cells_kept"]
    assert after.loc[0, "baseline_macro_f1"] == 0.1234 != before.loc[0, "baseline_macro_f1"]
    unchanged = [
        c for c in COLUMNS if c not in ("share_unknown", "cells_kept", "baseline_macro_f1")
    ]
    pd.testing.assert_frame_equal(after[unchanged], before[unchanged])


def test_a_qc_file_without_an_all_row_is_refused_naming_it(runs):
    qc = pd.read_csv(runs[2].qc, sep="\t")
    qc[qc["sample"] != "all"].to_csv(runs[2].qc, sep="\t", index=False)
    with pytest.raises(AtlasmapInputError, match="all") as caught:
        summary_table(runs)
    assert str(runs[2].qc) in str(caught.value)


@pytest.mark.parametrize(
    ("which", "column"),
    [("qc", "gene_overlap"), ("qc", "mean_probability"), ("samples", "cells_loaded")],
)
def test_a_missing_column_is_refused_naming_the_file_and_the_column(runs, which, column):
    path = getattr(runs[1], which)
    pd.read_csv(path, sep="\t").drop(columns=column).to_csv(path, sep="\t", index=False)
    with pytest.raises(AtlasmapInputError) as caught:
        summary_table(runs)
    assert str(path) in str(caught.value)
    assert repr(column) in str(caught.value)


def test_a_metrics_file_without_the_baseline_is_refused_naming_it(runs):
    metrics = json.loads(runs[0].metrics.read_text())
    del metrics["baseline"]
    runs[0].metrics.write_text(json.dumps(metrics))
    with pytest.raises(AtlasmapInputError, match="baseline") as caught:
        summary_table(runs)
    assert str(runs[0].metrics) in str(caught.value)


def test_shares_of_each_run_sum_to_one_and_are_its_calls(runs):
    shares = label_shares(runs, "predicted_celltype")
    np.testing.assert_allclose(shares.sum(axis=1).to_numpy(), 1.0)
    assert list(shares.index) == run_labels(runs)
    for run, (_, row) in zip(runs, shares.iterrows(), strict=True):
        calls = pd.read_csv(run.predictions, sep="\t")["predicted_celltype"]
        expected = calls.value_counts(normalize=True)
        pd.testing.assert_series_equal(
            row[row > 0].sort_index(), expected.sort_index(), check_names=False
        )
    # Every label any run called is a column, zero where a run never called it.
    all_calls = set().union(
        *(set(pd.read_csv(r.predictions, sep="\t")["predicted_celltype"]) for r in runs)
    )
    assert set(shares.columns) == all_calls
    assert shares.columns[-1] == "Unknown"


def test_shares_at_a_coarser_level_read_that_level(runs):
    shares = label_shares(runs, "predicted_Level_1")
    level = pd.read_csv(runs[2].predictions, sep="\t")["predicted_Level_1"]
    assert set(shares.columns) == {"Immune", "Stromal", "Unknown"}
    assert shares.iloc[2]["Stromal"] == pytest.approx((level == "Stromal").mean())
    np.testing.assert_allclose(shares.sum(axis=1).to_numpy(), 1.0)
    with pytest.raises(AtlasmapInputError, match="predicted_Level_9") as caught:
        label_counts(runs, "predicted_Level_9")
    assert str(runs[0].predictions) in str(caught.value)


def test_run_labels_leave_out_the_reference_only_when_all_runs_share_it(runs):
    assert run_labels(runs) == [f"{r.query} · {r.mode}" for r in runs]
    moved = [*runs[:3], MappingRun(**{**runs[3].__dict__, "reference": "atlasB"})]
    assert run_labels(moved) == [f"{r.query} · {r.mode} · {r.reference}" for r in moved]
    with pytest.raises(AtlasmapInputError, match="twice"):
        run_labels([*runs, runs[0]])


def test_a_label_of_one_run_only_is_in_the_shared_palette_and_legend(runs):
    shares = label_shares(runs, "predicted_celltype")
    only_one = [label for label in shares.columns if (shares[label] > 0).sum() == 1]
    assert "Mast cell" in only_one
    palette = label_palette(shares.columns, {"B cell": "#123456"})
    fig = label_distribution_across(shares, palette, "calls")
    ax = fig.axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend == set(shares.columns)
    # Each bar segment has its label's colour, the same in every bar.
    colours = {}
    for container in ax.containers:
        label = container.get_label()
        faces = {tuple(np.round(p.get_facecolor(), 4)) for p in container.patches}
        assert len(faces) == 1
        colours[label] = faces.pop()
    for label in shares.columns:
        expected = tuple(np.round(matplotlib_rgba(palette[label]), 4))
        assert colours[label] == expected, label
    assert palette["Unknown"] == UNKNOWN_COLOUR
    assert palette["B cell"] == "#123456"
    # Each bar's segments together span exactly the axis (0 to 1), widths = shares.
    widths = np.array([[p.get_width() for p in c.patches] for c in ax.containers])
    np.testing.assert_allclose(widths.sum(axis=0), 1.0)
    np.testing.assert_allclose(widths.T, shares.to_numpy())


def matplotlib_rgba(colour):
    from matplotlib import colors

    return colors.to_rgba(colour)


def test_the_files_are_written_table_rounded_and_empty_where_no_metrics(runs, tmp_path):
    table_path = tmp_path / "out" / "summary.tsv"
    figure = [tmp_path / "out" / "summary.png", tmp_path / "out" / "summary.pdf"]
    metrics = json.loads(runs[0].metrics.read_text())
    metrics["mapping"]["accuracy"] = 0.812345678
    runs[0].metrics.write_text(json.dumps(metrics))
    returned = summarize_queries_files(
        runs,
        table=table_path,
        figure=figure,
        level=None,
        labels_key="celltype",
        colors={"T cell": "black"},
        dpi=80,
    )
    for path in figure:
        assert_valid_figure(path)
    text = table_path.read_text().splitlines()
    assert text[0].split("\t") == COLUMNS
    assert len(text) == 1 + len(runs)
    first = text[1].split("\t")
    assert first[COLUMNS.index("accuracy")] == "0.8123"
    for line in text[3:]:  # qb: no metrics.json
        fields = line.split("\t")
        assert fields[COLUMNS.index("accuracy") :] == ["", "", "", ""]
    reread = pd.read_csv(table_path, sep="\t")
    assert reread["cells_kept"].tolist() == returned["cells_kept"].tolist()
    assert not any(p.name.startswith(".") for p in table_path.parent.iterdir())  # no leftovers


def test_a_figure_with_many_runs_and_labels_is_drawn(tmp_path):
    """20 mappings over 40 labels (the readable limit), each label in some runs only."""
    rng = np.random.default_rng(0)
    labels = [f"type {i:02d}" for i in range(39)] + ["Unknown"]
    runs = []
    for i in range(20):
        calls = list(rng.choice(labels[i : i + 21], 60))
        runs.append(write_run(tmp_path, f"query{i:02d}", "surgery", calls=calls))
    shares = label_shares(runs, "predicted_celltype")
    assert shares.shape == (20, 40)
    np.testing.assert_allclose(shares.sum(axis=1).to_numpy(), 1.0)
    paths = [tmp_path / "many.png", tmp_path / "many.pdf"]
    summarize_queries_files(
        runs,
        table=tmp_path / "many.tsv",
        figure=paths,
        level="celltype",
        labels_key="celltype",
        colors=None,
        dpi=80,
    )
    for path in paths:
        assert_valid_figure(path)
    assert not math.isnan(pd.read_csv(tmp_path / "many.tsv", sep="\t")["gene_overlap"].iloc[0])


def test_runs_from_the_rule_params():
    run = MappingRun.from_mapping(
        {
            "query": "qa",
            "mode": "embed",
            "reference": "atlasA",
            "samples": "results/qa/query/samples.tsv",
            "qc": "results/qa/embed/qc.tsv",
            "predictions": "results/qa/embed/predictions.tsv",
            "metrics": None,
        }
    )
    assert run.metrics is None
    assert str(run.qc) == "results/qa/embed/qc.tsv"
    with pytest.raises(AtlasmapInputError, match="predictions"):
        MappingRun.from_mapping({"query": "qa", "mode": "embed", "reference": "a"})


def test_the_palette_counts_the_atlas_labels_as_each_mappings_figures_do(
    runs, tmp_path, monkeypatch
):
    """A label keeps the colour of the mappings' own figures, whose palette counts
    every atlas label: here "Acinar cell", never called, comes first and shifts it."""
    import anndata as ad
    from atlasmap import plots

    atlas_labels = ["Acinar cell", "B cell", "Macrophage", "Mast cell", "T cell"]
    atlas = tmp_path / "embedded_atlas.h5ad"
    ad.AnnData(obs=pd.DataFrame({"celltype": atlas_labels}, index=list("abcde"))).write_h5ad(atlas)
    drawn = {}

    def record(shares, palette, title, **kwargs):
        drawn["palette"] = palette
        return real(shares, palette, title, **kwargs)

    real = plots.label_distribution_across
    monkeypatch.setattr(plots, "label_distribution_across", record)
    summarize_queries_files(
        runs,
        table=tmp_path / "summary.tsv",
        figure=[tmp_path / "summary.png"],
        level=None,
        labels_key="celltype",
        dpi=60,
        atlases=[atlas],
    )
    called = set(label_shares(runs, "predicted_celltype").columns)
    assert "Acinar cell" not in called
    expected = plots.label_palette(called | set(atlas_labels))
    assert {label: drawn["palette"][label] for label in called} == {
        label: expected[label] for label in called
    }
    assert drawn["palette"]["B cell"] != plots.label_palette(called)["B cell"]
