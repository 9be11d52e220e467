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

The fit is made once per reference and kept as a file by :mod:`atlasmap.reference_calls`;
the rules and the mapping's outputs reach the calls through :mod:`atlasmap.call_adapters`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import UNKNOWN
from .errors import AtlasmapInputError
from .expression import ExpressionModel, fit_expression_model, fit_linear
from .folds import calibration_folds, fold_of_cells
from .neighbours import ExactNeighbours
from .settings import CallSettings

log = logging.getLogger(__name__)

# unknown_reason of a cell that was called (not rejected).
CALLED = "none"
METHODS = ("knn", "classifier", "consensus", "ensemble")
# Methods with the expression member, which need the cells' counts.
EXPRESSION_METHODS = ("ensemble",)


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

    The steps: the members on every reference cell; the held-out folds and their
    latents (:func:`_calibration_spaces`); each fold's cells called by members fitted
    without it (:func:`_out_of_fold`, :func:`_held_out_calls`); the novelty scale and
    cut-off (:func:`_fit_novelty`) and the calibration (:func:`_fit_calibration`) fitted
    on those calls; the report (:func:`_fit_report`, :func:`_held_out_label_detection`).
    """
    s = settings
    if s.method not in METHODS:
        raise AtlasmapInputError(f"mapping.calls.method must be one of {METHODS}, not {s.method!r}")
    codes, names = _label_codes(labels)
    clf = _align_probabilities(classifier_probs, classifier_labels, names)
    # One generator, drawn from in this order: the bandwidth, the held-out latents'
    # scales, the out-of-fold sample, the held-out label detection.
    rng = np.random.default_rng(s.seed)
    k = _vote_size(s.n_neighbors, len(latent))
    expression_model, logged = _fit_expression_member(expression, expression_layer, codes, names, s)

    # The kernel's bandwidth: the reference's own typical distance to its k-th neighbour.
    bandwidth = _bandwidth(latent, k, rng, s.n_jobs)
    batches = np.asarray(batches).astype(str)
    folds, spaces = _calibration_spaces(latent, batches, held_out, bandwidth, k, rng, s)
    oof = _out_of_fold(spaces, codes, len(names), folds, k, bandwidth, logged, s, rng)
    held = _held_out_calls(oof, clf, codes, batches, bandwidth, s)
    novelty = _fit_novelty(held, len(names), s)

    model = CallModel(
        labels=names,
        knn=LatentKNN(latent, codes, len(names), k, bandwidth, s.n_jobs),
        distance_scale=novelty.scale,
        novelty_cutoff=novelty.cutoff,
        novelty_batch_quantile=s.novelty_batch_quantile if s.novelty else None,
        calibration_x=None,
        calibration_y=None,
        expression=expression_model,
    )
    if s.calibrate:
        _fit_calibration(model, held.raw, held.correct, held.agree)
    model.report = _fit_report(
        model,
        held,
        novelty,
        s,
        oof=oof,
        classifier_probs=clf,
        codes=codes,
        folds=folds,
        batches=batches,
        fold_models=held_out is not None,
    )
    if s.novelty:
        cell_shift = (
            pd.Series(batches).map(novelty.shift_of_batch).fillna(1.0).to_numpy(dtype=float)
        )
        model.report["held_out_label_detection"] = _held_out_label_detection(
            spaces, codes, names, folds, model, rng, cell_shift
        )
    log.info("calls fitted on the reference: %s", model.report)
    return model


def _label_codes(labels) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's label as a code into the reference's label names, sorted."""
    labels = pd.Series(np.asarray(labels)).astype(str).to_numpy()
    codes, names = pd.factorize(labels, sort=True)
    return codes, np.asarray(names, dtype=object)


def _vote_size(n_neighbors: int, n_cells: int) -> int:
    """The neighbours each vote reads: ``n_neighbors``, or every other reference cell."""
    k = int(min(n_neighbors, n_cells - 1))
    if k < 1:
        raise AtlasmapInputError("the reference needs at least two cells to call labels from")
    return k


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


