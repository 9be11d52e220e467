"""The calls over the mapping's outputs: the rules' adapters between files (fit_calls,
call_celltypes) and their in-memory forms (an embedded expanded atlas, a
:class:`~atlasmap.mapping.MappingResult`), and the calls put back into the expanded atlas.
The calls themselves are :mod:`atlasmap.calls`; the fit's file :mod:`atlasmap.reference_calls`.
"""

from __future__ import annotations

import dataclasses
import logging

import anndata as ad
import numpy as np
import pandas as pd

from .calls import EXPRESSION_METHODS, CallModel, call_cells, call_qc
from .contract import (
    CALL_COLUMNS,
    EMBEDDING_KEY,
    PROBABILITIES_KEY,
    SOURCE_COLUMN,
    UNKNOWN,
    query_mask,
)
from .errors import AtlasmapInputError
from .reference_calls import (
    ReferenceCalls,
    fit_reference_calls,
    read_reference_calls,
    write_reference_calls,
)
from .settings import CallSettings

log = logging.getLogger(__name__)


def fit_calls_files(
    *, atlas_path, reference: dict, settings: CallSettings, output, counts_path=None, model_dir=None
) -> ReferenceCalls:
    """:func:`~atlasmap.reference_calls.fit_reference_calls` from embed_reference's file
    to the fit's file; the expression member reads the atlas's counts on all its genes
    from ``counts_path`` (the atlas itself: embed_reference's file holds only the model's
    genes), the calibration the held-out latents in ``model_dir``, where there are any."""
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
    or taken from ``fitted`` (made once per reference by
    :func:`~atlasmap.reference_calls.fit_reference_calls`, checked to be of these atlas
    cells and settings).

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
    if not is_atlas.any() and fitted is None:
        s, model = _classifier_alone(s, prob_labels)
        hierarchy = None
    else:
        if fitted is not None and not is_atlas.any():
            # A shard of a scattered query holds no atlas cells: they are the
            # reference latent's, which the fit was made on (atlasmap.scatter).
            fitted.check(fitted.cells, s)
        elif fitted is not None:
            fitted = _if_it_holds(fitted, obs.index[is_atlas], latent[is_atlas], s)
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
    return _with_query_metadata(calls, query_obs, run, barcodes), report


def _classifier_alone(settings: CallSettings, labels) -> tuple[CallSettings, CallModel]:
    """The settings and model of calls without atlas cells (mapping with the model alone):
    the classifier's, uncalibrated, without novelty or smoothing, whatever the method."""
    if settings.method != "classifier":
        log.warning(
            "no atlas cells (mapping with the model alone): calls from the classifier, "
            "uncalibrated, without novelty or smoothing, instead of mapping.calls.method %r",
            settings.method,
        )
    # Nor smoothed: without held-out atlas cells to calibrate it, a mean over
    # neighbours would only lower every probability against the threshold.
    s = dataclasses.replace(settings, method="classifier", query_smoothing=0)
    names = np.asarray([x for x in labels], dtype=object)
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
    return s, model


def _if_it_holds(
    fitted: ReferenceCalls, atlas_cells: pd.Index, atlas_latent: np.ndarray, s: CallSettings
) -> ReferenceCalls | None:
    """``fitted``, refused if made on other atlas cells or with other settings; None where
    this mapping moved the atlas cells, so that the calls are fitted again."""
    fitted.check(atlas_cells, s)
    if not np.allclose(atlas_latent, fitted.latent, atol=1e-5):
        # Surgery with weight decay moves the atlas cells (map_query embeds them
        # again): the fit made on their reference latent does not hold for them.
        log.warning(
            "%s: this mapping moved the atlas cells in the latent space; the calls "
            "are fitted on its own atlas latent",
            fitted.where,
        )
        return None
    return fitted


def _with_query_metadata(calls: pd.DataFrame, query_obs, run: dict, barcodes) -> pd.DataFrame:
    """The prediction table: the calls, then the query's own metadata columns (not the
    atlas-only ones the outer join added)."""
    own = run.get("query_columns")
    metadata = query_obs[list(own)] if own is not None else query_obs.drop(columns=[SOURCE_COLUMN])
    metadata = metadata.drop(columns=["barcode", *CALL_COLUMNS], errors="ignore")
    metadata.index = barcodes
    return pd.concat([calls, metadata], axis=1)


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


def call_mapping(
    result,
    settings: CallSettings = CallSettings(),
) -> tuple[pd.DataFrame, dict]:
    """:func:`call_embedded` on a :class:`~atlasmap.mapping.MappingResult` in memory; the
    expression member reads the expanded atlas's counts (the model's genes)."""
    expanded = result.expanded
    is_query = query_mask(expanded.obs)
    query = None
    if settings.method in EXPRESSION_METHODS:  # only the expression member reads counts
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


def call_shard_files(
    *,
    embedded_path,
    settings: CallSettings,
    predictions_path,
    report_path,
    reference_calls_path=None,
    query_path=None,
    plan_path=None,
    shard: str | None = None,
) -> pd.DataFrame:
    """The calls of one shard of a scattered query (:mod:`atlasmap.scatter`): its mapped
    cells, the fit on the atlas made once per reference, and, for the expression member,
    the shard's own rows of the query file. The shards' per-sample QC is made when
    gathered."""
    import json

    from .io import atomic_path
    from .scatter import read_shard

    obs, obsm, run = read_embedded(embedded_path)
    fitted = None
    if reference_calls_path:
        fitted = read_reference_calls(reference_calls_path, n_jobs=settings.n_jobs)
    query = None
    if query_path and settings.method in EXPRESSION_METHODS and fitted is not None:
        query = read_shard(query_path, plan_path, shard, run["batch_key"])
    table, report = call_embedded(obs, obsm, run, settings, fitted, query)
    with atomic_path(predictions_path) as tmp:
        table.reset_index().to_csv(tmp, sep="\t", index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    log.info("shard %s: %d query cells called", shard, len(table))
    return table
