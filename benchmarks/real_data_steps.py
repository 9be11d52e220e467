"""The library's steps as the real-data benchmarks run them: train, map, call, score.

Every step that the workflow takes is the library's own function (training,
mapping, the calls); what is here is how the benchmarks drive them (threads, the
reuse of a trained model, timing) and how they score the calls, beside the
baselines they are compared with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import pandas as pd
from atlasmap.calls import unknown_calls
from atlasmap.contract import MODEL_FILE, UNKNOWN
from bench import RUNS, say, write_json
from real_data_data import BATCH_KEY, LABELS_KEY, TRUTH, load_labelled

# --------------------------------------------------------------------------- a process


def setup_process(threads: int) -> None:
    """Quiet logs and ``threads`` threads for torch and BLAS in this process."""
    import warnings

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    import atlasmap.training  # noqa: F401  (routes Lightning's loggers through logging)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in (
        "lightning",
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric",
        "lightning.fabric.utilities.seed",
        "scvi",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------- scores


def score(truth, predicted, candidate, probability, reference_labels) -> dict:
    """The benchmark's metrics, from the library's own functions, for every method alike."""
    from atlasmap.metrics import calibration_error, classification_metrics

    truth = pd.Series(np.asarray(truth, dtype=object)).astype("string")
    m = classification_metrics(truth, pd.Series(np.asarray(predicted)), set(reference_labels))
    ece = calibration_error(
        truth,
        pd.Series(np.asarray(candidate)),
        pd.Series(np.asarray(probability, dtype=float)),
        set(reference_labels),
    )
    keys = ("accuracy_seen", "macro_f1_seen", "share_unknown_seen", "share_unknown_unseen")
    out = {k: m[k] for k in keys}
    out.update(
        ece=ece, seen_cells=m["seen_cells"], unseen_cells=m["unseen_cells"], recall=m["recall"]
    )
    out["reference_labels"] = sorted(reference_labels)
    labelled = truth.notna().to_numpy()
    pairs = pd.DataFrame(
        {"truth": truth.to_numpy()[labelled], "called": np.asarray(predicted)[labelled]}
    )
    out["confusion"] = {
        str(t): {str(c): int(n) for c, n in group["called"].value_counts().items()}
        for t, group in pairs.groupby("truth")
    }
    unseen = ~truth.isin(list(reference_labels)).fillna(True).to_numpy() & truth.notna().to_numpy()
    if unseen.any():
        calls = pd.Series(np.asarray(predicted)[unseen]).value_counts()
        out["unseen_called_as"] = {str(k): int(v) for k, v in calls.items()}
    return out


def h_score(f1: float, detection: float) -> float:
    """Harmonic mean of seen macro-F1 and unseen detection (open-set recognition's H)."""
    return 0.0 if f1 + detection <= 0 else 2 * f1 * detection / (f1 + detection)


# --------------------------------------------------------------------------- atlasmap


class EpochRecord(logging.Handler):
    """Keeps atlasmap.reference's 'trained N of at most M epochs' lines for the run record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        message = record.getMessage()
        if "trained" in message and "epochs" in message:
            self.lines.append(message)


def train_model(atlas: ad.AnnData, directory: Path, settings, seed: int) -> dict:
    """Train (or reuse) a reference model; returns what training took."""
    from atlasmap.reference import train_reference_models

    record_path = directory.parent / f"{directory.name}.json"
    if (directory / MODEL_FILE).is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        # A model trained by other settings (an earlier default) is trained again.
        if record.get("settings") == asdict(settings) and record.get("seed") == seed:
            say(f"  model {directory.name}: reused")
            return record
        say(f"  model {directory.name}: trained by other settings, trained again")
    handler = EpochRecord()
    logger = logging.getLogger("atlasmap.reference")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.time()
    try:
        model, held_out = train_reference_models(
            atlas,
            labels_key=LABELS_KEY,
            batch_key=BATCH_KEY,
            layer="counts",
            settings=settings,
            seed=seed,
            accelerator="cpu",
        )
    finally:
        logger.removeHandler(handler)
    seconds = time.time() - start
    record = save_trained(model, directory, atlas, settings, seed, seconds, handler.lines, held_out)
    say(f"  model {directory.name}: {record['seconds']:.0f} s; {'; '.join(handler.lines)}")
    return record


def save_trained(
    model,
    directory: Path,
    atlas,
    settings,
    seed: int,
    seconds: float,
    epochs: list[str],
    held_out=None,
) -> dict:
    """Save a reference model (with its held-out latents) with the record by which
    ``train_model`` reuses it; ``epochs``: how far each stage trained, in words."""
    from atlasmap.reference import save_model

    save_model(model, directory, held_out)
    record = {
        "seconds": round(seconds, 1),
        "cells": atlas.n_obs,
        "labels": sorted(atlas.obs[LABELS_KEY].unique()),
        "epochs": epochs,
        "settings": asdict(settings),
        "seed": seed,
    }
    write_json(directory.parent / f"{directory.name}.json", record)
    return record


def schema_model_dir(train: str, test: str, seed: int) -> Path:
    """Where a tuning fold's reference model trained by the schema's rule
    (``TrainingSettings()``) is kept: every tuning script maps with the same one."""
    return RUNS / "schema_models" / f"{train}_to_{test}_seed{seed}"


def map_once(query, atlas, model_dir: Path, mode: str, seed: int, surgery_epochs: int):
    from atlasmap.mapping import map_query
    from atlasmap.settings import MappingSettings

    settings = MappingSettings(
        labels_key=LABELS_KEY,
        batch_key=BATCH_KEY,
        label_levels=(LABELS_KEY,),
        atlas_layer="counts",
        surgery_max_epochs=surgery_epochs,
        seed=seed,
        accelerator="cpu",
    )
    start = time.time()
    result = map_query(query, atlas, model_dir, mode, settings)
    return result, round(time.time() - start, 1)


def call_table(result, atlas, query, **settings) -> tuple[pd.DataFrame, dict, float]:
    """The library's calls of a mapping; the ensemble's expression member reads the
    reference's and the query's counts on all their genes, as the workflow's does."""
    from atlasmap.call_adapters import call_embedded
    from atlasmap.settings import CallSettings

    start = time.time()
    expanded = result.expanded
    table, report = call_embedded(
        expanded.obs,
        dict(expanded.obsm),
        expanded.uns["atlasmap"],
        CallSettings(**settings),
        query_expression=query,
        atlas_expression=lambda: atlas,
    )
    return table, report, round(time.time() - start, 2)


def score_table(table: pd.DataFrame, reference_labels, threshold=None, cutoff=None) -> dict:
    """Metrics of a call table, as called, or re-thresholded (``threshold`` and ``cutoff``)."""
    predicted = table["predicted_celltype"]
    if threshold is not None:
        predicted, _ = unknown_calls(
            table["candidate_celltype"],
            table["prediction_probability"],
            threshold,
            table["novelty_score"],
            cutoff,
        )
    return score(
        table[TRUTH],
        predicted,
        table["candidate_celltype"],
        table["prediction_probability"],
        reference_labels,
    )


# --------------------------------------------------------------------------- tuning folds


def tuning_rows(run_fold, seeds, folds) -> pd.DataFrame:
    """Every row of ``run_fold(data, train, test, seed)`` over the tuning ``folds``
    ((train, test) pairs) and ``seeds``, on two threads."""
    setup_process(2)
    data, _ = load_labelled()
    return pd.DataFrame(
        [
            row
            for seed in seeds
            for train, test in folds
            for row in run_fold(data, train, test, seed)
        ]
    )


def seen_scores(table: pd.DataFrame, seen) -> dict:
    """On the cells whose true label the reference has: closed-set accuracy (the best
    label, before Unknown), accuracy as called, and the share called Unknown."""
    truth = table[TRUTH]
    mask = truth.isin(seen).to_numpy()
    right = (table["candidate_celltype"] == truth).to_numpy()[mask]
    called = (table["predicted_celltype"] == truth).to_numpy()[mask]
    unknown = (table["predicted_celltype"] == UNKNOWN).to_numpy()[mask]
    return {
        "closed_set_accuracy": float(right.mean()),
        "accuracy_as_called": float(called.mean()),
        "share_unknown": float(unknown.mean()),
    }


# --------------------------------------------------------------------------- baselines


def logistic_regression(atlas: ad.AnnData, query: ad.AnnData, genes) -> dict:
    """sklearn LogisticRegression (max_iter 1000) on log-normalised counts of the HVGs."""
    from atlasmap.expression import log_normalise
    from sklearn.linear_model import LogisticRegression

    start = time.time()
    labels = atlas.obs[LABELS_KEY].astype(str).to_numpy()
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(log_normalise(atlas[:, genes].layers["counts"]), labels)
    probs = classifier.predict_proba(log_normalise(query[:, genes].layers["counts"]))
    best = classifier.classes_[probs.argmax(axis=1)]
    top = probs.max(axis=1)
    seconds = round(time.time() - start, 1)
    reference = set(labels)
    truth = query.obs[TRUTH]
    return {
        "seconds": seconds,
        "as_called": score(truth, best, best, top, reference),
        "p<0.5_unknown": score(truth, unknown_calls(best, top, 0.5)[0], best, top, reference),
    }


@contextlib.contextmanager
def celltypist_on_current_sklearn():
    """CellTypist 1.7.1's training with its own default (one-vs-rest LR) on scikit-learn >= 1.8.

    CellTypist builds ``LogisticRegression(multi_class="ovr", ...)``; scikit-learn
    1.8 removed ``multi_class``. The stand-in fits what that call fitted: one
    binary logistic regression per label (same C, solver, max_iter), stacked into
    ``coef_``/``intercept_``, so CellTypist's decision scores and sigmoid
    probabilities are unchanged. Nothing else of CellTypist is touched.
    """
    import importlib

    from sklearn.linear_model import LogisticRegression

    # celltypist/__init__ binds the name ``train`` to the function: take the module itself.
    ct_train = importlib.import_module("celltypist.train")

    class OneVsRestLR(LogisticRegression):
        def __init__(self, C=1.0, solver="lbfgs", max_iter=100, multi_class="ovr", n_jobs=None):
            super().__init__(C=C, solver=solver, max_iter=max_iter, n_jobs=n_jobs)
            self.multi_class = multi_class

        def fit(self, X, y):
            y = np.asarray(y)
            self.classes_ = np.unique(y)
            coefs, intercepts, iters = [], [], []
            for label in self.classes_:
                one = LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter)
                one.fit(X, y == label)
                coefs.append(one.coef_[0])
                intercepts.append(one.intercept_[0])
                iters.append(int(one.n_iter_[0]))
            self.coef_ = np.vstack(coefs)
            self.intercept_ = np.asarray(intercepts)
            self.n_iter_ = np.asarray(iters)
            self.n_features_in_ = X.shape[1]
            return self

    original = ct_train.LogisticRegression
    ct_train.LogisticRegression = OneVsRestLR
    try:
        yield
    finally:
        ct_train.LogisticRegression = original


