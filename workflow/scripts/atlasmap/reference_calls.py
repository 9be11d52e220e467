"""The calls' fit on the atlas cells as a file: what it holds (:class:`ReferenceCalls`),
the settings it depends on, the fit with the atlas's label hierarchy, and its one numpy
archive, written and read back (no pickles). The fit itself is
:func:`atlasmap.calls.fit_call_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .calls import CallModel, LatentKNN, fit_call_model
from .errors import AtlasmapInputError
from .expression import ExpressionModel
from .settings import CallSettings


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
