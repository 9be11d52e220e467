"""Accuracy against known labels, for the mapping and for the baseline alike."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .contract import UNKNOWN, query_mask


def classification_metrics(
    truth: pd.Series,
    predicted: pd.Series,
    reference_labels: set[str],
    probability: pd.Series | None = None,
    unknown_threshold: float | None = None,
) -> dict:
    """Accuracy, macro-F1, per-label recall and share Unknown of ``predicted`` against ``truth``.

    With ``probability`` and ``unknown_threshold``, calls under the threshold
    become Unknown first. An Unknown call is right only for a cell whose true
    label the reference does not have; cells without a truth label are left out.
    """
    from sklearn.metrics import f1_score, recall_score

    truth = truth.astype("string")
    predicted = predicted.astype(str).to_numpy().copy()
    if probability is not None and unknown_threshold is not None:
        predicted[probability.to_numpy() < unknown_threshold] = UNKNOWN
    known = truth.notna().to_numpy()
    y_true = np.where(
        np.isin(truth.fillna("").to_numpy(), list(reference_labels)),
        truth.fillna("").to_numpy(),
        UNKNOWN,
    )[known]
    y_pred = predicted[known]
    labels = sorted(set(y_true))
    confident = y_pred != UNKNOWN
    seen = y_true != UNKNOWN
    seen_labels = sorted(set(y_true[seen]))
    return {
        "cells": int(known.sum()),
        "accuracy": round(float(np.mean(y_true == y_pred)), 4),
        "accuracy_confident": round(float(np.mean(y_true[confident] == y_pred[confident])), 4)
        if confident.any()
        else None,
        "macro_f1": round(
            float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4
        ),
        "share_unknown": round(float(np.mean(y_pred == UNKNOWN)), 4),
        # On cells of labels the reference has, and on the others (a type it lacks).
        "seen_cells": int(seen.sum()),
        "accuracy_seen": _rounded_mean(y_true[seen] == y_pred[seen]),
        "macro_f1_seen": round(
            float(
                f1_score(
                    y_true[seen], y_pred[seen], labels=seen_labels, average="macro", zero_division=0
                )
            ),
            4,
        )
        if seen.any()
        else None,
        "share_unknown_seen": _rounded_mean(y_pred[seen] == UNKNOWN),
        "unseen_cells": int((~seen).sum()),
        "share_unknown_unseen": _rounded_mean(y_pred[~seen] == UNKNOWN),
        "recall": {
            label: round(float(r), 4)
            for label, r in zip(
                labels,
                recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0),
                strict=True,
            )
        },
    }


def _rounded_mean(values: np.ndarray) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def expected_calibration_error(
    probability: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float | None:
    """ECE: the cell-weighted mean gap between confidence and accuracy in equal-width bins."""
    probability = np.asarray(probability, dtype=float)
    correct = np.asarray(correct, dtype=float)
    keep = np.isfinite(probability)
    probability, correct = probability[keep], correct[keep]
    if not len(probability):
        return None
    bins = np.minimum((probability * n_bins).astype(int), n_bins - 1)
    gap = 0.0
    for b in np.unique(bins):
        mine = bins == b
        gap += mine.sum() * abs(probability[mine].mean() - correct[mine].mean())
    return round(float(gap / len(probability)), 4)


def calibration_error(
    truth: pd.Series, candidate: pd.Series, probability: pd.Series, reference_labels: set[str]
) -> float | None:
    """ECE of the probability of each cell's best label, on cells of labels the reference has."""
    truth = truth.astype("string")
    seen = truth.isin(list(reference_labels)).fillna(False).to_numpy()
    correct = candidate.astype(str).to_numpy()[seen] == truth.to_numpy()[seen]
    return expected_calibration_error(probability.to_numpy(dtype=float)[seen], correct)


def check_truth_vocabulary(truth: pd.Series, reference_labels: set[str], where: str) -> None:
    """Warn, naming both vocabularies, when the truth shares no label with the reference."""
    import logging

    values = set(truth.dropna().astype(str))
    if values and not values & set(reference_labels):
        logging.getLogger(__name__).warning(
            "%s: the truth labels share no name with the reference's, so every cell counts as "
            "a type the reference lacks. Truth labels: %s; reference labels: %s. Map the truth "
            "to the reference's vocabulary (or choose another truth column).",
            where,
            sorted(values)[:30],
            sorted(reference_labels)[:30],
        )


def level_accuracy(
    truth: pd.Series, predictions: pd.DataFrame, hierarchy: pd.DataFrame
) -> dict[str, float]:
    """Accuracy of ``predicted_<level>`` against the truth mapped up the hierarchy."""
    out = {}
    for level in hierarchy.columns:
        column = f"predicted_{level}"
        if column not in predictions:
            continue
        coarse_truth = truth.astype(str).map(hierarchy[level])
        known = coarse_truth.notna().to_numpy()
        out[level] = round(
            float(
                np.mean(
                    coarse_truth.to_numpy()[known]
                    == predictions[column].astype(str).to_numpy()[known]
                )
            ),
            4,
        )
    return out


