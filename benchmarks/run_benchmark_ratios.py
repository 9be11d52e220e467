"""The ratios run_benchmark.py measures on its largest size: neighbour search against
scanpy's and exact neighbours, the workflow against a plain script, frozen-embedding
throughput, and the sparse gene alignment's memory against a dense one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
from atlasmap.contract import EMBEDDING_KEY, MODES, query_mask
from bench import BENCHMARKS


def alignment_memory(query_h5ad: Path, model_dir: Path) -> dict:
    """Peak memory allocated while aligning the query to the model's genes:
    ours (sparse) against densify-and-zero-fill (what the tutorial's package does)."""
    import tracemalloc

    import anndata as ad
    from atlasmap.genes import align_to_genes
    from atlasmap.reference import read_model_info

    query = ad.read_h5ad(query_h5ad)
    genes = list(read_model_info(model_dir).genes)

    def dense():
        position = {g: i for i, g in enumerate(genes)}
        present = [g for g in query.var_names if g in position]
        out = np.zeros((query.n_obs, len(genes)), dtype=np.float32)
        out[:, [position[g] for g in present]] = query[:, present].layers["counts"].toarray()
        return out

    peaks = {}
    for name, align in (("sparse", lambda: align_to_genes(query, genes)), ("dense", dense)):
        tracemalloc.start()
        result = align()
        peaks[f"{name}_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
        del result
    peaks["dense_over_sparse"] = round(
        peaks["dense_peak_mb"] / max(peaks["sparse_peak_mb"], 1e-9), 1
    )
    peaks["cells"], peaks["model_genes"] = query.n_obs, len(genes)
    return peaks


def compare_neighbour_methods(
    latent, label_sets: dict, methods: dict, k: int = 15, rounds: int = 1
) -> tuple[dict, dict, dict]:
    """Time each method (a callable building ``sc.pp.neighbors``' graph on an AnnData
    with the latent in ``obsm[EMBEDDING_KEY]``) on ``latent``, after a warm-up on 10,000 cells;
    then, against the method named ``exact``: agreement of a k-neighbour majority
    vote of each of ``label_sets`` (name -> per-cell labels), and the share of the
    exact neighbours found. Returns (seconds, agreement, recall), keyed by method
    name; agreement by label set, then by method name.

    With ``rounds`` > 1 every method but ``exact`` is timed once per round, the
    methods taken in turn within each round, so that a spell of load on a shared
    machine falls on all of them; ``seconds`` holds the median and, under
    ``"<name>_rounds"``, every round's time."""
    import anndata as ad

    def frame(x):
        a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(x))]))
        a.obsm[EMBEDDING_KEY] = x
        return a

    def graph_indices(adata):
        d = adata.obsp["distances"].tocsr()
        return np.vstack(
            [d.indices[d.indptr[i] : d.indptr[i + 1]][: k - 1] for i in range(d.shape[0])]
        )

    def vote(indices, labels):
        codes, names = pd.factorize(np.asarray(labels))
        votes = np.zeros((len(indices), len(names)))
        np.add.at(
            votes, (np.repeat(np.arange(len(indices)), indices.shape[1]), codes[indices].ravel()), 1
        )
        return votes.argmax(axis=1)

    def agreement(labels):
        exact_vote = vote(found["exact"], labels)
        return {n: float(np.mean(vote(f, labels) == exact_vote)) for n, f in found.items()}

    times, found = {name: [] for name in methods}, {}
    for method in methods.values():
        # Above 8,192 cells scanpy's default is pynndescent, below it an exact search:
        # a smaller warm-up would leave pynndescent's numba code uncompiled.
        method(frame(latent[: min(10_000, len(latent))]))
    for round_ in range(rounds):
        for name, method in methods.items():
            if round_ and name == "exact":
                continue
            adata = frame(latent)
            start = time.perf_counter()
            method(adata)
            times[name].append(time.perf_counter() - start)
            found.setdefault(name, graph_indices(adata))
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    if rounds > 1:
        seconds |= {f"{name}_rounds": t for name, t in times.items() if name != "exact"}
    exact = found["exact"]
    recall = {
        n: float(sum(len(np.intersect1d(a, b)) for a, b in zip(f, exact, strict=True)) / exact.size)
        for n, f in found.items()
    }
    return seconds, {name: agreement(labels) for name, labels in label_sets.items()}, recall


