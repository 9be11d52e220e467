"""The small demo mapped in shards by sample (mapping.scatter) against the same demo mapped
whole: the same files, the same frozen embedding and calls, and surgery's calls nearly so."""

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import run_snakemake, write_small_config

pytestmark = pytest.mark.workflow

# The small demo's queries hold about 150 cells of each of two samples: one shard each.
SCATTER = {"by": "sample", "max_cells": 200}
MODES = ("surgery", "embed")


def scatter_by_sample(config: dict) -> None:
    config["mapping"]["scatter"] = dict(SCATTER)


@pytest.fixture(scope="module")
def scattered_run(small_run, tmp_path_factory):
    """small_run's folder, run again scattered: the reference's work is reused, every
    mapping is made again, in shards."""
    workdir = tmp_path_factory.mktemp("scattered") / "run"
    shutil.copytree(small_run, workdir, symlinks=True)
    config = write_small_config(workdir, "scattered.yaml", scatter_by_sample)
    # What a user types to map existing results again in shards (docs/cluster.md).
    result = run_snakemake(workdir, "--configfile", config, "--forcerun", "plan_shards")
    return workdir, result.stdout + result.stderr


def read_predictions(run, mode, query="demo"):
    return pd.read_csv(run / "results" / query / mode / "predictions.tsv", sep="\t")


def test_the_split_is_logged_and_each_shard_ran_as_its_own_jobs(scattered_run):
    run, log = scattered_run
    plan = pd.read_csv(run / "results/demo/query/shards.tsv", sep="\t")
    assert list(plan["sample"]) == ["PA01", "PA02"] and plan["shard"].nunique() == 2
    assert "in 2 shards of at most 200 cells" in (run / "logs/plan_shards/demo.log").read_text()
    for rule in ("map_query_shard", "call_celltypes_shard", "project_query_shard"):
        for mode in MODES:
            for shard in plan["shard"]:
                assert (run / "logs" / rule / f"demo_{mode}_{shard}.log").exists(), (rule, shard)
    # Mapped whole by no job: the gathers wrote the query's files; the reference's
    # work was reused.
    assert "rule map_query:" not in log and "rule gather_mapping:" in log
    assert "rule train_reference:" not in log and "rule embed_reference:" not in log


def test_frozen_embedding_and_calls_equal_the_unscattered_run(small_run, scattered_run):
    run, _ = scattered_run
    for query in ("demo", "demo_h5ad"):
        whole = ad.read_h5ad(small_run / "results" / query / "embed" / "embedded.h5ad")
        gathered = ad.read_h5ad(run / "results" / query / "embed" / "embedded.h5ad")
        assert list(gathered.obs_names) == list(whole.obs_names)
        for key in ("X_scANVI_emb", "scanvi_probabilities"):
            np.testing.assert_allclose(gathered.obsm[key], whole.obsm[key], rtol=1e-5, atol=1e-6)
        assert (gathered.X != whole.X).nnz == 0
        pd.testing.assert_frame_equal(gathered.obs, whole.obs)
        # The latents differ in the last float bits (matrix products of other shapes),
        # which the calibration's steep steps can grow to a few 1e-6.
        pd.testing.assert_frame_equal(
            read_predictions(run, "embed", query),
            read_predictions(small_run, "embed", query),
            rtol=1e-4,
            atol=1e-5,
        )
        for name in ("qc.tsv", "mapping_qc.tsv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(run / "results" / query / "embed" / name, sep="\t"),
                pd.read_csv(small_run / "results" / query / "embed" / name, sep="\t"),
            )
        calls = [
            json.loads((r / "results" / query / "embed" / "calls.json").read_text())
            for r in (run, small_run)
        ]
        assert calls[0] == calls[1]


def test_surgery_by_sample_agrees_with_the_unscattered_calls(small_run, scattered_run):
    run, _ = scattered_run
    for query in ("demo", "demo_h5ad"):
        whole = read_predictions(small_run, "surgery", query)
        gathered = read_predictions(run, "surgery", query)
        assert list(gathered["barcode"]) == list(whole["barcode"])
        agree = (gathered["predicted_celltype"] == whole["predicted_celltype"]).mean()
        assert agree >= 0.99, (query, agree)


def test_the_delivered_atlas_is_the_same_contract(small_run, scattered_run):
    run, _ = scattered_run
    for mode in MODES:
        whole = ad.read_h5ad(small_run / "results/demo" / mode / "mapped.h5ad")
        gathered = ad.read_h5ad(run / "results/demo" / mode / "mapped.h5ad")
        assert list(gathered.obs_names) == list(whole.obs_names)
        assert list(gathered.obs.columns) == list(whole.obs.columns)
        assert set(gathered.obsm) == set(whole.obsm) and set(gathered.obsp) == set(whole.obsp)
        assert gathered.layers["counts"].nnz == whole.layers["counts"].nnz
        # Atlas cells keep the reference layout's places; query cells are projected.
        atlas = (whole.obs["source"] == "atlas").to_numpy()
        np.testing.assert_array_equal(gathered.obsm["X_umap"][atlas], whole.obsm["X_umap"][atlas])
        assert np.isfinite(gathered.obsm["X_umap"]).all()
    # A cell's projection is optimised beside the other cells of its job, whose random
    # negative samples it shares: near the whole query's place, not on it.
    embed = [ad.read_h5ad(r / "results/demo/embed/mapped.h5ad") for r in (small_run, run)]
    query = (embed[0].obs["source"] == "query").to_numpy()
    moved = np.linalg.norm(embed[1].obsm["X_umap"][query] - embed[0].obsm["X_umap"][query], axis=1)
    extent = np.ptp(embed[0].obsm["X_umap"][~query], axis=0).max()
    assert np.median(moved) < 0.02 * extent and moved.max() < 0.15 * extent, (moved, extent)
