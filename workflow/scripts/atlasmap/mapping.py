"""Mapping a query onto a reference SCANVI model: scArches surgery or frozen embedding.

The result is the expanded atlas (reference + query, every metadata column of
both kept), per-cell predictions with a probability and a kNN uncertainty, at
every level of the label hierarchy, and a per-sample QC table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import AtlasmapInputError
from .genes import GeneAlignment, align_to_genes, apply_transform, id_to_symbol_table
from .reference import (
    ModelInfo,
    check_atlas_columns,
    check_model_matches_config,
    label_hierarchy,
    read_model_info,
)

log = logging.getLogger(__name__)

MODES = ("surgery", "embed")
UNKNOWN = "Unknown"
EMBEDDING_KEY = "X_scANVI_emb"


@dataclass(frozen=True)
class MappingSettings:
    labels_key: str = "Level_4"
    batch_key: str = "Sample_ID"
    label_levels: tuple[str, ...] = ("Level_1", "Level_2", "Level_3", "Level_4")
    atlas_layer: str | None = "counts"
    transform: dict | None = None
    surgery_max_epochs: int = 10
    surgery_early_stopping: bool = False
    surgery_weight_decay: float = 0.0
    train_batch_size: int = 128
    inference_batch_size: int = 1024
    min_gene_overlap: float = 0.5
    warn_gene_overlap: float = 0.8
    unknown_threshold: float = 0.5
    uncertainty_neighbors: int = 50
    seed: int = 0
    accelerator: str = "auto"


@dataclass
class MappingResult:
    expanded: ad.AnnData
    predictions: pd.DataFrame
    qc: pd.DataFrame
    alignment: GeneAlignment
    info: dict = field(default_factory=dict)


def knn_label_uncertainty(
    reference_latent: np.ndarray,
    reference_labels: np.ndarray,
    query_latent: np.ndarray,
    n_neighbors: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-kNN label transfer in the latent space, as scArches computes it.

    For each query cell, the distances d to its k nearest reference cells are
    turned into weights exp(-d / (2 / sd(d))^2), normalised to sum to one; the
    uncertainty is 1 minus the largest weight a single label collects.
    Returns (label with most weight, uncertainty).
    """
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, len(reference_latent))
    knn = NearestNeighbors(n_neighbors=k).fit(reference_latent)
    distances, indices = knn.kneighbors(query_latent)
    sd = distances.std(axis=1, keepdims=True)
    scale = (2.0 / np.maximum(sd, 1e-12)) ** 2
    weights = np.exp(-distances / scale)
    weights /= weights.sum(axis=1, keepdims=True)
    codes, labels = pd.factorize(pd.Series(reference_labels).astype(str))
    neighbour_codes = codes[indices]
    # Sum weights per (cell, label) with one sparse matrix, no Python loop.
    rows = np.repeat(np.arange(len(query_latent)), k)
    per_label = sp.csr_matrix(
        (weights.ravel(), (rows, neighbour_codes.ravel())), shape=(len(query_latent), len(labels))
    ).toarray()
    best = per_label.argmax(axis=1)
    return np.asarray(labels)[best], np.clip(1.0 - per_label.max(axis=1), 0.0, 1.0)


def hierarchical_calls(
    probabilities: pd.DataFrame, hierarchy: pd.DataFrame, threshold: float
) -> pd.DataFrame:
    """Predicted label and probability at every level, with Unknown under ``threshold``.

    A coarser level's probability is the sum of its finer labels' probabilities,
    so a cell torn between two T-cell subtypes is still confidently a T cell.
    """
    out = {}
    levels = [(probabilities.columns.name or "finest", probabilities)]
    for level in hierarchy.columns:
        parent = hierarchy[level].reindex(probabilities.columns.astype(str))
        known = parent.notna().to_numpy()
        grouped = probabilities.loc[:, known].T.groupby(parent[known].to_numpy()).sum().T
        levels.append((level, grouped))
    for level, probs in levels:
        values = probs.to_numpy()
        best = values.argmax(axis=1)
        probability = values[np.arange(len(values)), best]
        label = np.asarray(probs.columns.astype(str))[best].astype(object)
        label[probability < threshold] = UNKNOWN
        out[f"predicted_{level}"] = label
        out[f"probability_{level}"] = probability
    return pd.DataFrame(out, index=probabilities.index)


