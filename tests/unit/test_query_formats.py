"""load_query reads every query format into the one loaded.h5ad contract.

The same demo query, written as a GEO 10x deposit, a Cell Ranger outs folder (its
matrix folder and its HDF5 file), a 10x HDF5 beside a metadata table and an h5ad as
a notebook user holds it, loads to the same counts, cells, metadata and genes. What
is not raw counts, not the format it claims, or lacks the sample column asked for is
refused with a message naming the file (and the layer or column) at fault.
"""

from __future__ import annotations

import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from atlasmap.demo import write_10x_deposit, write_10x_h5, write_query_h5ad
from atlasmap.errors import AtlasmapInputError
from atlasmap.io import read_h5ad, write_h5ad
from atlasmap.query import DEPOSIT_FILES, load_query, load_query_files
from conftest import tree_digest, write_deposit

RENAME = {"patients": "Sample_ID"}
MTX_ROLES = ("matrix", "features", "barcodes")


def with_antibody_features(query: ad.AnnData, n: int = 3) -> ad.AnnData:
    """``query`` with ``n`` Antibody Capture features added, as Cell Ranger writes a
    CITE-seq run: the loader must drop them."""
    rng = np.random.default_rng(0)
    extra = sp.csr_matrix(rng.poisson(5.0, size=(query.n_obs, n)).astype(np.float32))
    var = pd.DataFrame(
        {
            "gene_symbols": [f"CD{i}_TotalSeqB" for i in range(n)],
            "gene_ids": [f"CD{i}_TotalSeqB" for i in range(n)],
            "feature_types": "Antibody Capture",
        },
        index=[f"CD{i}_TotalSeqB" for i in range(n)],
    )
    return ad.AnnData(
        X=sp.hstack([query.X, extra]).tocsr(),
        obs=query.obs.copy(),
        var=pd.concat([query.var, var]),
    )


def write_metadata(obs: pd.DataFrame, path):
    """A metadata table, tab-separated where the name says so (the loader sniffs it)."""
    obs.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def write_as(kind: str, query: ad.AnnData, tmp_path) -> dict:
    """Write ``query`` in the layout ``kind``; the load_query arguments that read it."""
    if kind == "geo_deposit":
        deposit = write_deposit(query, tmp_path / "deposit")
        return {
            "files": {role: deposit / DEPOSIT_FILES[role] for role in MTX_ROLES},
            "format": "10x_mtx",
            "metadata_path": deposit / DEPOSIT_FILES["metadata"],
        }
    if kind == "cellranger_outs_folder":
        folder = tmp_path / "sample1" / "outs" / "filtered_feature_bc_matrix"
        paths = {role: folder / DEPOSIT_FILES[role] for role in MTX_ROLES}
        paths["metadata"] = tmp_path / "cells.csv.gz"
        write_10x_deposit(with_antibody_features(query), paths)
        return {
            "files": {role: paths[role] for role in MTX_ROLES},
            "format": "10x_mtx",
            "metadata_path": paths["metadata"],
        }
    if kind == "h5ad_counts_layer":
        path = tmp_path / "query.h5ad"
        write_query_h5ad(query, path)
        return {"files": {"h5ad": path}, "format": "h5ad", "counts_layer": "counts"}
    if kind == "h5ad_counts_in_x":
        # Raw integer counts in X (CSC, as some tools leave them), antibody features too.
        cite = with_antibody_features(query)
        cite.X = sp.csc_matrix(cite.X).astype(np.int32)
        path = tmp_path / "cite.h5ad"
        path.parent.mkdir(parents=True)
        cite.write_h5ad(path)
        return {"files": {"h5ad": path}, "format": "h5ad"}
    if kind == "10x_h5_and_metadata":
        path = tmp_path / "GSM0000001_filtered_feature_bc_matrix.h5"
        write_10x_h5(query, path)
        return {
            "files": {"h5": path},
            "format": "10x_h5",
            "metadata_path": write_metadata(query.obs, tmp_path / "GSM0000001_metadata.csv"),
        }
    if kind == "cellranger_outs_h5":
        path = tmp_path / "sample1" / "outs" / "filtered_feature_bc_matrix.h5"
        path.parent.mkdir(parents=True)
        write_10x_h5(with_antibody_features(query), path)
        return {
            "files": {"h5": path},
            "format": "10x_h5",
            "metadata_path": write_metadata(query.obs, tmp_path / "cells.tsv"),
        }
    raise ValueError(kind)


