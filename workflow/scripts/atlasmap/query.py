"""Reading a query (10x matrix, 10x HDF5 or h5ad), checking it, renaming metadata,
setting its samples, subsetting cells.

An h5ad query whose counts are stored CSR (the million-cell case) is loaded and
subset without holding its counts: obs and var are read and worked on alone, and the
count matrix is streamed from file to file in blocks of rows (:data:`BLOCK_ROWS`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import DEPOSIT_FILES, READ_FORMATS
from .errors import AtlasmapInputError
from .io import (
    CsrBlocks,
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

# Rows of a query's count matrix read, checked and written at once when it is streamed
# (at ~1,000 counts per cell, 50,000 rows are 0.4 GB of CSR).
BLOCK_ROWS = 50_000


def _examples(values, n: int = 5) -> str:
    values = list(values)
    shown = ", ".join(map(str, values[:n]))
    return shown + (f", … ({len(values)} in all)" if len(values) > n else "")


class _ReadOnly:
    """A stream that can only be read. scipy's Matrix Market parser seeks a stream that
    offers ``seek`` when it refuses the file's first line, and ISA-L's gzip stream fails
    that seek inside the parser's C++ code, which aborts the whole process (no Python
    error to catch); offered ``read`` alone, the parser raises its ValueError. (SciPy
    1.17's mminfo of a seekable plain file aborts the same way.) ``readline`` and
    iteration are for the pure-Python reader of SciPy before 1.12."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    def __iter__(self):
        return iter(self._stream)


def _check_mtx_header(fmt: str, symmetry: str, field: str, shape, nnz: int) -> None:
    """Refuse a Matrix Market file that is not a 10x counts matrix."""
    if fmt != "coordinate" or symmetry != "general":
        raise ValueError(f"not a general coordinate matrix ({fmt}, {symmetry})")
    if field not in ("integer", "real"):
        raise ValueError(f"counts must be integer or real, the file holds {field}")
    if max(shape) >= 2**31 or nnz >= 2**31:
        raise ValueError(f"too large for 32-bit indices: {tuple(shape)}, {nnz} entries")


def _read_mtx_fast(path: str | os.PathLike):
    """(genes, cells, values, shape) of a Matrix Market file, read by scipy's threaded
    parser through its private API (the same in SciPy 1.12 to 1.18) straight into
    int32 indices. ImportError, AttributeError or TypeError: that API is missing or changed."""
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
        _check_mtx_header(header.format, header.symmetry, header.field, header.shape, header.nnz)
        genes = np.empty(header.nnz, dtype=np.int32)
        cells = np.empty(header.nnz, dtype=np.int32)
        # The parser fills only arrays of its own types (int64 or float64 values).
        raw = np.empty(header.nnz, dtype=np.int64 if header.field == "integer" else np.float64)
        fmm._fmm_core.read_body_coo(cursor, genes, cells, raw)
    finally:
        if stream is not None:
            stream.close()
    return genes, cells, raw, header.shape


def _read_mtx_public(path: str | os.PathLike):
    """:func:`_read_mtx_fast` by scipy.io's public mminfo and mmread (more copies; pure
    Python before SciPy 1.12, about 10x slower), each on a fresh read-only stream."""
    import scipy.io

    def read(function):
        with open_gzip(path) if is_gzip(path) else open(path, "rb") as stream:
            return function(_ReadOnly(stream))

    n_rows, n_cols, nnz, fmt, field, symmetry = read(scipy.io.mminfo)
    _check_mtx_header(fmt, symmetry, field, (n_rows, n_cols), nnz)
    coo = sp.coo_matrix(read(scipy.io.mmread))
    genes = coo.row.astype(np.int32, copy=False)
    cells = coo.col.astype(np.int32, copy=False)
    return genes, cells, coo.data, coo.shape


def read_10x_matrix(path: str | os.PathLike) -> sp.csr_matrix:
    """A 10x ``matrix.mtx[.gz]`` (genes x cells) as a cells x genes float32 CSR matrix.

    Read by scipy's threaded Matrix Market parser straight into int32 indices
    (scipy.io.mmread and anndata's reader make further copies on the way). 10x
    writes the entries cell by cell, so the gene indices and values already are
    the CSR arrays: only the row pointer is made, and the cell indices are freed
    before the values become float32. Peak: 17 bytes per stored count. A file in
    another order is sorted once. A SciPy without that parser's private API (before
    1.12, or changed since): the same matrix by scipy.io.mmread, slower, more memory.
    """
    import scipy

    try:
        genes, cells, raw, shape = _read_mtx_fast(path)
        log.debug("%s: matrix read with scipy's threaded fast reader", path)
    except (ImportError, AttributeError, TypeError) as err:
        log.info(
            "%s: matrix read with scipy.io.mmread (SciPy %s lacks the fast reader's private "
            "API: %s: %s)",
            path,
            scipy.__version__,
            type(err).__name__,
            err,
        )
        genes, cells, raw, shape = _read_mtx_public(path)
    n_genes, n_cells = shape
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


# var columns that may hold gene symbols in an h5ad indexed by Ensembl ids
# (CELLxGENE writes feature_name).
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "symbol")


