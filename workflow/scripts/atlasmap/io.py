"""Writing outputs whole or not at all, and small I/O helpers."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

GZIP_MAGIC = b"\x1f\x8b"


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so a failed step never leaves a partial output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes), dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600); an output gets the mode any new
        # file gets here, so that a project's group can read the results.
        if tmp.is_file():
            tmp.chmod(0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def layers_that_are_x(adata: ad.AnnData) -> list[str]:
    """The layers that are ``X`` itself (one matrix, two names: raw counts loaded once)."""
    return [key for key, value in adata.layers.items() if value is adata.X]


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Write ``adata`` to ``path`` atomically (gzip-free, fast to reread).

    A layer that is ``X`` itself is stored once: as an HDF5 soft link to
    ``/X``, which anndata, scanpy and h5py read as the matrix it points to.
    """
    import h5py

    shared = layers_that_are_x(adata)
    with atomic_path(path) as tmp:
        for key in shared:
            del adata.layers[key]
        try:
            adata.write_h5ad(tmp)
        finally:
            for key in shared:
                adata.layers[key] = adata.X
        if shared:
            with h5py.File(tmp, "a") as f:
                for key in shared:
                    f.require_group("layers")[key] = h5py.SoftLink("/X")


def read_annotations(
    path: str | os.PathLike, obsm: Iterable[str] | None = None, uns: bool = True
) -> ad.AnnData:
    """obs, ``obsm`` (all keys by default) and uns of an h5ad file, and nothing else.

    Unlike ``backed="r"``, which still loads every layer, graph and embedding (at
    300k cells, the counts and two neighbour graphs: seconds and gigabytes), this
    reads only the parts named. The AnnData returned has no ``X`` and no ``var``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        stored = f.get("obsm", {})
        keys = list(stored) if obsm is None else [key for key in obsm if key in stored]
        return ad.AnnData(
            obs=ad.io.read_elem(f["obs"]),
            obsm={key: ad.io.read_elem(stored[key]) for key in keys},
            uns=ad.io.read_elem(f["uns"]) if uns and "uns" in f else None,
        )


def write_beside_counts(adata: ad.AnnData, counts_from: str | os.PathLike, path) -> None:
    """Write to ``path`` the h5ad file ``counts_from`` with ``adata``'s obs, obsm, obsp and
    uns in place of its own, whole or not at all: the file's count matrices (X, layers)
    and var are copied on disk, never read, so a job that adds annotations to a
    million cells holds the annotations alone."""
    import shutil

    import h5py

    with atomic_path(path) as tmp:
        shutil.copyfile(counts_from, tmp)
        with h5py.File(tmp, "a") as f:
            for key in ("obs", "obsm", "obsp", "uns"):
                if key in f:
                    del f[key]
                value = getattr(adata, key)
                ad.io.write_elem(f, key, value if key == "obs" else dict(value))


def read_h5ad(path: str | os.PathLike) -> ad.AnnData:
    """Read an h5ad file whole; a layer stored as a link to ``/X`` becomes ``X`` itself.

    (anndata would read the linked matrix twice, doubling the memory.)
    """
    import h5py

    with h5py.File(path, "r") as f:
        layers = f.get("layers", {})
        linked = [
            key for key in layers if getattr(layers.get(key, getlink=True), "path", None) == "/X"
        ]
        if not linked or "raw" in f:
            return ad.read_h5ad(path)
        parts = {
            key: ad.io.read_elem(f[key])
            for key in ("X", "obs", "var", "uns", "obsm", "varm", "obsp", "varp")
            if key in f
        }
        parts["layers"] = {key: ad.io.read_elem(layers[key]) for key in layers if key not in linked}
    adata = ad.AnnData(**parts)
    for key in linked:
        adata.layers[key] = adata.X
    return adata


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_gzip(path: str | os.PathLike):
    """A gzip file opened for reading through ISA-L's inflate (``isal.igzip``): the
    same bytes and the same end checks (CRC, length) as the standard library's
    gzip, at about 3x its speed (a 200k-cell matrix.mtx.gz: 3.9 s, not 10.9 s)."""
    from isal import igzip

    return igzip.open(path, "rb")


def gzip_errors() -> tuple[type[BaseException], ...]:
    """What reading a cut or damaged gzip file raises, ISA-L's reader included."""
    import zlib

    from isal.isal_zlib import error as isal_error

    return (OSError, EOFError, zlib.error, isal_error)


def gzip_open_write(path: str | os.PathLike):
    """A gzip stream with a fixed header time, so equal data give equal bytes."""
    raw = open(path, "wb")  # noqa: SIM115 - closed together with the gzip stream
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    # Close the underlying file when the gzip stream is closed.
    original_close = gz.close

    def close() -> None:
        try:
            original_close()
        finally:
            raw.close()

    gz.close = close  # type: ignore[method-assign]
    return gz


def copy_as_gzip(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy ``src`` to ``dest`` atomically, gzip-compressing it if it is not."""
    with atomic_path(dest) as tmp:
        if is_gzip(src):
            shutil.copyfile(src, tmp)
        else:
            with open(src, "rb") as fin, gzip_open_write(tmp) as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)


class CsrBlocks:
    """A CSR matrix written to an HDF5 group row block by row block, as anndata's
    write_elem writes one held whole, so that a matrix larger than memory is written
    block by block (a query loaded or subset, a scattered query gathered). The index arrays
    take the dtypes the matrix held whole would have: ``index_dtypes`` (indices, indptr)
    where given, else scipy's for a matrix it made, int32 where ``max_nnz`` entries and
    the shape fit; and the datasets are chunked by 2^20 entries, not by h5py's guess."""

    def __init__(
        self, group, shape: tuple[int, int], dtype, max_nnz: int, index_dtypes=None
    ) -> None:
        self.group, self.shape, self.rows, self.nnz = group, shape, 0, 0
        if index_dtypes is None:
            fits = max(max_nnz, *shape) < 2**31
            index_dtypes = (np.int32, np.int32) if fits else (np.int64, np.int64)
        self.indptr_dtype = np.dtype(index_dtypes[1])
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        chunks = (int(min(max(max_nnz, 1), 1 << 20)),)
        self.data, self.indices = (
            group.create_dataset(name, (0,), dtype=kind, maxshape=(None,), chunks=chunks)
            for name, kind in (("data", dtype), ("indices", index_dtypes[0]))
        )
        self.indptr = [np.zeros(1, dtype=np.int64)]

    def append(self, block: sp.csr_matrix) -> None:
        if block.shape[1] != self.shape[1]:
            raise RuntimeError(f"a block of {block.shape[1]} columns for {self.shape[1]}")
        n = block.nnz
        for dataset, values in ((self.data, block.data), (self.indices, block.indices)):
            dataset.resize((self.nnz + n,))
            dataset[self.nnz : self.nnz + n] = values
        self.indptr.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz += n
        self.rows += block.shape[0]

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise RuntimeError(f"wrote {self.rows} rows of a matrix of {self.shape[0]}")
        indptr = np.concatenate(self.indptr)
        if self.nnz <= np.iinfo(self.indptr_dtype).max:
            indptr = indptr.astype(self.indptr_dtype)
        self.group.create_dataset("indptr", data=indptr)
        self.group.attrs["shape"] = self.shape