def _model_input(
    aligned: ad.AnnData,
    info: ModelInfo,
    batch: pd.Series,
    labels: pd.Series | None,
    transform: dict | None,
) -> ad.AnnData:
    """A minimal AnnData shaped as the model was set up: the user's obs is never touched."""
    matrix = apply_transform(aligned.X, transform).astype(np.float32)
    obs = pd.DataFrame(index=aligned.obs_names.copy())
    obs[info.batch_key] = pd.Categorical(batch.astype(str).to_numpy())
    if labels is None:
        obs[info.labels_key] = info.unlabeled_category
    else:
        values = labels.astype(str).to_numpy().copy()
        values[~np.isin(values, info.labels)] = info.unlabeled_category
        obs[info.labels_key] = values
    obs[info.labels_key] = pd.Categorical(obs[info.labels_key])
    adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=aligned.var_names.copy()))
    if info.layer:
        adata.layers[info.layer] = matrix
    return adata


def _predict(model, adata, batch_size) -> tuple[np.ndarray, pd.DataFrame]:
    latent = model.get_latent_representation(adata, batch_size=batch_size)
    probs = model.predict(adata, soft=True, batch_size=batch_size)
    probs = pd.DataFrame(np.asarray(probs), index=adata.obs_names, columns=probs.columns)
    return latent, probs


def _empty_atlas(info: ModelInfo, s: MappingSettings) -> ad.AnnData:
    """A reference with no cells: mapping with the model alone (embed mode)."""
    obs = pd.DataFrame(
        {s.labels_key: pd.Categorical([]), s.batch_key: pd.Categorical([])},
        index=pd.Index([], dtype=str),
    )
    counts = sp.csr_matrix((0, len(info.genes)), dtype=np.float32)
    atlas = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=info.genes))
    if s.atlas_layer:
        atlas.layers[s.atlas_layer] = counts
    return atlas


