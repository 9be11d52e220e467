"""The reference's UMAP made once, and queries projected onto it (umap.layout: reference)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from atlasmap.contract import EMBEDDING_KEY
from atlasmap.embedding import (
    QUERY_UMAP_KEY,
    layout_reference,
    neighbors_umap,
    project_onto_reference,
    read_reference_layout,
    search_reference,
    start_positions,
    write_reference_layout,
)
from atlasmap.errors import AtlasmapInputError
from atlasmap.settings import EmbeddingSettings

N_TYPES, N_DIMS = 5, 10
SETTINGS = EmbeddingSettings(n_neighbors=15, n_trees=5, seed=2)


def cells(n, seed, centres):
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, n)
    return types, (centres[types] + rng.normal(0, 1, (n, N_DIMS))).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    centres = np.random.default_rng(0).normal(0, 6, (N_TYPES, N_DIMS))
    types, latent = cells(1500, 1, centres)
    names = pd.Index([f"ref{i}" for i in range(len(types))])
    return centres, types, latent, layout_reference(names, latent, SETTINGS)


def expanded(reference, query_latent):
    _, _, latent, layout = reference
    n_query = len(query_latent)
    obs = pd.DataFrame(
        {"source": pd.Categorical(["atlas"] * len(latent) + ["query"] * n_query)},
        index=[*layout.cells, *(f"q{i}" for i in range(n_query))],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm[EMBEDDING_KEY] = np.vstack([latent, query_latent])
    return adata


def umap_neighbour_label_agreement(reference, query_types, query_coords, k=10):
    from sklearn.neighbors import NearestNeighbors

    _, types, _, layout = reference
    nearest = NearestNeighbors(n_neighbors=k).fit(layout.coords).kneighbors(query_coords)[1]
    majority = np.array([np.bincount(types[row], minlength=N_TYPES).argmax() for row in nearest])
    return float(np.mean(majority == query_types))


def test_new_cells_land_among_reference_cells_of_their_own_type(reference):
    centres, _, _, layout = reference
    query_types, query_latent = cells(600, 7, centres)
    coords = project_onto_reference(query_latent, layout, SETTINGS)
    assert coords.shape == (600, 2) and np.isfinite(coords).all()
    assert umap_neighbour_label_agreement(reference, query_types, coords) > 0.97
    # The projection is seeded: the same cells land in the same places.
    np.testing.assert_array_equal(coords, project_onto_reference(query_latent, layout, SETTINGS))


def test_every_query_and_mode_shares_the_atlas_picture(reference):
    """The atlas cells keep the reference's own coordinates whatever the query."""
    centres, _, _, layout = reference
    for seed in (11, 12):
        query_types, query_latent = cells(400, seed, centres)
        out = neighbors_umap(expanded(reference, query_latent), SETTINGS, layout)
        is_atlas = (out.obs["source"] == "atlas").to_numpy()
        np.testing.assert_array_equal(out.obsm["X_umap"][is_atlas], layout.coords)
        assert out.uns["atlasmap"]["umap_layout"] == "reference"
        agreement = umap_neighbour_label_agreement(
            reference, query_types, out.obsm["X_umap"][~is_atlas]
        )
        assert agreement > 0.97
        assert np.isfinite(out.obsm[QUERY_UMAP_KEY][~is_atlas]).all()
        assert out.obsp["connectivities"].shape == (out.n_obs, out.n_obs)


def test_the_query_alone_view_gives_an_unseen_type_a_place_of_its_own(reference):
    """Projected, cells of a type the atlas lacks land among atlas cells; the
    query-alone UMAP (few epochs from the projected start) sets them apart."""
    from sklearn.neighbors import NearestNeighbors

    centres, _, _, layout = reference
    seen_types, seen = cells(500, 21, centres)
    unseen = centres[:2].mean(axis=0) + np.random.default_rng(22).normal(0, 1, (150, N_DIMS))
    query_latent = np.vstack([seen, unseen.astype(np.float32)])
    query_types = np.concatenate([seen_types, np.full(150, N_TYPES)])
    out = neighbors_umap(expanded(reference, query_latent), SETTINGS, layout)
    assert SETTINGS.query_alone_epochs == 50  # the schema's default, in a quarter of the time
    is_query = (out.obs["source"] == "query").to_numpy()
    alone = out.obsm[QUERY_UMAP_KEY][is_query]
    nearest = NearestNeighbors(n_neighbors=11).fit(alone).kneighbors(alone)[1][:, 1:]
    own = (query_types[nearest] == query_types[:, None]).mean(axis=1)
    assert own[query_types == N_TYPES].mean() > 0.95  # the unseen type keeps to itself
    assert own[query_types < N_TYPES].mean() > 0.95


