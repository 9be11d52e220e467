"""Matching query genes to a model's genes, sparsely, and the model's input transform."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import AtlasmapInputError

log = logging.getLogger(__name__)

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")


def looks_like_ensembl(names: Sequence[str]) -> bool:
    """True when most names are Ensembl gene ids (ENSG…, ENSMUSG…)."""
    names = [str(n) for n in names]
    return bool(names) and sum(bool(_ENSEMBL.match(n)) for n in names) > 0.5 * len(names)


def strip_version(ids: pd.Index) -> pd.Index:
    """ENSG00000141510.17 -> ENSG00000141510."""
    return pd.Index(ids.astype(str).str.replace(r"\.\d+$", "", regex=True))


@dataclass(frozen=True)
class GeneAlignment:
    """What alignment did: reported in the log and the QC table."""

    model_genes: int
    matched: int
    zero_filled: int
    query_genes_unused: int
    matched_on: str
    model_naming: str

    @property
    def overlap_fraction(self) -> float:
        return self.matched / max(self.model_genes, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "overlap_fraction": round(self.overlap_fraction, 4)}


def _candidate_keys(
    var: pd.DataFrame, var_names: pd.Index, translation: pd.Series | None
) -> dict[str, pd.Index]:
    """Ways to name each query gene: its index, symbols, ids, ids translated to symbols."""
    keys: dict[str, pd.Index] = {"var_names": pd.Index(var_names.astype(str))}
    if "gene_symbols" in var:
        keys["gene_symbols"] = pd.Index(var["gene_symbols"].astype(str))
    if "gene_ids" in var:
        keys["gene_ids"] = strip_version(pd.Index(var["gene_ids"]))
    if translation is not None:
        ids = keys.get("gene_ids", strip_version(pd.Index(var_names)))
        keys["gene_ids->symbols (via atlas)"] = pd.Index(
            translation.reindex(ids).fillna("").astype(str)
        )
    return keys


def align_to_genes(
    adata: ad.AnnData,
    model_genes: Sequence[str],
    layer: str | None = "counts",
    min_overlap: float = 0.5,
    warn_overlap: float = 0.8,
    id_to_symbol: pd.Series | None = None,
    where: str = "query",
) -> tuple[ad.AnnData, GeneAlignment]:
    """Return ``adata``'s counts on exactly ``model_genes`` (in that order), sparse.

    Query genes are matched on whichever of their names (index, ``gene_symbols``,
    ``gene_ids`` with version suffixes stripped, or ids translated to symbols
    through ``id_to_symbol``, e.g. the atlas's own table) covers most model genes.
    Model genes the query lacks are zero-filled sparsely (no densifying: the
    columns are moved by a sparse selection product, no per-gene loop). The
    overlap is logged; under ``warn_overlap`` it is a warning, under
    ``min_overlap`` an error.
    """
    model_index = pd.Index([str(g) for g in model_genes])
    if not model_index.is_unique:
        raise AtlasmapInputError(f"{where}: the model's gene names are not unique")
    naming = "Ensembl ids" if looks_like_ensembl(model_index[:1000]) else "gene symbols"
    if naming == "Ensembl ids":
        model_index = strip_version(model_index)
    candidates = _candidate_keys(adata.var, adata.var_names, id_to_symbol)
    positions = {name: model_index.get_indexer_for(keys) for name, keys in candidates.items()}
    # Duplicated query names (e.g. two ids with one symbol): the first one counts.
    for name, keys in candidates.items():
        positions[name][keys.duplicated()] = -1
    overlaps = {name: int(np.unique(p[p >= 0]).size) for name, p in positions.items()}
    best = max(overlaps, key=overlaps.get)
    position = positions[best]
    matched = overlaps[best]
    report = GeneAlignment(
        model_genes=len(model_index),
        matched=matched,
        zero_filled=len(model_index) - matched,
        query_genes_unused=int((position < 0).sum()),
        matched_on=best,
        model_naming=naming,
    )
    log.info(
        "%s: model uses %s; matched %d of %d model genes (%.1f%%) on query %s; "
        "%d zero-filled; %d query genes not in the model (overlap by key: %s)",
        where,
        naming,
        matched,
        len(model_index),
        100 * report.overlap_fraction,
        best,
        report.zero_filled,
        report.query_genes_unused,
        overlaps,
    )
    if report.overlap_fraction < min_overlap:
        raise AtlasmapInputError(
            f"{where}: only {matched} of {len(model_index)} model genes "
            f"({100 * report.overlap_fraction:.1f}%) found in the query, under the minimum "
            f"{100 * min_overlap:.0f}% (config key mapping.min_gene_overlap). The model uses "
            f"{naming}; query names tried: {overlaps}. Do the query and the model come from "
            "the same species and annotation?"
        )
    if report.overlap_fraction < warn_overlap:
        log.warning(
            "%s: gene overlap %.1f%% is under %.0f%%: %d model genes are zero-filled, "
            "which weakens the mapping",
            where,
            100 * report.overlap_fraction,
            100 * warn_overlap,
            report.zero_filled,
        )
    matrix = adata.layers[layer] if layer else adata.X
    matrix = sp.csr_matrix(matrix)
    keep = np.flatnonzero(position >= 0)
    if adata.n_vars == len(model_index) and np.array_equal(position, np.arange(adata.n_vars)):
        # Already on the model's genes, in order (embed_reference's atlas): no product,
        # but a copy, so that the result never shares its buffers with the caller's counts.
        aligned = matrix.copy()
    else:
        selection = sp.csr_matrix(
            (np.ones(keep.size, dtype=matrix.dtype), (keep, position[keep])),
            shape=(adata.n_vars, len(model_index)),
        )
        aligned = (matrix @ selection).tocsr()
    aligned.sort_indices()
    var = pd.DataFrame(index=pd.Index([str(g) for g in model_genes]))
    var["in_query"] = np.isin(np.arange(len(model_index)), position[keep])
    out = ad.AnnData(X=aligned, obs=adata.obs.copy(), var=var)
    out.layers["counts"] = aligned  # one matrix: nothing modifies it in place
    return out, report


def quantile_bins(counts: sp.spmatrix, n_bins: int = 50, block: int = 20_000) -> sp.csr_matrix:
    """Per-cell quantile binning of counts (as scGPT-style models read them).

    Zeros stay 0. In each cell, the non-zero counts are cut at ``n_bins - 1``
    evenly spaced quantiles of that cell's non-zero counts and replaced by the
    number of cut points at or below them (1 … ``n_bins - 1``). Vectorised over
    all cells at once: one sort and one ``searchsorted`` of the sparse values,
    each cell offset into its own range.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2 (got {n_bins})")
    counts = sp.csr_matrix(counts)
    if counts.shape[0] > block:
        # Cells are binned independently: blocks of cells bound the working memory
        # (about 50 bytes per stored count inside a block) whatever the query's size.
        return sp.vstack(
            [
                _quantile_bins_block(counts[start : start + block], n_bins)
                for start in range(0, counts.shape[0], block)
            ],
            format="csr",
        )
    return _quantile_bins_block(counts, n_bins)


def _quantile_bins_block(counts: sp.csr_matrix, n_bins: int) -> sp.csr_matrix:
    csr = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    csr.eliminate_zeros()
    n_cells = csr.shape[0]
    nnz_per_cell = np.diff(csr.indptr)
    rows = np.repeat(np.arange(n_cells), nnz_per_cell)
    # Each cell's values in its own band of one key: one argsort, twice as fast as a
    # lexsort by (row, value). The same bands serve the searchsorted below.
    span = float(csr.data.max()) + 1.0 if csr.nnz else 1.0
    banded = rows * span + csr.data
    order = np.argsort(banded, kind="stable")
    sorted_values = csr.data[order]
    # Quantile cut points per cell, linear interpolation as np.quantile does.
    q = np.linspace(0.0, 1.0, n_bins - 1)
    has = nnz_per_cell > 0
    pos = q[None, :] * (np.maximum(nnz_per_cell, 1) - 1)[:, None]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(nnz_per_cell, 1)[:, None] - 1)
    start = csr.indptr[:-1][:, None]
    safe = lambda i: sorted_values[np.minimum(start + i, max(len(sorted_values) - 1, 0))]  # noqa: E731
    if len(sorted_values) == 0:
        return sp.csr_matrix(csr.shape, dtype=np.float32)
    edges = safe(lo) + (pos - lo) * (safe(hi) - safe(lo))
    edges[~has] = 0.0
    # One global searchsorted: each cell's edges shifted into its band, as its values are.
    offset = np.arange(n_cells, dtype=np.float64)[:, None] * span
    flat_edges = (edges + offset).ravel()
    digits = np.searchsorted(flat_edges, banded, side="right")
    digits -= rows * (n_bins - 1)
    binned = sp.csr_matrix((digits.astype(np.float32), csr.indices, csr.indptr), shape=csr.shape)
    return binned


