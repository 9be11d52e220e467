"""Writing outputs whole or not at all, and small I/O helpers."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anndata as ad

GZIP_MAGIC = b"\x1f\x8b"


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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Write ``adata`` to ``path`` atomically (gzip-free, fast to reread)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


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