def map_query(
    query: ad.AnnData,
    atlas: ad.AnnData | None,
    model_dir: str | Path,
    mode: str,
    settings: MappingSettings = MappingSettings(),
    where: str = "query",
) -> MappingResult:
    """Map ``query`` (raw counts in ``layers["counts"]``) onto the model in ``model_dir``.

    ``mode`` "surgery": scArches architecture surgery, the query batches'
    weights trained (weight decay 0) while the reference weights and the
    classifier stay frozen. ``mode`` "embed": the reference model frozen,
    query cells embedded and classified with no training. Without an
    ``atlas`` (None), embed mode maps with the model alone: no reference cells
    in the output and no kNN uncertainty (NaN).
    """
    import scvi
    import torch

    from .training import EpochLogger, train_kwargs

    if mode not in MODES:
        raise AtlasmapInputError(f"mode must be one of {MODES}, not {mode!r}")
    s = settings
    info = read_model_info(model_dir)
    check_model_matches_config(info, s.labels_key, s.batch_key)
    if atlas is None:
        if mode == "surgery":
            raise AtlasmapInputError(
                "surgery needs the reference atlas (config key reference.atlas): the expanded "
                "atlas and the joint embedding are made of its cells. Without it, use "
                "mapping.modes: [embed]."
            )
        log.warning(
            "no reference atlas: embed mode with the model alone; the output holds the query "
            "cells only and no kNN uncertainty (NaN)"
        )
        atlas = _empty_atlas(info, s)
    check_atlas_columns(atlas, "reference.atlas", labels_key=s.labels_key, batch_key=s.batch_key)
    if s.batch_key not in query.obs.columns:
        raise AtlasmapInputError(
            f"{where}: the query has no column {s.batch_key!r}, the model's batch key; "
            f"its columns are {list(query.obs.columns)}. Rename one with queries.<name>.rename "
            f"(the tutorial renames patients to {s.batch_key})."
        )
    scvi.settings.seed = s.seed
    scvi.settings.verbosity = logging.WARNING  # its per-load INFO lines say nothing useful

    id_to_symbol = id_to_symbol_table(atlas.var, atlas.var_names)
    ref_aligned, ref_report = align_to_genes(
        atlas,
        info.genes,
        layer=s.atlas_layer,
        min_overlap=s.min_gene_overlap,
        where="reference.atlas",
    )
    if ref_report.zero_filled:
        log.warning("the atlas lacks %d of the model's genes", ref_report.zero_filled)
    q_aligned, q_report = align_to_genes(
        query,
        info.genes,
        layer="counts",
        min_overlap=s.min_gene_overlap,
        warn_overlap=s.warn_gene_overlap,
        id_to_symbol=id_to_symbol,
        where=where,
    )
    ref_input = _model_input(
        ref_aligned, info, atlas.obs[s.batch_key], atlas.obs[s.labels_key], s.transform
    )
    q_input = _model_input(q_aligned, info, query.obs[s.batch_key], None, s.transform)
    q_batches = sorted(set(q_input.obs[s.batch_key]))
    shared = sorted(set(q_batches) & set(info.batches))
    if shared:
        log.warning("query batches %s are also reference batches: their weights are reused", shared)

    model = scvi.model.SCANVI.load_query_data(
        q_input, str(model_dir), freeze_dropout=True, accelerator=s.accelerator
    )
    encoder_sees_batch = bool(getattr(model.module, "encode_covariates", False))
    model.is_trained = True
    z_before, _ = _predict(model, q_input, s.inference_batch_size)
    if mode == "surgery":
        if not encoder_sees_batch:
            log.warning(
                "this model's encoder does not take the batch as input (encode_covariates=False): "
                "surgery cannot move query cells in the latent space, so surgery and embed give "
                "the same embedding and predictions; only the decoder adapts"
            )
        model.is_trained = False
        log.info("surgery: %d epochs on %d query cells", s.surgery_max_epochs, q_input.n_obs)
        model.train(
            max_epochs=s.surgery_max_epochs,
            batch_size=s.train_batch_size,
            early_stopping=s.surgery_early_stopping,
            plan_kwargs={"weight_decay": s.surgery_weight_decay},
            callbacks=[EpochLogger("surgery")],
            **train_kwargs(s.accelerator),
        )
    else:
        log.info("embed: reference model frozen, no training")
    with torch.inference_mode():
        z_query, probs_query = _predict(model, q_input, s.inference_batch_size)
        if ref_input.n_obs:
            z_ref, probs_ref = _predict(model, ref_input, s.inference_batch_size)
        else:
            z_ref = np.zeros((0, z_query.shape[1]), dtype=z_query.dtype)
            probs_ref = probs_query.iloc[:0]
    latent_shift = float(np.linalg.norm(z_query - z_before, axis=1).mean())
    log.info("mean query latent shift by %s: %.4g", mode, latent_shift)

    levels = [lv for lv in s.label_levels if lv in atlas.obs.columns and lv != s.labels_key]
    hierarchy = label_hierarchy(atlas.obs, [*levels, s.labels_key], s.labels_key)
    probs_query.columns.name = probs_ref.columns.name = s.labels_key
    calls_query = hierarchical_calls(probs_query, hierarchy, s.unknown_threshold)
    calls_ref = hierarchical_calls(probs_ref, hierarchy, s.unknown_threshold)
    if len(z_ref):
        _, uncertainty = knn_label_uncertainty(
            z_ref, atlas.obs[s.labels_key].astype(str).to_numpy(), z_query, s.uncertainty_neighbors
        )
    else:
        uncertainty = np.full(len(z_query), np.nan)

    predictions = _prediction_table(calls_query, uncertainty, query.obs, s.labels_key)
    expanded = _expanded_atlas(
        atlas, query, ref_aligned, q_aligned, z_ref, z_query, calls_ref, predictions, s.labels_key
    )
    qc = _qc_table(
        predictions, query.obs, s.batch_key, q_report, mode, encoder_sees_batch, latent_shift
    )
    run_info = {
        "mode": mode,
        "model": str(model_dir),
        "model_scvi_version": info.scvi_version,
        "scvi_version": scvi.__version__,
        "encoder_sees_batch": encoder_sees_batch,
        "latent_shift_mean": latent_shift,
        "gene_alignment": q_report.as_dict(),
        "unknown_threshold": s.unknown_threshold,
        "reference_self_accuracy": float(
            np.mean(
                calls_ref[f"predicted_{s.labels_key}"].to_numpy()
                == atlas.obs[s.labels_key].astype(str).to_numpy()
            )
        )
        if atlas.n_obs
        else float("nan"),
    }
    expanded.uns["atlasmap"] = {k: v for k, v in run_info.items() if k != "gene_alignment"}
    expanded.uns["atlasmap"]["gene_alignment"] = {k: str(v) for k, v in q_report.as_dict().items()}
    return MappingResult(expanded, predictions, qc, q_report, run_info)


def _prediction_table(calls: pd.DataFrame, uncertainty, query_obs: pd.DataFrame, labels_key: str):
    table = pd.DataFrame(index=calls.index)
    table["predicted_celltype"] = calls[f"predicted_{labels_key}"]
    table["prediction_probability"] = calls[f"probability_{labels_key}"]
    table["prediction_uncertainty"] = uncertainty
    for column in calls.columns:
        if not column.endswith(f"_{labels_key}"):
            table[column] = calls[column]
    metadata = query_obs.loc[calls.index]
    clash = metadata.columns.intersection(table.columns)
    if len(clash):
        log.warning("query metadata columns %s renamed with prefix 'query_'", list(clash))
        metadata = metadata.rename(columns={c: f"query_{c}" for c in clash})
    return pd.concat([table, metadata], axis=1)