def evaluate(
    predictions: pd.DataFrame,
    baseline: pd.DataFrame | None,
    truth_column: str,
    reference_labels: set[str],
    hierarchy: pd.DataFrame,
    unknown_threshold: float,
    where: str = "predictions",
) -> dict:
    """Metrics of the mapping and, when there is one, of the baseline on the same cells."""
    from .errors import AtlasmapInputError

    if truth_column not in predictions.columns:
        raise AtlasmapInputError(
            f"{where}: no column {truth_column!r} (config key queries.<name>.truth); "
            f"columns are {list(predictions.columns)}"
        )
    mapped = predictions.set_index("barcode")
    truth = mapped[truth_column]
    check_truth_vocabulary(truth, reference_labels, f"{where}: column {truth_column!r}")
    result = {
        "truth_column": truth_column,
        "unknown_threshold": unknown_threshold,
        "mapping": classification_metrics(truth, mapped["predicted_celltype"], reference_labels),
    }
    candidate = mapped.get("candidate_celltype", mapped["predicted_celltype"])
    result["mapping"]["ece"] = calibration_error(
        truth, candidate, mapped["prediction_probability"], reference_labels
    )
    result["mapping"]["accuracy_by_level"] = level_accuracy(truth, mapped, hierarchy)
    if baseline is not None:
        base = baseline.set_index("barcode").reindex(mapped.index)
        result["baseline"] = classification_metrics(
            truth,
            base["predicted_celltype"],
            reference_labels,
            base["prediction_probability"],
            unknown_threshold,
        )
        result["baseline_without_unknown"] = classification_metrics(
            truth, base["predicted_celltype"], reference_labels
        )
        result["baseline"]["ece"] = calibration_error(
            truth, base["predicted_celltype"], base["prediction_probability"], reference_labels
        )
    return result


def evaluate_mapping_files(
    *,
    predictions_path,
    baseline_path,
    atlas_path,
    model_dir,
    truth_column: str,
    reference_config: dict,
    unknown_threshold: float,
    output,
) -> dict:
    """:func:`evaluate` from the prediction tables and the atlas's labels, to JSON.

    Without an atlas (mapping with the model alone) the reference labels come
    from the model and there is neither a hierarchy nor a baseline.
    """
    import json
    import logging

    from .io import atomic_path
    from .reference import label_hierarchy, read_atlas_obs, read_model_info

    labels_key = reference_config["labels_key"]
    if atlas_path:
        obs = read_atlas_obs(atlas_path)
        levels = [lv for lv in reference_config["label_levels"] if lv in obs.columns]
        hierarchy = label_hierarchy(obs, [*levels, labels_key], labels_key)
        reference_labels = set(obs[labels_key].astype(str))
    else:
        hierarchy = pd.DataFrame()
        reference_labels = set(read_model_info(model_dir).labels)
    result = evaluate(
        pd.read_csv(predictions_path, sep="\t", dtype={"barcode": str}),
        pd.read_csv(baseline_path, sep="\t", dtype={"barcode": str}) if baseline_path else None,
        truth_column,
        reference_labels,
        hierarchy,
        unknown_threshold,
        where=str(predictions_path),
    )
    logger = logging.getLogger(__name__)
    m = result["mapping"]
    logger.info(
        "accuracy %.3f, macro-F1 %.3f, ECE %s, Unknown: %s of seen cells, %s of %d unseen",
        m["accuracy"],
        m["macro_f1"],
        m["ece"],
        m["share_unknown_seen"],
        m["share_unknown_unseen"],
        m["unseen_cells"],
    )
    if "baseline" in result:
        logger.info(
            "baseline: accuracy %.3f, macro-F1 %.3f",
            result["baseline"]["accuracy"],
            result["baseline"]["macro_f1"],
        )
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def mode_agreement(
    surgery_obs: pd.DataFrame, embed_obs: pd.DataFrame, column: str
) -> tuple[pd.Series, pd.Series, float, pd.DataFrame]:
    """The two modes' calls of the same query cells (matched on barcode), the share
    of cells they call alike, and their cross-table (rows surgery, columns embed)."""
    surgery = surgery_obs[query_mask(surgery_obs)].set_index("barcode")
    embed = embed_obs[query_mask(embed_obs)].set_index("barcode").reindex(surgery.index)
    calls_surgery, calls_embed = surgery[column].astype(str), embed[column].astype(str)
    share = float(np.mean(calls_surgery.to_numpy() == calls_embed.to_numpy()))
    cross = pd.crosstab(calls_surgery.rename("surgery"), calls_embed.rename("embed"))
    return calls_surgery, calls_embed, share, cross
