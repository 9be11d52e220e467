"""A synthetic study at the real study's size, generated sparse (never a dense matrix).

The demo generator (atlasmap.demo) draws a dense cells x genes mean matrix,
fine at 12k x 2k but 48 GB at 200k x 30k. Here each cell's UMIs are drawn
directly: per cell type, a gene distribution (a shared baseline plus the
type's programme on a few hundred genes, and a batch shift per sample), and
per cell a multinomial sample of its library size, built chunk by chunk as CSR.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from atlasmap.demo import CELL_TYPES, LEVELS, deposit_names


def _gene_names(n_genes: int, rng) -> pd.DataFrame:
    ids = [f"ENSG{100_000_000 + i:011d}" for i in rng.permutation(n_genes)]
    return pd.DataFrame({"gene_ids": ids, "gene_symbols": [f"GENE{i:05d}" for i in range(n_genes)]})


def _type_log_weights(rng, n_genes: int) -> np.ndarray:
    baseline = rng.normal(0, 1.5, n_genes)
    weights = np.tile(baseline, (len(CELL_TYPES), 1))
    for t in range(len(CELL_TYPES)):
        for depth, (size, effect) in enumerate([(300, 2.0), (150, 1.5), (80, 1.0), (40, 0.8)]):
            node = CELL_TYPES[t][: depth + 1]
            node_rng = np.random.default_rng(zlib.crc32("/".join(node).encode()))
            genes = node_rng.choice(n_genes, size, replace=False)
            weights[t, genes] += effect
    return weights


def _draw(rng, log_weights, types, shift, umis) -> sp.csr_matrix:
    """Multinomial UMIs per cell, sparse, from the per-type gene distributions."""
    n_genes = log_weights.shape[1]
    rows, cols = [], []
    library = rng.poisson(umis, len(types)).clip(50)
    for t in np.unique(types):
        cells = np.flatnonzero(types == t)
        p = np.exp(log_weights[t] + shift - (log_weights[t] + shift).max())
        p /= p.sum()
        draws = rng.choice(n_genes, size=int(library[cells].sum()), p=p)
        rows.append(np.repeat(cells, library[cells]))
        cols.append(draws)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    counts = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(types), n_genes)
    )
    counts.sum_duplicates()
    return counts


def _draw_chunk(job) -> tuple[np.ndarray, sp.csr_matrix]:
    """One chunk of cells from its own seed: a worker's share of :meth:`Study._parts`."""
    log_weights, share, shift, umis, n, seed = job
    rng = np.random.default_rng(seed)
    types = rng.choice(len(share), n, p=share)
    return types, _draw(rng, log_weights, types, shift, umis)


