"""Reading a 10x query deposit, checking it, renaming metadata, subsetting cells."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import DEPOSIT_FILES
from .errors import AtlasmapInputError
from .io import (
    atomic_path,
    gzip_errors,
    is_gzip,
    layers_that_are_x,
    open_gzip,
    read_annotations,
    read_h5ad,
    write_h5ad,
)

log = logging.getLogger(__name__)


def _examples(values, n: int = 5) -> str:
    values = list(values)
    shown = ", ".join(map(str, values[:n]))
    return shown + (f", … ({len(values)} in all)" if len(values) > n else "")


class _ReadOnly:
    """A stream that can only be read. scipy's Matrix Market parser seeks a stream that
    offers ``seek`` when it refuses the file's first line, and ISA-L's gzip stream fails
    that seek inside the parser's C++ code, which aborts the whole process (no Python
    error to catch); offered ``read`` alone, the parser raises its ValueError."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def read_10x_matrix(path: str | os.PathLike) -> sp.csr_matrix:
    """A 10x ``matrix.mtx[.gz]`` (genes x cells) as a cells x genes float32 CSR matrix.

    Read by scipy's threaded Matrix Market parser straight into int32 indices
    (scipy.io.mmread and anndata's reader make further copies on the way). 10x
    writes the entries cell by cell, so the gene indices and values already are
    the CSR arrays: only the row pointer is made, and the cell indices are freed
    before the values become float32. Peak: 17 bytes per stored count. A file in
    another order is sorted once.
    """
    from scipy.io import _fast_matrix_market as fmm

    # A gzip file inflated by ISA-L (a third of the standard library's time), closed
    # here also when its header cannot be read.
    stream = open_gzip(path) if is_gzip(path) else None
    try:
        if stream is not None:
            cursor, _ = fmm._get_read_cursor(_ReadOnly(stream))
        else:
            cursor, stream = fmm._get_read_cursor(os.fspath(path))
        header = cursor.header
        if header.format != "coordinate" or header.symmetry != "general":
            raise ValueError(
                f"not a general coordinate matrix ({header.format}, {header.symmetry})"
            )
        if header.field not in ("integer", "real"):
            raise ValueError(f"counts must be integer or real, the file holds {header.field}")
        if max(header.nrows, header.ncols) >= 2**31 or header.nnz >= 2**31:
            raise ValueError(f"too large for 32-bit indices: {header.shape}, {header.nnz} entries")
        genes = np.empty(header.nnz, dtype=np.int32)
        cells = np.empty(header.nnz, dtype=np.int32)
        # The parser fills only arrays of its own types (int64 or float64 values).
        raw = np.empty(header.nnz, dtype=np.int64 if header.field == "integer" else np.float64)
        fmm._fmm_core.read_body_coo(cursor, genes, cells, raw)
    finally:
        if stream is not None:
            stream.close()
    n_genes, n_cells = header.shape
    if not (cells[1:] >= cells[:-1]).all():  # a bool per entry, not an int diff
        order = np.argsort(cells, kind="stable")
        genes, cells, raw = genes[order], cells[order], raw[order]
    # Where each cell's entries start; int32 probes, or numpy casts all of cells to int64.
    indptr = np.searchsorted(cells, np.arange(n_cells + 1, dtype=cells.dtype), side="left")
    del cells
    values = raw.astype(np.float32)
    del raw
    matrix = sp.csr_matrix((values, genes, indptr), shape=(n_cells, n_genes), copy=False)
    if not matrix.has_sorted_indices:
        matrix.sort_indices()
    return matrix