def _gene_expression(var: pd.DataFrame) -> np.ndarray | None:
    """Which features are Gene Expression, where var says what each feature is (None
    where it does not)."""
    if "feature_types" not in var:
        return None
    return (var["feature_types"].astype(str) == "Gene Expression").to_numpy()


def _keep_gene_expression(adata: ad.AnnData, where: str) -> ad.AnnData:
    """Only the Gene Expression features, where var says what each feature is."""
    gex = _gene_expression(adata.var)
    if gex is None or gex.all():
        return adata
    if not gex.any():
        raise AtlasmapInputError(
            f"{where}: no feature has feature_types 'Gene Expression' (found "
            f"{_examples(adata.var['feature_types'].astype(str).unique())}); gene "
            "expression counts are needed"
        )
    log.info("%s: keeping %d Gene Expression features of %d", where, gex.sum(), adata.n_vars)
    return adata[:, gex].copy()


def _contract_var(ids, symbols, feature_types=None, names=None) -> pd.DataFrame:
    """var as the contract has it: indexed by the symbols (or ``names``) made unique,
    with the ids, the original symbols and the feature types when known."""
    symbols = np.asarray(symbols, dtype=object).astype(str)
    names = symbols if names is None else np.asarray(names, dtype=object).astype(str)
    var = pd.DataFrame(index=ad.utils.make_index_unique(pd.Index(names)))
    if ids is not None:
        var["gene_ids"] = np.asarray(ids, dtype=object).astype(str)
    if feature_types is not None:
        var["feature_types"] = np.asarray(feature_types, dtype=object).astype(str)
    var["gene_symbols"] = symbols
    return var


def read_10x_mtx(files: Mapping[str, str | os.PathLike]) -> ad.AnnData:
    """Read a 10x v3 matrix from its three files (roles ``matrix``, ``features``,
    ``barcodes``): a Cell Ranger ``filtered_feature_bc_matrix/`` folder or a GEO deposit.

    Genes are indexed by symbol (made unique, as scanpy does); ``var`` keeps
    ``gene_ids``, the original ``gene_symbols`` and ``feature_types`` (when the
    features file has them), so that later steps can match a model on either.
    """
    features_path = Path(files["features"])
    barcodes_path = Path(files["barcodes"])
    matrix_path = Path(files["matrix"])

    def read(role: str, path: Path, reader):
        try:
            return reader(path)
        except (ValueError, IndexError, RuntimeError, *gzip_errors()) as err:
            # A cut download or a damaged file: say which file, not the parser's internals.
            raise AtlasmapInputError(
                f"{path}: the 10x {role} file cannot be read ({type(err).__name__}: {err}); "
                "is it truncated or damaged? A downloaded file: delete it and rerun to "
                "fetch it again."
            ) from err

    features = read(
        "features", features_path, lambda p: pd.read_csv(p, sep="\t", header=None, dtype=str)
    )
    barcodes = read(
        "barcodes",
        barcodes_path,
        lambda p: pd.read_csv(p, sep="\t", header=None, dtype=str, usecols=[0])[0],
    )
    matrix = read("matrix", matrix_path, read_10x_matrix)
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
    var = _contract_var(
        features[0].to_numpy(),
        features[1].to_numpy(),
        features[2].to_numpy() if features.shape[1] > 2 else None,
    )
    adata = ad.AnnData(X=matrix, obs=pd.DataFrame(index=barcodes.to_numpy()), var=var)
    return _keep_gene_expression(adata, str(features_path))


def read_10x_deposit(directory: str | os.PathLike) -> ad.AnnData:
    """:func:`read_10x_mtx` of a folder holding the files under their 10x v3 names."""
    directory = Path(directory)
    return read_10x_mtx({role: directory / DEPOSIT_FILES[role] for role in READ_FORMATS["10x_mtx"]})