def assert_same_query(adata: ad.AnnData, query: ad.AnnData, rename=RENAME) -> None:
    """``adata`` holds exactly ``query``'s counts, cells, metadata and genes (contract)."""
    # Counts: float32 CSR, exact, held once.
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert adata.layers["counts"] is adata.X
    assert adata.X.shape == query.X.shape
    counts = adata.X
    assert (counts != sp.csr_matrix(query.X)).nnz == 0
    # Cells and every metadata column, renamed.
    assert list(adata.obs_names) == list(query.obs_names)
    for column in query.obs.columns:
        name = rename.get(column, column)
        assert name in adata.obs, f"{name} missing; obs has {list(adata.obs.columns)}"
        expected, found = query.obs[column], adata.obs[name]
        if pd.api.types.is_numeric_dtype(expected):
            np.testing.assert_allclose(np.asarray(found, dtype=float), expected.to_numpy(float))
        else:
            assert list(found.astype(str)) == list(expected.astype(str)), name
    # Genes: indexed by their symbols (made unique), ids and symbols kept.
    assert list(adata.var_names) == list(
        ad.utils.make_index_unique(pd.Index(query.var["gene_symbols"]))
    )
    assert list(adata.var["gene_ids"]) == list(query.var["gene_ids"])
    assert list(adata.var["gene_symbols"]) == list(query.var["gene_symbols"])
    assert set(adata.var["feature_types"]) == {"Gene Expression"}


@pytest.mark.parametrize(
    "kind",
    [
        "geo_deposit",
        "cellranger_outs_folder",
        "h5ad_counts_layer",
        "h5ad_counts_in_x",
        "10x_h5_and_metadata",
        "cellranger_outs_h5",
    ],
)
def test_every_format_loads_to_the_same_query(kind, tmp_path, small_study, caplog):
    query = small_study.query
    arguments = write_as(kind, query, tmp_path / "in")
    out = tmp_path / "results" / "loaded.h5ad"
    with caplog.at_level(logging.INFO, logger="atlasmap.query"):
        adata = load_query_files(**arguments, output=out, rename=RENAME)
    written = read_h5ad(out)
    if adata.X is None:
        # An h5ad's CSR counts stream from file to file: the annotations are returned.
        assert kind == "h5ad_counts_layer"
        pd.testing.assert_frame_equal(adata.obs, written.obs)
        pd.testing.assert_frame_equal(adata.var, written.var)
        adata = written
    assert_same_query(adata, query)
    # The batch column is the renamed sample column, a string categorical.
    assert isinstance(adata.obs["Sample_ID"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["Sample_ID"]) == list(query.obs["patients"].astype(str))
    # Nothing but the counts is kept (an h5ad's log-normalised X and its uns dropped).
    assert list(adata.layers) == ["counts"] and not adata.obsm and adata.raw is None
    # What was read, from where, and how big, is in the log.
    source = next(iter(arguments["files"].values()))
    assert f"read {arguments['format']} {source}: {query.n_obs} cells x {query.n_vars} genes" in (
        caplog.text
    )
    # The written file is the same query (its counts layer a link to X, read as X itself).
    assert_same_query(written, query)


def test_write_10x_h5_is_read_by_scanpy(tmp_path, small_study):
    import scanpy as sc

    query = with_antibody_features(small_study.query)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(query, path)
    read = sc.read_10x_h5(path, gex_only=False)
    assert (sp.csr_matrix(read.X) != query.X).nnz == 0
    assert list(read.obs_names) == list(query.obs_names)
    assert list(read.var["gene_ids"]) == list(query.var["gene_ids"])
    assert list(read.var["feature_types"]) == list(query.var["feature_types"])
    assert list(read.var_names) == list(query.var["gene_symbols"])


def test_an_h5ad_with_cellxgene_genes_is_indexed_by_symbol(tmp_path, small_study):
    """Raw counts in a dense integer X, genes indexed by Ensembl id with their symbols
    in feature_name, extra layers, embeddings and uns: the counts alone are kept, as
    float32 CSR, genes by symbol, ids in gene_ids."""
    query = small_study.query
    var = pd.DataFrame(
        {"feature_name": pd.Categorical(query.var["gene_symbols"])},
        index=query.var["gene_ids"].to_numpy(),
    )
    dense = query.X.toarray().astype(np.int64)
    path = tmp_path / "cellxgene.h5ad"
    ad.AnnData(
        X=dense,
        obs=query.obs.copy(),
        var=var,
        layers={"normalised": np.log1p(dense.astype(np.float32))},
        obsm={"X_umap": np.zeros((query.n_obs, 2))},
        uns={"schema_version": "5.0.0"},
    ).write_h5ad(path)
    adata = load_query({"h5ad": path}, "h5ad", rename=RENAME)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != query.X).nnz == 0
    assert list(adata.var_names) == list(query.var["gene_symbols"])
    assert list(adata.var["gene_ids"]) == list(query.var["gene_ids"])
    assert list(adata.var["gene_symbols"]) == list(query.var["gene_symbols"])
    assert list(adata.layers) == ["counts"] and not adata.obsm and not adata.uns
    assert list(adata.obs["tissue"].astype(str)) == list(query.obs["tissue"].astype(str))


