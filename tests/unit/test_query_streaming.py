"""A query whose counts are stored CSR in an h5ad is loaded and subset without being held.

load_query_files and subset_query_files stream the count matrix from file to file in
blocks of rows (block_rows; small here, 50,000 cells in the workflow). What they write
is the file the query held whole gives (block_rows=None, the path a dense or CSC
matrix takes): the same groups, datasets, dtypes, attributes and values, the counts
layer a link to X. A block that is not raw counts refuses the query and leaves nothing.
"""

from __future__ import annotations

import anndata as ad
import atlasmap.query as query_module
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from atlasmap.demo import write_query_h5ad
from atlasmap.errors import AtlasmapInputError
from atlasmap.io import read_h5ad, write_h5ad
from atlasmap.query import load_query_files, subset_query_files
from test_query_formats import with_antibody_features, write_metadata

RENAME = {"patients": "Sample_ID"}


def layout(path) -> dict:
    """Every group, dataset and link of an HDF5 file: kind, dtype, shape, attributes and
    (datasets) values. Two files equal here are the same h5ad but for storage (chunks)."""
    found = {}

    def plain(attrs) -> dict:
        return {key: np.asarray(value).tolist() for key, value in attrs.items()}

    def visit(name: str, group) -> None:
        found[name or "/"] = ("group", plain(group.attrs))
        for key in group:
            link, path = group.get(key, getlink=True), f"{name}/{key}"
            if isinstance(link, h5py.SoftLink):
                found[path] = ("link", link.path)
            elif isinstance(group[key], h5py.Dataset):
                data = group[key]
                found[path] = ("dataset", data.dtype.str, data.shape, plain(data.attrs))
                found[path + "[]"] = np.asarray(data[()]).tolist()
            else:
                visit(path, group[key])

    with h5py.File(path, "r") as f:
        visit("", f)
    return found


def assert_same_file(streamed, held) -> None:
    a, b = layout(streamed), layout(held)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == b[key], key


def assert_same_anndata(streamed, held) -> None:
    """As anndata and atlasmap.io read them: obs, var, X (float32 CSR) and the counts."""
    for read in (ad.read_h5ad, read_h5ad):
        a, b = read(streamed), read(held)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        pd.testing.assert_frame_equal(a.var, b.var)
        assert sp.isspmatrix_csr(a.X) and a.X.dtype == b.X.dtype == np.float32
        assert a.X.has_sorted_indices
        for name in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(a.X, name), getattr(b.X, name))
        assert list(a.layers) == list(b.layers) == ["counts"]
        assert (a.layers["counts"] != b.X).nnz == 0
    loaded = read_h5ad(streamed)
    assert loaded.layers["counts"] is loaded.X


@pytest.fixture
def checked_blocks(monkeypatch):
    """The shape of every block whose counts were checked, in order."""
    shapes = []
    check = query_module._count_problems

    def spy(matrix):
        shapes.append(matrix.shape)
        return check(matrix)

    monkeypatch.setattr(query_module, "_count_problems", spy)
    return shapes


@pytest.fixture
def subset_blocks(monkeypatch):
    """The number of rows of every block a subset streamed, in order."""
    rows = []
    blocks = query_module._row_blocks

    def spy(*args, **kwargs):
        for block in blocks(*args, **kwargs):
            rows.append(block.shape[0])
            yield block

    monkeypatch.setattr(query_module, "_row_blocks", spy)
    return rows


def notebook_h5ad(query, tmp_path) -> dict:
    """Counts in a CSR layer beside a log-normalised X, a metadata table, renamed."""
    path = tmp_path / "in" / "query.h5ad"
    write_query_h5ad(query, path)
    table = query.obs[["patients"]].copy()
    table["annotation"] = "from the table"
    return {
        "files": {"h5ad": path},
        "format": "h5ad",
        "counts_layer": "counts",
        "metadata_path": write_metadata(table, tmp_path / "in" / "meta.csv"),
        "rename": RENAME,
    }


def cite_h5ad(query, tmp_path) -> dict:
    """Integer counts in a CSR X, antibody features to drop, genes by Ensembl id with
    their symbols in feature_name, a sample column copied to the batch key."""
    cite = with_antibody_features(query)
    cite.X = sp.csr_matrix(cite.X).astype(np.int32)
    cite.var = pd.DataFrame(
        {
            "feature_name": cite.var["gene_symbols"].to_numpy(),
            "feature_types": cite.var["feature_types"].to_numpy(),
        },
        index=cite.var["gene_ids"].to_numpy(),
    )
    cite.obsm["X_umap"] = np.zeros((cite.n_obs, 2))
    path = tmp_path / "in" / "cite.h5ad"
    path.parent.mkdir(parents=True)
    cite.write_h5ad(path)
    return {"files": {"h5ad": path}, "format": "h5ad", "sample_column": "patients"}


