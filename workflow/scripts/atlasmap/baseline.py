"""A simple baseline to compare deep mapping against: logistic regression on log counts."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from .expression import log_normalise
from .genes import align_to_genes

log = logging.getLogger(__name__)


def logistic_baseline(
    atlas: ad.AnnData,
    query: ad.AnnData,
    genes,
    labels_key: str,
    atlas_layer: str | None = "counts",
    max_reference_cells: int = 50_000,
    seed: int = 0,
    id_to_symbol: pd.Series | None = None,
) -> pd.DataFrame:
    """Predict query labels with a logistic regression trained on the reference.

    Both are log-normalised on the same genes (the model's), so the only thing
    the baseline lacks is the deep model: no batch correction, no latent space.
    Returns ``predicted_celltype`` and ``prediction_probability`` per query cell.
    """
    classifier = fit_logistic_baseline(
        atlas, genes, labels_key, atlas_layer, max_reference_cells, seed
    )
    return predict_logistic_baseline(classifier, query, genes, id_to_symbol)


def fit_logistic_baseline(
    atlas: ad.AnnData,
    genes,
    labels_key: str,
    atlas_layer: str | None = "counts",
    max_reference_cells: int = 50_000,
    seed: int = 0,
):
    """The baseline's logistic regression, fitted on (a seeded sample of) the atlas."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    ref, _ = align_to_genes(
        atlas, genes, layer=atlas_layer, min_overlap=0.0, where="reference.atlas"
    )
    labels = atlas.obs[labels_key].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    train = np.arange(atlas.n_obs)
    if len(train) > max_reference_cells:
        train = np.sort(rng.choice(train, max_reference_cells, replace=False))
    classifier = LogisticRegression(max_iter=300, C=1.0, random_state=seed)
    # One BLAS thread: with two, summation order moved 32 of the demo's 2,500 calls
    # (lbfgs stops at max_iter), so the baseline would depend on the core count.
    with threadpool_limits(limits=1):
        classifier.fit(log_normalise(ref.layers["counts"][train]), labels[train])
    log.info(
        "baseline: logistic regression on %d reference cells, %d genes", len(train), len(genes)
    )
    return classifier


def predict_logistic_baseline(
    classifier, query: ad.AnnData, genes, id_to_symbol: pd.Series | None = None
) -> pd.DataFrame:
    """The baseline's call and its probability for each cell of ``query`` (counts in
    ``layers["counts"]``); each cell's on its own, so the query may come in blocks."""
    from threadpoolctl import threadpool_limits

    qry, _ = align_to_genes(
        query, genes, layer="counts", min_overlap=0.0, id_to_symbol=id_to_symbol, where="query"
    )
    with threadpool_limits(limits=1):
        probs = classifier.predict_proba(log_normalise(qry.layers["counts"]))
    best = probs.argmax(axis=1)
    return pd.DataFrame(
        {
            "barcode": query.obs_names.to_numpy(),
            "predicted_celltype": classifier.classes_[best],
            "prediction_probability": probs[np.arange(len(best)), best],
        }
    )


def predict_baseline_files(
    *,
    query_path,
    atlas_path,
    model_dir,
    reference_config: dict,
    baseline_config: dict,
    seed: int,
    output,
    block_cells: int = 100_000,
) -> pd.DataFrame:
    """:func:`logistic_baseline` on the model's genes, from files to a TSV (whole or not at
    all); the query read ``block_cells`` cells at a time, never whole."""
    from .genes import id_to_symbol_table
    from .io import atomic_path, read_annotations
    from .reference import read_atlas, read_model_info
    from .scatter import read_rows

    atlas = read_atlas(atlas_path)
    genes = read_model_info(model_dir).genes
    classifier = fit_logistic_baseline(
        atlas,
        genes,
        labels_key=reference_config["labels_key"],
        atlas_layer=reference_config["counts_layer"],
        max_reference_cells=baseline_config["max_reference_cells"],
        seed=seed,
    )
    id_to_symbol = id_to_symbol_table(atlas.var, atlas.var_names)
    n_cells = read_annotations(query_path, obsm=(), uns=False).n_obs
    table = pd.concat(
        [
            predict_logistic_baseline(
                classifier,
                read_rows(query_path, np.arange(start, min(start + block_cells, n_cells))),
                genes,
                id_to_symbol,
            )
            for start in range(0, max(n_cells, 1), block_cells)
        ],
        ignore_index=True,
    )
    with atomic_path(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