def _hdf5_entries(path: Path, what: str) -> list[str]:
    """The top-level names of an HDF5 file; an error naming it when it is not one."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return list(f.keys())
    except OSError as err:
        raise AtlasmapInputError(
            f"{path}: not an HDF5 file ({err}); expected {what}. Is the file truncated, "
            "or of another format (config key format)?"
        ) from err


def read_10x_h5(path: str | os.PathLike) -> ad.AnnData:
    """Read a Cell Ranger HDF5 matrix (``filtered_feature_bc_matrix.h5``, v3 or later;
    v2's one-genome files too), Gene Expression features only, brought to the contract:
    X float32 CSR, var ``gene_ids``, ``gene_symbols``, ``feature_types``, indexed by
    unique symbols."""
    import h5py
    import scanpy as sc

    path = Path(path)
    what = "a 10x Genomics HDF5 matrix (Cell Ranger's filtered_feature_bc_matrix.h5)"
    entries = _hdf5_entries(path, what)
    with h5py.File(path, "r") as f:
        legacy = [
            name
            for name in entries
            if isinstance(f[name], h5py.Group) and {"genes", "gene_names"} <= set(f[name])
        ]
    if "matrix" not in entries and len(legacy) != 1:
        hint = (
            "; it looks like an AnnData file: set format: h5ad"
            if {"obs", "var"} <= set(entries)
            else ""
        )
        raise AtlasmapInputError(
            f"{path}: not {what}: no /matrix group (Cell Ranger v3+) and no single genome "
            f"group (v2); its top-level entries are {_examples(entries, 10) or 'none'}{hint} "
            "(config key format)"
        )
    try:
        adata = sc.read_10x_h5(path, gex_only=True)
    except MemoryError:
        raise
    except Exception as err:  # scanpy raises a bare Exception for a missing dataset
        cause = f"{type(err).__name__}: {err}" + (
            f" ({err.__cause__})" if err.__cause__ is not None else ""
        )
        raise AtlasmapInputError(
            f"{path}: the 10x HDF5 matrix cannot be read ({cause}); is it truncated or "
            "damaged, or not a Cell Ranger matrix?"
        ) from err
    var = adata.var
    adata = ad.AnnData(
        X=sp.csr_matrix(adata.X).astype(np.float32, copy=False),
        obs=pd.DataFrame(index=adata.obs_names.to_numpy()),
        var=_contract_var(
            var["gene_ids"].to_numpy() if "gene_ids" in var else None,
            adata.var_names.to_numpy(),
            var["feature_types"].to_numpy() if "feature_types" in var else None,
        ),
    )
    return _keep_gene_expression(adata, str(path))


def _h5ad_var(var: pd.DataFrame, where: str) -> pd.DataFrame:
    """An h5ad's var brought to the contract (see :func:`read_query_h5ad`)."""
    from .genes import looks_like_ensembl

    index = pd.Index(var.index.astype(str))
    ensembl = looks_like_ensembl(index[:1000])
    ids = None
    if "gene_ids" in var:
        ids = var["gene_ids"].to_numpy()
    elif ensembl:
        ids = index.to_numpy()
    types = var["feature_types"].to_numpy() if "feature_types" in var else None
    symbol_column = next((c for c in SYMBOL_COLUMNS if c in var), None)
    if ensembl and symbol_column is not None:
        symbols = var[symbol_column].astype(object)
        # A gene without a symbol keeps its id as its name.
        missing = (symbols.isna() | (symbols.astype(str).str.strip() == "")).to_numpy()
        symbols = np.where(missing, index.to_numpy(), symbols.astype(str).to_numpy())
        log.info(
            "%s: genes indexed by Ensembl id; indexed by their symbols (var %r) instead",
            where,
            symbol_column,
        )
        return _contract_var(ids, symbols, types)
    symbols = var["gene_symbols"].to_numpy() if "gene_symbols" in var else index.to_numpy()
    return _contract_var(ids, symbols, types, names=index.to_numpy())


def _as_counts_matrix(matrix, where: str) -> sp.csr_matrix:
    """A matrix read from an h5ad as CSR (its own dtype, for the counts check)."""
    if sp.issparse(matrix):
        matrix = matrix.tocsr() if matrix.format != "csr" else sp.csr_matrix(matrix)
        if matrix.indices.dtype != matrix.indptr.dtype:
            # Stored so by other writers (int64 indptr beside int32 indices), which
            # scipy's sort_indices refuses: one index dtype, as scipy gives a matrix.
            matrix = sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr), matrix.shape)
        return matrix
    if isinstance(matrix, np.ndarray):
        return sp.csr_matrix(matrix)
    raise AtlasmapInputError(
        f"{where}: expected a sparse or dense matrix, found {type(matrix).__name__}"
    )


