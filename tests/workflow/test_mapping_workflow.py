"""The demo end to end through mapping, on a small config, with the real Snakemake."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from atlasmap.plots import MAPPING_FIGURES
from conftest import assert_valid_figure
from test_query_stages import snakemake

pytestmark = pytest.mark.workflow


@pytest.mark.parametrize("mode", ["surgery", "embed"])
def test_each_mode_delivers_the_contract(small_run, mode):
    out = small_run / "results" / "demo" / mode
    subset = ad.read_h5ad(small_run / "results" / "demo" / "query" / "subset.h5ad")
    mapped = ad.read_h5ad(out / "mapped.h5ad")
    assert set(mapped.obs["source"]) == {"atlas", "query"}
    query = mapped[mapped.obs["source"] == "query"]
    assert sorted(query.obs["barcode"]) == sorted(subset.obs_names)
    for column in (
        "tissue",
        "Sample_ID",
        "author_cell_type",
        "Level_1",
        "predicted_celltype",
        "prediction_probability",
        "prediction_uncertainty",
    ):
        assert column in mapped.obs, column
    assert mapped.obsm["X_scANVI_emb"].shape[0] == mapped.n_obs

    predictions = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(predictions.columns[:4]) == [
        "barcode",
        "predicted_celltype",
        "prediction_probability",
        "prediction_uncertainty",
    ]
    assert sorted(predictions["barcode"]) == sorted(subset.obs_names)
    assert {"tissue", "Sample_ID", "author_cell_type", "predicted_Level_1"} <= set(
        predictions.columns
    )

    assert {"candidate_celltype", "novelty_score", "unknown_reason"} <= set(predictions.columns)
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc["sample"]) == ["PA01", "PA02", "all"]
    assert {"share_unknown", "share_unknown_novelty", "novelty_median", "novelty_q99"} <= set(qc)
    calls = json.loads((out / "calls.json").read_text())
    assert calls["method"] == "ensemble" and calls["novelty_cutoff"] > 0
    # Each member of the ensemble is kept beside the call, and the fit says what it saw.
    members = ["knn_celltype", "knn_probability", "expression_celltype", "expression_probability"]
    assert set(members) <= set(predictions.columns) and set(members) <= set(mapped.obs)
    assert set(calls["held_out_member_accuracy"]) >= {"knn", "expression", "classifier"}
    assert calls["expression_genes"] > 0 and calls["held_out_caveats"]
    # Trained here, the reference model's folder holds the folds' label-blind latents.
    assert calls["held_out_latent"] == "fold models"

    metrics = json.loads((out / "metrics.json").read_text())
    for side in ("mapping", "baseline"):
        assert 0 <= metrics[side]["accuracy"] <= 1
        assert {"macro_f1", "recall", "share_unknown"} <= set(metrics[side])
    assert metrics["mapping"]["cells"] == len(predictions)
    assert 0 <= metrics["mapping"]["ece"] <= 1


def test_the_cell_type_the_atlas_lacks_is_called_unknown(small_run):
    """The demo query holds Schwann cells, which the atlas lacks: the calls say Unknown."""
    for mode in ("surgery", "embed"):
        table = pd.read_csv(small_run / "results" / "demo" / mode / "predictions.tsv", sep="\t")
        schwann = table["author_cell_type"] == "Schwann cell"
        assert schwann.sum() >= 5
        unknown = table["predicted_celltype"] == "Unknown"
        novel = table["unknown_reason"] == "novelty"
        assert unknown[schwann].mean() >= 0.7, (mode, unknown[schwann].mean())
        # This small model is weak (most Unknowns among the seen types are for low
        # probability, which calibration makes honest); few seen cells look novel.
        assert novel[~schwann].mean() <= 0.1, (mode, novel[~schwann].mean())
        assert unknown[schwann].mean() >= 2 * unknown[~schwann].mean()


def test_training_progress_is_in_the_log(small_run):
    log = (small_run / "logs" / "train_reference" / "default.log").read_text()
    assert "scVI epoch 15/15" in log or "scVI epoch" in log
    assert "scANVI epoch" in log
    surgery = (small_run / "logs" / "map_query" / "demo_surgery.log").read_text()
    assert "surgery epoch 4/4" in surgery


FIGURES = [*MAPPING_FIGURES, "confusion_matrix"]


def test_every_figure_exists_for_both_modes_and_differs_between_them(small_run):
    for name in FIGURES:
        files = {}
        for mode in ("surgery", "embed"):
            for ext in ("png", "pdf"):
                path = small_run / "results" / "demo" / mode / "plots" / f"{name}.{ext}"
                assert_valid_figure(path)
            files[mode] = (
                small_run / "results" / "demo" / mode / "plots" / f"{name}.png"
            ).read_bytes()
        assert files["surgery"] != files["embed"], f"{name} is the same for both modes"
    # Not only the titles: surgery moved the query cells, so the embeddings differ.
    latent = {
        mode: ad.read_h5ad(small_run / "results" / "demo" / mode / "mapped.h5ad").obsm[
            "X_scANVI_emb"
        ]
        for mode in ("surgery", "embed")
    }
    assert np.abs(latent["surgery"] - latent["embed"]).max() > 1e-3
    compare = small_run / "results" / "demo" / "compare"
    for name in ("umap_surgery_vs_embed", "agreement_heatmap"):
        for ext in ("png", "pdf"):
            assert_valid_figure(compare / f"{name}.{ext}")
    summary = json.loads((compare / "agreement.json").read_text())
    assert 0 <= summary["agreement"] <= 1 and summary["query_cells"] > 0


def test_mapped_h5ad_holds_the_umap(small_run):
    mapped = ad.read_h5ad(small_run / "results" / "demo" / "embed" / "mapped.h5ad", backed="r")
    assert mapped.obsm["X_umap"].shape == (mapped.n_obs, 2)
    assert "connectivities" in mapped.obsp
    assert mapped.uns["neighbors"]["params"]["n_neighbors"] == 15


def test_the_report_builds_with_every_figure(small_run):
    snakemake(small_run, "--configfile", "config/small.yaml", "--report", "report.html")
    html = (small_run / "report.html").read_text()
    for name in [
        *FIGURES,
        "umap_surgery_vs_embed",
        "agreement_heatmap",
        "qc.tsv",
        "metrics.json",
        "summary.tsv",
        "summary_label_distribution.png",
    ]:
        assert name in html, name


def test_collaborators_can_read_every_output_and_log(small_run):
    """Outputs are written beside their final name, then moved into place; they
    must get the mode any new file gets here (the umask's), not the private 0600
    of a temporary file, or a project's group cannot read the results."""
    from atlasmap.io import current_umask

    expected = 0o666 & ~current_umask()
    modes = {
        str(path.relative_to(small_run)): oct(path.stat().st_mode & 0o777)
        for folder in ("results", "resources", "logs")
        for path in (small_run / folder).rglob("*")
        if path.is_file()
    }
    assert any(name.endswith("mapped.h5ad") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != oct(expected)} == {}


def test_the_h5ad_query_is_read_from_its_counts_layer_as_the_deposit_is(small_run):
    """The demo's two queries: patients PA01-PA02 from the 10x deposit, PA03-PA04 from
    an h5ad whose X is log-normalised (its raw counts in a layer): both loaded into the
    same contract, the counts the deposit's."""
    deposit = ad.read_h5ad(small_run / "results" / "demo" / "query" / "loaded.h5ad")
    h5ad = ad.read_h5ad(small_run / "results" / "demo_h5ad" / "query" / "loaded.h5ad")
    assert list(h5ad.obs_names) == list(deposit.obs_names)
    assert list(h5ad.var["gene_ids"]) == list(deposit.var["gene_ids"])
    assert (h5ad.X != deposit.X).nnz == 0
    assert {"patients", "Sample_ID", "author_cell_type"} <= set(h5ad.obs)
    log = (small_run / "logs" / "load_query" / "demo_h5ad.log").read_text()
    assert "format h5ad" in log and "counts" in log
    qc = pd.read_csv(small_run / "results" / "demo_h5ad" / "surgery" / "qc.tsv", sep="\t")
    assert list(qc["sample"]) == ["PA03", "PA04", "all"]


def test_the_summary_has_every_query_and_mode_with_the_numbers_of_their_files(small_run):
    summary = pd.read_csv(small_run / "results" / "summary.tsv", sep="\t")
    assert [(row.query, row.mode) for row in summary.itertuples()] == [
        (query, mode) for query in ("demo", "demo_h5ad") for mode in ("surgery", "embed")
    ]
    assert set(summary["reference"]) == {"default"}
    for row in summary.itertuples():
        out = small_run / "results" / row.query / row.mode
        metrics = json.loads((out / "metrics.json").read_text())
        assert row.accuracy == pytest.approx(metrics["mapping"]["accuracy"], abs=1e-4)
        assert row.baseline_accuracy == pytest.approx(metrics["baseline"]["accuracy"], abs=1e-4)
        qc = pd.read_csv(out / "qc.tsv", sep="\t").set_index("sample").loc["all"]
        assert row.share_unknown == pytest.approx(qc["share_unknown"], abs=1e-4)
        assert row.cells_kept == qc["cells"]
    assert_valid_figure(small_run / "results" / "summary_label_distribution.png")
    assert_valid_figure(small_run / "results" / "summary_label_distribution.pdf")