def test_without_a_layout_given_the_atlas_cells_are_laid_out_alone(reference):
    centres, _, _, layout = reference
    _, query_latent = cells(300, 5, centres)
    out = neighbors_umap(expanded(reference, query_latent), SETTINGS)
    is_atlas = (out.obs["source"] == "atlas").to_numpy()
    np.testing.assert_array_equal(out.obsm["X_umap"][is_atlas], layout.coords)


def test_joint_layout_lays_out_all_cells_together(reference):
    centres, _, _, layout = reference
    query_types, query_latent = cells(300, 5, centres)
    settings = EmbeddingSettings(n_neighbors=15, n_trees=5, seed=2, layout="joint")
    out = neighbors_umap(expanded(reference, query_latent), settings, layout)
    is_atlas = (out.obs["source"] == "atlas").to_numpy()
    assert out.uns["atlasmap"]["umap_layout"] == "joint"
    assert not np.allclose(out.obsm["X_umap"][is_atlas], layout.coords)


def test_layout_files_round_trip_and_refuse_a_mismatch(reference, tmp_path):
    centres, _, latent, layout = reference
    coords, index = tmp_path / "umap.h5ad", tmp_path / "annoy_index.ann"
    write_reference_layout(layout, coords=coords, index=index)
    read = read_reference_layout(coords=coords, index=index)
    assert read.cells.equals(layout.cells)
    np.testing.assert_array_equal(read.coords, layout.coords)
    _, query_latent = cells(200, 3, centres)
    np.testing.assert_array_equal(
        project_onto_reference(query_latent, read, SETTINGS),
        project_onto_reference(query_latent, layout, SETTINGS),
    )
    # An index of another reference (fewer cells) beside these coordinates.
    other = layout_reference(layout.cells[:500], latent[:500], SETTINGS)
    other_index = tmp_path / "other.ann"
    write_reference_layout(other, coords=tmp_path / "other.h5ad", index=other_index)
    with pytest.raises(AtlasmapInputError, match="other.ann.*different runs"):
        read_reference_layout(coords=coords, index=other_index)
    # A layout of other atlas cells than the expanded atlas's.
    with pytest.raises(AtlasmapInputError, match="rerun layout_reference"):
        neighbors_umap(expanded(reference, query_latent), SETTINGS, other)


def test_a_layout_file_without_the_reference_graph_is_refused(reference, tmp_path):
    """A layout written before the files held the reference's graph: rerun, not guess."""
    _, _, _, layout = reference
    coords, index = tmp_path / "umap.h5ad", tmp_path / "annoy_index.ann"
    write_reference_layout(layout, coords=coords, index=index)
    old = ad.read_h5ad(coords)
    del old.obsm["annoy_neighbors"]
    old.write_h5ad(coords)
    with pytest.raises(AtlasmapInputError, match="umap.h5ad.*annoy_neighbors.*rerun"):
        read_reference_layout(coords=coords, index=index)


def test_refined_projection_finds_more_of_the_exact_reference_neighbours(reference):
    """neighbors.refine also serves the projection: the query's Annoy neighbours are
    joined through the reference's own graph, kept in its layout."""
    from dataclasses import replace

    from conftest import neighbour_recall
    from sklearn.neighbors import NearestNeighbors

    centres, _, latent, layout = reference
    _, query_latent = cells(500, 9, centres)
    exact = NearestNeighbors(n_neighbors=15).fit(latent).kneighbors(query_latent)[1]
    assert layout.neighbors.shape == (len(latent), 16)
    assert (layout.neighbors[:, 0] == np.arange(len(latent))).all()

    def recall(settings):
        found, distances = search_reference(layout, query_latent, 15, settings)
        assert (np.diff(distances, axis=1) >= 0).all()
        return neighbour_recall(found, exact)

    coarse = replace(SETTINGS, search_k=16, refine=0)  # about one leaf of each tree
    assert recall(replace(coarse, refine=1)) > recall(coarse) + 0.1
    assert recall(replace(coarse, refine=1)) > 0.9