def _check_anndata_file(path: Path) -> None:
    """Refuse a file that is not HDF5, or an HDF5 file without obs and var."""
    entries = _hdf5_entries(path, "an AnnData file (.h5ad)")
    if not {"obs", "var"} <= set(entries):
        raise AtlasmapInputError(
            f"{path}: not an AnnData file (.h5ad): no obs and var; its top-level entries "
            f"are {_examples(entries, 10) or 'none'}"
            + (
                "; it looks like a Cell Ranger matrix: set format: 10x_h5"
                if "matrix" in entries
                else ""
            )
            + " (config key format)"
        )


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """What reading an h5ad element by element raises, as an error naming the file."""
    try:
        yield
    except (AtlasmapInputError, MemoryError):
        raise
    except Exception as err:  # anndata's registry errors are bare Exceptions
        raise AtlasmapInputError(
            f"{path}: cannot be read as AnnData ({type(err).__name__}: {err}); is it "
            "truncated, or written by an anndata too old to read element by element?"
        ) from err


def _layer_listing(layers: Sequence[str]) -> str:
    return (
        f"the file's layers: {', '.join(map(repr, layers))}" if layers else "the file has no layers"
    )


def _counts_element(f, path: Path, counts_layer: str | None):
    """(the element holding the counts, its name for messages, the file's layers) of an
    open h5ad; an error naming the layers when it has no such element."""
    import h5py

    stored = f.get("layers")
    layers = list(stored) if isinstance(stored, h5py.Group) else []
    listing = _layer_listing(layers)
    if counts_layer is None:
        if "X" not in f:
            raise AtlasmapInputError(
                f"{path}: X is empty; {listing}; name the layer that holds the raw "
                "counts (config key counts_layer)"
            )
        return f["X"], "X", layers
    if counts_layer not in layers:
        raise AtlasmapInputError(
            f"{path}: no layer {counts_layer!r} (config key counts_layer); {listing}; null reads X"
        )
    return stored[counts_layer], f"layer {counts_layer!r}", layers


def _checked_counts(matrix, path: Path, layer: str, layers: Sequence[str], rows: str = ""):
    """``matrix`` (all of the counts, or the block of them ``rows`` says) as float32 CSR
    with sorted indices; refused, naming the file, the layer and the file's layers,
    when it is not raw counts."""
    matrix = _as_counts_matrix(matrix, f"{path}, {layer}")
    problems = _count_problems(matrix)
    if problems:
        listing = _layer_listing(layers)
        raise AtlasmapInputError(
            f"{path}, {layer}: not raw counts: " + " and ".join(problems) + rows + "; it looks "
            f"normalised, log-transformed or scaled. {listing[0].upper()}{listing[1:]}. "
            + (
                "Name the layer that holds the raw, non-negative integer counts "
                "(config key counts_layer)."
                if layers
                else "Save the raw counts in the file, as X or as a layer named by "
                "counts_layer (config key counts_layer)."
            )
        )
    matrix = matrix.astype(np.float32, copy=False)
    if not matrix.has_sorted_indices:
        matrix.sort_indices()
    return matrix


def read_query_h5ad(
    path: str | os.PathLike, counts_layer: str | None = None, with_counts: bool = True
) -> ad.AnnData:
    """Read the raw counts of an h5ad (``X``, or ``layers[counts_layer]``), its obs and var.

    Nothing else is read (other layers, raw, obsm, uns): the counts are held once.
    A matrix that is not raw counts (normalised, log-transformed, scaled) is refused,
    naming the file, the layer and the layers the file has. var is brought to the
    contract: an index of Ensembl ids with a symbol column (``gene_symbols``,
    ``feature_name``, ``gene_name``, ``symbol``) is replaced by the symbols, made
    unique, the ids going to ``gene_ids``; ``gene_symbols`` is the symbols.

    ``with_counts=False``: obs and var alone (no X; Gene Expression features only), the
    counts left in the file unread (that they exist is checked, not what they hold).
    """
    import h5py

    path = Path(path)
    _check_anndata_file(path)
    with _read_errors(path), h5py.File(path, "r") as f:
        element, layer, layers = _counts_element(f, path, counts_layer)
        matrix = ad.io.read_elem(element) if with_counts else None
        obs = ad.io.read_elem(f["obs"])
        var = ad.io.read_elem(f["var"])
    if with_counts:
        matrix = _checked_counts(matrix, path, layer, layers)
    obs.index = pd.Index(obs.index.astype(str), name=None)
    adata = ad.AnnData(X=matrix, obs=obs, var=_h5ad_var(var, str(path)))
    return _keep_gene_expression(adata, str(path))


def check_unique_barcodes(barcodes: pd.Index, where: str) -> None:
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()
        raise AtlasmapInputError(
            f"{where}: {len(dup)} barcode(s) occur more than once "
            f"({_examples(dup)}); barcodes must be unique"
        )


