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
    columns are moved in one pass over each cell's counts, :func:`select_genes`). The
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
        # Already on the model's genes, in order (embed_reference's atlas): no selection,
        # but a copy, so that the result never shares its buffers with the caller's counts.
        aligned = matrix.copy()
        aligned.sort_indices()
    else:
        aligned = select_genes(matrix, position, len(model_index))
    var = pd.DataFrame(index=pd.Index([str(g) for g in model_genes]))
    var["in_query"] = np.isin(np.arange(len(model_index)), position[keep])
    out = ad.AnnData(X=aligned, obs=adata.obs.copy(), var=var)
    out.layers["counts"] = aligned  # one matrix: nothing modifies it in place
    return out, report


def select_genes(matrix: sp.csr_matrix, position: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """``matrix``'s column ``c`` as column ``position[c]`` of an ``n_genes``-column
    matrix, dropped where ``position[c]`` is negative; columns sorted in each row.

    The sparse product with a 0/1 selection matrix, in one pass over each cell's
    counts (cells in parallel) instead of scipy's product and its sort."""
    from .counts_kernel import select_columns

    indptr, indices, data = select_columns(
        matrix.indptr, matrix.indices, matrix.data, np.asarray(position, dtype=np.int64), n_genes
    )
    return sp.csr_matrix((data, indices, indptr), shape=(matrix.shape[0], n_genes))


def quantile_bins(counts: sp.spmatrix, n_bins: int = 50) -> sp.csr_matrix:
    """Per-cell quantile binning of counts (as scGPT-style models read them).

    Zeros stay 0. In each cell, the non-zero counts are cut at ``n_bins - 1``
    evenly spaced quantiles of that cell's non-zero counts (``np.quantile``) and
    replaced by the number of cut points at or below them (``np.digitize``):
    1 … ``n_bins - 1``. Each cell sorts only its own counts, cells in parallel;
    the working memory is the output's, whatever the query's size.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2 (got {n_bins})")
    from .counts_kernel import quantile_bin_rows

    counts = sp.csr_matrix(counts)
    binned = quantile_bin_rows(counts.indptr, counts.data, np.linspace(0.0, 1.0, n_bins - 1))
    out = sp.csr_matrix((binned, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)
    out.eliminate_zeros()  # the input's explicit zeros, if it stored any
    return out


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
