"""The embedded demo study: deterministic, shaped like the real deposit, not trivial."""

import re

import numpy as np
import pandas as pd
import scanpy as sc
from atlasmap.demo import (
    LEVELS,
    QUERY_ONLY_TYPES,
    deposit_names,
    make_demo_study,
    write_demo_study,
)
from conftest import tree_digest


def test_same_seed_same_study_other_seed_other_study(small_study):
    again = make_demo_study(seed=7, n_reference_cells=1200, n_query_cells=400, n_genes=400)
    other = make_demo_study(seed=8, n_reference_cells=1200, n_query_cells=400, n_genes=400)
    assert (small_study.reference.X != again.reference.X).nnz == 0
    assert (small_study.query.X != again.query.X).nnz == 0
    pd.testing.assert_frame_equal(small_study.query.obs, again.query.obs)
    assert small_study.reference.X.shape == other.reference.X.shape
    assert (small_study.reference.X != other.reference.X).nnz > 0


def test_written_files_are_byte_identical_across_runs(tmp_path, small_study):
    for run in ("a", "b"):
        write_demo_study(
            small_study,
            tmp_path / run / "atlas.h5ad",
            {k: tmp_path / run / v for k, v in deposit_names("DEMO_sc").items()},
        )
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    deposit_files = [name for name in a if name != "atlas.h5ad"]
    assert len(deposit_files) == 4
    assert {n: a[n] for n in deposit_files} == {n: b[n] for n in deposit_files}


def test_labels_form_a_hierarchy(small_study):
    obs = small_study.reference.obs
    for coarse, fine in zip(LEVELS, LEVELS[1:], strict=False):
        parents = obs.groupby(fine, observed=True)[coarse].nunique()
        assert (parents == 1).all(), f"{fine} labels with several {coarse} parents"
        assert obs[fine].nunique() >= obs[coarse].nunique()
    assert obs["Level_1"].nunique() == 3
    assert obs["Level_4"].nunique() >= 12


def test_reference_is_raw_counts_from_several_donors(small_study):
    ref = small_study.reference
    data = ref.X.data
    assert np.all(data >= 0) and np.all(data == np.round(data))
    assert (ref.layers["counts"] != ref.X).nnz == 0
    assert ref.obs["Sample_ID"].nunique() == 6
    # Sparse like droplet data: most entries are zero.
    assert ref.X.nnz / np.prod(ref.shape) < 0.6


def test_genes_have_symbols_and_ensembl_ids(small_study):
    for adata in (small_study.reference, small_study.query):
        assert adata.var["gene_ids"].is_unique
        assert adata.var["gene_symbols"].is_unique
        assert all(re.fullmatch(r"ENSG\d{11}", g) for g in adata.var["gene_ids"])
    assert {"EPCAM", "PTPRC", "COL1A1", "MT-CO1"} <= set(small_study.reference.var_names)


def test_query_misses_some_reference_genes_and_adds_its_own(small_study):
    ref_ids = set(small_study.reference.var["gene_ids"])
    query_ids = set(small_study.query.var["gene_ids"])
    missing = ref_ids - query_ids
    assert 0.05 < len(missing) / len(ref_ids) < 0.12
    assert len(query_ids - ref_ids) > 0


def test_query_metadata_is_shaped_like_the_geo_deposit(small_study):
    meta = small_study.query.obs
    assert {"patients", "tissue", "author_cell_type"} <= set(meta.columns)
    assert sorted(meta["patients"].unique()) == ["PA01", "PA02", "PA03", "PA04"]
    assert meta.index.is_unique
    assert all(re.fullmatch(r"[ACGT]{16}-\d+", b) for b in meta.index)
    atlas_types = set(small_study.reference.obs["Level_4"])
    # Every type but one is in the atlas; the query-only one is what Unknown must catch.
    assert set(meta["author_cell_type"]) - atlas_types == set(QUERY_ONLY_TYPES)
    assert 0.005 < meta["author_cell_type"].isin(QUERY_ONLY_TYPES).mean() < 0.15


def test_mapping_is_not_trivial(small_study):
    """A nearest-centroid classifier on log counts is good but far from perfect
    on the query: its batch effect and close sister types make mapping a real task."""
    ref, query = small_study.reference.copy(), small_study.query.copy()
    shared = ref.var["gene_ids"].isin(query.var["gene_ids"]).to_numpy()
    ref = ref[:, shared].copy()
    query = query[:, query.var_names.isin(ref.var["gene_ids"])].copy()
    query = query[:, ref.var["gene_ids"].to_numpy()].copy()
    for adata in (ref, query):
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    labels = ref.obs["Level_4"].to_numpy()
    types = np.unique(labels)
    centroids = np.stack([np.asarray(ref.X[labels == t].mean(axis=0)).ravel() for t in types])
    x = query.X.toarray()
    x_c = x - x.mean(axis=1, keepdims=True)
    c_c = centroids - centroids.mean(axis=1, keepdims=True)
    corr = (x_c @ c_c.T) / np.outer(np.linalg.norm(x_c, axis=1), np.linalg.norm(c_c, axis=1))
    predicted = types[corr.argmax(axis=1)]
    accuracy = np.mean(predicted == query.obs["author_cell_type"].to_numpy())
    assert 0.4 < accuracy < 0.97, accuracy