@pytest.mark.parametrize("make", [notebook_h5ad, cite_h5ad])
def test_a_streamed_load_writes_the_file_the_held_query_gives(
    make, tmp_path, small_study, checked_blocks
):
    arguments = make(small_study.query, tmp_path)
    held = tmp_path / "held" / "loaded.h5ad"
    load_query_files(**arguments, output=held, block_rows=None)
    assert checked_blocks == [(400, small_study.query.n_vars + (3 if make is cite_h5ad else 0))]
    checked_blocks.clear()
    streamed = tmp_path / "streamed" / "loaded.h5ad"
    annotations = load_query_files(**arguments, output=streamed, block_rows=64)
    # Seven blocks of at most 64 cells, each checked; the counts never held whole.
    assert [rows for rows, _ in checked_blocks] == [64] * 6 + [16]
    assert annotations.X is None and annotations.n_obs == 400
    assert_same_file(streamed, held)
    assert_same_anndata(streamed, held)
    pd.testing.assert_frame_equal(annotations.obs, read_h5ad(streamed).obs)
    assert [p.name for p in streamed.parent.iterdir()] == ["loaded.h5ad"]  # no temporary


@pytest.mark.parametrize("antibodies", [False, True], ids=["genes alone", "antibodies too"])
@pytest.mark.parametrize("index_dtypes", [("i4", "i8"), ("i8", "i8")], ids=str)
def test_a_streamed_load_keeps_the_index_dtypes_the_held_query_has(
    tmp_path, small_study, antibodies, index_dtypes
):
    """Other writers store 64-bit indptr (or indices): held whole the matrix keeps them
    (int64 indptr beside int32 indices made one dtype, which scipy's sort needs), unless
    cut to the Gene Expression features; the streamed file does the same."""
    query = with_antibody_features(small_study.query) if antibodies else small_study.query
    path = tmp_path / "in.h5ad"
    ad.AnnData(X=sp.csr_matrix(query.X), obs=query.obs.copy(), var=query.var.copy()).write_h5ad(
        path
    )
    with h5py.File(path, "a") as f:
        for name, dtype in zip(("indices", "indptr"), index_dtypes, strict=True):
            values = f["X"][name][()]
            del f["X"][name]
            f["X"].create_dataset(name, data=values.astype(dtype))
    outputs = {}
    for name, block_rows in (("held", None), ("streamed", 100)):
        outputs[name] = tmp_path / f"{name}.h5ad"
        load_query_files(
            files={"h5ad": path}, format="h5ad", output=outputs[name], block_rows=block_rows
        )
    assert_same_file(outputs["streamed"], outputs["held"])
    with h5py.File(outputs["streamed"], "r") as f:
        stored = (f["X/indices"].dtype.str[1:], f["X/indptr"].dtype.str[1:])
    kept = not antibodies and index_dtypes == ("i8", "i8")
    assert stored == (("i8", "i8") if kept else ("i4", "i4"))


def test_the_default_blocks_stream_a_whole_small_query(tmp_path, small_study):
    arguments = notebook_h5ad(small_study.query, tmp_path)
    held, streamed = tmp_path / "held.h5ad", tmp_path / "streamed.h5ad"
    load_query_files(**arguments, output=held, block_rows=None)
    assert load_query_files(**arguments, output=streamed).X is None  # streamed by default
    assert_same_file(streamed, held)


def test_a_block_that_is_not_counts_refuses_the_query_and_leaves_nothing(
    tmp_path, small_study, checked_blocks
):
    """A non-integer value in block 2 of 3: refused, naming the file, X and the
    cells of that block; the output as it was, no temporary left, block 3 never read."""
    query = small_study.query
    counts = sp.csr_matrix(query.X).astype(np.float32)
    row = 200  # block 2 of 150, 150, 100 cells
    start, stop = counts.indptr[row], counts.indptr[row + 1]
    assert stop > start
    counts.data[start] = 0.5
    path = tmp_path / "in" / "query.h5ad"
    path.parent.mkdir()
    ad.AnnData(X=counts, obs=query.obs.copy(), var=query.var.copy()).write_h5ad(path)
    out = tmp_path / "results" / "loaded.h5ad"
    out.parent.mkdir()
    out.write_bytes(b"an earlier run's output")
    with pytest.raises(AtlasmapInputError) as err:
        load_query_files(files={"h5ad": path}, format="h5ad", output=out, block_rows=150)
    message = str(err.value)
    for part in (
        f"{path}, X: not raw counts",
        "1 non-integer value(s) (e.g. 0.5)",
        "(in cells 151 to 300 of 400)",
        "The file has no layers",
        "counts_layer",
    ):
        assert part in message, f"{part!r} not in: {message}"
    assert [rows for rows, _ in checked_blocks] == [150, 150]
    assert out.read_bytes() == b"an earlier run's output"
    assert [p.name for p in out.parent.iterdir()] == ["loaded.h5ad"]


