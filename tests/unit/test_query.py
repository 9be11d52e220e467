"""load_query and subset_query: the happy path and every bad input the issue lists.

Each bad input asserts the message names what is at fault, that no output was
left behind and that the user's files were not touched.
"""

import gzip
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from atlasmap.errors import AtlasmapInputError
from atlasmap.query import DEPOSIT_FILES, load_query_files, subset_query_files
from conftest import tree_digest, write_deposit

RENAME = {"patients": "Sample_ID"}


def load(deposit, out, **options):
    options.setdefault("rename", RENAME)
    return load_query_files(
        files={role: deposit / DEPOSIT_FILES[role] for role in ("matrix", "features", "barcodes")},
        format="10x_mtx",
        metadata_path=deposit / DEPOSIT_FILES["metadata"],
        output=out,
        **options,
    )


def assert_fails_cleanly(call, deposit, out, *patterns):
    before = tree_digest(deposit)
    with pytest.raises(AtlasmapInputError) as err:
        call()
    for pattern in patterns:
        assert pattern in str(err.value), f"{pattern!r} not in: {err.value}"
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [] if out.parent.exists() else True
    assert tree_digest(deposit) == before
    return str(err.value)


def test_load_keeps_counts_metadata_and_both_gene_names(deposit, tmp_path, small_study):
    out = tmp_path / "out" / "loaded.h5ad"
    load(deposit, out)
    adata = ad.read_h5ad(out)
    query = small_study.query
    assert adata.n_obs == query.n_obs and adata.n_vars == query.n_vars
    assert list(adata.obs_names) == list(query.obs_names)
    # Raw counts, sparse, in X and in layers["counts"], equal to what was written.
    assert sp.issparse(adata.layers["counts"])
    assert (adata.layers["counts"] != query.X).nnz == 0
    assert (adata.X != query.X).nnz == 0
    # patients renamed to Sample_ID; other columns, the query-only one included, kept.
    assert "patients" not in adata.obs
    assert list(adata.obs["Sample_ID"]) == list(query.obs["patients"])
    assert list(adata.obs["tissue"]) == list(query.obs["tissue"])
    assert np.allclose(adata.obs["percent.mt"], query.obs["percent.mt"])
    assert list(adata.var["gene_ids"]) == list(query.var["gene_ids"])
    assert list(adata.var["gene_symbols"]) == list(query.var["gene_symbols"])
    assert list(adata.var_names) == list(query.var["gene_symbols"])


def test_metadata_barcode_column_can_be_named(tmp_path, small_study):
    query = small_study.query.copy()
    deposit = write_deposit(query, tmp_path / "deposit")
    meta = query.obs.copy()
    meta.insert(2, "cell_barcode", meta.index)
    meta.to_csv(deposit / DEPOSIT_FILES["metadata"], index=False)
    adata = load(deposit, tmp_path / "out.h5ad", barcode_column="cell_barcode")
    assert list(adata.obs["Sample_ID"]) == list(query.obs["patients"])


def test_missing_rename_column_is_an_error(deposit, tmp_path):
    out = tmp_path / "out" / "loaded.h5ad"
    msg = assert_fails_cleanly(
        lambda: load(deposit, out, rename={"patient": "Sample_ID"}),
        deposit,
        out,
        "metadata.csv.gz",
        "'patient'",
        "rename",
    )
    assert "patients" in msg  # lists what is there


def test_rename_onto_an_existing_column_is_an_error(deposit, tmp_path):
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(
        lambda: load(deposit, out, rename={"patients": "tissue"}), deposit, out, "'tissue'"
    )


def drop_metadata_rows(deposit, n):
    path = deposit / DEPOSIT_FILES["metadata"]
    meta = pd.read_csv(path, index_col=0)
    meta.iloc[n:].to_csv(path)


def test_metadata_not_matching_barcodes_is_an_error(deposit, tmp_path):
    drop_metadata_rows(deposit, 10)
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(
        lambda: load(deposit, out),
        deposit,
        out,
        "10 of 400 barcodes have no metadata row",
        "max_unmatched_fraction",
    )


def test_unmatched_barcodes_within_tolerance_are_kept_and_logged(deposit, tmp_path, caplog):
    drop_metadata_rows(deposit, 10)
    with caplog.at_level(logging.WARNING):
        adata = load(deposit, tmp_path / "out.h5ad", max_unmatched_fraction=0.05)
    assert adata.n_obs == 400
    assert adata.obs["Sample_ID"].isna().sum() == 10
    assert "10 of 400 barcodes have no metadata row" in caplog.text


