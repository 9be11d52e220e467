"""Gene alignment (sparse, symbols or Ensembl ids) and the quantile-bin transform."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from atlasmap.errors import AtlasmapInputError
from atlasmap.genes import align_to_genes, id_to_symbol_table, quantile_bins, select_genes


def make_query(symbols, ids, n_cells=30, seed=0, index="symbols"):
    rng = np.random.default_rng(seed)
    counts = sp.random(n_cells, len(symbols), density=0.4, random_state=seed, format="csr")
    counts.data = rng.integers(1, 20, counts.nnz).astype(np.float32)
    var = pd.DataFrame({"gene_ids": ids, "gene_symbols": symbols})
    var.index = symbols if index == "symbols" else ids
    adata = ad.AnnData(X=counts, var=var)
    adata.layers["counts"] = counts.copy()
    return adata


SYMBOLS = [f"G{i}" for i in range(20)]
IDS = [f"ENSG{i:011d}" for i in range(20)]


def test_aligned_columns_follow_the_model_and_missing_genes_are_zero(caplog):
    order = np.random.default_rng(1).permutation(20)[:18]  # query lacks two genes, shuffled
    query = make_query([SYMBOLS[i] for i in order], [IDS[i] for i in order])
    with caplog.at_level(logging.INFO):
        aligned, report = align_to_genes(query, SYMBOLS, min_overlap=0.5)
    assert sp.issparse(aligned.X) and list(aligned.var_names) == SYMBOLS
    dense_query = query.X.toarray()
    dense = aligned.X.toarray()
    for j, gene in enumerate(SYMBOLS):
        if gene in query.var_names:
            np.testing.assert_array_equal(
                dense[:, j], dense_query[:, list(query.var_names).index(gene)]
            )
        else:
            assert not dense[:, j].any()
    assert (report.matched, report.zero_filled, report.model_genes) == (18, 2, 20)
    assert report.overlap_fraction == pytest.approx(0.9)
    assert "matched 18 of 20 model genes (90.0%)" in caplog.text
    assert list(aligned.var["in_query"]) == [g in query.var_names for g in SYMBOLS]


def test_counts_already_on_the_model_genes_come_back_unchanged():
    # embed_reference's atlas is already on the model's genes, in order.
    query = make_query(SYMBOLS, IDS)
    aligned, report = align_to_genes(query, SYMBOLS)
    assert report.zero_filled == 0 and list(aligned.var_names) == SYMBOLS
    np.testing.assert_array_equal(aligned.X.toarray(), query.layers["counts"].toarray())
    assert aligned.var["in_query"].all()
    assert not np.shares_memory(aligned.X.data, query.layers["counts"].data)
    # One gene out of order is not the identity: the columns still follow the model.
    swapped = SYMBOLS[1::-1] + SYMBOLS[2:]
    moved, _ = align_to_genes(query, swapped)
    np.testing.assert_array_equal(
        moved.X.toarray()[:, :2], query.layers["counts"].toarray()[:, 1::-1]
    )


def test_ensembl_model_matches_on_gene_ids_with_versions():
    query = make_query(SYMBOLS, [f"{i}.3" for i in IDS])
    aligned, report = align_to_genes(query, IDS[::-1])
    assert report.matched == 20 and report.matched_on == "gene_ids"
    assert report.model_naming == "Ensembl ids"
    np.testing.assert_array_equal(aligned.X.toarray(), query.X.toarray()[:, ::-1])


def test_ensembl_only_query_against_a_symbol_model_is_translated_through_the_atlas():
    query = make_query(IDS, IDS, index="ids")  # no symbols at all
    del query.var["gene_symbols"]
    atlas_var = pd.DataFrame({"gene_ids": IDS}, index=SYMBOLS)
    aligned, report = align_to_genes(
        query, SYMBOLS, id_to_symbol=id_to_symbol_table(atlas_var, atlas_var.index)
    )
    assert report.matched == 20 and "via atlas" in report.matched_on
    np.testing.assert_array_equal(aligned.X.toarray(), query.X.toarray())


def test_overlap_under_the_minimum_is_an_error_naming_the_config_key():
    query = make_query(SYMBOLS[:5], IDS[:5])
    with pytest.raises(
        AtlasmapInputError, match=r"only 5 of 20 model genes \(25.0%\).*mapping.min_gene_overlap"
    ):
        align_to_genes(query, SYMBOLS, min_overlap=0.5, where="q.h5ad")


def test_no_overlapping_genes_is_an_error():
    query = make_query([f"X{i}" for i in range(20)], [f"ENSG9{i:010d}" for i in range(20)])
    with pytest.raises(AtlasmapInputError, match="only 0 of 20 model genes"):
        align_to_genes(query, SYMBOLS, min_overlap=0.1)


def test_overlap_under_the_warning_level_is_logged(caplog):
    query = make_query(SYMBOLS[:14], IDS[:14])
    with caplog.at_level(logging.WARNING):
        align_to_genes(query, SYMBOLS, min_overlap=0.5, warn_overlap=0.8)
    assert "gene overlap 70.0% is under 80%" in caplog.text


def reference_bins(row: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-cell loop, the plain definition, to check the vectorised version against."""
    out = np.zeros_like(row, dtype=float)
    nonzero = row > 0
    if nonzero.any():
        edges = np.quantile(row[nonzero], np.linspace(0, 1, n_bins - 1))
        out[nonzero] = np.digitize(row[nonzero], edges, right=False)
    return out