def test_a_whole_matrix_in_one_block_is_refused_as_when_held(tmp_path, small_study):
    """One block: the message the held query gives, word for word."""
    path = tmp_path / "in" / "query.h5ad"
    write_query_h5ad(small_study.query, path)  # X log-normalised
    messages = []
    for block_rows in (None, 1000):
        with pytest.raises(AtlasmapInputError) as err:
            load_query_files(
                files={"h5ad": path},
                format="h5ad",
                output=tmp_path / "out.h5ad",
                block_rows=block_rows,
            )
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert not (tmp_path / "out.h5ad").exists()


@pytest.mark.parametrize(
    "selection",
    [
        {"Sample_ID": ["PA01", "PA03"]},
        {"Sample_ID": ["PA02", "PA04"], "tissue": ["tumour"]},
    ],
    ids=["two samples", "two columns"],
)
def test_a_streamed_subset_writes_the_file_the_held_subset_gives(
    tmp_path, small_study, selection, subset_blocks
):
    loaded = tmp_path / "loaded.h5ad"
    load_query_files(**notebook_h5ad(small_study.query, tmp_path), output=loaded)
    for name, block_rows in (("held", None), ("streamed", 64)):
        subset_query_files(
            input=loaded,
            output=tmp_path / name / "subset.h5ad",
            selection=selection,
            samples=tmp_path / name / "samples.tsv",
            block_rows=block_rows,
        )
    streamed, held = tmp_path / "streamed", tmp_path / "held"
    assert_same_file(streamed / "subset.h5ad", held / "subset.h5ad")
    assert_same_anndata(streamed / "subset.h5ad", held / "subset.h5ad")
    assert (streamed / "samples.tsv").read_text() == (held / "samples.tsv").read_text()
    obs = small_study.query.obs.rename(columns=RENAME)
    keep = np.ones(len(obs), dtype=bool)
    for column, values in selection.items():
        keep &= obs[column].astype(str).isin(values).to_numpy()
    assert 0 < keep.sum() < len(obs)
    # Streamed, at most 64 rows at a time (the held subset streams nothing).
    assert sum(subset_blocks) == keep.sum() and max(subset_blocks) <= 64
    assert list(read_h5ad(streamed / "subset.h5ad").obs_names) == list(obs.index[keep])
    assert sorted(p.name for p in streamed.iterdir()) == ["samples.tsv", "subset.h5ad"]


def test_a_subset_with_embeddings_and_uns_streams_the_counts_alone(
    tmp_path, small_study, subset_blocks
):
    """obsm rows, uns and the categories kept are as the held subset has them; the
    cells kept lie in some blocks and not others."""
    query = small_study.query
    counts = sp.csr_matrix(query.X).astype(np.float32)
    adata = ad.AnnData(
        X=counts,
        obs=query.obs.copy(),
        var=query.var.copy(),
        obsm={"X_pca": np.arange(query.n_obs * 3, dtype=np.float32).reshape(-1, 3)},
        uns={"note": "kept"},
    )
    adata.layers["counts"] = adata.X
    rows = np.r_[0:10, 200:215, 399]
    adata.obs["pick"] = np.where(np.isin(np.arange(query.n_obs), rows), "yes", "no")
    path = tmp_path / "in.h5ad"
    write_h5ad(adata, path)
    outputs = {}
    for name, block_rows in (("held", None), ("streamed", 50)):
        outputs[name] = tmp_path / f"{name}.h5ad"
        subset_query_files(
            input=path, output=outputs[name], selection={"pick": ["yes"]}, block_rows=block_rows
        )
    assert_same_file(outputs["streamed"], outputs["held"])
    assert subset_blocks == [10, 15, 1]  # of blocks 1, 5 and 8 of the file's 8
    kept = read_h5ad(outputs["streamed"])
    assert list(kept.obs_names) == list(query.obs_names[rows])
    np.testing.assert_array_equal(kept.obsm["X_pca"], adata.obsm["X_pca"][rows])
    assert (counts[rows] != kept.X).nnz == 0 and kept.uns["note"] == "kept"


def test_a_subset_of_a_file_with_other_layers_is_held(tmp_path, small_study, monkeypatch):
    """A layer that is not X (or a dense X) is not streamed: the file is read whole."""
    query = small_study.query
    counts = sp.csr_matrix(query.X).astype(np.float32)
    adata = ad.AnnData(X=counts, obs=query.obs.copy(), var=query.var.copy())
    adata.layers["other"] = counts.copy()
    path = tmp_path / "in.h5ad"
    write_h5ad(adata, path)
    monkeypatch.setattr(query_module, "_row_blocks", None)  # would fail if streamed
    out = tmp_path / "out.h5ad"
    subset_query_files(input=path, output=out, selection={"patients": ["PA01"]}, block_rows=50)
    kept = read_h5ad(out)
    wanted = (query.obs["patients"].astype(str) == "PA01").to_numpy()
    assert (kept.layers["other"] != counts[wanted]).nnz == 0