def test_an_h5ad_with_a_metadata_table_takes_the_tables_columns(tmp_path, small_study):
    """The h5ad's obs is kept; a metadata table is joined on barcodes, winning clashes."""
    query = small_study.query
    path = tmp_path / "query.h5ad"
    write_query_h5ad(query, path)
    table = query.obs[["patients"]].copy()
    table["patients"] = "P_" + table["patients"].astype(str)
    table["annotation"] = "from the table"
    adata = load_query(
        {"h5ad": path},
        "h5ad",
        metadata_path=write_metadata(table, tmp_path / "meta.csv"),
        counts_layer="counts",
    )
    assert list(adata.obs["patients"].astype(str)) == list(table["patients"])
    assert set(adata.obs["annotation"]) == {"from the table"}
    assert list(adata.obs["tissue"].astype(str)) == list(query.obs["tissue"].astype(str))


# --- What is not raw counts ---------------------------------------------------------


def assert_refused(tmp_path, arguments: dict, *patterns: str) -> str:
    """load_query_files refuses, naming ``patterns``; no output, inputs untouched."""
    out = tmp_path / "results" / "loaded.h5ad"
    inputs = tmp_path / "in"
    before = tree_digest(inputs)
    with pytest.raises(AtlasmapInputError) as err:
        load_query_files(**arguments, output=out)
    message = str(err.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in: {message}"
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert tree_digest(inputs) == before
    return message


def test_a_log_normalised_x_is_refused_naming_the_file_x_and_the_layers(tmp_path, small_study):
    path = tmp_path / "in" / "query.h5ad"
    write_query_h5ad(small_study.query, path)
    message = assert_refused(
        tmp_path,
        {"files": {"h5ad": path}, "format": "h5ad"},
        str(path),
        "non-integer",
        "'counts'",
        "counts_layer",
    )
    assert re.search(r"\bX\b", message), message


def test_a_scaled_layer_is_refused_naming_the_layer(tmp_path, small_study):
    import scanpy as sc

    query = small_study.query
    adata = ad.AnnData(X=query.X.copy(), obs=query.obs.copy(), var=query.var.copy())
    scaled = adata.copy()
    sc.pp.normalize_total(scaled)
    sc.pp.log1p(scaled)
    sc.pp.scale(scaled)
    adata.layers["scaled"] = scaled.X
    path = tmp_path / "in" / "scaled.h5ad"
    path.parent.mkdir()
    adata.write_h5ad(path)
    assert_refused(
        tmp_path,
        {"files": {"h5ad": path}, "format": "h5ad", "counts_layer": "scaled"},
        str(path),
        "layer 'scaled'",
        "negative",
        "counts_layer",
    )


def test_an_unknown_counts_layer_is_refused_naming_it_and_the_layers(tmp_path, small_study):
    path = tmp_path / "in" / "query.h5ad"
    write_query_h5ad(small_study.query, path)
    assert_refused(
        tmp_path,
        {"files": {"h5ad": path}, "format": "h5ad", "counts_layer": "raw_counts"},
        str(path),
        "'raw_counts'",
        "'counts'",
    )


# --- Files that are not what the format says --------------------------------------


def h5ad_renamed(tmp_path, small_study):
    path = tmp_path / "in" / "filtered_feature_bc_matrix.h5"
    write_h5ad(small_study.query, path)
    return path, ["not a 10x Genomics HDF5 matrix", "format: h5ad"]


def garbage(tmp_path, small_study):
    path = tmp_path / "in" / "filtered_feature_bc_matrix.h5"
    path.parent.mkdir(parents=True)
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path, ["not an HDF5 file"]


def truncated(tmp_path, small_study):
    path = tmp_path / "in" / "filtered_feature_bc_matrix.h5"
    write_10x_h5(small_study.query, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, []


def missing_dataset(tmp_path, small_study):
    import h5py

    path = tmp_path / "in" / "filtered_feature_bc_matrix.h5"
    write_10x_h5(small_study.query, path)
    with h5py.File(path, "a") as f:
        del f["matrix/indptr"]
    return path, ["cannot be read", "missing one or more required datasets"]


@pytest.mark.parametrize("make", [h5ad_renamed, garbage, truncated, missing_dataset])
def test_a_10x_h5_that_is_not_one_is_a_clear_error(make, tmp_path, small_study):
    path, patterns = make(tmp_path, small_study)
    assert_refused(tmp_path, {"files": {"h5": path}, "format": "10x_h5"}, str(path), *patterns)


def test_missing_roles_and_unknown_formats_are_named(tmp_path, deposit):
    files = {role: deposit / DEPOSIT_FILES[role] for role in ("matrix", "features")}
    with pytest.raises(AtlasmapInputError, match=r"missing \['barcodes'\]"):
        load_query(files, "10x_mtx")
    with pytest.raises(AtlasmapInputError, match="'loom' unknown"):
        load_query(files, "loom")
    with pytest.raises(AtlasmapInputError, match="no such file"):
        load_query({"h5": tmp_path / "absent.h5"}, "10x_h5")


# --- The sample (batch) column ----------------------------------------------------


def load_deposit(deposit, **options):
    return load_query(
        {role: deposit / DEPOSIT_FILES[role] for role in MTX_ROLES},
        "10x_mtx",
        metadata_path=deposit / DEPOSIT_FILES["metadata"],
        **options,
    )


def test_a_query_without_sample_column_is_one_sample(deposit, small_study, caplog):
    with caplog.at_level(logging.INFO, logger="atlasmap.query"):
        adata = load_deposit(deposit, batch_key="Sample_ID", sample_name="GSE000_demo")
    batch = adata.obs["Sample_ID"]
    assert isinstance(batch.dtype, pd.CategoricalDtype)
    assert list(batch.cat.categories) == ["GSE000_demo"]
    assert (batch == "GSE000_demo").all() and len(batch) == small_study.query.n_obs
    assert "one sample" in caplog.text and "GSE000_demo" in caplog.text


def test_the_batch_key_when_present_is_the_sample(deposit, small_study):
    adata = load_deposit(deposit, rename=RENAME, sample_name="unused")
    assert "unused" not in set(adata.obs["Sample_ID"])
    assert list(adata.obs["Sample_ID"]) == list(small_study.query.obs["patients"].astype(str))


def test_a_sample_column_is_copied_to_the_batch_key(deposit, small_study):
    adata = load_deposit(deposit, sample_column="patients", batch_key="donor_batch")
    patients = list(small_study.query.obs["patients"].astype(str))
    assert list(adata.obs["donor_batch"]) == patients
    assert isinstance(adata.obs["donor_batch"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["patients"].astype(str)) == patients  # the user's column kept


def test_an_absent_sample_column_is_named_with_the_file(deposit):
    with pytest.raises(AtlasmapInputError) as err:
        load_deposit(deposit, sample_column="donor")
    message = str(err.value)
    for pattern in (
        "'donor'",
        str(deposit / DEPOSIT_FILES["metadata"]),
        "patients",
        "sample_column",
    ):
        assert pattern in message, message
    with pytest.raises(AtlasmapInputError, match="'Sample_ID' not found"):
        load_deposit(deposit, sample_column="Sample_ID", batch_key="Sample_ID")


def test_an_absent_sample_column_of_an_h5ad_names_the_h5ad(tmp_path, small_study):
    path = tmp_path / "query.h5ad"
    write_query_h5ad(small_study.query, path)
    with pytest.raises(AtlasmapInputError) as err:
        load_query({"h5ad": path}, "h5ad", counts_layer="counts", sample_column="donor")
    assert str(path) in str(err.value) and "'donor'" in str(err.value)


def test_a_sample_column_may_not_overwrite_another_batch_column(deposit):
    with pytest.raises(AtlasmapInputError) as err:
        load_deposit(deposit, rename=RENAME, sample_column="tissue", batch_key="Sample_ID")
    assert "'tissue'" in str(err.value) and "already has a column 'Sample_ID'" in str(err.value)


# --- A SciPy without the fast Matrix Market reader's private API -------------------


def _incompatible_body_reader(*args):
    raise TypeError("read_body_coo(): incompatible function arguments")


def _private_api_stub(case: str):
    """scipy.io._fast_matrix_market as another SciPy may have it."""
    import types

    from scipy.io import _fast_matrix_market as fmm

    stub = types.ModuleType("scipy.io._fast_matrix_market")
    if case == "cursor_signature_changed":
        stub._get_read_cursor = lambda source, parallelism, new_argument: None
    elif case == "body_signature_changed":  # raises once the header has been read
        stub._get_read_cursor = fmm._get_read_cursor
        stub._fmm_core = types.SimpleNamespace(read_body_coo=_incompatible_body_reader)
    return stub  # "missing": neither function


@pytest.mark.parametrize("case", ["missing", "cursor_signature_changed", "body_signature_changed"])
def test_a_scipy_without_the_fast_readers_api_reads_the_same_matrix(
    case, deposit, monkeypatch, caplog
):
    import scipy.io

    fast = load_deposit(deposit)
    monkeypatch.setattr(scipy.io, "_fast_matrix_market", _private_api_stub(case))
    with caplog.at_level(logging.INFO, logger="atlasmap.query"):
        public = load_deposit(deposit)
    assert "matrix read with scipy.io.mmread" in caplog.text
    assert ("TypeError" if "signature" in case else "AttributeError") in caplog.text
    for adata in (fast, public):
        assert adata.X.format == "csr" and adata.X.dtype == np.float32
        assert adata.X.has_sorted_indices
    assert public.X.shape == fast.X.shape
    for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(public.X, part), getattr(fast.X, part))
    assert list(public.obs_names) == list(fast.obs_names)
    assert list(public.var_names) == list(fast.var_names)
    pd.testing.assert_frame_equal(public.obs, fast.obs)
    pd.testing.assert_frame_equal(public.var, fast.var)
