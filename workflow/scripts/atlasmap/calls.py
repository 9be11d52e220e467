"""Cell-type calls from the mapped latent space: label transfer, calibration, novelty.

The call is made after mapping, from the joint latent space (and the scANVI
classifier's probabilities), so that a threshold or a method reruns in
seconds. Everything that decides a call is fitted on the reference alone:

* **label transfer** — ``knn``: a distance-weighted vote of the query cell's
  nearest reference cells (a Gaussian kernel whose bandwidth is the
  reference's own typical neighbour distance, so nearer cells weigh more);
  ``classifier``: scANVI's classifier head; ``consensus``: the mean of both;
  ``ensemble``: the kNN vote and a logistic regression on the cells'
  log-normalised expression (``expression.py``), weighted by
  ``expression_weight``; the members' agreement enters the calibration.
  With ``query_smoothing`` the latent's members (the vote, the classifier head)
  are then averaged over the cell's nearest cells of the same query batch in the
  latent (the query's own structure, as CellTypist's majority voting over query
  clusters uses it); the expression member is not: where the latent mixes two
  types that expression tells apart, averaging over latent neighbours would undo it.
* **calibration** — the reference is split by batch (grouped folds); each
  held-out batch is called from the other batches, as a query from a new
  batch would be (the expression classifier refitted without it), and an
  isotonic map from the raw top probability to the observed share of right
  calls is fitted on those out-of-fold calls, one for the cells whose members
  agree and one for those whose members disagree. The held-out cells' latent
  still comes from a model trained with their labels: ``calls.json`` says so
  (``held_out_caveats``), and how the held-out figures can flatter.
* **novelty** — a cell's mean distance to its nearest reference cells,
  divided by the typical out-of-fold distance of reference cells called with
  the same label, and by its batch's shift from the reference (a quantile of
  the batch's scores, never below 1: see ``batch_shift``). The cut-off is the
  quantile of the reference's own out-of-fold scores, treated alike, that
  flags ``novelty_false_positive_rate`` of them. Its
  power is measured, still on the reference, by holding each label out in
  turn and scoring its cells against the rest.

A cell is ``Unknown`` when its calibrated probability is under
``unknown_threshold`` or its novelty score is over the cut-off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import (
    CALL_COLUMNS,
    EMBEDDING_KEY,
    PROBABILITIES_KEY,
    SOURCE_COLUMN,
    UNKNOWN,
    query_mask,
)
from .errors import AtlasmapInputError
from .expression import ExpressionModel, fit_expression_model, fit_linear
from .neighbours import ExactNeighbours

log = logging.getLogger(__name__)

# unknown_reason of a cell that was called (not rejected).
CALLED = "none"
METHODS = ("knn", "classifier", "consensus", "ensemble")
# Methods with the expression member, which need the cells' counts.
EXPRESSION_METHODS = ("ensemble",)


@dataclass(frozen=True)
class CallSettings:
    method: str = "ensemble"
    # Chosen on held-out reference batches of the real-data benchmark.
    n_neighbors: int = 50
    unknown_threshold: float = 0.3
    novelty: bool = True
    novelty_false_positive_rate: float = 0.05
    # Quantile of a batch's novelty scores taken as that batch's shift from the
    # reference (None: no correction); see batch_shift.
    novelty_batch_quantile: float | None = 0.5
    calibrate: bool = True
    calibration_folds: int = 5
    calibration_cells: int = 20_000
    # The ensemble's expression member: its weight (the kNN vote has the rest), the
    # reference's variable genes it reads, its penalty and the atlas cells each fit may
    # use. Chosen, with the method, on held-out reference batches
    # (benchmarks/tune_ensemble.md).
    expression_weight: float = 0.5
    expression_genes: int = 5000
    expression_c: float = 0.01
    expression_cells: int = 20_000
    # Query cells of the same batch whose probabilities each cell's are averaged with
    # (0: none); chosen on held-out reference batches (benchmarks/tune_smoothing.md).
    query_smoothing: int = 50
    seed: int = 0
    n_jobs: int = 1


def kernel_weights(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """Row-normalised weights exp(-(d² - d₀²) / h²) of each row's neighbours (nearest
    first, d₀ the nearest distance: for numerical range only, it cancels)."""
    squared = distances**2
    weights = np.exp(-(squared - squared[:, :1]) / max(bandwidth, 1e-12) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


class LatentKNN:
    """Distance-weighted kNN label vote in a latent space.

    Weights are exp(-(d² - d₀²) / h²) with d₀ the cell's nearest distance (for
    numerical range only: it cancels in the normalisation) and h a bandwidth
    fixed from the reference, so the vote is not blind to distance as a
    per-cell scale would make it.
    """

    def __init__(self, latent, codes, n_labels: int, n_neighbors: int, bandwidth: float, n_jobs=1):
        self.k = int(min(n_neighbors, len(latent)))
        self.codes = np.asarray(codes)
        self.n_labels = n_labels
        self.bandwidth = float(bandwidth)
        self.index = ExactNeighbours(latent, n_jobs)

    def query(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-label vote (cells x labels, rows sum to 1) and the mean neighbour distance."""
        distances, indices = self.index.query(latent, self.k)
        return self.vote(distances, indices), distances.mean(axis=1)

    def vote(self, distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
        weights = kernel_weights(distances, self.bandwidth)
        n, k = indices.shape
        rows = np.repeat(np.arange(n), k)
        return sp.csr_matrix(
            (weights.ravel(), (rows, self.codes[indices].ravel())), shape=(n, self.n_labels)
        ).toarray()


@dataclass
class CallModel:
    """What the calls need, fitted on the reference alone."""

    labels: np.ndarray
    knn: LatentKNN
    distance_scale: np.ndarray  # per label: typical out-of-fold neighbour distance
    novelty_cutoff: float
    novelty_batch_quantile: float | None
    calibration_x: np.ndarray | None
    calibration_y: np.ndarray | None
    report: dict = field(default_factory=dict)
    # The ensemble's expression member, and the calibration of the cells whose
    # members disagree (calibration_x/y then holds that of the cells where they agree).
    expression: ExpressionModel | None = None
    disagree_x: np.ndarray | None = None
    disagree_y: np.ndarray | None = None

    def calibrated(self, raw: np.ndarray, agree: np.ndarray | None = None) -> np.ndarray:
        if self.calibration_x is None:
            return raw
        out = np.interp(raw, self.calibration_x, self.calibration_y)
        if agree is not None and self.disagree_x is not None:
            apart = ~np.asarray(agree, dtype=bool)
            out[apart] = np.interp(raw[apart], self.disagree_x, self.disagree_y)
        return out


def calibration_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Cell indices of each held-out fold: whole batches when there are several."""
    unique = pd.unique(groups)
    rng = np.random.default_rng(seed)
    if len(unique) >= 2:
        order = rng.permutation(unique)
        n = min(n_folds, len(unique))
        return [np.flatnonzero(np.isin(groups, order[i::n])) for i in range(n)]
    log.warning("the reference has one batch: calibration folds are random cells, not batches")
    cells = rng.permutation(len(groups))
    return [np.sort(cells[i::n_folds]) for i in range(n_folds)]


def fold_of_cells(folds: list[np.ndarray], n_cells: int) -> np.ndarray:
    """Per cell, the index of the fold holding it (-1: none)."""
    fold_of = np.full(n_cells, -1)
    for i, held in enumerate(folds):
        fold_of[held] = i
    return fold_of


def batch_shift(score: np.ndarray, batches, quantile: float | None) -> np.ndarray:
    """Per cell, its batch's shift from the reference: a quantile of the batch's scores, >= 1.

    A batch from another lab or condition sits farther from the reference as a
    whole, seen types included; scores divided by that shift keep the cut-off's
    false-positive rate, fitted on the reference's own batches, on a new one.
    A type the reference lacks stays far from its batch's bulk and is still
    flagged. Never below 1, so a batch close to the reference is not made to
    look novel; the median tolerates up to half of a batch being novel.
    """
    score = np.asarray(score, dtype=float)
    if quantile is None or not len(score):
        return np.ones(len(score))
    groups = pd.Series(np.asarray(batches).astype(str))
    shift = (
        pd.Series(score)
        .groupby(groups.to_numpy())
        .transform(lambda part: np.nanquantile(part, quantile))
    )
    return np.maximum(shift.to_numpy(dtype=float), 1.0)


def _per_batch(shift: np.ndarray, batches) -> pd.Series:
    """One value per batch of a per-cell shift (constant within each batch)."""
    return pd.Series(shift).groupby(np.asarray(batches).astype(str)).first()


def _rounded(per_batch: pd.Series) -> dict[str, float]:
    return {str(b): round(float(v), 4) for b, v in per_batch.items()}


def _method_probabilities(
    settings: CallSettings, knn_probs, classifier_probs, expression_probs=None
) -> np.ndarray:
    """Per-label probabilities of the method the settings name, from its members'."""
    method = settings.method
    if method == "knn":
        return knn_probs
    if method in EXPRESSION_METHODS:
        if expression_probs is None:
            raise AtlasmapInputError(
                f"mapping.calls.method {method!r} needs the cells' expression (counts), "
                "which this call was not given"
            )
        w = settings.expression_weight
        return (1.0 - w) * knn_probs + w * expression_probs
    if classifier_probs is None:
        raise AtlasmapInputError(
            f"mapping.calls.method {method!r} needs the scANVI classifier's probabilities, "
            "which this mapping does not hold"
        )
    if method == "classifier":
        return classifier_probs
    return 0.5 * (knn_probs + classifier_probs)


def smooth_over_neighbours(
    latent: np.ndarray,
    groups,
    members: list,
    n_neighbors: int,
    bandwidth: float,
    n_jobs: int = 1,
) -> list:
    """Each cell's probabilities in each of ``members`` (cells x labels arrays, or None)
    averaged with those of its ``n_neighbors`` nearest cells in ``latent`` among the
    cells of its own group (a query batch), each weighted by the vote's Gaussian kernel
    of its distance (``bandwidth``): a call follows the cells it sits among, a small
    query's far "neighbours" (another type) count little, and a call does not depend on
    which other batches are called with it."""
    if n_neighbors < 1 or len(latent) < 2:
        return members
    groups = pd.Series(np.asarray(groups).astype(str))
    rows, columns, weights = [], [], []
    for cells in groups.groupby(groups, sort=False).indices.values():
        k = min(n_neighbors, len(cells) - 1)
        if k < 1:
            distances, nearest = np.zeros((len(cells), 1)), np.arange(len(cells))[:, None]
        else:
            distances, nearest = ExactNeighbours(latent[cells], n_jobs).query(latent[cells], k + 1)
        rows.append(np.repeat(cells, nearest.shape[1]))
        columns.append(cells[nearest].ravel())
        weights.append(kernel_weights(distances, bandwidth).ravel())
    rows, columns, weights = np.concatenate(rows), np.concatenate(columns), np.concatenate(weights)
    # A sparse weighted mean over each cell's neighbours (itself nearest): a dense
    # (cells x neighbours x labels) gather would take gigabytes at 200k cells.
    average = sp.csr_matrix((weights, (rows, columns)), shape=(len(latent), len(latent)))
    return [None if m is None else np.asarray(average @ m) for m in members]


def members_agree(knn_probs: np.ndarray, expression_probs: np.ndarray | None) -> np.ndarray | None:
    """Per cell, whether the kNN vote and the expression classifier name the same label."""
    if expression_probs is None:
        return None
    return knn_probs.argmax(axis=1) == expression_probs.argmax(axis=1)


def _isotonic(raw: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic map raw -> P(right), as knots for np.interp."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, correct)
    return np.asarray(iso.X_thresholds_, dtype=float), np.asarray(iso.y_thresholds_, dtype=float)


def fit_call_model(
    latent: np.ndarray,
    labels,
    batches,
    classifier_probs: np.ndarray | None = None,
    classifier_labels=None,
    settings: CallSettings = CallSettings(),
    expression: ad.AnnData | None = None,
    expression_layer: str | None = "counts",
    held_out=None,
) -> CallModel:
    """Fit label transfer, calibration and novelty cut-off on the reference cells.

    ``classifier_probs`` (cells x ``classifier_labels``) are the classifier's
    probabilities for the reference cells; needed by the classifier and
    consensus methods. Their out-of-fold calls use them as they are: the
    classifier was trained on those cells, so its calibration is optimistic.
    ``expression`` holds the same cells' counts (in ``expression_layer``), for the
    ensemble's expression member; it is refitted without each held-out fold.
    ``held_out``: the cells' :class:`~atlasmap.reference.HeldOutLatents`, in their
    order; its folds are then the calibration's, each scored in the latent of the
    model that did not see its labels (else in ``latent``, folds drawn here).
    """
    s = settings
    if s.method not in METHODS:
        raise AtlasmapInputError(f"mapping.calls.method must be one of {METHODS}, not {s.method!r}")
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    codes, names = pd.factorize(labels, sort=True)
    names = np.asarray(names, dtype=object)
    n_labels = len(names)
    clf = _align_probabilities(classifier_probs, classifier_labels, names)
    rng = np.random.default_rng(s.seed)
    k = int(min(s.n_neighbors, len(latent) - 1))
    if k < 1:
        raise AtlasmapInputError("the reference needs at least two cells to call labels from")
    expression_model, logged = _fit_expression_member(expression, expression_layer, codes, names, s)

    # The kernel's bandwidth: the reference's own typical distance to its k-th neighbour.
    bandwidth = _bandwidth(latent, k, rng, s.n_jobs)

    batches = np.asarray(batches).astype(str)
    if held_out is not None:
        folds = [np.flatnonzero(held_out.fold == f) for f in range(len(held_out.latents))]
        spaces = [_rescaled(space, bandwidth, k, rng, s.n_jobs) for space in held_out.latents]
    else:
        folds = calibration_folds(batches, s.calibration_folds, s.seed)
        spaces = [latent] * len(folds)
    oof = _out_of_fold(spaces, codes, n_labels, folds, k, bandwidth, logged, s, rng)
    cells, knn_probs, dist = oof["cells"], oof["knn"], oof["distance"]
    expr_probs = oof["expression"]
    held_clf = None if clf is None else clf[cells]
    # Each held-out fold's batches are smoothed as query batches are.
    held_group = np.char.add(oof["fold_of"].astype(str), np.char.add(":", batches[cells]))
    knn_probs, held_clf = smooth_over_neighbours(
        oof["latent"], held_group, [knn_probs, held_clf], s.query_smoothing, bandwidth, s.n_jobs
    )
    probs = _method_probabilities(s, knn_probs, held_clf, expr_probs)
    best = probs.argmax(axis=1)
    raw = probs[np.arange(len(best)), best]
    correct = (best == codes[cells]).astype(float)
    agree = members_agree(knn_probs, expr_probs)

    # Typical distance per called label (overall median where a label is rarely called).
    overall = float(np.median(dist))
    scale = np.full(n_labels, overall)
    for code in range(n_labels):
        mine = dist[best == code]
        if len(mine) >= 20:
            scale[code] = float(np.median(mine))
    scale = np.maximum(scale, 1e-9)
    shift = batch_shift(dist / scale[best], batches[cells], s.novelty_batch_quantile)
    score = dist / scale[best] / shift
    cutoff = float(np.quantile(score, 1.0 - s.novelty_false_positive_rate)) if s.novelty else np.inf

    model = CallModel(
        labels=names,
        knn=LatentKNN(latent, codes, n_labels, k, bandwidth, s.n_jobs),
        distance_scale=scale,
        novelty_cutoff=cutoff,
        novelty_batch_quantile=s.novelty_batch_quantile if s.novelty else None,
        calibration_x=None,
        calibration_y=None,
        expression=expression_model,
    )
    if s.calibrate:
        _fit_calibration(model, raw, correct, agree)
    calibrated = model.calibrated(raw, agree)
    flagged = (calibrated < s.unknown_threshold) | (score > cutoff)
    shift_of_batch = _per_batch(shift, batches[cells])
    model.report = {
        "method": s.method,
        "n_neighbors": k,
        "bandwidth": round(bandwidth, 6),
        "folds": oof["folds"],
        "held_out_cells": int(len(cells)),
        "held_out_accuracy": round(float(correct.mean()), 4),
        "held_out_member_accuracy": _member_accuracy(oof, clf, codes),
        "held_out_members_agree": None if agree is None else round(float(agree.mean()), 4),
        "held_out_mean_raw_probability": round(float(raw.mean()), 4),
        "held_out_mean_calibrated_probability": round(float(calibrated.mean()), 4),
        "held_out_share_unknown": round(float(flagged.mean()), 4),
        "held_out_latent": "fold models" if held_out is not None else "reference model",
        "held_out_caveats": _caveats(batches, s, held_out is not None),
        "labels_short_of_cells": _labels_short_of_cells(codes, names, folds, k),
        "novelty_cutoff": round(cutoff, 4) if np.isfinite(cutoff) else None,
        "novelty_false_positive_rate": s.novelty_false_positive_rate if s.novelty else None,
        "novelty_batch_quantile": model.novelty_batch_quantile,
        "held_out_batch_shift": _rounded(shift_of_batch),
        "unknown_threshold": s.unknown_threshold,
        "query_smoothing": s.query_smoothing,
    }
    if expression_model is not None:
        model.report["expression_genes"] = len(expression_model.genes)
        model.report["expression_weight"] = s.expression_weight
    if s.novelty:
        cell_shift = pd.Series(batches).map(shift_of_batch).fillna(1.0).to_numpy(dtype=float)
        model.report["held_out_label_detection"] = _held_out_label_detection(
            spaces, codes, names, folds, model, rng, cell_shift
        )
    log.info("calls fitted on the reference: %s", model.report)
    return model


def _fit_expression_member(expression, layer, codes, names, s: CallSettings):
    """The expression classifier on every atlas cell and the atlas's logged expression on
    its genes (for the refits without each fold); none where the method does without."""
    if s.method not in EXPRESSION_METHODS:
        return None, None
    if expression is None:
        raise AtlasmapInputError(
            f"mapping.calls.method {s.method!r} needs the atlas cells' counts, "
            "which the calls' fit was not given"
        )
    if expression.n_obs != len(codes):
        raise AtlasmapInputError(
            f"the atlas's counts hold {expression.n_obs} cells, its latent {len(codes)}: "
            "not the same atlas"
        )
    return fit_expression_model(
        expression,
        codes,
        len(names),
        layer=layer,
        n_genes=s.expression_genes,
        C=s.expression_c,
        max_cells=s.expression_cells,
        seed=s.seed,
    )


def _rescaled(space: np.ndarray, bandwidth: float, k: int, rng, n_jobs: int) -> np.ndarray:
    """A held-out model's latent scaled so that its typical distance to the k-th
    neighbour is the reference latent's ``bandwidth``: distances fitted there (the
    novelty scale and cut-off) then hold for the query in the reference latent."""
    return space * (bandwidth / _bandwidth(space, k, rng, n_jobs))


def _bandwidth(latent: np.ndarray, k: int, rng, n_jobs: int) -> float:
    """The median distance of (at most 5,000) cells to their k-th nearest other cell."""
    probe = rng.choice(len(latent), size=min(len(latent), 5000), replace=False)
    distances = ExactNeighbours(latent, n_jobs).query(latent[probe], k + 1)[0][:, -1]
    return max(float(np.median(distances)), 1e-6)


def _out_of_fold(spaces, codes, n_labels, folds, k, bandwidth, logged, s, rng) -> dict:
    """Each sampled cell of each held-out fold scored by members fitted without that fold:
    the kNN vote among the other folds' cells in the fold's latent (``spaces[fold]``),
    the expression classifier refitted on them."""
    n_cells = len(codes)
    budget = min(n_cells, s.calibration_cells)
    sampled = np.zeros(n_cells, dtype=bool)
    sampled[rng.choice(n_cells, size=budget, replace=False)] = True
    out = {"cells": [], "knn": [], "distance": [], "expression": [], "fold_of": [], "latent": []}
    for fold, held in enumerate(folds):
        train = np.setdiff1d(np.arange(n_cells), held)
        held = held[sampled[held]]
        if len(train) <= k or not len(held):
            continue
        space = spaces[fold]
        knn = LatentKNN(space[train], codes[train], n_labels, k, bandwidth, s.n_jobs)
        probs, dist = knn.query(space[held])
        out["cells"].append(held)
        out["latent"].append(space[held])
        out["fold_of"].append(np.full(len(held), fold))
        out["knn"].append(probs)
        out["distance"].append(dist)
        if logged is not None:
            coef, intercept = fit_linear(
                logged[train],
                codes[train],
                n_labels,
                C=s.expression_c,
                max_cells=s.expression_cells,
                seed=s.seed,
            )
            member = ExpressionModel(np.zeros(0), None, coef, intercept)
            out["expression"].append(member.probabilities_of_logged(logged[held]))
    if not out["cells"]:
        raise AtlasmapInputError(
            f"no held-out fold could be scored: the atlas has {n_cells} cells, and the "
            f"calls need more than {k} (mapping.calls.n_neighbors) outside each fold"
        )
    return {
        "folds": len(out["cells"]),
        "cells": np.concatenate(out["cells"]),
        "fold_of": np.concatenate(out["fold_of"]),
        "latent": np.vstack(out["latent"]),
        "knn": np.vstack(out["knn"]),
        "distance": np.concatenate(out["distance"]),
        "expression": np.vstack(out["expression"]) if out["expression"] else None,
    }


def _fit_calibration(model: CallModel, raw, correct, agree) -> None:
    """Isotonic maps raw -> P(right): one for all cells, or, with an expression member,
    one where the members agree and one where they disagree (each needs 50 cells)."""
    if agree is None or agree.all() or (~agree).sum() < 50 or agree.sum() < 50:
        model.calibration_x, model.calibration_y = _isotonic(raw, correct)
        return
    model.calibration_x, model.calibration_y = _isotonic(raw[agree], correct[agree])
    model.disagree_x, model.disagree_y = _isotonic(raw[~agree], correct[~agree])


def _member_accuracy(oof: dict, clf, codes) -> dict:
    """Out-of-fold accuracy of each member alone."""
    truth = codes[oof["cells"]]
    members = {"knn": oof["knn"], "expression": oof["expression"]}
    if clf is not None:
        members["classifier"] = clf[oof["cells"]]
    return {
        name: round(float((probs.argmax(axis=1) == truth).mean()), 4)
        for name, probs in members.items()
        if probs is not None
    }


def _caveats(batches: np.ndarray, s: CallSettings, fold_models: bool) -> list[str]:
    """Why the held-out figures can flatter the calls, said beside them in calls.json."""
    if fold_models:
        out = [
            "each held-out fold's latent comes from a scANVI trained without its labels "
            "(from the reference's scVI, which saw its cells unlabelled, as surgery sees a "
            "query's); scANVI's classifier, where a method reads it, is the reference "
            "model's, trained with their labels"
        ]
    else:
        out = [
            "the held-out cells' latent comes from the reference model, trained with their "
            "labels: the kNN vote (and scANVI's classifier) see them closer to their own "
            "label than a query's cells will be (reference.training.calibration_models "
            "trains models without them)"
        ]
    if len(pd.unique(batches)) < 2:
        out.append(
            "the atlas has one batch: the folds are random cells of the same batch, so the "
            "held-out accuracy and calibration do not see a new batch's shift (on the "
            "benchmark's one-batch PBMC references: 0.99 held out against 0.77-0.79 on a "
            "query from another lab; benchmarks/tune_ensemble.md)"
        )
    if s.method in EXPRESSION_METHODS:
        out.append(
            "the expression classifier is refitted without each held-out fold (its genes, "
            "chosen without labels, are the whole atlas's)"
        )
    return out


def _labels_short_of_cells(codes, names, folds, k) -> dict:
    """Labels with fewer cells than the calls need, and what that does: under ``k`` cells
    a label cannot win the kNN vote on numbers alone; a fold whose other folds lack a
    label cannot call its cells of that label, and its calibration counts them wrong."""
    out = {}
    counts = np.bincount(codes, minlength=len(names))
    fold_of = fold_of_cells(folds, len(codes))
    for code, name in enumerate(names):
        notes = {}
        if counts[code] < k:
            notes["cells"] = int(counts[code])
            notes["fewer_than_n_neighbors"] = int(k)
        own = fold_of[codes == code]
        if len(folds) > 1 and len(np.unique(own)) == 1:
            notes["only_in_fold"] = int(own[0])
        if notes:
            out[str(name)] = notes
    if out:
        log.warning("atlas labels short of cells for the calls (reported in calls.json): %s", out)
    return out


def _held_out_label_detection(spaces, codes, names, folds, model, rng, cell_shift) -> dict:
    """Share of each label's cells flagged novel when that label is missing from the reference.

    For each label in turn, cells of one held-out fold are scored against the
    reference cells of the other folds without that label: what an unseen cell
    type from a new batch would look like. Measured on the reference alone;
    scores are divided by the shift of each cell's batch measured with every
    label present (``cell_shift``), as a query batch's would be.
    """
    fold_of = fold_of_cells(folds, len(codes))
    out = {}
    for code, name in enumerate(names):
        cells = np.flatnonzero(codes == code)
        if len(cells) < 20:
            continue
        held = cells[fold_of[cells] == fold_of[cells][rng.integers(len(cells))]]
        held = rng.choice(held, size=min(len(held), 300), replace=False)
        train = np.flatnonzero((codes != code) & (fold_of != fold_of[held[0]]))
        if len(train) <= model.knn.k:
            continue
        space = spaces[fold_of[held[0]]]
        knn = LatentKNN(space[train], codes[train], len(names), model.knn.k, model.knn.bandwidth)
        probs, dist = knn.query(space[held])
        score = dist / model.distance_scale[probs.argmax(axis=1)] / cell_shift[held]
        out[str(name)] = round(float(np.mean(score > model.novelty_cutoff)), 4)
    if out:
        out["mean"] = round(float(np.mean(list(out.values()))), 4)
    return out


def _align_probabilities(probs, prob_labels, names) -> np.ndarray | None:
    """Classifier probabilities reordered to ``names`` (labels the reference lacks dropped)."""
    if probs is None:
        return None
    frame = pd.DataFrame(np.asarray(probs), columns=[str(x) for x in prob_labels])
    frame = frame.reindex(columns=[str(x) for x in names], fill_value=0.0)
    total = frame.to_numpy().sum(axis=1, keepdims=True)
    return frame.to_numpy() / np.maximum(total, 1e-12)


def call_cells(
    model: CallModel,
    latent: np.ndarray,
    classifier_probs: np.ndarray | None = None,
    classifier_labels=None,
    hierarchy: pd.DataFrame | None = None,
    settings: CallSettings = CallSettings(),
    index=None,
    batches=None,
    expression_probs: np.ndarray | None = None,
) -> pd.DataFrame:
    """The calls of query cells at every level, with probability, uncertainty and novelty.

    Columns: ``predicted_celltype`` (``Unknown`` when rejected),
    ``prediction_probability`` (calibrated probability of the best label),
    ``prediction_uncertainty`` (1 minus the distance-weighted kNN vote share of
    the best label), ``candidate_celltype`` (the best label, also when
    rejected), ``novelty_score``
    (1 = as far from the reference as its own cells typically are, after
    dividing by the shift of the cell's batch, ``batches``, from the reference),
    ``unknown_reason`` (``none``, ``probability`` or ``novelty``), each member's
    best label and its probability (``knn_celltype``/``knn_probability``, and
    ``expression_celltype``/``expression_probability`` given ``expression_probs``,
    the expression classifier's per-label probabilities in ``model.labels``'
    order), then ``predicted_<level>``/``probability_<level>`` for each coarser level.
    The vote's and the classifier's probabilities are taken after
    ``settings.query_smoothing``, the expression member's as it gives them.
    """
    s = settings
    if batches is None:
        batches = np.zeros(len(latent))
    knn_probs, dist = model.knn.query(latent)
    clf = _align_probabilities(classifier_probs, classifier_labels, model.labels)
    knn_probs, clf = smooth_over_neighbours(
        latent, batches, [knn_probs, clf], s.query_smoothing, model.knn.bandwidth, s.n_jobs
    )
    probs = _method_probabilities(s, knn_probs, clf, expression_probs)
    best = probs.argmax(axis=1)
    raw = probs[np.arange(len(best)), best]
    probability = model.calibrated(raw, members_agree(knn_probs, expression_probs))
    novelty = dist / model.distance_scale[best]
    shift = batch_shift(novelty, batches, model.novelty_batch_quantile)
    novelty = novelty / shift
    reason = np.full(len(best), CALLED, dtype=object)
    reason[probability < s.unknown_threshold] = "probability"
    reason[novelty > model.novelty_cutoff] = "novelty"
    candidate = model.labels[best]
    called = np.where(reason == CALLED, candidate, UNKNOWN).astype(object)
    out = pd.DataFrame(
        {
            "predicted_celltype": called,
            "prediction_probability": probability,
            "prediction_uncertainty": np.clip(1.0 - knn_probs.max(axis=1), 0.0, 1.0),
            "candidate_celltype": candidate,
            "novelty_score": novelty,
            "unknown_reason": reason,
            **_member_columns(model.labels, knn_probs, expression_probs),
        },
        index=index,
    )
    if hierarchy is not None and len(hierarchy.columns):
        coarse = coarser_calls(probs, model.labels, called, probability, reason, hierarchy, s)
        coarse.index = out.index
        out = pd.concat([out, coarse], axis=1)
    # Each query batch's shift from the atlas, for the run record.
    out.attrs["batch_shift"] = _rounded(_per_batch(shift, batches))
    return out


def _member_columns(labels, knn_probs, expression_probs) -> dict:
    """Each member's best label and its probability, per cell."""
    out = {}
    for name, probs in (("knn", knn_probs), ("expression", expression_probs)):
        if probs is None:
            continue
        best = probs.argmax(axis=1)
        out[f"{name}_celltype"] = labels[best]
        out[f"{name}_probability"] = probs[np.arange(len(best)), best]
    return out


def coarser_calls(probs, labels, called, probability, reason, hierarchy, settings) -> pd.DataFrame:
    """Calls at each coarser level, consistent with the finest call for any threshold.

    A known finest call fixes every coarser call to its ancestors, with the
    probability of that ancestor (its children's summed probability, and never
    below the finest call's). A finest call rejected for low probability may
    still be confident one level up; a novel cell is Unknown at every level.
    """
    out = {}
    labels = pd.Index([str(x) for x in labels])
    for level in hierarchy.columns:
        parent = hierarchy[level].reindex(labels)
        groups = pd.Index(sorted(parent.dropna().unique()))
        member = sp.csr_matrix(
            (
                np.ones(parent.notna().sum()),
                (np.flatnonzero(parent.notna()), groups.get_indexer(parent.dropna())),
            ),
            shape=(len(labels), len(groups)),
        )
        grouped = np.asarray(probs @ member)
        top = grouped.argmax(axis=1)
        top_p = grouped[np.arange(len(top)), top]
        level_call = np.where(top_p >= settings.unknown_threshold, groups[top], UNKNOWN).astype(
            object
        )
        # The candidate's parent is at least as likely right as the candidate, and the
        # top group holds at least the parent's share: never below the finest probability.
        level_p = np.maximum(top_p, probability)
        known = reason == CALLED
        fixed_parent = parent.reindex(pd.Index(called[known])).to_numpy()
        level_call[known] = np.where(pd.isna(fixed_parent), UNKNOWN, fixed_parent)
        parent_code = groups.get_indexer(pd.Index(fixed_parent))
        summed = np.where(
            parent_code >= 0, grouped[np.flatnonzero(known), np.maximum(parent_code, 0)], 0.0
        )
        level_p[known] = np.maximum(summed, probability[known])
        level_call[reason == "novelty"] = UNKNOWN
        out[f"predicted_{level}"] = level_call
        out[f"probability_{level}"] = level_p
    return pd.DataFrame(out)


def call_settings(mapping_config: dict, seed: int = 0, n_jobs: int = 1) -> CallSettings:
    """CallSettings from the config's mapping section (mapping.calls keys are its fields)."""
    return CallSettings(
        **mapping_config["calls"],
        unknown_threshold=mapping_config["unknown_threshold"],
        seed=seed,
        n_jobs=n_jobs,
    )


@dataclass
class ReferenceCalls:
    """The calls' fit on the atlas cells alone, with the cells and latent it saw: made
    once per reference (rule fit_calls) and reused by every query and mode, since
    neither mode moves the atlas cells in the latent space."""

    model: CallModel
    hierarchy: pd.DataFrame | None
    cells: pd.Index
    latent: np.ndarray
    settings: dict
    where: str = "the calls' fit"

    def check(self, cells: pd.Index, settings: CallSettings) -> None:
        """Refuse a fit made on other atlas cells or with other settings."""
        if not self.cells.equals(pd.Index(cells)):
            raise AtlasmapInputError(
                f"{self.where}: fitted on {len(self.cells)} atlas cells, not this mapping's "
                f"{len(cells)} atlas cells in their order: made from another atlas; rerun fit_calls"
            )
        asked = fit_settings(settings)
        if self.settings != asked:
            changed = sorted(k for k in self.settings if self.settings[k] != asked.get(k))
            raise AtlasmapInputError(
                f"{self.where}: fitted with other mapping.calls settings ({', '.join(changed)}); "
                "rerun fit_calls"
            )


def fit_settings(settings: CallSettings) -> dict:
    """The settings a fit depends on (all but the threads), as JSON keeps them."""
    import json

    return json.loads(
        json.dumps({k: v for k, v in settings.__dict__.items() if k != "n_jobs"}, default=float)
    )


def fit_reference_calls(
    atlas_obs: pd.DataFrame,
    latent: np.ndarray,
    probabilities: np.ndarray | None,
    classifier_labels,
    *,
    labels_key: str,
    batch_key: str,
    label_levels,
    settings: CallSettings = CallSettings(),
    expression: ad.AnnData | None = None,
    expression_layer: str | None = "counts",
    expression_where: str = "the atlas's counts",
    model_dir=None,
) -> ReferenceCalls:
    """:func:`fit_call_model` on the atlas cells, with the label hierarchy of the
    coarser ``label_levels`` that the calls at every level follow. ``expression``:
    the atlas cells' counts (``expression_layer``), in the order of ``atlas_obs``.
    ``model_dir``: the reference model's folder, whose held-out latents (where it
    has them) the calibration reads."""
    from .reference import label_hierarchy, read_held_out_latents

    held_out = None if model_dir is None else read_held_out_latents(model_dir)
    if held_out is not None:
        held_out = held_out.aligned_to(pd.Index(atlas_obs.index), str(model_dir))

    if expression is not None and not expression.obs_names.equals(atlas_obs.index):
        raise AtlasmapInputError(
            f"{expression_where}: its cells are not those of the embedded atlas, in order: "
            "rerun embed_reference"
        )
    model = fit_call_model(
        latent,
        atlas_obs[labels_key].astype(str).to_numpy(),
        atlas_obs[batch_key].astype(str).to_numpy(),
        probabilities,
        classifier_labels,
        settings,
        expression=expression,
        expression_layer=expression_layer,
        held_out=held_out,
    )
    levels = [lv for lv in label_levels if lv != labels_key]
    hierarchy = label_hierarchy(atlas_obs, [*levels, labels_key], labels_key)
    hierarchy = hierarchy[[lv for lv in levels if lv in hierarchy.columns]]
    model.report["hierarchy_conflicts"] = hierarchy.attrs.get("conflicts", {})
    return ReferenceCalls(
        model,
        hierarchy,
        pd.Index(atlas_obs.index),
        np.asarray(latent, dtype=np.float32),
        fit_settings(settings),
    )


def write_reference_calls(fitted: ReferenceCalls, path) -> None:
    """The fit as one numpy archive (no pickles), written whole or not at all."""
    import json

    from .io import atomic_path

    model = fitted.model
    hierarchy = fitted.hierarchy
    meta = {
        "report": model.report,
        "settings": fitted.settings,
        "k": model.knn.k,
        "bandwidth": model.knn.bandwidth,
        "novelty_cutoff": None if np.isinf(model.novelty_cutoff) else model.novelty_cutoff,
        "novelty_batch_quantile": model.novelty_batch_quantile,
        "hierarchy": None
        if hierarchy is None
        else {
            "name": hierarchy.index.name,
            "index": [str(x) for x in hierarchy.index],
            "columns": [str(c) for c in hierarchy.columns],
            "data": hierarchy.astype(object).where(hierarchy.notna(), None).to_numpy().tolist(),
        },
    }
    arrays = {
        "cells": np.asarray(fitted.cells.astype(str), dtype=str),
        "latent": fitted.latent,
        "codes": np.asarray(model.knn.codes, dtype=np.int32),
        "labels": np.asarray(model.labels, dtype=str),
        "distance_scale": np.asarray(model.distance_scale, dtype=np.float64),
        "meta": np.asarray(json.dumps(meta, default=float)),
    }
    for key in ("calibration_x", "calibration_y", "disagree_x", "disagree_y"):
        if getattr(model, key) is not None:
            arrays[key] = np.asarray(getattr(model, key), dtype=np.float64)
    expression = model.expression
    if expression is not None:
        arrays["expression_genes"] = np.asarray(expression.genes, dtype=str)
        arrays["expression_coef"] = np.asarray(expression.coef, dtype=np.float32)
        arrays["expression_intercept"] = np.asarray(expression.intercept, dtype=np.float64)
        if expression.gene_ids is not None:
            arrays["expression_gene_ids"] = np.asarray(expression.gene_ids, dtype=str)
        if expression.mean is not None:
            arrays["expression_mean"] = np.asarray(expression.mean, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def read_reference_calls(path, n_jobs: int = 1) -> ReferenceCalls:
    """The fit written by :func:`write_reference_calls`, its kNN index rebuilt."""
    import json

    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise AtlasmapInputError(f"{path}: not a calls fit written by fit_calls ({err})") from err
    labels = arrays["labels"].astype(object)
    cutoff = meta["novelty_cutoff"]
    model = CallModel(
        labels=labels,
        knn=LatentKNN(
            arrays["latent"], arrays["codes"], len(labels), meta["k"], meta["bandwidth"], n_jobs
        ),
        distance_scale=arrays["distance_scale"],
        novelty_cutoff=np.inf if cutoff is None else float(cutoff),
        novelty_batch_quantile=meta["novelty_batch_quantile"],
        calibration_x=arrays.get("calibration_x"),
        calibration_y=arrays.get("calibration_y"),
        report=meta["report"],
        disagree_x=arrays.get("disagree_x"),
        disagree_y=arrays.get("disagree_y"),
    )
    if "expression_coef" in arrays:
        ids = arrays.get("expression_gene_ids")
        model.expression = ExpressionModel(
            arrays["expression_genes"].astype(object),
            None if ids is None else ids.astype(object),
            arrays["expression_coef"],
            arrays["expression_intercept"],
            arrays.get("expression_mean"),
        )
    hierarchy = None
    if meta["hierarchy"] is not None:
        h = meta["hierarchy"]
        hierarchy = pd.DataFrame(
            h["data"], index=pd.Index(h["index"], name=h["name"]), columns=h["columns"]
        )
    return ReferenceCalls(
        model,
        hierarchy,
        pd.Index(arrays["cells"].astype(object)),
        arrays["latent"],
        meta["settings"],
        where=str(path),
    )


def fit_calls_files(
    *, atlas_path, reference: dict, settings: CallSettings, output, counts_path=None, model_dir=None
) -> ReferenceCalls:
    """:func:`fit_reference_calls` from embed_reference's file to the fit's file; the
    expression member reads the atlas's counts on all its genes from ``counts_path``
    (the atlas itself: embed_reference's file holds only the model's genes), the
    calibration the held-out latents in ``model_dir``, where there are any."""
    from .io import read_annotations
    from .mapping import reference_latent
    from .reference import check_atlas_columns

    embedded = read_annotations(atlas_path, obsm=(EMBEDDING_KEY, PROBABILITIES_KEY))
    ref = reference_latent(embedded, where=str(atlas_path))
    obs = embedded.obs
    check_atlas_columns(
        embedded,
        str(atlas_path),
        labels_key=reference["labels_key"],
        batch_key=reference["batch_key"],
    )
    fitted = fit_reference_calls(
        obs,
        ref.latent,
        ref.probabilities.to_numpy(),
        list(ref.probabilities.columns),
        labels_key=reference["labels_key"],
        batch_key=reference["batch_key"],
        label_levels=[lv for lv in reference["label_levels"] if lv in obs.columns],
        settings=settings,
        expression=_atlas_counts(counts_path, reference["counts_layer"], settings),
        expression_layer=reference["counts_layer"],
        expression_where=str(counts_path),
        model_dir=model_dir,
    )
    write_reference_calls(fitted, output)
    return fitted


def _atlas_counts(path, layer: str | None, settings: CallSettings):
    """The atlas's counts for the expression member (none where the method does without);
    fit_reference_calls checks its cells against the embedded atlas's."""
    from .reference import atlas_counts_layer, read_atlas

    if settings.method not in EXPRESSION_METHODS:
        return None
    if not path:
        raise AtlasmapInputError(
            f"mapping.calls.method {settings.method!r} needs the atlas's counts "
            "(reference.atlas), which fit_calls was not given"
        )
    atlas = read_atlas(path)
    atlas_counts_layer(atlas, layer, str(path))
    return atlas


def read_embedded(path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """obs, obsm and run record of map_query's embedded.h5ad, without its count matrix."""
    from .io import read_annotations

    adata = read_annotations(path)
    obsm = {k: np.asarray(v) for k, v in adata.obsm.items()}
    return adata.obs, obsm, dict(adata.uns.get("atlasmap", {}))


def call_embedded(
    obs: pd.DataFrame,
    obsm: dict[str, np.ndarray],
    run: dict,
    settings: CallSettings = CallSettings(),
    fitted: ReferenceCalls | None = None,
    query_expression: ad.AnnData | None = None,
    atlas_expression=None,
    counts_layer: str | None = "counts",
) -> tuple[pd.DataFrame, dict]:
    """Calls of the query cells of an embedded expanded atlas, fitted on its atlas cells,
    or taken from ``fitted`` (made once per reference by :func:`fit_reference_calls`,
    checked to be of these atlas cells and settings).

    The ensemble's expression member reads ``query_expression`` (the query cells'
    counts in layer ``"counts"``, named by barcode, on any genes) and, where the fit
    is made here, ``atlas_expression()`` (a function giving the atlas cells' counts
    in ``counts_layer``, called only then).

    Returns the prediction table (one row per query cell, indexed by barcode,
    the query's metadata after the call columns) and the fit report.
    """

    labels_key = run["labels_key"]
    is_query = query_mask(obs)
    is_atlas = ~is_query
    latent = obsm[EMBEDDING_KEY]
    probs = obsm.get(PROBABILITIES_KEY)
    prob_labels = list(run.get("classifier_labels", []))
    s = settings
    if not is_atlas.any():
        if s.method != "classifier":
            log.warning(
                "no atlas cells (mapping with the model alone): calls from the classifier, "
                "uncalibrated, without novelty or smoothing, instead of mapping.calls.method %r",
                s.method,
            )
        # Nor smoothed: without held-out atlas cells to calibrate it, a mean over
        # neighbours would only lower every probability against the threshold.
        s = CallSettings(**{**s.__dict__, "method": "classifier", "query_smoothing": 0})
        names = np.asarray([x for x in prob_labels], dtype=object)
        model = CallModel(
            labels=names,
            knn=_NoNeighbours(len(names)),
            distance_scale=np.ones(len(names)),
            novelty_cutoff=np.inf,
            novelty_batch_quantile=None,
            calibration_x=None,
            calibration_y=None,
            report={"method": "classifier", "calibrated": False, "novelty": False},
        )
        hierarchy = None
    else:
        if fitted is not None:
            fitted.check(obs.index[is_atlas], s)
            if not np.allclose(latent[is_atlas], fitted.latent, atol=1e-5):
                # Surgery with weight decay moves the atlas cells (map_query embeds them
                # again): the fit made on their reference latent does not hold for them.
                log.warning(
                    "%s: this mapping moved the atlas cells in the latent space; the calls "
                    "are fitted on its own atlas latent",
                    fitted.where,
                )
                fitted = None
        if fitted is None:
            fitted = fit_reference_calls(
                obs.loc[is_atlas],
                latent[is_atlas],
                None if probs is None else probs[is_atlas],
                prob_labels,
                labels_key=labels_key,
                batch_key=run["batch_key"],
                label_levels=run.get("label_levels", []),
                settings=s,
                expression=None
                if s.method not in EXPRESSION_METHODS or atlas_expression is None
                else atlas_expression(),
                expression_layer=counts_layer,
                model_dir=_model_folder(run),
            )
        model, hierarchy = fitted.model, fitted.hierarchy
    query_obs = obs.loc[is_query]
    barcodes = pd.Index(query_obs["barcode"].astype(str).to_numpy(), name="barcode")
    calls = call_cells(
        model,
        latent[is_query],
        None if probs is None else probs[is_query],
        prob_labels,
        hierarchy,
        s,
        index=barcodes,
        batches=query_obs[run["batch_key"]].astype(str).to_numpy(),
        expression_probs=_query_expression_probs(model, s, query_expression, barcodes),
    )
    report = {**model.report, "query_batch_shift": calls.attrs.get("batch_shift", {})}
    if model.knn.k == 0:
        calls["prediction_uncertainty"] = np.nan
        calls["novelty_score"] = np.nan
        calls = calls.drop(columns=["knn_celltype", "knn_probability"])
    # The query's own metadata columns, not the atlas-only ones the outer join added.
    own = run.get("query_columns")
    metadata = query_obs[list(own)] if own is not None else query_obs.drop(columns=[SOURCE_COLUMN])
    metadata = metadata.drop(columns=["barcode", *CALL_COLUMNS], errors="ignore")
    metadata.index = barcodes
    table = pd.concat([calls, metadata], axis=1)
    return table, report


def _model_folder(run: dict):
    """The mapping's model folder, where it is still there to read."""
    from pathlib import Path

    folder = run.get("model")
    return folder if folder and Path(folder).is_dir() else None


def _query_expression_probs(model: CallModel, s: CallSettings, query, barcodes):
    """The expression member's probabilities of the query cells, in ``barcodes``' order."""
    if model.expression is None or s.method not in EXPRESSION_METHODS:
        return None
    if query is None:
        raise AtlasmapInputError(
            f"mapping.calls.method {s.method!r} needs the query cells' counts, "
            "which the call step was not given"
        )
    missing = barcodes.difference(pd.Index(query.obs_names.astype(str)))
    if len(missing):
        raise AtlasmapInputError(
            f"the query's counts lack {len(missing)} of the mapped cells (e.g. "
            f"{list(missing[:3])}): they come from another query"
        )
    cells = query[query.obs_names.get_indexer(barcodes)]
    return model.expression.probabilities(cells, "counts", where="query")


class _NoNeighbours:
    """Stands in for the kNN when there are no atlas cells: no vote, no distance."""

    k = 0
    bandwidth = 1.0  # read by the smoothing, which is off without atlas cells

    def __init__(self, n_labels: int) -> None:
        self.n_labels = n_labels

    def query(self, latent):
        n = len(latent)
        return np.full((n, self.n_labels), 1.0 / max(self.n_labels, 1)), np.zeros(n)


def call_qc(table: pd.DataFrame, mapping_qc: pd.DataFrame, batch_key: str) -> pd.DataFrame:
    """map_query's per-sample QC with the calls' own: probability, Unknown, novelty."""
    samples = table[batch_key].astype(str).to_numpy() if batch_key in table else None
    rows = []
    for sample in mapping_qc["sample"].astype(str):
        mine = (
            np.ones(len(table), bool) if sample == "all" or samples is None else (samples == sample)
        )
        part = table.loc[mine]
        novelty = part["novelty_score"].astype(float)
        rows.append(
            {
                "sample": sample,
                "mean_probability": round(float(part["prediction_probability"].mean()), 4),
                "share_unknown": round(float((part["predicted_celltype"] == UNKNOWN).mean()), 4),
                "share_unknown_probability": round(
                    float((part["unknown_reason"] == "probability").mean()), 4
                ),
                "share_unknown_novelty": round(
                    float((part["unknown_reason"] == "novelty").mean()), 4
                ),
                "mean_uncertainty": round(float(part["prediction_uncertainty"].mean()), 4),
                "novelty_median": round(float(novelty.median()), 4),
                "novelty_q90": round(float(novelty.quantile(0.9)), 4),
                "novelty_q99": round(float(novelty.quantile(0.99)), 4),
            }
        )
    extra = pd.DataFrame(rows)
    return mapping_qc.assign(sample=mapping_qc["sample"].astype(str)).merge(
        extra, on="sample", how="left"
    )


def call_celltypes_files(
    *,
    embedded_path,
    mapping_qc_path,
    settings: CallSettings,
    predictions_path,
    qc_path,
    report_path,
    reference_calls_path=None,
    query_path=None,
    atlas_path=None,
    counts_layer: str | None = "counts",
) -> pd.DataFrame:
    """:func:`call_embedded` from map_query's files to the prediction table, QC and fit
    report; the fit on the atlas from fit_calls's file, if given."""
    import json

    from .io import atomic_path, read_h5ad

    obs, obsm, run = read_embedded(embedded_path)
    fitted = None
    if reference_calls_path:
        fitted = read_reference_calls(reference_calls_path, n_jobs=settings.n_jobs)
    query = None
    if query_path and settings.method in EXPRESSION_METHODS:
        query = read_h5ad(query_path)

    def atlas_expression():
        return _atlas_counts(atlas_path, counts_layer, settings)

    table, report = call_embedded(
        obs, obsm, run, settings, fitted, query, atlas_expression, counts_layer
    )
    qc = call_qc(table, pd.read_csv(mapping_qc_path, sep="\t"), run["batch_key"])
    log.info(
        "%d query cells: %.1f%% Unknown (%.1f%% for low probability, %.1f%% novel)",
        len(table),
        100 * float((table["predicted_celltype"] == UNKNOWN).mean()),
        100 * float((table["unknown_reason"] == "probability").mean()),
        100 * float((table["unknown_reason"] == "novelty").mean()),
    )
    with atomic_path(predictions_path) as tmp:
        table.reset_index().to_csv(tmp, sep="\t", index=False)
    with atomic_path(qc_path) as tmp:
        qc.to_csv(tmp, sep="\t", index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return table


def attach_calls(adata, predictions: pd.DataFrame) -> None:
    """Put the call columns of ``predictions`` into the expanded atlas's obs, in place.

    Query cells get their calls; atlas cells their own labels at every level
    (the tutorial colours the atlas by its labels and the query by its calls),
    with no probability, uncertainty or novelty.
    """
    run = adata.uns["atlasmap"]
    labels_key = run["labels_key"]
    obs = adata.obs
    is_query = query_mask(obs)
    table = predictions.set_index("barcode").reindex(obs.loc[is_query, "barcode"].astype(str))
    if table["predicted_celltype"].isna().any():
        raise AtlasmapInputError(
            f"predictions: {int(table['predicted_celltype'].isna().sum())} query cells of the "
            "embedded atlas have no call: the predictions come from another mapping"
        )
    levels = [c.removeprefix("predicted_") for c in table if c.startswith("predicted_")]
    levels = [lv for lv in levels if lv != "celltype"]

    columns = [c for c in CALL_COLUMNS if c in table]
    columns += [f"{kind}_{lv}" for lv in levels for kind in ("predicted", "probability")]
    for column in columns:
        numeric = pd.api.types.is_numeric_dtype(table[column])
        values = pd.Series(
            np.nan if numeric else None, index=obs.index, dtype=float if numeric else object
        )
        values[is_query] = table[column].to_numpy()
        if not numeric:
            own = labels_key if column in ("predicted_celltype", "candidate_celltype") else None
            if column.startswith("predicted_") and column != "predicted_celltype":
                own = column.removeprefix("predicted_")
            if own is not None and own in obs:
                values[~is_query] = obs.loc[~is_query, own].astype(str).to_numpy()
            values = values.astype("category")
        obs[column] = values


def call_mapping(result, settings: CallSettings = CallSettings()) -> tuple[pd.DataFrame, dict]:
    """:func:`call_embedded` on a :class:`~atlasmap.mapping.MappingResult` in memory; the
    expression member reads the expanded atlas's counts (the model's genes)."""
    expanded = result.expanded
    is_query = query_mask(expanded.obs)
    query = expanded[is_query]
    query = ad.AnnData(
        X=query.layers["counts"],
        obs=pd.DataFrame(index=pd.Index(query.obs["barcode"].astype(str))),
        var=pd.DataFrame(index=expanded.var_names),
        layers={"counts": query.layers["counts"]},
    )
    return call_embedded(
        expanded.obs,
        dict(expanded.obsm),
        expanded.uns["atlasmap"],
        settings,
        query_expression=query,
        atlas_expression=lambda: expanded[~is_query],
    )