def _calibration_spaces(
    latent: np.ndarray, batches: np.ndarray, held_out, bandwidth: float, k: int, rng, s
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The calibration's held-out folds and the latent each is scored in: that of the
    model that did not see its labels (``held_out``, rescaled), else the reference's."""
    if held_out is not None:
        folds = [np.flatnonzero(held_out.fold == f) for f in range(len(held_out.latents))]
        spaces = [_rescaled(space, bandwidth, k, rng, s.n_jobs) for space in held_out.latents]
    else:
        folds = calibration_folds(batches, s.calibration_folds, s.seed)
        spaces = [latent] * len(folds)
    return folds, spaces


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


@dataclass(frozen=True)
class _HeldOutCalls:
    """The reference's held-out cells, called as a query's cells are (before calibration)."""

    cells: np.ndarray  # their rows in the reference
    batches: np.ndarray  # their batches
    distance: np.ndarray  # mean distance to their nearest cells of the other folds
    best: np.ndarray  # the code of the label each is called
    raw: np.ndarray  # that label's uncalibrated probability
    correct: np.ndarray  # 1.0 where that is the cell's own label, else 0.0
    agree: np.ndarray | None  # whether the kNN vote and the expression member agree


def _held_out_calls(
    oof: dict, clf, codes: np.ndarray, batches: np.ndarray, bandwidth: float, s: CallSettings
) -> _HeldOutCalls:
    """The held-out cells' calls from their out-of-fold members, smoothed and combined."""
    cells, knn_probs, expr_probs = oof["cells"], oof["knn"], oof["expression"]
    held_clf = None if clf is None else clf[cells]
    # Each held-out fold's batches are smoothed as query batches are.
    held_group = np.char.add(oof["fold_of"].astype(str), np.char.add(":", batches[cells]))
    knn_probs, held_clf = smooth_over_neighbours(
        oof["latent"], held_group, [knn_probs, held_clf], s.query_smoothing, bandwidth, s.n_jobs
    )
    probs = _method_probabilities(s, knn_probs, held_clf, expr_probs)
    best = probs.argmax(axis=1)
    return _HeldOutCalls(
        cells=cells,
        batches=batches[cells],
        distance=oof["distance"],
        best=best,
        raw=probs[np.arange(len(best)), best],
        correct=(best == codes[cells]).astype(float),
        agree=members_agree(knn_probs, expr_probs),
    )


@dataclass(frozen=True)
class _NoveltyFit:
    """The novelty score's scale and cut-off, and the held-out cells' scores under them."""

    scale: np.ndarray  # per label: typical out-of-fold neighbour distance
    shift: np.ndarray  # per held-out cell: its batch's shift (batch_shift)
    shift_of_batch: pd.Series  # the same, one value per batch
    score: np.ndarray  # per held-out cell: its novelty score
    cutoff: float


def _fit_novelty(held: _HeldOutCalls, n_labels: int, s: CallSettings) -> _NoveltyFit:
    """Per-label distance scale, batch shifts and the novelty cut-off, from the held-out calls."""
    dist, best = held.distance, held.best
    # Typical distance per called label (overall median where a label is rarely called).
    overall = float(np.median(dist))
    scale = np.full(n_labels, overall)
    for code in range(n_labels):
        mine = dist[best == code]
        if len(mine) >= 20:
            scale[code] = float(np.median(mine))
    scale = np.maximum(scale, 1e-9)
    shift = batch_shift(dist / scale[best], held.batches, s.novelty_batch_quantile)
    score = dist / scale[best] / shift
    cutoff = float(np.quantile(score, 1.0 - s.novelty_false_positive_rate)) if s.novelty else np.inf
    return _NoveltyFit(scale, shift, _per_batch(shift, held.batches), score, cutoff)


def _fit_calibration(model: CallModel, raw, correct, agree) -> None:
    """Isotonic maps raw -> P(right): one for all cells, or, with an expression member,
    one where the members agree and one where they disagree (each needs 50 cells)."""
    if agree is None or agree.all() or (~agree).sum() < 50 or agree.sum() < 50:
        model.calibration_x, model.calibration_y = _isotonic(raw, correct)
        return
    model.calibration_x, model.calibration_y = _isotonic(raw[agree], correct[agree])
    model.disagree_x, model.disagree_y = _isotonic(raw[~agree], correct[~agree])


def _fit_report(
    model: CallModel,
    held: _HeldOutCalls,
    novelty: _NoveltyFit,
    s: CallSettings,
    *,
    oof: dict,
    classifier_probs,
    codes: np.ndarray,
    folds: list[np.ndarray],
    batches: np.ndarray,
    fold_models: bool,
) -> dict:
    """What calls.json says of the fit: its held-out figures, cut-offs and settings
    (``classifier_probs``: the classifier's probabilities of every reference cell, or None)."""
    calibrated = model.calibrated(held.raw, held.agree)
    flagged = (calibrated < s.unknown_threshold) | (novelty.score > novelty.cutoff)
    cutoff = novelty.cutoff
    agree = held.agree
    report = {
        "method": s.method,
        "n_neighbors": model.knn.k,
        "bandwidth": round(model.knn.bandwidth, 6),
        "folds": oof["folds"],
        "held_out_cells": int(len(held.cells)),
        "held_out_accuracy": round(float(held.correct.mean()), 4),
        "held_out_member_accuracy": _member_accuracy(oof, classifier_probs, codes),
        "held_out_members_agree": None if agree is None else round(float(agree.mean()), 4),
        "held_out_mean_raw_probability": round(float(held.raw.mean()), 4),
        "held_out_mean_calibrated_probability": round(float(calibrated.mean()), 4),
        "held_out_share_unknown": round(float(flagged.mean()), 4),
        "held_out_latent": "fold models" if fold_models else "reference model",
        "held_out_caveats": _caveats(batches, s, fold_models),
        "labels_short_of_cells": _labels_short_of_cells(codes, model.labels, folds, model.knn.k),
        "novelty_cutoff": round(cutoff, 4) if np.isfinite(cutoff) else None,
        "novelty_false_positive_rate": s.novelty_false_positive_rate if s.novelty else None,
        "novelty_batch_quantile": model.novelty_batch_quantile,
        "held_out_batch_shift": _rounded(novelty.shift_of_batch),
        "unknown_threshold": s.unknown_threshold,
        "query_smoothing": s.query_smoothing,
    }
    if model.expression is not None:
        report["expression_genes"] = len(model.expression.genes)
        report["expression_weight"] = s.expression_weight
    return report


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
    probs = np.asarray(probs)
    columns = pd.Index([str(x) for x in prob_labels]).get_indexer([str(x) for x in names])
    if (columns < 0).any():
        # A label the classifier lacks reads a zero column appended after its own; float64,
        # as pandas' reindex filled it before.
        padded = np.zeros((probs.shape[0], probs.shape[1] + 1))
        padded[:, : probs.shape[1]] = probs
        probs, columns = padded, np.where(columns < 0, probs.shape[1], columns)
    if np.array_equal(columns, np.arange(probs.shape[1])):
        aligned = probs  # the classifier's own labels, in its order
    else:
        aligned = np.take(probs, columns, axis=1)  # a gather by column: 6x a fancy index
    return aligned / np.maximum(aligned.sum(axis=1, keepdims=True), 1e-12)


def unknown_calls(candidate, probability, threshold: float, novelty=None, cutoff=None):
    """The Unknown rule: each cell's call and its ``unknown_reason``. A cell is Unknown
    for its ``probability`` under ``threshold``, or for its ``novelty`` score over
    ``cutoff`` (named so where both hold; no novelty or cut-off: the probability alone);
    otherwise its ``candidate`` label is its call, and its reason CALLED. Used by
    :func:`call_cells`, and by whoever re-thresholds a call table without calling again
    (the benchmarks' tuning)."""
    reason = np.full(len(candidate), CALLED, dtype=object)
    reason[np.asarray(probability, dtype=float) < threshold] = "probability"
    if novelty is not None and cutoff is not None:
        reason[np.asarray(novelty, dtype=float) > cutoff] = "novelty"
    called = np.where(reason == CALLED, candidate, UNKNOWN).astype(object)
    return called, reason


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
    candidate = model.labels[best]
    called, reason = unknown_calls(
        candidate, probability, s.unknown_threshold, novelty, model.novelty_cutoff
    )
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