def _count_problems(matrix: sp.spmatrix | np.ndarray) -> list[str]:
    """What keeps ``matrix`` from being raw counts (negatives, non-integers); empty if none."""
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    negative = int(np.count_nonzero(data < 0))
    fractional = int(np.count_nonzero(data != np.round(data)))
    what = []
    if negative:
        what.append(f"{negative} negative value(s) (min {data.min():g})")
    if fractional:
        bad = data[data != np.round(data)][0]
        what.append(f"{fractional} non-integer value(s) (e.g. {bad:g})")
    return what


def check_counts(matrix: sp.spmatrix | np.ndarray, where: str) -> None:
    """Fail unless every entry is a non-negative integer (raw UMI counts)."""
    what = _count_problems(matrix)
    if what:
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


def _as_batch_labels(values: pd.Series) -> pd.Categorical:
    """Sample labels as a string categorical (missing stays missing; 3.0 reads 3)."""
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        if (present == np.round(present)).all():
            values = values.astype("Int64")
    return pd.Categorical(values.astype(str).where(values.notna()))


def assign_batch(
    obs: pd.DataFrame,
    sample_column: str | None,
    batch_key: str,
    sample_name: str,
    where: str,
) -> pd.DataFrame:
    """Give every cell its sample (batch) in ``obs[batch_key]``, a string categorical.

    ``sample_column`` (when not ``batch_key`` itself) is copied to ``batch_key``, the
    user's column kept; with no ``sample_column``, ``batch_key`` is used when present,
    else the query is one sample, ``sample_name``.
    """
    if sample_column is not None:
        if sample_column not in obs.columns:
            raise AtlasmapInputError(
                f"{where}: sample column {sample_column!r} not found (config key "
                f"sample_column); columns are {_examples(obs.columns, 30) or 'none'}"
            )
        if sample_column != batch_key:
            if batch_key in obs.columns:
                raise AtlasmapInputError(
                    f"{where}: cannot copy sample column {sample_column!r} to the "
                    f"reference's batch column {batch_key!r}: the query already has a column "
                    f"{batch_key!r}. Drop or rename it (config key rename), or set "
                    f"sample_column: {batch_key}"
                )
            obs[batch_key] = obs[sample_column]
            log.info("%s: samples from column %r, copied to %r", where, sample_column, batch_key)
    elif batch_key not in obs.columns:
        obs[batch_key] = sample_name
        log.info(
            "%s: no sample column (sample_column unset, no %r column): every cell is one "
            "sample, %r",
            where,
            batch_key,
            sample_name,
        )
    obs[batch_key] = _as_batch_labels(obs[batch_key])
    return obs


def _role_paths(files: Mapping[str, str | os.PathLike], format: str) -> dict[str, Path]:
    """The files a format needs, by role: every one given, present, nothing else."""
    if format not in READ_FORMATS:
        raise AtlasmapInputError(
            f"query format {format!r} unknown; formats are {', '.join(READ_FORMATS)} "
            "(config key format)"
        )
    roles = READ_FORMATS[format]
    missing = [role for role in roles if role not in files]
    extra = [role for role in files if role not in roles]
    if missing or extra:
        raise AtlasmapInputError(
            f"format {format} takes files for {', '.join(roles)}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"not a role of this format: {extra}" if extra else "")
        )
    paths = {role: Path(files[role]) for role in roles}
    for role, path in paths.items():
        if not path.is_file():
            raise AtlasmapInputError(f"{path}: no such file (the query's {role} file)")
    return paths


def _read_query(paths: Mapping[str, Path], format: str, counts_layer, with_counts: bool):
    """(the query's AnnData, the file it was read from) of :func:`load_query`, its
    barcodes checked, and its counts unless left in the file."""
    if format == "h5ad":
        source = paths["h5ad"]
        # Refuses a matrix that is not counts (when it is read).
        adata = read_query_h5ad(source, counts_layer, with_counts=with_counts)
        counts_from = "X" if counts_layer is None else f"layer {counts_layer!r}"
    elif not with_counts:
        raise ValueError(f"load_query: with_counts=False reads an h5ad alone, not {format}")
    else:
        source = paths["matrix"] if format == "10x_mtx" else paths["h5"]
        adata = read_10x_mtx(paths) if format == "10x_mtx" else read_10x_h5(source)
        counts_from = "the matrix"
    check_unique_barcodes(adata.obs_names, str(paths.get("barcodes", source)))
    if format != "h5ad":
        check_counts(adata.X, str(source))
    log.info(
        "read %s %s: %d cells x %d genes, counts from %s",
        format,
        source,
        adata.n_obs,
        adata.n_vars,
        counts_from,
    )
    return adata, source


