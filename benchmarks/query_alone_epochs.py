"""How many epochs the query-alone UMAP needs when it starts from the projected places.

    .venv/bin/python benchmarks/query_alone_epochs.py                 # 100k query cells
    .venv/bin/python benchmarks/query_alone_epochs.py --cells 20000 --epochs 30 50

A synthetic latent (10 dimensions, 20 types in a 100k-cell reference, the query
also holding a 21st type the reference lacks) is laid out as the workflow does
with ``umap.layout: reference``: the reference alone, the query projected onto
it, then the query alone from its projected places for each number of epochs
(0: umap-learn's default, 200 above 10k cells), and once from a spectral start.
For each layout: the share of query cells whose 15 nearest cells in the layout
are mostly of their own type, over all cells and over the unseen type's cells.
Timings are of the optimisation alone, in one run; compare them with each other.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
from atlasmap import embedding
from atlasmap.contract import EMBEDDING_KEY

N_TYPES = 21  # the last one only in the query


def neighbourhood_purity(coords: np.ndarray, types: np.ndarray) -> tuple[float, float]:
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=16).fit(coords).kneighbors(coords)[1][:, 1:]
    majority = np.array([np.bincount(row, minlength=N_TYPES).argmax() for row in types[nearest]])
    own = majority == types
    return float(own.mean()), float(own[types == N_TYPES - 1].mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000, help="query cells")
    parser.add_argument("--reference", type=int, default=100_000, help="reference cells")
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 50, 100, 0])
    args = parser.parse_args(argv)
    import scanpy as sc

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 2.0, (N_TYPES, 10))

    def cells(n, n_types):
        types = rng.integers(0, n_types, n)
        return (centres[types] + rng.normal(0, 1, (n, 10))).astype(np.float32), types

    reference_latent, _ = cells(args.reference, N_TYPES - 1)
    query_latent, query_types = cells(args.cells, N_TYPES)
    settings = embedding.EmbeddingSettings()
    names = pd.Index([f"r{i}" for i in range(args.reference)])
    layout = embedding.layout_reference(names, reference_latent, settings)
    projected = embedding.project_onto_reference(query_latent, layout, settings)
    rows = [("projected onto the reference", "–", *neighbourhood_purity(projected, query_types))]
    query = ad.AnnData(obs=pd.DataFrame(index=[f"q{i}" for i in range(args.cells)]))
    query.obsm[EMBEDDING_KEY] = query_latent
    embedding.annoy_neighbors(query, settings)
    umap = {"min_dist": settings.min_dist, "spread": settings.spread, "random_state": 0}
    for epochs in [*args.epochs, "spectral"]:
        start = time.perf_counter()
        if epochs == "spectral":
            sc.tl.umap(query, **umap)
            what = "query alone, spectral start, default epochs"
        else:
            sc.tl.umap(query, **umap, init_pos=projected, maxiter=epochs or None)
            what = f"query alone from the projection, {epochs or 'default'} epochs"
        seconds = f"{time.perf_counter() - start:.0f}"
        rows.append((what, seconds, *neighbourhood_purity(query.obsm["X_umap"], query_types)))
        print(rows[-1], flush=True)
    print(f"\n{args.cells:,} query cells, {args.reference:,} reference cells\n")
    print("| layout | seconds | own-type neighbourhoods, all | same, unseen type |")
    print("|---|---|---|---|")
    for what, seconds, everyone, unseen in rows:
        print(f"| {what} | {seconds} | {everyone:.4f} | {unseen:.4f} |")


if __name__ == "__main__":
    main()
