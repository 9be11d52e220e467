"""Neighbours (Annoy) and UMAP on the scANVI latent space of the expanded atlas."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import anndata as ad
import numpy as np

from .errors import AtlasmapInputError
from .mapping import EMBEDDING_KEY

log = logging.getLogger(__name__)

QUERY_UMAP_KEY = "X_umap_query"


@dataclass(frozen=True)
class EmbeddingSettings:
    n_neighbors: int = 15
    n_trees: int = 10
    search_k: int = -1
    metric: str = "euclidean"
    min_dist: float = 0.5
    spread: float = 1.0
    query_alone: bool = True
    seed: int = 0


def annoy_neighbors(adata: ad.AnnData, settings: EmbeddingSettings, key_added: str | None = None):
    """``sc.pp.neighbors`` on the scANVI latent with sklearn-ann's AnnoyTransformer."""
    import scanpy as sc
    from sklearn_ann.kneighbors.annoy import AnnoyTransformer

    if EMBEDDING_KEY not in adata.obsm:
        raise AtlasmapInputError(f"no obsm[{EMBEDDING_KEY!r}]: was this file written by map_query?")
    transformer = AnnoyTransformer(
        n_neighbors=settings.n_neighbors,
        n_trees=settings.n_trees,
        search_k=settings.search_k,
        metric=settings.metric,
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


def embedding_settings(neighbors_config: dict, umap_config: dict, seed: int) -> EmbeddingSettings:
    return EmbeddingSettings(
        n_neighbors=neighbors_config["n_neighbors"],
        n_trees=neighbors_config["n_trees"],
        search_k=neighbors_config["search_k"],
        metric=neighbors_config["metric"],
        min_dist=umap_config["min_dist"],
        spread=umap_config["spread"],
        query_alone=umap_config["query_alone"],
        seed=seed,
    )


def neighbors_umap_files(
    embedded: str | os.PathLike, mapped: str | os.PathLike, settings: EmbeddingSettings
) -> ad.AnnData:
    """:func:`neighbors_umap` from map_query's file to the delivered ``mapped.h5ad``."""
    from .io import write_h5ad

    adata = neighbors_umap(ad.read_h5ad(embedded), settings)
    write_h5ad(adata, mapped)
    return adata