def apply_transform(counts: sp.spmatrix, transform: dict | None) -> sp.spmatrix:
    """The input transform a model was trained on (config ``reference.transform``)."""
    if not transform:
        return counts
    if transform.get("method") == "quantile_bins":
        return quantile_bins(counts, int(transform.get("n_bins", 50)))
    raise AtlasmapInputError(f"reference.transform: unknown method {transform.get('method')!r}")


def id_to_symbol_table(var: pd.DataFrame, var_names: pd.Index) -> pd.Series | None:
    """Ensembl id -> symbol, from an atlas whose genes are named by symbol with ``gene_ids`` beside."""
    if "gene_ids" not in var:
        return None
    table = pd.Series(
        var_names.astype(str).to_numpy(), index=strip_version(pd.Index(var["gene_ids"]))
    )
    return table[~table.index.duplicated()]


def gene_ids_of(var: pd.DataFrame, var_names: pd.Index, genes) -> np.ndarray | None:
    """The Ensembl id of each of ``genes`` (symbols among ``var_names``), from an atlas's
    ``gene_ids`` column; "" where it has none; None when the atlas names no ids."""
    id_to_symbol = id_to_symbol_table(var, var_names)
    if id_to_symbol is None:
        return None
    symbol_to_id = pd.Series(id_to_symbol.index, index=id_to_symbol.to_numpy())
    symbol_to_id = symbol_to_id[~symbol_to_id.index.duplicated()]
    return symbol_to_id.reindex(pd.Index(genes)).fillna("").to_numpy(dtype=object)