def test_start_positions_are_umap_learns_initialisation():
    from scipy.sparse import csr_matrix
    from umap.umap_ import init_graph_transform

    rng = np.random.default_rng(3)
    coords = rng.normal(size=(40, 2)).astype(np.float32)
    dense = np.where(rng.random((25, 40)) < 0.2, rng.random((25, 40)), 0.0)
    dense[3] = 0.0  # no neighbours: NaN
    dense[7, [5, 9]] = 1.0  # two identical cells: the first one's position
    dense[11, 2] = 1.0
    graph = csr_matrix(dense.astype(np.float32))
    ours = start_positions(graph, coords)
    theirs = init_graph_transform(graph, coords)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.isnan(ours[3]).all() and (ours[7] == coords[5]).all()


def test_umap_learns_kernels_are_compiled_once_not_in_every_job():
    """umap-learn compiles its numba kernels in every process (about 10 s a job), and
    pynndescent its distances at import (about 6 s); once one job has compiled them,
    the next loads them from numba's cache."""
    from atlasmap.numba_cache import UMAP_KERNELS
    from conftest import run_python

    script = """
import json, numpy as np, pandas as pd
from atlasmap.embedding import layout_reference
from atlasmap.settings import EmbeddingSettings
from atlasmap.numba_cache import UMAP_KERNELS, cache_umap_kernels
latent = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
layout_reference(pd.Index([f"c{i}" for i in range(300)]), latent, EmbeddingSettings(n_neighbors=10))
import importlib
stats = {}
for module, names in UMAP_KERNELS.items():
    for name in names:
        kernel = getattr(importlib.import_module(module), name)
        stats[f"{module}.{name}"] = [sum(kernel.stats.cache_hits.values()),
                                     sum(kernel.stats.cache_misses.values())]
import sys
from numba.core.dispatcher import Dispatcher
imported = [m for name, m in list(sys.modules.items()) if name.startswith("pynndescent.")]
compiled = [d for m in imported for d in vars(m).values() if isinstance(d, Dispatcher) and d.signatures]
stats["pynndescent"] = [sum(sum(d.stats.cache_hits.values()) for d in compiled),
                        sum(sum(d.stats.cache_misses.values()) for d in compiled)]
print(json.dumps({"cached": cache_umap_kernels(), "stats": stats}))
"""
    import json

    def run():
        return json.loads(run_python(script).strip().splitlines()[-1])

    names = [f"{module}.{name}" for module, names in UMAP_KERNELS.items() for name in names]
    run()  # compiles (and caches) whatever no earlier job has
    second = run()
    assert second["cached"] == names
    assert {name: second["stats"][name] for name in names} == {name: [1, 0] for name in names}
    hits, misses = second["stats"]["pynndescent"]
    assert hits >= 20 and misses == 0, second["stats"]["pynndescent"]


def test_the_neighbour_index_is_the_same_on_every_machine(tmp_path):
    """Annoy's own build runs one thread per core and its trees differ with their
    number: the index is built on one thread, so a laptop and a 64-core node agree."""
    from annoy import AnnoyIndex
    from atlasmap.embedding import ThreadedAnnoyTransformer

    latent = np.random.default_rng(0).normal(size=(3000, N_DIMS)).astype(np.float32)

    def saved(index, name):
        index.save(str(tmp_path / name))
        return (tmp_path / name).read_bytes()

    def built(threads):
        index = AnnoyIndex(N_DIMS, "euclidean")
        for i, x in enumerate(latent):
            index.add_item(i, x.tolist())
        index.build(3, n_jobs=threads)
        return saved(index, f"{threads}.ann")

    ours = ThreadedAnnoyTransformer(15, n_trees=3, n_jobs=2).fit(latent)
    assert saved(ours.annoy_, "ours.ann") == built(1)
    assert built(1) != built(4)  # a 4-core machine's build, had Annoy chosen
