"""Choose Annoy's default trees and search, on data that the benchmark does not report.

    .venv/bin/python benchmarks/tune_neighbors.py MODEL_DIR [--cells 300000] [--atlas H5AD]

A synthetic study of its own seed (1; the benchmark reports seed 0) is drawn
in memory, embedded with a trained reference model (any: the benchmark's
10k run leaves one in benchmarks/runs/full/run_10000/results/references/default/scanvi_model),
and Annoy with 3 to 15 trees and longer searches is compared with exact neighbours and
timed against scanpy's default search. Agreement is measured as the benchmark does: a
15-neighbour majority vote of the labels (the model's predictions; with --atlas, the
embedded atlas's cells join with their own labels, as the benchmark's atlas cells do),
against the same vote over exact neighbours; recall is the share of the exact neighbours
found. Writes benchmarks/tune_neighbors.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
from atlasmap.contract import EMBEDDING_KEY
from bench import BENCHMARKS
from synthetic import Study

# (trees, nodes inspected per search as a multiple of Annoy's default, trees x neighbours,
# passes of the local join after the search)
GRID = (
    (5, 1, 0),
    (5, 3, 0),
    (5, 4, 0),
    (3, 1, 1),
    (3, 2, 1),
    (3, 1, 2),
    (5, 1, 1),
    (5, 2, 1),
    (5, 1, 2),
    (8, 1, 1),
)


def method_name(trees: int, times: int, passes: int) -> str:
    return (
        f"annoy, {trees} trees"
        + (f", search_k x{times}" if times > 1 else "")
        + (f", refine {passes}" if passes else "")
    )


def synthetic_latent(model_dir: Path, n_cells: int, seed: int = 1):
    import anndata as ad
    import scipy.sparse as sp
    import scvi
    from atlasmap.genes import align_to_genes
    from atlasmap.mapping import _model_input
    from atlasmap.reference import read_model_info

    study = Study(seed=seed)
    parts, types, samples = [], [], []
    for s, size in enumerate(np.array_split(np.arange(n_cells), 14)):
        shift = study.rng.normal(0, 0.3, study.n_genes)
        for cell_types, counts in study._cells(len(size), shift):
            parts.append(counts)
            types.append(cell_types)
            samples += [f"S{s:02d}"] * len(cell_types)
    counts = sp.vstack(parts).tocsr()
    labels = study.labels[np.concatenate(types), 3].astype(str)
    query = ad.AnnData(X=counts, var=pd.DataFrame(index=study.genes["gene_symbols"].to_numpy()))
    query.obs_names = [f"c{i}" for i in range(n_cells)]
    query.layers["counts"] = counts
    info = read_model_info(model_dir)
    aligned, _ = align_to_genes(query, info.genes)
    model_input = _model_input(aligned, info, pd.Series(samples, index=query.obs_names), None, None)
    model = scvi.model.SCANVI.load_query_data(model_input, str(model_dir))
    model.is_trained = True
    latent = model.get_latent_representation(model_input, batch_size=1024)
    predicted = np.asarray(model.predict(model_input, batch_size=1024)).astype(str)
    print(f"model's accuracy on the tuning cells: {np.mean(predicted == labels):.3f}", flush=True)
    return latent, predicted


def main(argv=None) -> None:
    import scanpy as sc
    from atlasmap.embedding import annoy_neighbors
    from atlasmap.settings import EmbeddingSettings
    from run_benchmark_ratios import compare_neighbour_methods
    from sklearn.neighbors import KNeighborsTransformer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--cells", type=int, default=300_000)
    parser.add_argument(
        "--atlas",
        type=Path,
        help="embedded atlas (embed_reference's): its cells join the tuning cells with their "
        "own labels, as results.md's vote counts them (the atlas is reference, not query)",
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "tune_neighbors.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    latent, labels = synthetic_latent(args.model, args.cells)
    if args.atlas is not None:
        import anndata as ad

        atlas = ad.read_h5ad(args.atlas, backed="r")
        latent = np.vstack([np.asarray(atlas.obsm[EMBEDDING_KEY]), latent])
        labels = np.concatenate([atlas.obs["Level_4"].astype(str).to_numpy(), labels])
        atlas.file.close()
    k = 15
    methods = {
        "exact": lambda a: sc.pp.neighbors(
            a,
            n_neighbors=k,
            use_rep=EMBEDDING_KEY,
            transformer=KNeighborsTransformer(n_neighbors=k, mode="distance", n_jobs=2),
        ),
        "scanpy default": lambda a: sc.pp.neighbors(a, n_neighbors=k, use_rep=EMBEDDING_KEY),
        **{
            method_name(trees, times, passes): (
                lambda a, t=trees, x=times, r=passes: annoy_neighbors(
                    a,
                    # sklearn-ann asks for k + 1 neighbours (each cell is its own first)
                    EmbeddingSettings(
                        n_neighbors=k,
                        n_trees=t,
                        search_k=x * t * (k + 1) if x > 1 else -1,
                        refine=r,
                        n_jobs=2,
                    ),
                )
            )
            for trees, times, passes in GRID
        },
    }
    seconds, agreement, recall = compare_neighbour_methods(
        latent, {"predicted": labels}, methods, k
    )
    rows = [
        {
            "method": n,
            "seconds": seconds[n],
            "agreement": agreement["predicted"][n],
            "recall": recall[n],
        }
        for n in methods
    ]
    table = pd.DataFrame(rows)
    table["speed-up vs scanpy default"] = seconds["scanpy default"] / table["seconds"]
    args.out.write_text(
        "\n".join(
            [
                "# Annoy's default trees, search and refinement",
                "",
                f"`python benchmarks/tune_neighbors.py {args.model} --cells {args.cells}"
                + (f" --atlas {args.atlas}" if args.atlas else "")
                + f"` ({time.strftime('%Y-%m-%d')}, 2 cores, "
                f"{(time.perf_counter() - started) / 60:.1f} min): a synthetic study of seed 1 "
                f"({args.cells:,} cells; the benchmark reports seed 0), embedded with the "
                "benchmark's reference model"
                + (
                    f", beside the {len(latent) - args.cells:,} cells of the embedded atlas"
                    if args.atlas
                    else ""
                )
                + ". Whole `sc.pp.neighbors` calls, 15 neighbours, Annoy searches on 2 threads, "
                "each method warmed up on 10,000 cells. Agreement: a 15-neighbour majority vote "
                "of the labels, against the same vote over exact neighbours (as in results.md), "
                "the labels being the model's predictions"
                + (
                    " for the study's cells and the atlas's own for the atlas's"
                    if args.atlas
                    else ""
                )
                + "; recall: the share of the exact neighbours found. search_k xN: N times "
                "Annoy's own nodes inspected per search (trees x 16); refine N: N passes of the "
                "local join (each cell also measures its neighbours' neighbours).",
                "",
                table.round(4).to_markdown(index=False),
                "",
            ]
        )
    )
    print(args.out.read_text())


if __name__ == "__main__":
    main()