def read_10x_deposit(directory: str | os.PathLike) -> ad.AnnData:
    """Read a 10x v3 matrix (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``).

    Genes are indexed by symbol (made unique, as scanpy does); ``var`` keeps
    ``gene_ids``, the original ``gene_symbols`` and ``feature_types`` (when the
    features file has them), so that later steps can match a model on either.
    """
    directory = Path(directory)
    features_path = directory / DEPOSIT_FILES["features"]
    barcodes_path = directory / DEPOSIT_FILES["barcodes"]
    matrix_path = directory / DEPOSIT_FILES["matrix"]
    try:
        features = pd.read_csv(features_path, sep="\t", header=None, dtype=str)
        barcodes = pd.read_csv(barcodes_path, sep="\t", header=None, dtype=str, usecols=[0])[0]
        matrix = read_10x_matrix(matrix_path)
    except (ValueError, IndexError, RuntimeError, *gzip_errors()) as err:
        # A cut download or a damaged file: say which file, not the parser's internals.
        raise AtlasmapInputError(
            f"{directory}: the 10x files cannot be read ({type(err).__name__}: {err}); "
            f"is {DEPOSIT_FILES['matrix']} or another file truncated? Delete it and rerun "
            "to fetch it again."
        ) from err
    if features.shape[1] < 2:
        raise AtlasmapInputError(
            f"{features_path}: expected a 10x features file with columns gene id, "
            f"gene symbol[, feature type]; found {features.shape[1]} column(s)"
        )
    if matrix.shape != (len(barcodes), len(features)):
        raise AtlasmapInputError(
            f"{matrix_path}: the matrix is {matrix.shape[1]} genes x {matrix.shape[0]} cells, "
            f"but {features_path.name} lists {len(features)} genes and {barcodes_path.name} "
            f"{len(barcodes)} barcodes; is one of them from another deposit?"
        )
    var = pd.DataFrame({"gene_ids": features[0].to_numpy()})
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    var["gene_symbols"] = features[1].to_numpy()
    var.index = ad.utils.make_index_unique(pd.Index(features[1].to_numpy()))
    adata = ad.AnnData(X=matrix, obs=pd.DataFrame(index=barcodes.to_numpy()), var=var)
    if "feature_types" in adata.var:
        gex = (adata.var["feature_types"] == "Gene Expression").to_numpy()
        if not gex.all():
            log.info("keeping %d Gene Expression features of %d", gex.sum(), adata.n_vars)
            adata = adata[:, gex].copy()
    return adata


def check_unique_barcodes(barcodes: pd.Index, where: str) -> None:
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()
        raise AtlasmapInputError(
            f"{where}: {len(dup)} barcode(s) occur more than once "
            f"({_examples(dup)}); barcodes must be unique"
        )


def check_counts(matrix: sp.spmatrix | np.ndarray, where: str) -> None:
    """Fail unless every entry is a non-negative integer (raw UMI counts)."""
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    negative = int(np.count_nonzero(data < 0))
    fractional = int(np.count_nonzero(data != np.round(data)))
    if negative or fractional:
        what = []
        if negative:
            what.append(f"{negative} negative value(s) (min {data.min():g})")
        if fractional:
            bad = data[data != np.round(data)][0]
            what.append(f"{fractional} non-integer value(s) (e.g. {bad:g})")
        raise AtlasmapInputError(
            f"{where}: counts must be raw non-negative integers, found "
            + " and ".join(what)
            + "; was a normalised or log-transformed matrix given as counts?"
        )


def read_metadata(path: str | os.PathLike, barcode_column: str | None = None) -> pd.DataFrame:
    """Read a metadata table (csv/tsv, optionally gzipped) indexed by barcode.

    ``barcode_column`` names the column that holds the barcodes; ``None``
    takes the first column (Seurat's ``write.csv`` leaves it unnamed).
    """
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt") as fh:
        first_line = fh.readline()
    sep = "\t" if first_line.count("\t") > first_line.count(",") else ","
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    if table.shape[1] < 2:
        raise AtlasmapInputError(f"{path}: metadata needs a barcode column and at least one more")
    column = table.columns[0] if barcode_column is None else barcode_column
    if column not in table.columns:
        raise AtlasmapInputError(
            f"{path}: barcode column {column!r} not found; columns are {_examples(table.columns, 20)}"
        )
    table = table.set_index(column)
    table.index.name = None
    check_unique_barcodes(table.index, f"{path}")
    return _infer_types(table)