def _annotate(
    adata: ad.AnnData,
    source: Path,
    format: str,
    *,
    metadata_path,
    rename,
    barcode_column,
    max_unmatched_fraction: float,
    sample_column,
    batch_key: str,
    sample_name: str,
) -> ad.AnnData:
    """The metadata of :func:`load_query`: joined, renamed, each cell's sample assigned
    (obs alone)."""
    # Where the obs columns come from, for the messages that name one.
    origins = [str(source)] if format == "h5ad" else []
    if metadata_path is not None:
        metadata = read_metadata(metadata_path, barcode_column)
        log.info("read metadata for %d barcodes, columns %s", len(metadata), list(metadata.columns))
        adata = join_metadata(adata, metadata, max_unmatched_fraction, where=str(metadata_path))
        origins.append(str(metadata_path))
    where = " and ".join(origins) or str(source)
    if rename:
        adata.obs = rename_columns(adata.obs, rename, where=where)
        log.info("renamed metadata columns %s", dict(rename))
    adata.obs = assign_batch(adata.obs, sample_column, batch_key, sample_name, where)
    return adata


def load_query(
    files: Mapping[str, str | os.PathLike],
    format: str,
    metadata_path: str | os.PathLike | None = None,
    rename: Mapping[str, str] | None = None,
    barcode_column: str | None = None,
    max_unmatched_fraction: float = 0.0,
    counts_layer: str | None = None,
    sample_column: str | None = None,
    batch_key: str = "Sample_ID",
    sample_name: str = "query",
    with_counts: bool = True,
) -> ad.AnnData:
    """Read a query in any of :data:`READ_FORMATS` into one AnnData with raw counts.

    ``files`` maps the format's roles to local paths: ``10x_mtx`` matrix, features,
    barcodes (a Cell Ranger ``filtered_feature_bc_matrix/`` folder or a GEO
    deposit); ``10x_h5`` h5 (Cell Ranger's ``filtered_feature_bc_matrix.h5``);
    ``h5ad`` h5ad (raw counts in X or ``layers[counts_layer]``; its obs is
    metadata). ``X`` and ``layers["counts"]`` are the raw counts (one float32 CSR
    matrix, cells x genes), ``obs`` the cells by barcode with the metadata
    (``metadata_path`` joined on barcodes, its columns winning clashes) renamed as
    asked and the sample of each cell in ``obs[batch_key]`` (see
    :func:`assign_batch`), ``var`` gene symbols (unique) and ids; Gene Expression
    features only.

    ``with_counts=False`` (h5ad only): the same obs and var, no counts read (nor
    checked): what :func:`load_query_files` streams the counts beside.
    """
    paths = _role_paths(files, format)
    if counts_layer is not None and format != "h5ad":
        log.warning("counts_layer %r ignored: format %s holds counts alone", counts_layer, format)
    adata, source = _read_query(paths, format, counts_layer, with_counts)
    adata = _annotate(
        adata,
        source,
        format,
        metadata_path=metadata_path,
        rename=rename,
        barcode_column=barcode_column,
        max_unmatched_fraction=max_unmatched_fraction,
        sample_column=sample_column,
        batch_key=batch_key,
        sample_name=sample_name,
    )
    if with_counts:
        # One matrix for both: nothing downstream modifies the counts in place.
        adata.layers["counts"] = adata.X
    return adata


def selected_cells(
    obs: pd.DataFrame, selection: Mapping[str, Sequence], where: str = "query"
) -> np.ndarray:
    """Positions (in order) of the cells whose ``obs[column]`` is in the listed values,
    for every column of ``selection``.

    An unknown column or value is an error listing what exists; so is a
    selection that leaves no cells.
    """
    keep = np.ones(len(obs), dtype=bool)
    for column, values in selection.items():
        if column not in obs.columns:
            raise AtlasmapInputError(
                f"{where}: subset column {column!r} not in the query metadata; "
                f"columns are {_examples(obs.columns, 30)} (config key subset)"
            )
        present = obs[column].astype(str)
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
    return np.flatnonzero(keep)


def _take_cells(adata: ad.AnnData, rows: np.ndarray) -> ad.AnnData:
    """The cells at ``rows`` of ``adata`` (X and the layers that are X subset once, as
    one matrix); categories no cell kept dropped."""
    shared = layers_that_are_x(adata)  # subset once, not once per name
    layers = {key: adata.layers.pop(key) for key in shared}
    subset = adata[rows].copy()
    adata.layers.update(layers)
    for key in shared:
        subset.layers[key] = subset.X
    for column in subset.obs.columns:
        if isinstance(subset.obs[column].dtype, pd.CategoricalDtype):
            subset.obs[column] = subset.obs[column].cat.remove_unused_categories()
    log.info("kept %d of %d cells", subset.n_obs, adata.n_obs)
    return subset