def _expanded_atlas(
    atlas, query, ref_aligned, q_aligned, z_ref, z_query, calls_ref, predictions, labels_key
):
    """Reference + query on the model's genes; every obs column of both kept (outer join)."""
    ref_obs = atlas.obs.copy()
    ref_obs["source"] = "reference"
    ref_obs["predicted_celltype"] = calls_ref[f"predicted_{labels_key}"].to_numpy()
    ref_obs["prediction_probability"] = calls_ref[f"probability_{labels_key}"].to_numpy()
    q_obs = predictions.copy()
    q_obs["source"] = "query"
    q_names = q_obs.index
    overlap = q_names.intersection(ref_obs.index)
    if len(overlap):
        log.warning(
            "%d query barcodes also name reference cells: suffixed with '-query'", len(overlap)
        )
        q_names = pd.Index([f"{b}-query" if b in set(overlap) else b for b in q_names])
    q_obs.index = q_names
    q_obs["barcode"] = predictions.index.to_numpy()
    obs = pd.concat([ref_obs, q_obs], axis=0, join="outer", sort=False)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    obs["source"] = pd.Categorical(obs["source"], categories=["reference", "query"])
    counts = sp.vstack([ref_aligned.layers["counts"], q_aligned.layers["counts"]]).tocsr()
    expanded = ad.AnnData(X=counts, obs=obs, var=q_aligned.var.copy())
    expanded.layers["counts"] = counts
    expanded.obsm[EMBEDDING_KEY] = np.vstack([z_ref, z_query]).astype(np.float32)
    return expanded


def _qc_table(predictions, query_obs, batch_key, report, mode, encoder_sees_batch, latent_shift):
    samples = query_obs.loc[predictions.index, batch_key].astype(str)
    rows = []
    for sample, table in [
        *predictions.groupby(samples.to_numpy(), sort=True),
        ("all", predictions),
    ]:
        rows.append(
            {
                "sample": sample,
                "mode": mode,
                "cells": len(table),
                "genes_matched": report.matched,
                "gene_overlap": round(report.overlap_fraction, 4),
                "genes_zero_filled": report.zero_filled,
                "mean_probability": round(float(table["prediction_probability"].mean()), 4),
                "share_unknown": round(float((table["predicted_celltype"] == UNKNOWN).mean()), 4),
                "mean_uncertainty": round(float(table["prediction_uncertainty"].mean()), 4),
                "encoder_sees_batch": encoder_sees_batch,
                "latent_shift_mean": round(latent_shift, 4),
            }
        )
    return pd.DataFrame(rows)


def write_mapping(
    result: MappingResult, mapped: str | Path, predictions: str | Path, qc: str | Path
):
    """Write the expanded atlas, predictions and QC table, each whole or not at all."""
    from .io import atomic_path, write_h5ad

    table = result.predictions.copy()
    table.insert(0, "barcode", table.index)
    for path, frame in ((predictions, table), (qc, result.qc)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False)
    write_h5ad(result.expanded, mapped)


def mapping_settings(
    reference_config: dict, mapping_config: dict, seed: int = 0
) -> MappingSettings:
    """MappingSettings from the config's reference and mapping sections."""
    surgery = mapping_config.get("surgery") or {}
    defaults = MappingSettings()
    return MappingSettings(
        labels_key=reference_config["labels_key"],
        batch_key=reference_config["batch_key"],
        label_levels=tuple(reference_config["label_levels"]),
        atlas_layer=reference_config["counts_layer"],
        transform=reference_config["transform"],
        surgery_max_epochs=surgery.get("max_epochs", defaults.surgery_max_epochs),
        surgery_early_stopping=surgery.get("early_stopping", defaults.surgery_early_stopping),
        surgery_weight_decay=surgery.get("weight_decay", defaults.surgery_weight_decay),
        train_batch_size=surgery.get("batch_size", defaults.train_batch_size),
        inference_batch_size=mapping_config["batch_size"],
        min_gene_overlap=mapping_config["min_gene_overlap"],
        warn_gene_overlap=mapping_config["warn_gene_overlap"],
        unknown_threshold=mapping_config["unknown_threshold"],
        uncertainty_neighbors=mapping_config["uncertainty_neighbors"],
        seed=seed,
        accelerator=mapping_config["accelerator"],
    )


def map_query_files(
    query_path: str | Path,
    atlas_path: str | Path | None,
    model_dir: str | Path,
    mode: str,
    settings: MappingSettings,
    mapped: str | Path,
    predictions: str | Path,
    qc: str | Path,
) -> MappingResult:
    """:func:`map_query` from files to files (each output whole or not at all)."""
    from .reference import read_atlas

    query = ad.read_h5ad(query_path)
    atlas = read_atlas(atlas_path) if atlas_path else None
    result = map_query(query, atlas, model_dir, mode, settings, where=str(query_path))
    write_mapping(result, mapped, predictions, qc)
    return result