def log1p_10k(adata: ad.AnnData) -> ad.AnnData:
    import scanpy as sc

    out = ad.AnnData(X=adata.layers["counts"].copy(), obs=adata.obs.copy(), var=adata.var.copy())
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def celltypist_baseline(atlas: ad.AnnData, query: ad.AnnData) -> dict:
    """CellTypist trained on the reference (every gene, defaults), best match, no majority voting."""
    try:
        import celltypist
    except ImportError:
        return {"skipped": "celltypist is not installed (pip install --no-deps celltypist==1.7.1)"}
    logging.getLogger("celltypist").setLevel(logging.WARNING)
    start = time.time()
    train = log1p_10k(atlas)
    with celltypist_on_current_sklearn():
        model = celltypist.train(train, labels=LABELS_KEY, genes=train.var_names)
    trained = time.time() - start
    result = celltypist.annotate(log1p_10k(query), model=model, majority_voting=False)
    best = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
    top = result.probability_matrix.max(axis=1).to_numpy()
    reference = set(atlas.obs[LABELS_KEY].astype(str))
    truth = query.obs[TRUTH]
    return {
        "seconds": round(time.time() - start, 1),
        "training_seconds": round(trained, 1),
        "version": celltypist.__version__,
        "as_called": score(truth, best, best, top, reference),
        "p<0.5_unknown": score(truth, unknown_calls(best, top, 0.5)[0], best, top, reference),
    }