class Study:
    """One synthetic study: a gene table and cell-type distributions, from a seed."""

    def __init__(
        self, n_genes: int = 30_000, seed: int = 0, umis: int = 1_500, chunk: int = 20_000
    ):
        self.rng = np.random.default_rng(seed)
        self.genes = _gene_names(n_genes, self.rng)
        self.log_weights = _type_log_weights(self.rng, n_genes)
        self.share = self.rng.dirichlet(np.full(len(CELL_TYPES), 5.0))
        self.labels = np.array(CELL_TYPES, dtype=object)
        self.umis, self.chunk, self.n_genes = umis, chunk, n_genes

    def _cells(self, n: int, shift: np.ndarray):
        for cells in np.array_split(np.arange(n), max(1, n // self.chunk)):
            types = self.rng.choice(len(CELL_TYPES), len(cells), p=self.share)
            yield types, _draw(self.rng, self.log_weights, types, shift, self.umis)

    def _parts(self, groups, processes: int = 1):
        """(group, types, counts) per chunk of cells, for ``groups`` yielding (cells, shift).

        One process draws everything from the study's own stream (what the files
        written by :meth:`write_atlas` and :meth:`write_query` hold). More
        processes draw each chunk from a seed of its own taken from that stream:
        the same distributions, other cells, ``processes`` times as fast.
        """
        if processes <= 1:
            for g, (n, shift) in enumerate(groups):
                for types, counts in self._cells(n, shift):
                    yield g, types, counts
            return
        import multiprocessing

        jobs, owner = [], []
        for g, (n, shift) in enumerate(groups):
            for cells in np.array_split(np.arange(n), max(1, n // self.chunk)):
                seed = int(self.rng.integers(2**63))
                jobs.append((self.log_weights, self.share, shift, self.umis, len(cells), seed))
                owner.append(g)
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for g, (types, counts) in zip(owner, pool.imap(_draw_chunk, jobs), strict=True):
                yield g, types, counts

    def atlas(self, n_cells: int, n_donors: int = 8, processes: int = 1) -> ad.AnnData:
        """The atlas in memory: raw counts in X and layers["counts"], Level_1-4 and Sample_ID."""
        sizes = np.array_split(np.arange(n_cells), n_donors)
        groups = ((len(size), self.rng.normal(0, 0.25, self.n_genes)) for size in sizes)
        parts, obs = [], []
        for d, types, counts in self._parts(groups, processes):
            parts.append(counts)
            frame = pd.DataFrame(self.labels[types], columns=list(LEVELS))
            frame["Sample_ID"] = f"ATLAS_D{d + 1:02d}"
            obs.append(frame)
        obs = pd.concat(obs, ignore_index=True).astype("category")
        obs.index = [f"atlas_{i:07d}" for i in range(len(obs))]
        counts = sp.vstack(parts).tocsr()
        var = self.genes.set_index("gene_symbols", drop=False)
        var.index.name = None
        atlas = ad.AnnData(X=counts, obs=obs, var=var)
        atlas.layers["counts"] = counts
        return atlas

    def write_atlas(self, path: str | os.PathLike, n_cells: int, n_donors: int = 8) -> Path:
        atlas = self.atlas(n_cells, n_donors)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atlas.write_h5ad(path)
        return Path(path)

    def query(self, n_cells: int, n_samples: int = 14, processes: int = 1) -> ad.AnnData:
        """The query in memory: raw counts in X; patients, tissue and author_cell_type
        (the truth, Level_4) per cell; var as the deposit's features file has it."""
        tech = self.rng.normal(0, 0.4, self.n_genes)
        sizes = np.array_split(np.arange(n_cells), n_samples)
        groups = ((len(size), tech + self.rng.normal(0, 0.2, self.n_genes)) for size in sizes)
        parts, meta = [], []
        for s, types, counts in self._parts(groups, processes):
            parts.append(counts)
            meta.append(
                pd.DataFrame(
                    {
                        "patients": f"PA{s + 1:02d}",
                        "tissue": "tumour",
                        "author_cell_type": self.labels[types, 3],
                    }
                )
            )
        meta = pd.concat(meta, ignore_index=True)
        meta.index = [f"BC{i:09d}-1" for i in range(len(meta))]
        var = self.genes.set_index("gene_symbols", drop=False)
        var.index.name = None
        return ad.AnnData(X=sp.vstack(parts).tocsr(), obs=meta, var=var)

    def write_query(self, folder: str | os.PathLike, n_cells: int, n_samples: int = 14) -> dict:
        """A GEO-shaped deposit (BENCH_sc_*) of ``n_cells`` over ``n_samples`` patients."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        query = self.query(n_cells, n_samples)
        meta, counts = query.obs, query.X
        names = deposit_names("BENCH_sc")
        paths = {k: folder / v for k, v in names.items()}
        with gzip.open(paths["matrix"], "wb", compresslevel=1) as fh:
            scipy.io.mmwrite(fh, counts.T.tocoo(), field="integer")
        features = self.genes.assign(feature_types="Gene Expression")
        features[["gene_ids", "gene_symbols", "feature_types"]].to_csv(
            paths["features"], sep="\t", header=False, index=False
        )
        pd.Series(meta.index).to_csv(paths["barcodes"], header=False, index=False)
        meta.to_csv(paths["metadata"])
        return names


def write_query_h5ad(
    study: Study,
    path: str | os.PathLike,
    n_cells: int,
    n_samples: int = 50,
    processes: int = 1,
) -> dict:
    """The query as one h5ad (samples S01, S02, ... in ``patients``), written chunk by
    chunk so that a million cells never sit in memory as one matrix.

    Cells are drawn as :meth:`Study.query` draws them (a technology shift, one more per
    sample, the study's cell types); X is raw counts as float32 CSR, appended to
    resizable datasets by the workflow's own block writer (``atlasmap.io.CsrBlocks``,
    32-bit indices, 64-bit offsets only past 2^31 entries); obs and var go in through
    ``anndata.io.write_elem``. Written under a temporary name, then renamed: a file at
    ``path`` is whole. Returns what was written: cells, nnz, bytes, seconds.
    """
    import time

    import h5py
    from anndata.io import write_elem
    from atlasmap.io import CsrBlocks

    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tech = study.rng.normal(0, 0.4, study.n_genes)
    sizes = np.array_split(np.arange(n_cells), n_samples)
    groups = ((len(size), tech + study.rng.normal(0, 0.2, study.n_genes)) for size in sizes)
    samples, types = [], []
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = CsrBlocks(
            f.create_group("X"),
            (n_cells, study.n_genes),
            np.float32,
            max_nnz=n_cells * study.n_genes,
            index_dtypes=(np.int32, np.int32),
        )
        for s, chunk_types, counts in study._parts(groups, processes):
            x.append(counts)
            samples.append(np.full(len(chunk_types), s))
            types.append(chunk_types)
        x.close()
        nnz = x.nnz
        names = np.array([f"S{s + 1:02d}" for s in range(n_samples)])
        obs = pd.DataFrame(
            {
                "patients": pd.Categorical(names[np.concatenate(samples)], categories=names),
                "author_cell_type": pd.Categorical(study.labels[np.concatenate(types), 3]),
            },
            index=[f"BC{i:09d}-1" for i in range(n_cells)],
        )
        var = study.genes.set_index("gene_symbols", drop=False)
        var.index.name = None
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for empty in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            write_elem(f, empty, {})
    os.replace(tmp, path)
    return {
        "cells": n_cells,
        "samples": n_samples,
        "genes": study.n_genes,
        "nnz": nnz,
        "nnz_per_cell": round(nnz / n_cells, 1),
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }
