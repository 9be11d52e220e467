"""Nearest-neighbour search in the latent space: exact, and approximate made nearer.

* **exact** — :class:`ExactNeighbours`, scipy's KD-tree asked in spatial order
  (:func:`spatial_order`): the neighbours behind the cell-type calls (:mod:`atlasmap.calls`).
* **approximate** — the row-by-row search of an Annoy index on threads
  (:func:`search_rows`, :func:`annoy_nearest`), and :func:`refine_neighbours`, the
  local join of NN-descent that makes Annoy's neighbours nearer (its compiled kernel
  is :mod:`atlasmap.refine_kernel`): the neighbour graphs of the UMAP layouts.

The Annoy index itself is built by :mod:`atlasmap.embedding`'s transformer for
scanpy, a subclass of sklearn-ann's: here it would import sklearn-ann and Annoy with
this module. Of third-party packages this module imports numpy alone (scipy and numba
where they are used), so that the calls' rules, whose env has no Annoy, import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import AtlasmapInputError


def spatial_order(points: np.ndarray) -> np.ndarray:
    """The rows of ``points`` in the leaf order of a KD-tree of them: near rows one after
    another, so that searches of an index (KD-tree, Annoy) in this order walk the same
    branches while they are in cache. The results do not depend on the order."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    if not len(points):
        return np.zeros(0, dtype=np.intp)
    return cKDTree(points, leafsize=32).indices


class ExactNeighbours:
    """Exact Euclidean nearest neighbours of a fixed set of points: scipy's KD-tree,
    asked in spatial order. The same neighbours and distances as scikit-learn's
    KD-tree, 3.5x as fast on 200k query cells in a 10-dimensional latent (15 s
    instead of 52 s on one core): the calls' largest cost."""

    def __init__(self, points: np.ndarray, n_jobs: int = 1) -> None:
        from scipy.spatial import cKDTree

        self.tree = cKDTree(np.asarray(points, dtype=np.float64), leafsize=32)
        self.n_jobs = n_jobs

    def query(self, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and indices (cells x k) of each point's ``k`` nearest, nearest first."""
        points = np.asarray(points, dtype=np.float64)
        shape = (len(points), k)
        if not len(points):
            return np.zeros(shape), np.zeros(shape, dtype=np.intp)
        order = spatial_order(points)
        distances, indices = self.tree.query(points[order], k=k, workers=self.n_jobs)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return np.reshape(distances, shape)[back], np.reshape(indices, shape)[back]


def search_rows(
    search, indices: np.ndarray, distances: np.ndarray, n_jobs: int, order=None
) -> None:
    """Fill row i of ``indices`` and ``distances`` with ``search(i)``, the rows taken in
    ``order`` (default: as they are), split in ``n_jobs`` contiguous blocks on as many
    threads (Annoy releases the GIL while it searches, so threads scale)."""
    n_rows = indices.shape[0]
    order = np.arange(n_rows) if order is None else np.asarray(order)

    def fill(rows: np.ndarray) -> None:
        for i in rows:
            indices[i], distances[i] = search(int(i))

    n_jobs = max(n_jobs, 1)
    step = max(-(-n_rows // n_jobs), 1)
    with ThreadPoolExecutor(n_jobs) as pool:
        list(pool.map(fill, [order[s : s + step] for s in range(0, n_rows, step)]))


def annoy_nearest(search, k: int, search_k: int, index):
    """``search(k, search_k)`` (an Annoy search of one cell: indices, distances), searched
    again twice as deep while it finds fewer than ``k``: Annoy stops after ``search_k``
    candidates, duplicates among trees included, which a shallow search can spend on
    fewer than ``k`` distinct cells. ``index``: the ``annoy.AnnoyIndex`` searched."""
    n_items, n_trees = index.get_n_items(), index.get_n_trees()
    if k > n_items:
        raise AtlasmapInputError(f"{k} neighbours asked of {n_items} cells")
    depth = search_k if search_k > 0 else n_trees * k
    found = search(k, search_k)
    while len(found[0]) < k and depth < n_trees * n_items:
        depth *= 2
        found = search(k, depth)
    return found


@contextlib.contextmanager
def _numba_threads(n_jobs: int) -> Iterator[None]:
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_jobs, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def refine_neighbours(
    query: np.ndarray,
    indices: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    graph: np.ndarray | None = None,
    passes: int = 1,
    metric: str = "euclidean",
    n_jobs: int = 1,
    query_order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate neighbours made nearer by the local join of NN-descent: each row of
    ``query`` also measures the neighbours (in ``graph``) of its neighbours
    (``indices``, rows of ``reference``) and keeps the nearest ``k``, nearest first.

    Without ``reference`` the query is its own reference and, without ``graph``,
    each pass joins through the previous pass's neighbours (an all-neighbour
    graph). With a ``reference``, ``graph`` is its own neighbour graph. A row
    never gets farther neighbours; the result depends neither on ``n_jobs`` nor on
    the order of the rows. Returns (indices, distances), ``metric`` as Annoy's.
    ``query_order``: ``spatial_order(query)``, where the caller has it already.
    """
    if metric not in ("euclidean", "angular", "manhattan"):
        raise AtlasmapInputError(
            f"neighbors.refine supports euclidean, angular, manhattan, not {metric!r}"
        )
    self_join = reference is None
    if self_join and graph is not None:
        raise ValueError("a graph is joined through only against a reference")
    if not self_join and graph is None:
        raise ValueError("refining against a reference needs the reference's own neighbour graph")

    def prepare(points):
        points = np.ascontiguousarray(points, dtype=np.float32)
        if metric == "angular":  # Annoy's angular distance: euclidean between unit vectors
            norms = np.linalg.norm(points, axis=1, keepdims=True)
            points = points / np.where(norms > 0, norms, 1)
        return points

    # Worked on in spatial order, rows and labels alike: a cell's neighbours' neighbours
    # then lie close in memory (2.5x faster at 300k cells); mapped back at the end.
    query_order = spatial_order(query) if query_order is None else query_order
    query = prepare(query)[query_order]
    if self_join:
        reference_order, reference = query_order, query
    else:
        reference_order = spatial_order(reference)
        reference = prepare(reference)[reference_order]
    relabel = np.empty(len(reference_order), dtype=np.int64)
    relabel[reference_order] = np.arange(len(reference_order))
    indices = relabel[np.asarray(indices)[query_order]]
    distances = np.zeros(indices.shape)
    fixed_graph = None if self_join else relabel[np.asarray(graph)[reference_order]]
    if len(indices):
        from .refine_kernel import refine_rows

        with _numba_threads(n_jobs):
            for _ in range(passes):
                joined = indices if fixed_graph is None else fixed_graph
                indices, distances = refine_rows(
                    query, reference, indices, joined, metric == "manhattan"
                )
    found, measured = np.empty_like(indices), np.empty_like(distances)
    found[query_order], measured[query_order] = reference_order[indices], distances
    return found, measured