def test_duplicate_barcodes_are_an_error(tmp_path, small_study):
    query = small_study.query.copy()
    names = query.obs_names.to_numpy().copy()
    names[5] = names[4]
    query.obs_names = names
    deposit = write_deposit(query, tmp_path / "deposit")
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(
        lambda: load(deposit, out), deposit, out, "barcodes.tsv.gz", names[4], "more than once"
    )


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        (lambda x: np.log1p(x), "non-integer"),
        (lambda x: x - 3, "negative"),
    ],
    ids=["log-normalised", "negative"],
)
def test_counts_that_are_not_raw_are_an_error(tmp_path, small_study, transform, expected):
    query = small_study.query.copy()
    x = query.X.tocsr(copy=True)
    x.data = transform(x.data)
    query.X = x
    deposit = tmp_path / "deposit"
    deposit.mkdir()
    # write_10x_deposit writes integers; write this matrix as it is, real-valued.
    import scipy.io

    with gzip.open(deposit / DEPOSIT_FILES["matrix"], "wb") as fh:
        scipy.io.mmwrite(fh, sp.csc_matrix(query.X).T)
    written = write_deposit(query, tmp_path / "scratch")
    for role in ("features", "barcodes", "metadata"):
        (deposit / DEPOSIT_FILES[role]).write_bytes((written / DEPOSIT_FILES[role]).read_bytes())
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(lambda: load(deposit, out), deposit, out, "matrix.mtx.gz", expected)


def test_subset_keeps_exactly_the_selected_cells(deposit, tmp_path, small_study, caplog):
    loaded = tmp_path / "loaded.h5ad"
    load(deposit, loaded)
    out, samples = tmp_path / "subset.h5ad", tmp_path / "samples.tsv"
    with caplog.at_level("INFO", logger="atlasmap.query"):
        subset_query_files(
            input=loaded, output=out, selection={"Sample_ID": ["PA01", "PA02"]}, samples=samples
        )
    adata = ad.read_h5ad(out)
    meta = small_study.query.obs
    expected = meta.index[meta["patients"].isin(["PA01", "PA02"])]
    assert list(adata.obs_names) == list(expected)
    assert set(adata.obs["Sample_ID"].cat.categories) == {"PA01", "PA02"}
    assert "tissue" in adata.obs and "counts" in adata.layers
    # Every sample found, and what the subset kept of each, in a table and the log.
    table = pd.read_csv(samples, sep="\t").set_index("sample")
    per_sample = meta["patients"].value_counts()
    assert list(table.index) == [*sorted(per_sample.index), "all"]
    assert table.loc["all"].tolist() == [len(meta), len(expected)]
    for sample, n in per_sample.items():
        kept = n if sample in ("PA01", "PA02") else 0
        assert table.loc[sample].tolist() == [n, kept]
    assert f"{len(per_sample)} samples in Sample_ID" in caplog.text
    assert f"after the subset: 2 samples, {len(expected)} of {len(meta)} cells" in caplog.text


def test_no_subset_keeps_the_whole_query_without_rewriting_it(deposit, tmp_path):
    loaded = tmp_path / "loaded.h5ad"
    load(deposit, loaded)
    before = loaded.read_bytes()
    out = tmp_path / "results" / "subset.h5ad"
    subset_query_files(input=loaded, output=out, selection=None)
    assert out.read_bytes() == before
    assert loaded.read_bytes() == before  # the input is untouched
    assert [p.name for p in out.parent.iterdir()] == ["subset.h5ad"]  # no temporary left
    subset_query_files(
        input=loaded, output=out, selection={}
    )  # an empty selection is no selection; rerun replaces
    assert out.read_bytes() == before


def test_subset_on_two_columns_is_their_intersection(deposit, tmp_path):
    loaded = tmp_path / "loaded.h5ad"
    full = load(deposit, loaded)
    subset_query_files(
        input=loaded,
        output=tmp_path / "s.h5ad",
        selection={"Sample_ID": ["PA01", "PA04"], "tissue": ["tumour"]},
    )
    adata = ad.read_h5ad(tmp_path / "s.h5ad")
    expected = (full.obs["Sample_ID"] == "PA01").sum()
    assert adata.n_obs == expected > 0


def loaded_h5ad(deposit, tmp_path):
    src = tmp_path / "in" / "loaded.h5ad"
    load(deposit, src)
    return src


def test_unknown_subset_value_lists_the_available_ones(deposit, tmp_path):
    src = loaded_h5ad(deposit, tmp_path)
    out = tmp_path / "out" / "subset.h5ad"
    assert_fails_cleanly(
        lambda: subset_query_files(
            input=src, output=out, selection={"Sample_ID": ["PA01", "PA99"]}
        ),
        src.parent,
        out,
        "['PA99'] not found",
        "PA01, PA02, PA03, PA04",
        "loaded.h5ad",
    )