def subset_cells(
    adata: ad.AnnData, selection: Mapping[str, Sequence] | None, where: str = "query"
) -> ad.AnnData:
    """Keep the cells whose ``obs[column]`` is in the listed values, for every column
    (:func:`selected_cells`)."""
    if not selection:
        return adata
    return _take_cells(adata, selected_cells(adata.obs, selection, where))


def _write_streamed(
    adata: ad.AnnData,
    output,
    blocks: Iterator[sp.csr_matrix],
    links: Sequence[str],
    **matrix,
) -> None:
    """``adata`` (annotations, no X) and the CSR matrix of ``blocks`` as its X (``matrix``:
    :class:`~atlasmap.io.CsrBlocks`'s dtype, max_nnz and index_dtypes), to ``output``, whole or not
    at all: the file :func:`atlasmap.io.write_h5ad` writes of them held together, each
    layer of ``links`` a link to ``/X``."""
    import h5py

    with atomic_path(output) as tmp:
        write_h5ad(adata, tmp)  # obs, var and the rest as anndata writes them
        with h5py.File(tmp, "a") as f:
            writer = CsrBlocks(f.create_group("X"), adata.shape, **matrix)
            for block in blocks:
                writer.append(block)
            writer.close()
            for key in links:
                f.require_group("layers")[key] = h5py.SoftLink("/X")


