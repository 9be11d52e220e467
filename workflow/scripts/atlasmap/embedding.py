"""Neighbours (Annoy) and UMAP on the scANVI latent space of the expanded atlas.

Two layouts of the expanded atlas: ``reference`` (the default) lays out the
atlas cells once per reference (rule layout_reference) and projects each
query's cells onto that fixed layout, as Azimuth does, with umap-learn's own
transform step fed by the reference's Annoy index; ``joint`` lays out all cells
together, as the tutorial does.

The Annoy index (sklearn-ann's transformer, for scanpy's neighbour graph) is built
here; its searches and their refinement are :mod:`atlasmap.neighbours`'s, numba's
on-disk cache for umap-learn :mod:`atlasmap.numba_cache`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from annoy import AnnoyIndex
from scipy.sparse import coo_matrix, csr_matrix
from sklearn.utils.validation import validate_data
from sklearn_ann.kneighbors.annoy import AnnoyTransformer

from .contract import (
    EMBEDDING_KEY,
    QUERY_UMAP_KEY,
    REFERENCE_GRAPH_KEY,
    UMAP_KEY,
    atlas_mask,
    query_mask,
)
from .errors import AtlasmapInputError
from .neighbours import annoy_nearest, refine_neighbours, search_rows, spatial_order
from .numba_cache import cache_umap_kernels
from .settings import EmbeddingSettings

log = logging.getLogger(__name__)

LAYOUTS = ("reference", "joint")


class ThreadedAnnoyTransformer(AnnoyTransformer):
    """sklearn-ann's AnnoyTransformer with the per-cell searches of ``fit_transform``
    spread over ``n_jobs`` threads, and ``refine`` passes of :func:`refine_neighbours`
    after them.

    At 300k cells the searches, not the tree building, are most of the time; one
    pass of the local join finds more of the exact neighbours than the same time
    spent on a deeper Annoy search (benchmarks/tune_neighbors.md). The trees are
    built on one thread (:meth:`fit`), so the graph depends neither on ``n_jobs`` nor
    on the machine. ``neighbors_`` keeps each cell's neighbours (itself first), for
    searches that refine against this graph.
    """

    def __init__(
        self, n_neighbors=5, *, metric="euclidean", n_trees=10, search_k=-1, refine=0, n_jobs=1
    ):
        super().__init__(n_neighbors, metric=metric, n_trees=n_trees, search_k=search_k)
        self.refine = refine
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        """sklearn-ann's fit, but the trees built on one thread: Annoy's own build runs
        one thread per core of the machine, and its trees differ with their number (on
        20,000 cells, 17% of a 1-thread index's neighbours were a 2-thread one's), so a
        laptop and a cluster node would lay the same cells out differently."""
        X = validate_data(self, X)
        self.n_samples_fit_ = X.shape[0]
        metric = self.metric if self.metric != "sqeuclidean" else "euclidean"
        self.annoy_ = AnnoyIndex(X.shape[1], metric=metric)
        for i, x in enumerate(X):
            self.annoy_.add_item(i, x.tolist())
        self.annoy_.build(self.n_trees, n_jobs=1)
        return self

    def fit_transform(self, X, y=None):
        self.fit(X)
        n_cells, k = self.n_samples_fit_, self.n_neighbors + 1  # each cell is its own first
        indices = np.empty((n_cells, k), dtype=np.int64)
        distances = np.empty((n_cells, k), dtype=np.float64)

        def search(i: int):
            def by_item(n, depth):
                return self.annoy_.get_nns_by_item(i, n, depth, include_distances=True)

            return annoy_nearest(by_item, k, self.search_k, self.annoy_)

        order = spatial_order(X)
        search_rows(search, indices, distances, self.n_jobs, order)
        if self.refine:
            indices, distances = refine_neighbours(
                X,
                indices,
                passes=self.refine,
                metric=self.metric,
                n_jobs=self.n_jobs,
                query_order=order,
            )
        self.neighbors_ = indices
        if self.metric == "sqeuclidean":
            distances **= 2
        return csr_matrix(
            (distances.ravel(), indices.ravel(), np.arange(0, n_cells * k + 1, k)),
            shape=(n_cells, n_cells),
        )


def annoy_neighbors(
    adata: ad.AnnData, settings: EmbeddingSettings, key_added: str | None = None
) -> ThreadedAnnoyTransformer:
    """``sc.pp.neighbors`` on the scANVI latent with an Annoy transformer (returned: its
    ``annoy_`` is the index of the cells)."""
    import scanpy as sc

    if EMBEDDING_KEY not in adata.obsm:
        raise AtlasmapInputError(f"no obsm[{EMBEDDING_KEY!r}]: was this file written by map_query?")
    cache_umap_kernels()
    transformer = ThreadedAnnoyTransformer(
        n_neighbors=settings.n_neighbors,
        n_trees=settings.n_trees,
        search_k=settings.search_k,
        refine=settings.refine,
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
    return transformer


@dataclass(frozen=True)
class ReferenceLayout:
    """The atlas cells' UMAP, the Annoy index of their latent and their neighbour graph
    (each cell's neighbours, itself first; rule layout_reference)."""

    cells: pd.Index
    coords: np.ndarray
    index: AnnoyIndex
    metric: str
    neighbors: np.ndarray


def _umap(adata: ad.AnnData, settings: EmbeddingSettings, init_pos=None, n_epochs=None) -> None:
    import scanpy as sc

    cache_umap_kernels()
    sc.tl.umap(
        adata,
        min_dist=settings.min_dist,
        spread=settings.spread,
        random_state=settings.seed,
        maxiter=n_epochs,
        **({} if init_pos is None else {"init_pos": np.asarray(init_pos, dtype=np.float32)}),
    )


def layout_reference(
    cells: pd.Index, latent: np.ndarray, settings: EmbeddingSettings = EmbeddingSettings()
) -> ReferenceLayout:
    """UMAP of the atlas cells alone on their Annoy graph, and that Annoy index."""
    if len(cells) < 2:
        raise AtlasmapInputError("the reference needs at least two cells to lay out")
    reference = ad.AnnData(obs=pd.DataFrame(index=pd.Index(cells).astype(str)))
    reference.obsm[EMBEDDING_KEY] = np.asarray(latent, dtype=np.float32)
    transformer = annoy_neighbors(reference, settings)
    _umap(reference, settings)
    log.info("reference UMAP of %d cells on %d Annoy neighbours", len(cells), settings.n_neighbors)
    return ReferenceLayout(
        reference.obs_names,
        reference.obsm[UMAP_KEY],
        transformer.annoy_,
        settings.metric,
        transformer.neighbors_.astype(np.int32),
    )


def search_reference(
    reference: ReferenceLayout, latent: np.ndarray, k: int, settings: EmbeddingSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference cells of each row of ``latent``: the reference's Annoy
    index searched, then ``settings.refine`` passes through the reference's own graph."""
    n_cells = latent.shape[0]
    indices = np.empty((n_cells, k), dtype=np.int32)
    distances = np.empty((n_cells, k), dtype=np.float32)

    def search(i: int):
        def by_vector(n, depth):
            return reference.index.get_nns_by_vector(latent[i], n, depth, include_distances=True)

        return annoy_nearest(by_vector, k, settings.search_k, reference.index)

    order = spatial_order(latent)
    search_rows(search, indices, distances, settings.n_jobs, order)
    if settings.refine and n_cells:
        found, measured = refine_neighbours(
            latent,
            indices,
            reference=_reference_latent(reference),
            graph=reference.neighbors,
            passes=settings.refine,
            metric=reference.metric,
            n_jobs=settings.n_jobs,
            query_order=order,
        )
        indices, distances = found.astype(np.int32), measured.astype(np.float32)
    return indices, distances


def _reference_latent(reference: ReferenceLayout) -> np.ndarray:
    """The reference cells' latent, as Annoy holds it (float32)."""
    index = reference.index
    return np.array([index.get_item_vector(i) for i in range(index.get_n_items())], np.float32)


def start_positions(graph: csr_matrix, coords: np.ndarray) -> np.ndarray:
    """Where umap-learn's ``init_graph_transform`` starts new points, as one sparse
    product instead of its Python loop over rows (34 s at 200k cells, now well under one):
    the membership-weighted mean of their reference neighbours' coordinates; at a
    neighbour with membership 1 (an identical cell), that neighbour's position
    (the first such by column); NaN for a point with no neighbours."""
    graph = csr_matrix(graph)
    graph.sort_indices()
    n_points = graph.shape[0]
    row_sum = np.asarray(graph.sum(axis=1)).ravel()
    has_neighbours = np.diff(graph.indptr) > 0
    scale = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum != 0)
    positions = np.asarray(
        (graph.multiply(scale[:, None]).tocsr() @ coords), dtype=np.float32
    ).reshape(n_points, coords.shape[1])
    exact = graph.data == 1
    if exact.any():
        rows = np.repeat(np.arange(n_points), np.diff(graph.indptr))[exact]
        first = np.unique(rows, return_index=True)[1]
        positions[rows[first]] = coords[graph.indices[exact][first]]
    positions[~has_neighbours] = np.nan
    return positions


def project_onto_reference(
    latent: np.ndarray, reference: ReferenceLayout, settings: EmbeddingSettings
) -> np.ndarray:
    """UMAP coordinates of new cells on the fixed reference layout (Azimuth's projection).

    umap-learn's ``UMAP.transform``, step for step, with the reference's Annoy
    index for the neighbour search: each cell's fuzzy membership to its
    nearest reference cells, a start at their weighted mean position, then
    optimisation of the new cells alone (the reference points do not move),
    with the layout's own ``a``, ``b`` and a quarter of its learning rate.
    """
    cache_umap_kernels()
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (
        compute_membership_strengths,
        find_ab_params,
        make_epochs_per_sample,
        smooth_knn_dist,
    )

    n_cells, n_reference = latent.shape[0], reference.coords.shape[0]
    if n_cells == 0:
        return np.zeros((0, 2), dtype=np.float32)
    k = min(settings.n_neighbors, n_reference)
    indices, distances = search_reference(reference, latent, k, settings)
    # umap-learn's transform lowers the local connectivity by one (to 0) for new points.
    sigmas, rhos = smooth_knn_dist(distances, float(k), local_connectivity=0.0)
    rows, cols, vals, _ = compute_membership_strengths(
        indices, distances, sigmas, rhos, bipartite=True
    )
    graph = coo_matrix((vals, (rows, cols)), shape=(n_cells, n_reference))
    start = graph.tocsr()
    start.eliminate_zeros()
    tail = np.ascontiguousarray(reference.coords, dtype=np.float32)
    coords = start_positions(start, tail)
    n_epochs = 100 if n_cells <= 10000 else 30
    graph.data[graph.data < graph.data.max() / n_epochs] = 0.0
    graph.eliminate_zeros()
    a, b = find_ab_params(settings.spread, settings.min_dist)
    rng_state = np.random.RandomState(settings.seed).randint(-(2**31) + 1, 2**31 - 1, 3)
    coords = optimize_layout_euclidean(
        coords,
        tail.copy(),
        graph.row,
        graph.col,
        n_epochs,
        n_reference,
        make_epochs_per_sample(graph.data, n_epochs),
        a,
        b,
        rng_state.astype(np.int64),
        1.0,  # repulsion strength
        0.25,  # umap-learn's learning rate, quartered for new points
        5.0,  # negative samples per edge
        False,  # serial: seeded, reproducible
    )
    log.info("%d cells projected onto the reference UMAP of %d cells", n_cells, n_reference)
    return coords


def _expanded_layout(
    adata: ad.AnnData,
    reference: ReferenceLayout,
    settings: EmbeddingSettings,
    query_coords: np.ndarray | None = None,
) -> np.ndarray:
    """The reference's own coordinates for atlas cells, projections for query cells
    (``query_coords``, where they were projected by the shards of a scattered query)."""
    is_atlas = atlas_mask(adata.obs)
    if not adata.obs_names[is_atlas].equals(reference.cells):
        raise AtlasmapInputError(
            f"the reference layout's {len(reference.cells)} cells are not the expanded atlas's "
            f"{int(is_atlas.sum())} atlas cells in order: it was made from another atlas; "
            "rerun layout_reference"
        )
    coords = np.empty((adata.n_obs, 2), dtype=np.float32)
    coords[is_atlas] = reference.coords
    if query_coords is None:
        query_coords = project_onto_reference(
            np.asarray(adata.obsm[EMBEDDING_KEY][~is_atlas], dtype=np.float32), reference, settings
        )
    coords[~is_atlas] = query_coords
    return coords


def neighbors_umap(
    adata: ad.AnnData,
    settings: EmbeddingSettings = EmbeddingSettings(),
    reference: ReferenceLayout | None = None,
    query_coords: np.ndarray | None = None,
) -> ad.AnnData:
    """Add the Annoy neighbour graph and ``X_umap`` for all cells, and for the query alone.

    ``X_umap``: with ``settings.layout`` "reference", the atlas cells where the
    reference layout (``reference``, else made here from the atlas cells) has
    them and the query cells projected onto it; with "joint", or no atlas
    cells, a UMAP of all cells. The query-alone UMAP (the tutorial's view of an embed-mode mapping)
    goes to ``obsm["X_umap_query"]``, NaN for reference cells; it starts from
    the query's projected positions where there are some. ``query_coords``: the query
    cells' projections, made beforehand (by the shards of a scattered query).
    """
    if settings.layout not in LAYOUTS:
        raise AtlasmapInputError(f"umap.layout must be one of {LAYOUTS}, not {settings.layout!r}")
    annoy_neighbors(adata, settings)
    has_atlas = bool(atlas_mask(adata.obs).any())
    if settings.layout == "reference" and has_atlas:
        if reference is None:  # not made once beforehand: made here
            is_atlas = atlas_mask(adata.obs)
            reference = layout_reference(
                adata.obs_names[is_atlas], adata.obsm[EMBEDDING_KEY][is_atlas], settings
            )
        adata.obsm[UMAP_KEY] = _expanded_layout(adata, reference, settings, query_coords)
    else:
        _umap(adata, settings)
        log.info("UMAP of %d cells on %d Annoy neighbours", adata.n_obs, settings.n_neighbors)
    adata.uns.setdefault("atlasmap", {})["umap_layout"] = settings.layout if has_atlas else "joint"
    if settings.query_alone:
        is_query = query_mask(adata.obs)
        query = ad.AnnData(obs=adata.obs.loc[is_query, []].copy())
        query.obsm[EMBEDDING_KEY] = adata.obsm[EMBEDDING_KEY][is_query]
        annoy_neighbors(query, settings)
        # Started where the query cells lie in X_umap: no spectral start to compute,
        # the two views share their orientation, and few epochs finish the layout.
        _umap(
            query,
            settings,
            init_pos=adata.obsm[UMAP_KEY][is_query],
            n_epochs=settings.query_alone_epochs,
        )
        coords = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
        coords[is_query] = query.obsm[UMAP_KEY]
        adata.obsm[QUERY_UMAP_KEY] = coords
        log.info("query-alone UMAP of %d cells", int(is_query.sum()))
    return adata


def write_reference_layout(
    layout: ReferenceLayout, *, coords: str | os.PathLike, index: str | os.PathLike
) -> None:
    """The layout's coordinates (h5ad) and its Annoy index (Annoy's own file), each whole."""
    from .io import atomic_path, write_h5ad

    with atomic_path(index) as tmp:
        if not layout.index.save(str(tmp)):
            raise OSError(f"{index}: Annoy could not save the reference index")
    adata = ad.AnnData(obs=pd.DataFrame(index=layout.cells))
    adata.obsm[UMAP_KEY] = layout.coords
    adata.obsm[REFERENCE_GRAPH_KEY] = layout.neighbors
    adata.uns["annoy"] = {"dimensions": layout.index.f, "metric": layout.metric}
    write_h5ad(adata, coords)


def read_reference_layout(
    *, coords: str | os.PathLike, index: str | os.PathLike
) -> ReferenceLayout:
    from .io import read_h5ad

    adata = read_h5ad(coords)
    if not {UMAP_KEY, REFERENCE_GRAPH_KEY} <= set(adata.obsm) or "annoy" not in adata.uns:
        raise AtlasmapInputError(
            f"{coords}: no obsm[{UMAP_KEY!r}], obsm[{REFERENCE_GRAPH_KEY!r}] or uns['annoy']: "
            "not written by this version's layout_reference; rerun it"
        )
    annoy = adata.uns["annoy"]
    annoy_index = AnnoyIndex(int(annoy["dimensions"]), str(annoy["metric"]))
    annoy_index.load(str(index))  # memory-mapped: shared by the jobs of one node
    if annoy_index.get_n_items() != adata.n_obs:
        raise AtlasmapInputError(
            f"{index}: indexes {annoy_index.get_n_items()} cells, {coords} lays out "
            f"{adata.n_obs}: the two files are from different runs of layout_reference"
        )
    return ReferenceLayout(
        adata.obs_names,
        np.asarray(adata.obsm[UMAP_KEY]),
        annoy_index,
        str(annoy["metric"]),
        np.asarray(adata.obsm[REFERENCE_GRAPH_KEY]),
    )


def layout_reference_files(
    *,
    embedded_atlas: str | os.PathLike,
    coords: str | os.PathLike,
    index: str | os.PathLike,
    settings: EmbeddingSettings,
) -> ReferenceLayout:
    """:func:`layout_reference` from embed_reference's file to its two files."""
    from .mapping import read_reference_latent

    reference = read_reference_latent(embedded_atlas)
    layout = layout_reference(reference.cells, reference.latent, settings)
    write_reference_layout(layout, coords=coords, index=index)
    return layout


def neighbors_umap_files(
    *,
    embedded: str | os.PathLike,
    predictions: str | os.PathLike,
    mapped: str | os.PathLike,
    settings: EmbeddingSettings,
    reference_coords: str | os.PathLike | None = None,
    reference_index: str | os.PathLike | None = None,
    projections: list | None = None,
) -> ad.AnnData:
    """:func:`neighbors_umap` on map_query's file, with the calls, to the delivered
    ``mapped.h5ad``; the reference layout from layout_reference's files, if given, and
    the query's projections onto it from a scattered query's shards, if given. Only the
    annotations are read: the counts go from file to file (io.write_beside_counts)."""
    from .call_adapters import attach_calls
    from .io import read_annotations, write_beside_counts

    adata = read_annotations(embedded)
    attach_calls(adata, pd.read_csv(predictions, sep="\t", dtype={"barcode": str}))
    reference = None
    if reference_coords:
        reference = read_reference_layout(coords=reference_coords, index=reference_index)
    query_coords = None
    if projections:
        barcodes = adata.obs.loc[query_mask(adata.obs), "barcode"].astype(str)
        query_coords = read_projections(projections, pd.Index(barcodes))
    adata = neighbors_umap(adata, settings, reference, query_coords)
    write_beside_counts(adata, embedded, mapped)
    return adata


def project_shard_files(
    *,
    embedded: str | os.PathLike,
    reference_coords: str | os.PathLike,
    reference_index: str | os.PathLike,
    settings: EmbeddingSettings,
    projection: str | os.PathLike,
) -> np.ndarray:
    """The query cells of one shard of a scattered query projected onto the reference
    layout, to a table of their UMAP coordinates by barcode."""
    from .io import atomic_path, read_annotations

    shard = read_annotations(embedded, obsm=(EMBEDDING_KEY,), uns=False)
    reference = read_reference_layout(coords=reference_coords, index=reference_index)
    latent = np.asarray(shard.obsm[EMBEDDING_KEY], dtype=np.float32)
    coords = project_onto_reference(latent, reference, settings)
    table = pd.DataFrame(coords, columns=["umap_1", "umap_2"])
    table.insert(0, "barcode", shard.obs["barcode"].astype(str).to_numpy())
    with atomic_path(projection) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.9g")
    return coords


def read_projections(paths: list, barcodes: pd.Index) -> np.ndarray:
    """The shards' projection tables as one coordinate array, in ``barcodes``' order."""
    from .scatter import gather_tables

    table = gather_tables(paths, barcodes)
    return table[["umap_1", "umap_2"]].to_numpy(dtype=np.float32)