def test_unknown_subset_column_is_an_error(deposit, tmp_path):
    src = loaded_h5ad(deposit, tmp_path)
    out = tmp_path / "out" / "subset.h5ad"
    assert_fails_cleanly(
        lambda: subset_query_files(input=src, output=out, selection={"patients": ["PA01"]}),
        src.parent,
        out,
        "'patients' not in the query metadata",
        "Sample_ID",
    )


def test_subset_leaving_no_cells_is_an_error(deposit, tmp_path):
    src = loaded_h5ad(deposit, tmp_path)
    out = tmp_path / "out" / "subset.h5ad"
    assert_fails_cleanly(
        lambda: subset_query_files(
            input=src, output=out, selection={"Sample_ID": ["PA04"], "tissue": ["tumour"]}
        ),
        src.parent,
        out,
        "leaves no cells",
    )


def test_a_truncated_gzip_matrix_is_a_clear_error(deposit, tmp_path):
    matrix = deposit / DEPOSIT_FILES["matrix"]
    matrix.write_bytes(matrix.read_bytes()[: matrix.stat().st_size // 2])
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(lambda: load(deposit, out), deposit, out, "cannot be read", "truncated")


def test_a_damaged_gzip_matrix_is_a_clear_error(deposit, tmp_path):
    """A compressed block the reader cannot decode (a disk or copy fault, not a cut):
    the ISA-L reader's own error becomes the same clear one."""
    matrix = deposit / DEPOSIT_FILES["matrix"]
    data = bytearray(matrix.read_bytes())
    has_name = data[3] & 0x08  # the header's FNAME flag: a file name, zero-terminated
    first_block = data.index(0, 10) + 1 if has_name else 10
    data[first_block] |= 0b110  # the block's type: 3, which deflate reserves
    matrix.write_bytes(bytes(data))
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(lambda: load(deposit, out), deposit, out, "cannot be read")


def test_a_gzip_matrix_that_is_not_matrix_market_is_a_clear_error(deposit, tmp_path):
    """Another table gzipped under the matrix's name: the parser's refusal of its first
    line becomes the clear error (the ISA-L stream once crashed the process here)."""
    matrix = deposit / DEPOSIT_FILES["matrix"]
    matrix.write_bytes(gzip.compress(b"barcode\tgene\tcount\nAAAC-1\tCD3E\t4\n"))
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(
        lambda: load(deposit, out), deposit, out, "cannot be read", "Not a Matrix Market file"
    )


def test_a_cut_mtx_body_is_a_clear_error(deposit, tmp_path):
    matrix = deposit / DEPOSIT_FILES["matrix"]
    lines = gzip.decompress(matrix.read_bytes()).splitlines(keepends=True)
    matrix.write_bytes(gzip.compress(b"".join(lines[: len(lines) // 2])))  # valid gzip, short body
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(lambda: load(deposit, out), deposit, out, "cannot be read")


def test_a_features_file_from_another_deposit_is_named(deposit, tmp_path):
    features = deposit / DEPOSIT_FILES["features"]
    lines = gzip.decompress(features.read_bytes()).splitlines(keepends=True)
    features.write_bytes(gzip.compress(b"".join(lines[:-10])))  # ten genes fewer than the matrix
    out = tmp_path / "out" / "loaded.h5ad"
    assert_fails_cleanly(
        lambda: load(deposit, out),
        deposit,
        out,
        str(deposit / DEPOSIT_FILES["matrix"]),
        f"{DEPOSIT_FILES['features']} lists {len(lines) - 10} genes",
        "another deposit",
    )


def test_matrix_reader_equals_scanpys_in_any_entry_order(deposit, tmp_path):
    """read_10x_matrix gives scanpy's matrix (as float32 CSR), also from a file not cell-sorted."""
    import scanpy as sc
    from atlasmap.query import read_10x_matrix

    path = deposit / DEPOSIT_FILES["matrix"]
    expected = sp.csr_matrix(sc.read_10x_mtx(deposit, gex_only=False).X)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    body = [i for i, line in enumerate(lines) if not line.startswith("%")][1:]
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(body)]
    unsorted = tmp_path / "unsorted.mtx.gz"
    unsorted.write_bytes(gzip.compress("\n".join(lines[: body[0]] + shuffled + [""]).encode()))
    for source in (path, unsorted):
        matrix = read_10x_matrix(source)
        assert matrix.format == "csr" and matrix.dtype == np.float32
        assert matrix.has_sorted_indices
        assert matrix.shape == expected.shape
        assert (matrix != expected).nnz == 0


def test_loaded_counts_are_held_once(deposit, tmp_path):
    adata = load(deposit, tmp_path / "out" / "loaded.h5ad")
    assert adata.layers["counts"] is adata.X  # one matrix in memory, not two copies