def _csr_element(path: Path, name: str) -> bool:
    """Whether the element ``name`` of the HDF5 file ``path`` is a CSR matrix."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            element = f.get(name)
            return isinstance(element, h5py.Group) and (
                element.attrs.get("encoding-type") == "csr_matrix"
            )
    except (OSError, KeyError, ValueError):
        return False  # the reader says what is wrong


def _counts_blocks(
    path: Path, counts_layer: str | None, block_rows: int
) -> Iterator[sp.csr_matrix]:
    """The counts of an h5ad query, block by block of rows, each checked (the first block
    that is not raw counts is refused, naming the file, the layer and its rows), as
    float32 CSR with sorted indices, Gene Expression features only."""
    import h5py
    from anndata.io import sparse_dataset

    with contextlib.ExitStack() as stack:
        with _read_errors(path):
            f = stack.enter_context(h5py.File(path, "r"))
            element, layer, layers = _counts_element(f, path, counts_layer)
            matrix = sparse_dataset(element)
            gex = _gene_expression(ad.io.read_elem(f["var"]))
        n = matrix.shape[0]
        columns = None if gex is None or gex.all() else gex
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            with _read_errors(path):
                block = matrix[start:stop]
            rows = "" if stop - start == n else f" (in cells {start + 1:,} to {stop:,} of {n:,})"
            block = _checked_counts(block, path, layer, layers, rows)
            yield block if columns is None else block[:, columns]


def _row_blocks(path, rows: np.ndarray, block_rows: int) -> Iterator[sp.csr_matrix]:
    """Rows ``rows`` (sorted positions) of an h5ad's X (CSR), block by block: of each
    block of ``block_rows`` rows of the file, the span from its first row kept to its
    last is read, and the kept rows taken."""
    import h5py
    from anndata.io import sparse_dataset

    with h5py.File(path, "r") as f:
        matrix = sparse_dataset(f["X"])
        n = matrix.shape[0]
        bounds = np.searchsorted(rows, np.arange(0, n + block_rows, block_rows))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            if hi > lo:
                first, last = int(rows[lo]), int(rows[hi - 1])
                span = sp.csr_matrix(matrix[first : last + 1])
                yield span[rows[lo:hi] - first]


def _load_h5ad_streamed(
    files: Mapping[str, str | os.PathLike], output, block_rows: int, **options
) -> ad.AnnData:
    """:func:`load_query` of an h5ad whose counts are CSR, to ``output`` with the counts
    streamed (:func:`_counts_blocks`); returns its annotations (obs, var; no X)."""
    import h5py

    adata = load_query(files, "h5ad", with_counts=False, **options)
    source = _role_paths(files, "h5ad")["h5ad"]
    counts_layer = options.get("counts_layer")
    with h5py.File(source, "r") as f:
        element, _, _ = _counts_element(f, source, counts_layer)
        max_nnz = int(element["indptr"][-1])
        # Held whole, the matrix keeps the index dtype it is stored with, unless cut to
        # the Gene Expression features or stored with two (then scipy's).
        stored = (element["indices"].dtype, element["indptr"].dtype)
        kept = int(element.attrs["shape"][1]) == adata.n_vars and stored[0] == stored[1]
    blocks = _counts_blocks(source, counts_layer, block_rows)
    _write_streamed(
        adata,
        output,
        blocks,
        ["counts"],
        dtype=np.float32,
        max_nnz=max_nnz,
        index_dtypes=stored if kept else None,
    )
    log.info("wrote %s: the counts streamed in blocks of %d cells", output, block_rows)
    return adata


def load_query_files(
    *,
    files: Mapping[str, str | os.PathLike],
    format: str,
    output: str | os.PathLike,
    block_rows: int | None = BLOCK_ROWS,
    **options,
) -> ad.AnnData:
    """:func:`load_query`, written to ``output`` whole or not at all.

    An h5ad whose counts are stored CSR is not held: its obs and var are read and
    worked on alone, and its counts streamed to ``output`` ``block_rows`` cells at a
    time, each block checked, cast and cut to the Gene Expression features on the way
    (a block that is not raw counts refuses the query, leaving no output). That file
    is the one the query held whole would give; the AnnData returned then is its
    annotations alone (obs and var, no X). Otherwise (other formats, a dense or CSC
    matrix, ``block_rows=None``) the query is held, written and returned whole.
    """
    if format == "h5ad" and block_rows is not None:
        source = Path(files["h5ad"]) if "h5ad" in files else None
        layer = options.get("counts_layer")
        name = "X" if layer is None else f"layers/{layer}"
        if source is not None and source.is_file() and _csr_element(source, name):
            return _load_h5ad_streamed(files, output, block_rows, **options)
    adata = load_query(files, format, **options)
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


def _annotations_beside_counts(path) -> tuple[ad.AnnData, list[str], int, np.dtype] | None:
    """Everything of an h5ad but its counts (obs, var, uns, obsm, varm, obsp, varp), the
    layers that are links to ``/X``, and X's number of entries and dtype, when its counts
    can be streamed: X stored CSR, every layer such a link (as :func:`load_query_files`
    writes it), no raw. None otherwise."""
    import h5py

    with h5py.File(path, "r") as f:
        layers = f.get("layers", {})
        linked = [
            key for key in layers if getattr(layers.get(key, getlink=True), "path", None) == "/X"
        ]
        if not _csr_element(Path(path), "X") or "raw" in f or len(linked) != len(layers):
            return None
        parts = {
            key: ad.io.read_elem(f[key])
            for key in ("obs", "var", "uns", "obsm", "varm", "obsp", "varp")
            if key in f
        }
        nnz, dtype = int(f["X/indptr"][-1]), f["X/data"].dtype
    return ad.AnnData(**parts), linked, nnz, dtype


def subset_query_files(
    *,
    input: str | os.PathLike,
    output: str | os.PathLike,
    selection: Mapping[str, Sequence] | None,
    samples: str | os.PathLike | None = None,
    sample_column: str = "Sample_ID",
    block_rows: int | None = BLOCK_ROWS,
) -> None:
    """:func:`subset_cells` from file to file.

    With no selection every cell is kept and ``input`` is copied byte for byte
    (by the kernel) instead of being decoded and written again: at 200k cells
    that saves holding 4 GB in memory. Not a hard link: Snakemake touches its
    outputs, which would touch the input too.

    With one, the cells are chosen on obs alone, and where the counts are X stored CSR
    (the file load_query writes) they are streamed, the kept rows of ``block_rows``
    cells of the file at a time, never held whole: the file written is the one the
    subset held whole would give. ``block_rows=None`` holds it whole.
    """
    if not selection:
        if samples:
            obs = read_annotations(input, obsm=(), uns=False).obs
            _write_table(sample_table(obs, obs, sample_column, str(input)), samples)
        with atomic_path(output) as tmp:
            shutil.copyfile(input, tmp)
        log.info("no subset configured: all cells kept, %s copied to %s", input, output)
        return
    beside = None if block_rows is None else _annotations_beside_counts(input)
    if beside is None:
        loaded = read_h5ad(input)
        subset = subset_cells(loaded, selection, where=str(input))
        if samples:
            _write_table(sample_table(loaded.obs, subset.obs, sample_column, str(input)), samples)
        write_h5ad(subset, output)
        return
    loaded, links, nnz, dtype = beside
    rows = selected_cells(loaded.obs, selection, where=str(input))
    subset = _take_cells(loaded, rows)
    if samples:
        _write_table(sample_table(loaded.obs, subset.obs, sample_column, str(input)), samples)
    blocks = _row_blocks(input, rows, block_rows)
    _write_streamed(subset, output, blocks, links, dtype=dtype, max_nnz=nnz)


def _write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