@pytest.mark.parametrize("values", ["counts", "fractions"])
@pytest.mark.parametrize("n_bins", [2, 5, 50])
def test_quantile_bins_match_the_per_cell_definition(n_bins, values):
    rng = np.random.default_rng(3)
    counts = sp.random(60, 80, density=0.3, random_state=3, format="csr")
    counts.data = rng.negative_binomial(2, 0.2, counts.nnz).astype(float) + 1
    if values == "fractions":  # cut points that fall between values, to the last bit
        counts.data = counts.data / 7.0
    counts[5] = 0  # an empty cell
    counts[6] = 0
    counts[6, 3] = 4.0  # a cell with one count
    counts.eliminate_zeros()
    binned = quantile_bins(counts, n_bins)
    assert binned.shape == counts.shape and binned.format == "csr"
    expected = np.stack([reference_bins(r, n_bins) for r in counts.toarray()])
    np.testing.assert_array_equal(binned.toarray(), expected)
    assert binned.max() <= n_bins - 1 and binned.min() == 0
    assert (binned.toarray() > 0).sum() == counts.nnz


def test_explicit_zeros_stay_zeros_in_the_bins():
    counts = sp.csr_matrix(np.array([[3.0, 0.0, 1.0, 2.0], [0.0, 5.0, 5.0, 1.0]]))
    stored = sp.csr_matrix(
        ([3.0, 0.0, 1.0, 2.0, 5.0, 5.0, 1.0], [0, 1, 2, 3, 1, 2, 3], [0, 4, 7]), shape=(2, 4)
    )
    assert stored.nnz == counts.nnz + 1  # one explicit zero stored
    np.testing.assert_array_equal(
        quantile_bins(stored, 5).toarray(), quantile_bins(counts, 5).toarray()
    )
    assert quantile_bins(stored, 5).nnz == counts.nnz


def selection_product(matrix, position, n_genes):
    """The plain definition select_genes replaces: a product with a 0/1 selection matrix."""
    keep = np.flatnonzero(position >= 0)
    selection = sp.csr_matrix(
        (np.ones(keep.size), (keep, position[keep])), shape=(matrix.shape[1], n_genes)
    )
    product = (matrix @ selection).tocsr()
    product.sort_indices()
    return product


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_select_genes_equals_the_selection_product(dtype):
    # 200 model genes (several 64-bit words of the row bitmap), 300 query genes in
    # another order, a third of them not in the model; more cells than one task holds.
    rng = np.random.default_rng(5)
    counts = sp.random(2500, 300, density=0.2, random_state=5, format="csr")
    counts.data = rng.integers(1, 50, counts.nnz).astype(dtype)
    counts = counts.astype(dtype)
    counts[7] = 0  # an empty cell
    counts.eliminate_zeros()
    position = np.full(300, -1)
    chosen = rng.choice(300, 200, replace=False)
    position[chosen] = rng.permutation(200)
    selected = select_genes(counts, position, 200)
    expected = selection_product(counts, position, 200)
    assert selected.shape == (2500, 200) and selected.has_sorted_indices
    assert selected.dtype == counts.dtype
    np.testing.assert_array_equal(selected.indptr, expected.indptr)
    np.testing.assert_array_equal(selected.indices, expected.indices)
    np.testing.assert_array_equal(selected.data, expected.data.astype(dtype))


def test_select_genes_sums_a_gene_stored_twice_and_drops_zeros():
    # A CSR matrix as a hand-written file may hold it: unsorted columns, one column
    # stored twice in a row, an explicit zero.
    data = np.array([2.0, 1.0, 0.0, 4.0, 3.0, 5.0])
    indices = np.array([3, 0, 1, 3, 2, 0])
    matrix = sp.csr_matrix((data, indices, [0, 4, 6]), shape=(2, 4))
    assert not matrix.has_canonical_format
    position = np.array([1, 2, 0, 3])  # query gene 1 -> model gene 2, ...
    selected = select_genes(matrix, position, 4)
    np.testing.assert_array_equal(selected.toarray(), [[0, 1, 0, 6], [3, 5, 0, 0]])
    assert selected.nnz == 4 and selected.has_sorted_indices
