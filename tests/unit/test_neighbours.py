"""The local join after Annoy's search (neighbors.refine): nearer neighbours, never
farther ones, the same whatever the threads, in the metric Annoy measures."""

import numpy as np
import pytest
from atlasmap.embedding import ThreadedAnnoyTransformer
from atlasmap.errors import AtlasmapInputError
from atlasmap.neighbours import refine_neighbours
from conftest import neighbour_recall as recall
from sklearn.neighbors import NearestNeighbors

K = 16  # 15 neighbours and the cell itself, as sc.pp.neighbors asks the transformer


def clustered(n=3000, dims=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (8, dims))
    return (centres[rng.integers(0, 8, n)] + rng.normal(0, 1, (n, dims))).astype(np.float32)


@pytest.fixture(scope="module")
def latent():
    return clustered()


@pytest.fixture(scope="module")
def coarse(latent):
    """A deliberately poor Annoy graph (2 trees, Annoy's own search)."""
    transformer = ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=2)
    transformer.fit_transform(latent)
    return transformer.neighbors_


def test_a_pass_finds_most_missed_neighbours_and_never_a_farther_one(latent, coarse):
    exact_d, exact = NearestNeighbors(n_neighbors=K).fit(latent).kneighbors(latent)
    before = np.linalg.norm(latent[:, None] - latent[coarse], axis=2)
    indices, distances = refine_neighbours(latent, coarse)
    assert recall(coarse, exact) < 0.8
    assert recall(indices, exact) > recall(coarse, exact) + 0.15
    # Row by row: sorted, nearest first, no cell twice, never farther than before.
    assert (np.diff(distances, axis=1) >= 0).all()
    assert all(len(set(row)) == K for row in indices)
    assert (indices[:, 0] == np.arange(len(latent))).all()  # each cell is its own first
    assert (distances <= np.sort(before, axis=1) + 1e-5).all()
    # The distances are the true ones, and never below the exact k-th neighbour's.
    np.testing.assert_allclose(
        distances, np.linalg.norm(latent[:, None] - latent[indices], axis=2), rtol=1e-5
    )
    assert (distances[:, -1] >= exact_d[:, -1] - 1e-5).all()
    two_passes = refine_neighbours(latent, coarse, passes=2)[0]
    assert recall(two_passes, exact) > recall(indices, exact)


def test_the_result_depends_neither_on_threads_nor_on_row_order(latent, coarse):
    one = refine_neighbours(latent, coarse, passes=2, n_jobs=1)
    two = refine_neighbours(latent, coarse, passes=2, n_jobs=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    # Against a fixed reference, each query row is refined on its own.
    query = clustered(400, seed=5)
    search = NearestNeighbors(n_neighbors=4).fit(latent).kneighbors(query, return_distance=False)
    rows = np.random.default_rng(1).permutation(len(query))
    whole = refine_neighbours(query, search, reference=latent, graph=coarse)
    shuffled = refine_neighbours(query[rows], search[rows], reference=latent, graph=coarse)
    np.testing.assert_array_equal(whole[0][rows], shuffled[0])


def test_against_a_reference_it_joins_through_the_references_graph(latent, coarse):
    query = clustered(500, seed=3)
    exact = NearestNeighbors(n_neighbors=K).fit(latent).kneighbors(query, return_distance=False)
    # A poor start: each query cell's 16 nearest among a tenth of the reference.
    sample = np.arange(0, len(latent), 10)
    start = sample[NearestNeighbors(n_neighbors=K).fit(latent[sample]).kneighbors(query)[1]]
    indices, _ = refine_neighbours(query, start, reference=latent, graph=coarse)
    assert recall(indices, exact) > recall(start, exact) + 0.3
    with pytest.raises(ValueError, match="graph"):
        refine_neighbours(query, start, reference=latent)


@pytest.mark.parametrize("metric", ["angular", "manhattan"])
def test_distances_are_annoys_for_each_metric(latent, metric):
    transformer = ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=2, metric=metric)
    transformer.fit_transform(latent)
    indices, distances = refine_neighbours(latent, transformer.neighbors_, metric=metric)
    index = transformer.annoy_
    for i in (0, 17, 2999):
        annoy = [index.get_distance(i, int(j)) for j in indices[i]]
        np.testing.assert_allclose(distances[i], annoy, rtol=1e-4, atol=1e-5)


def test_a_metric_it_cannot_measure_is_refused(latent, coarse):
    with pytest.raises(AtlasmapInputError, match="neighbors.refine.*'dot'"):
        refine_neighbours(latent, coarse, metric="dot")


def test_the_transformer_refines_its_graph(latent):
    exact = NearestNeighbors(n_neighbors=K).fit(latent).kneighbors(latent, return_distance=False)
    plain = ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=2, n_jobs=2)
    refined = ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=2, refine=1, n_jobs=2)
    plain_graph, refined_graph = plain.fit_transform(latent), refined.fit_transform(latent)
    assert refined_graph.shape == plain_graph.shape and refined_graph.nnz == plain_graph.nnz
    rows = refined_graph.indices.reshape(len(latent), K)
    np.testing.assert_array_equal(rows, refined.neighbors_)
    assert recall(rows, exact) > recall(plain_graph.indices.reshape(len(latent), K), exact) + 0.15


def test_a_search_too_shallow_for_k_cells_is_made_deeper():
    """Annoy stops after search_k candidates, duplicates among trees counted: among
    many identical cells a shallow search finds fewer than k distinct ones."""
    rng = np.random.default_rng(4)
    crowd = np.repeat(rng.normal(size=(30, 10)), 40, axis=0).astype(np.float32)  # 40 copies each
    transformer = ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=3, search_k=1)
    graph = transformer.fit_transform(crowd)
    assert graph.nnz == len(crowd) * K
    assert all(len(set(row)) == K for row in transformer.neighbors_)
    assert (graph.data.reshape(len(crowd), K)[:, 0] == 0).all()
    with pytest.raises(AtlasmapInputError, match="16 neighbours asked of 10 cells"):
        ThreadedAnnoyTransformer(n_neighbors=K - 1, n_trees=3).fit_transform(crowd[::120])


def test_the_kernel_is_compiled_once_not_in_every_job():
    """Each job is a new process: the second one loads the kernel from numba's cache."""
    import json

    from conftest import run_python

    script = """
import json, numpy as np
from atlasmap.embedding import ThreadedAnnoyTransformer
from atlasmap.refine_kernel import refine_rows
latent = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
ThreadedAnnoyTransformer(n_neighbors=10, n_trees=2, refine=1).fit_transform(latent)
print(json.dumps([sum(refine_rows.stats.cache_hits.values()),
                  sum(refine_rows.stats.cache_misses.values())]))
"""
    run_python(script)  # compiles it, unless an earlier job has
    assert json.loads(run_python(script).strip().splitlines()[-1]) == [1, 0]
