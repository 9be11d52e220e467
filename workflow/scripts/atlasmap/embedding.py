"""Neighbours (Annoy) and UMAP on the scANVI latent space of the expanded atlas."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anndata as ad
import numpy as np
from scipy.sparse import csr_matrix
from sklearn_ann.kneighbors.annoy import AnnoyTransformer

from .contract import EMBEDDING_KEY
from .errors import AtlasmapInputError

log = logging.getLogger(__name__)

QUERY_UMAP_KEY = "X_umap_query"


@dataclass(frozen=True)
class EmbeddingSettings:
    n_neighbors: int = 15
    n_trees: int = 5
    search_k: int = -1
    metric: str = "euclidean"
    min_dist: float = 0.5
    spread: float = 1.0
    query_alone: bool = True
    seed: int = 0
    n_jobs: int = 1


class ThreadedAnnoyTransformer(AnnoyTransformer):
    """sklearn-ann's AnnoyTransformer with the per-cell searches of ``fit_transform``
    spread over ``n_jobs`` threads.

    Annoy releases the GIL while it searches, so threads scale; at 300k cells the
    searches, not the tree building, are most of the time. The index is built on
    one thread, so the graph does not depend on ``n_jobs``.
    """

    def __init__(self, n_neighbors=5, *, metric="euclidean", n_trees=10, search_k=-1, n_jobs=1):
        super().__init__(n_neighbors, metric=metric, n_trees=n_trees, search_k=search_k)
        self.n_jobs = n_jobs

    def fit_transform(self, X, y=None):
        self.fit(X)
        n_cells, k = self.n_samples_fit_, self.n_neighbors + 1  # each cell is its own first
        indices = np.empty((n_cells, k), dtype=np.int64)
        distances = np.empty((n_cells, k), dtype=np.float64)

        def search(cells: range) -> None:
            for i in cells:
                indices[i], distances[i] = self.annoy_.get_nns_by_item(
                    i, k, self.search_k, include_distances=True
                )

        n_jobs = max(self.n_jobs, 1)
        step = max(-(-n_cells // n_jobs), 1)
        with ThreadPoolExecutor(n_jobs) as pool:
            list(
                pool.map(
                    search, [range(s, min(s + step, n_cells)) for s in range(0, n_cells, step)]
                )
            )
        if self.metric == "sqeuclidean":
            distances **= 2
        return csr_matrix(
            (distances.ravel(), indices.ravel(), np.arange(0, n_cells * k + 1, k)),
            shape=(n_cells, n_cells),
        )


def annoy_neighbors(adata: ad.AnnData, settings: EmbeddingSettings, key_added: str | None = None):
    """``sc.pp.neighbors`` on the scANVI latent with an Annoy transformer."""
    import scanpy as sc

    if EMBEDDING_KEY not in adata.obsm:
        raise AtlasmapInputError(f"no obsm[{EMBEDDING_KEY!r}]: was this file written by map_query?")
    transformer = ThreadedAnnoyTransformer(
        n_neighbors=settings.n_neighbors,
        n_trees=settings.n_trees,
        search_k=settings.search_k,
        metric=settings.metric,
        n_jobs=settings.n_jobs,
    )
    sc.pp.neighbors(
        adata,
        n_neighbors=settings.n_neighbors,
        use_rep=EMBEDDING_KEY,
        transformer=transformer,
        key_added=key_added,
    )


def neighbors_umap(
    adata: ad.AnnData, settings: EmbeddingSettings = EmbeddingSettings()
) -> ad.AnnData:
    """Add the Annoy neighbour graph and ``X_umap`` for all cells, and for the query alone.

    The query-alone UMAP (the tutorial's view of an embed-mode mapping) goes to
    ``obsm["X_umap_query"]``, NaN for reference cells.
    """
    import scanpy as sc

    annoy_neighbors(adata, settings)
    sc.tl.umap(
        adata, min_dist=settings.min_dist, spread=settings.spread, random_state=settings.seed
    )
    log.info("UMAP of %d cells on %d Annoy neighbours", adata.n_obs, settings.n_neighbors)
    if settings.query_alone:
        is_query = (adata.obs["source"] == "query").to_numpy()
        query = ad.AnnData(obs=adata.obs.loc[is_query, []].copy())
        query.obsm[EMBEDDING_KEY] = adata.obsm[EMBEDDING_KEY][is_query]
        annoy_neighbors(query, settings)
        sc.tl.umap(
            query, min_dist=settings.min_dist, spread=settings.spread, random_state=settings.seed
        )
        coords = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
        coords[is_query] = query.obsm["X_umap"]
        adata.obsm[QUERY_UMAP_KEY] = coords
        log.info("query-alone UMAP of %d cells", int(is_query.sum()))
    return adata


def embedding_settings(
    neighbors_config: dict, umap_config: dict, seed: int, n_jobs: int = 1
) -> EmbeddingSettings:
    return EmbeddingSettings(
        n_neighbors=neighbors_config["n_neighbors"],
        n_trees=neighbors_config["n_trees"],
        search_k=neighbors_config["search_k"],
        metric=neighbors_config["metric"],
        min_dist=umap_config["min_dist"],
        spread=umap_config["spread"],
        query_alone=umap_config["query_alone"],
        seed=seed,
        n_jobs=n_jobs,
    )


def neighbors_umap_files(
    *,
    embedded: str | os.PathLike,
    predictions: str | os.PathLike,
    mapped: str | os.PathLike,
    settings: EmbeddingSettings,
) -> ad.AnnData:
    """:func:`neighbors_umap` on map_query's file, with the calls, to the delivered ``mapped.h5ad``."""
    import pandas as pd

    from .calls import attach_calls
    from .io import read_h5ad, write_h5ad

    adata = read_h5ad(embedded)
    attach_calls(adata, pd.read_csv(predictions, sep="\t", dtype={"barcode": str}))
    adata = neighbors_umap(adata, settings)
    write_h5ad(adata, mapped)
    return adata