def _infer_types(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers as numbers, text as categories; empty cells are missing."""
    table = table.replace("", np.nan)
    for column in table.columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        if numeric.notna().sum() == table[column].notna().sum():
            table[column] = numeric
        else:
            table[column] = table[column].astype("category")
    return table


def join_metadata(
    adata: ad.AnnData,
    metadata: pd.DataFrame,
    max_unmatched_fraction: float = 0.0,
    where: str = "metadata",
) -> ad.AnnData:
    """Attach ``metadata`` rows to cells by barcode.

    Cells without a metadata row and metadata rows without a cell are counted;
    past ``max_unmatched_fraction`` of the cells (either way) it is an error.
    Within tolerance, cells without metadata are kept, with missing values,
    and the numbers go to the log.
    """
    cells = adata.obs_names
    missing = cells.difference(metadata.index, sort=False)
    extra = metadata.index.difference(cells, sort=False)
    n = max(adata.n_obs, 1)
    message = (
        f"{where}: {len(missing)} of {adata.n_obs} barcodes have no metadata row"
        + (f" ({_examples(missing)})" if len(missing) else "")
        + f"; {len(extra)} metadata row(s) match no barcode"
        + (f" ({_examples(extra)})" if len(extra) else "")
    )
    if len(missing) / n > max_unmatched_fraction or len(extra) / n > max_unmatched_fraction:
        raise AtlasmapInputError(
            message + f"; more than the tolerated fraction {max_unmatched_fraction:g} "
            "(config key metadata.max_unmatched_fraction). Are the barcodes from the same deposit?"
        )
    if len(missing) or len(extra):
        log.warning(message)
    clashes = adata.obs.columns.intersection(metadata.columns)
    obs = adata.obs.drop(columns=clashes).join(metadata, how="left")
    adata.obs = obs
    return adata


def rename_columns(obs: pd.DataFrame, rename: Mapping[str, str], where: str) -> pd.DataFrame:
    """Rename metadata columns; a missing source or a clash with a target is an error."""
    absent = [old for old in rename if old not in obs.columns]
    if absent:
        raise AtlasmapInputError(
            f"{where}: cannot rename column(s) {absent}: not in the metadata; "
            f"columns are {_examples(obs.columns, 30)} (config key rename)"
        )
    clash = [new for old, new in rename.items() if new in obs.columns and new != old]
    if clash:
        raise AtlasmapInputError(
            f"{where}: cannot rename to {clash}: the metadata already has such a column (config key rename)"
        )
    return obs.rename(columns=dict(rename))


def load_query(
    deposit_dir: str | os.PathLike,
    metadata_path: str | os.PathLike,
    rename: Mapping[str, str] | None = None,
    barcode_column: str | None = None,
    max_unmatched_fraction: float = 0.0,
) -> ad.AnnData:
    """Read a 10x deposit and its metadata into one AnnData with raw counts.

    ``X`` and ``layers["counts"]`` hold the raw counts (sparse), ``obs`` the
    metadata with columns renamed as asked, ``var`` gene symbols and ids.
    """
    deposit_dir = Path(deposit_dir)
    matrix_path = deposit_dir / DEPOSIT_FILES["matrix"]
    adata = read_10x_deposit(deposit_dir)
    check_unique_barcodes(adata.obs_names, str(deposit_dir / DEPOSIT_FILES["barcodes"]))
    check_counts(adata.X, str(matrix_path))
    log.info("read %d cells x %d genes from %s", adata.n_obs, adata.n_vars, deposit_dir)

    metadata = read_metadata(metadata_path, barcode_column)
    log.info("read metadata for %d barcodes, columns %s", len(metadata), list(metadata.columns))
    adata = join_metadata(adata, metadata, max_unmatched_fraction, where=str(metadata_path))
    if rename:
        adata.obs = rename_columns(adata.obs, rename, where=str(metadata_path))
        log.info("renamed metadata columns %s", dict(rename))
    # One matrix for both: nothing downstream modifies the counts in place.
    adata.layers["counts"] = adata.X
    return adata


def subset_cells(
    adata: ad.AnnData, selection: Mapping[str, Sequence] | None, where: str = "query"
) -> ad.AnnData:
    """Keep the cells whose ``obs[column]`` is in the listed values, for every column.

    An unknown column or value is an error listing what exists; so is a
    selection that leaves no cells.
    """
    if not selection:
        return adata
    keep = np.ones(adata.n_obs, dtype=bool)
    for column, values in selection.items():
        if column not in adata.obs.columns:
            raise AtlasmapInputError(
                f"{where}: subset column {column!r} not in the query metadata; "
                f"columns are {_examples(adata.obs.columns, 30)} (config key subset)"
            )
        present = adata.obs[column].astype(str)
        available = sorted(present.dropna().unique())
        wanted = [str(v) for v in values]
        unknown = [v for v in wanted if v not in set(available)]
        if unknown:
            raise AtlasmapInputError(
                f"{where}: subset {column} = {unknown} not found; available values are "
                f"{_examples(available, 50)} (config key subset)"
            )
        keep &= present.isin(wanted).to_numpy()
        log.info("subset %s in %s: %d cells", column, wanted, int(present.isin(wanted).sum()))
    if not keep.any():
        raise AtlasmapInputError(
            f"{where}: the subset {dict(selection)} leaves no cells (config key subset)"
        )
    shared = layers_that_are_x(adata)  # subset once, not once per name
    layers = {key: adata.layers.pop(key) for key in shared}
    subset = adata[keep].copy()
    adata.layers.update(layers)
    for key in shared:
        subset.layers[key] = subset.X
    for column in subset.obs.columns:
        if isinstance(subset.obs[column].dtype, pd.CategoricalDtype):
            subset.obs[column] = subset.obs[column].cat.remove_unused_categories()
    log.info("kept %d of %d cells", subset.n_obs, adata.n_obs)
    return subset


def load_query_files(
    *,
    deposit_dir: str | os.PathLike,
    metadata_path: str | os.PathLike,
    output: str | os.PathLike,
    **options,
) -> ad.AnnData:
    """:func:`load_query`, written to ``output`` whole or not at all."""
    adata = load_query(deposit_dir, metadata_path, **options)
    write_h5ad(adata, output)
    return adata


def sample_table(
    loaded: pd.DataFrame, kept: pd.DataFrame, column: str, where: str = "query"
) -> pd.DataFrame:
    """Cells per sample (``column``) before and after the subset, logged as the
    tutorial checks them: every sample found, and what the subset kept."""
    if column not in loaded.columns:
        log.warning("%s: no column %r: cells per sample not counted", where, column)
        return pd.DataFrame(
            {"sample": ["all"], "cells_loaded": [len(loaded)], "cells_kept": [len(kept)]}
        )
    before = loaded[column].astype(str).value_counts().sort_index()
    after = kept[column].astype(str).value_counts().reindex(before.index, fill_value=0)
    table = pd.DataFrame(
        {"sample": before.index, "cells_loaded": before.to_numpy(), "cells_kept": after.to_numpy()}
    )
    table = pd.concat(
        [
            table,
            pd.DataFrame(
                {"sample": ["all"], "cells_loaded": [len(loaded)], "cells_kept": [len(kept)]}
            ),
        ],
        ignore_index=True,
    )
    log.info(
        "%s: %d samples in %s: %s",
        where,
        len(before),
        column,
        ", ".join(f"{name} {n:,}" for name, n in before.items()),
    )
    kept_samples = after[after > 0]
    log.info(
        "after the subset: %d samples, %d of %d cells: %s",
        len(kept_samples),
        len(kept),
        len(loaded),
        ", ".join(f"{name} {n:,}" for name, n in kept_samples.items()),
    )
    return table


def subset_query_files(
    *,
    input: str | os.PathLike,
    output: str | os.PathLike,
    selection: Mapping[str, Sequence] | None,
    samples: str | os.PathLike | None = None,
    sample_column: str = "Sample_ID",
) -> None:
    """:func:`subset_cells` from file to file.

    With no selection every cell is kept and ``input`` is copied byte for byte
    (by the kernel) instead of being decoded and written again: at 200k cells
    that saves holding 4 GB in memory. Not a hard link: Snakemake touches its
    outputs, which would touch the input too.
    """
    if not selection:
        if samples:
            obs = read_annotations(input, obsm=(), uns=False).obs
            _write_table(sample_table(obs, obs, sample_column, str(input)), samples)
        with atomic_path(output) as tmp:
            shutil.copyfile(input, tmp)
        log.info("no subset configured: all cells kept, %s copied to %s", input, output)
        return
    loaded = read_h5ad(input)
    subset = subset_cells(loaded, selection, where=str(input))
    if samples:
        _write_table(sample_table(loaded.obs, subset.obs, sample_column, str(input)), samples)
    write_h5ad(subset, output)


def _write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