def neighbour_ratios(
    embedded: Path,
    k: int = 15,
    threads: int = 2,
    labels_key: str = "Level_4",
    truth: str = "author_cell_type",
    rounds: int = 3,
) -> dict:
    """Annoy (our defaults) vs scanpy's default search vs exact, on the mapped latent.

    Two label votes: over the labels of the mapped atlas (the atlas's own, the
    query's calls; as the neighbour defaults were chosen, tune_neighbors.md) and
    over true labels (the atlas's own, the query's ``truth`` column).

    Each method is timed as a whole ``sc.pp.neighbors`` call (search and the
    connectivities scanpy computes from it), warmed up first so that numba's
    compilation is not counted. scanpy's default runs as shipped
    (``sc.settings.n_jobs`` = 1) and with as many jobs as our rule has threads.
    Seconds are the median of ``rounds`` rounds (the methods in turn in each, exact
    neighbours once); the speed-up of each round is kept beside the medians'.
    """
    import anndata as ad
    import scanpy as sc
    from atlasmap.embedding import annoy_neighbors
    from atlasmap.settings import EmbeddingSettings
    from sklearn.neighbors import KNeighborsTransformer

    full = ad.read_h5ad(embedded, backed="r")
    latent = np.asarray(full.obsm[EMBEDDING_KEY])
    labels = full.obs["predicted_celltype"].astype(str).to_numpy()
    is_query = query_mask(full.obs)
    true_labels = full.obs[labels_key].astype(object).to_numpy()
    true_labels[is_query] = full.obs.loc[is_query, truth].astype(object).to_numpy()
    true_labels = true_labels.astype(str)
    full.file.close()

    def scanpy_default(n_jobs):
        def method(a):
            shipped, sc.settings.n_jobs = sc.settings.n_jobs, n_jobs
            try:
                sc.pp.neighbors(a, n_neighbors=k, use_rep=EMBEDDING_KEY)
            finally:
                sc.settings.n_jobs = shipped

        return method

    methods = {
        "exact": lambda a: sc.pp.neighbors(
            a,
            n_neighbors=k,
            use_rep=EMBEDDING_KEY,
            transformer=KNeighborsTransformer(n_neighbors=k, mode="distance", n_jobs=threads),
        ),
        "annoy": lambda a: annoy_neighbors(a, EmbeddingSettings(n_neighbors=k, n_jobs=threads)),
        "annoy_1_thread": lambda a: annoy_neighbors(a, EmbeddingSettings(n_neighbors=k)),
        "scanpy_default": scanpy_default(sc.settings.n_jobs),
        f"scanpy_default_{threads}_jobs": scanpy_default(threads),
    }
    timings, agreement, recall = compare_neighbour_methods(
        latent, {"calls": labels, "truth": true_labels}, methods, k, rounds
    )
    per_round = {n: timings.pop(f"{n}_rounds", [timings[n]]) for n in methods if n != "exact"}
    others = [n for n in methods if n != "exact"]
    defaults = EmbeddingSettings()
    return {
        "cells": len(latent),
        "threads": threads,
        "annoy_n_trees": defaults.n_trees,
        "annoy_settings": {
            "n_trees": defaults.n_trees,
            "search_k": defaults.search_k,
            "refine": defaults.refine,
        },
        **{f"{n}_seconds": round(t, 1) for n, t in timings.items()},
        **{f"{n}_label_agreement_with_exact": round(agreement["calls"][n], 4) for n in others},
        **{f"{n}_truth_agreement_with_exact": round(agreement["truth"][n], 4) for n in others},
        **{f"{n}_recall_of_exact": round(recall[n], 4) for n in others},
        "timing": f"median of {rounds} rounds, the methods in turn in each",
        **{f"{n}_seconds_per_round": [round(t, 1) for t in per_round[n]] for n in others},
        "annoy_speedup_per_round": [
            round(d / a, 2)
            for d, a in zip(per_round["scanpy_default"], per_round["annoy"], strict=True)
        ],
        "annoy_speedup_vs_scanpy_default": round(timings["scanpy_default"] / timings["annoy"], 2),
        f"annoy_speedup_vs_scanpy_default_{threads}_jobs": round(
            timings[f"scanpy_default_{threads}_jobs"] / timings["annoy"], 2
        ),
    }


def timing(measurement: dict) -> str:
    return measurement.get("timing", "one timing of each method")


def comparable(measurement: dict, other: dict) -> bool:
    """Whether two neighbour measurements are of the same Annoy settings, timed alike."""
    return measurement.get("annoy_settings") == other.get("annoy_settings") and timing(
        measurement
    ) == timing(other)


def annoy_settings(measurement: dict) -> str:
    """The Annoy settings a neighbour measurement was made with, in words."""
    settings = measurement.get("annoy_settings", {"n_trees": measurement["annoy_n_trees"]})
    words = [f"{settings['n_trees']} trees"]
    if "search_k" in settings:
        words.append(f"search_k {settings['search_k']}")
    if settings.get("refine"):
        words.append(f"{settings['refine']} refining pass" + "es" * (settings["refine"] > 1))
    return ", ".join(words)


def plain_overhead(workdir: Path, workflow_seconds: float, out: Path) -> dict:
    """The same config through benchmarks/plain_pipeline.py (one process, the same
    library calls), against the workflow's wall time on it."""
    config = workdir / "config" / "bench.yaml"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "plain_pipeline.py"), str(config), str(out)],
        check=True,
    )
    plain = time.perf_counter() - start
    same = {
        mode: pd.read_csv(
            workdir / "results" / "bench" / mode / "predictions.tsv", sep="\t"
        ).equals(pd.read_csv(out / "results" / "bench" / mode / "predictions.tsv", sep="\t"))
        for mode in MODES
    }
    return {
        "workflow_seconds": round(workflow_seconds, 1),
        "plain_script_seconds": round(plain, 1),
        "workflow_over_plain": round(workflow_seconds / plain, 3),
        "same_predictions": same,
    }


def embed_throughput(query_h5ad: Path, atlas: Path, model_dir: Path) -> dict:
    import anndata as ad
    import scvi
    from atlasmap.genes import align_to_genes
    from atlasmap.mapping import _model_input
    from atlasmap.reference import read_model_info

    info = read_model_info(model_dir)
    query = ad.read_h5ad(query_h5ad)
    aligned, _ = align_to_genes(query, info.genes)
    model_input = _model_input(aligned, info, query.obs["Sample_ID"], None, None)
    model = scvi.model.SCANVI.load_query_data(model_input, str(model_dir))
    model.is_trained = True
    out = {"cells": query.n_obs}
    for batch in (128, 1024):
        start = time.perf_counter()
        model.get_latent_representation(model_input, batch_size=batch)
        out[f"cells_per_second_batch_{batch}"] = round(query.n_obs / (time.perf_counter() - start))
    return out
