"""Mapping a query onto a reference SCANVI model: scArches surgery or frozen embedding.

The result is the embedded expanded atlas (reference + query, every metadata
column of both kept, the joint latent and the classifier's probabilities of
every cell) and a per-sample QC table. The cell-type calls are a step of their
own (:mod:`atlasmap.calls`), so that thresholds rerun without remapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .contract import (
    ATLAS,
    CALL_COLUMNS,
    EMBEDDED_ATLAS_KEY,
    EMBEDDING_KEY,
    MODES,
    PROBABILITIES_KEY,
    QUERY,
    SOURCE_COLUMN,
    SOURCES,
)
from .errors import AtlasmapInputError
from .genes import (
    GeneAlignment,
    align_to_genes,
    apply_transform,
    gene_ids_of,
    id_to_symbol_table,
)
from .io import read_annotations, read_h5ad
from .reference import (
    ModelInfo,
    check_atlas_columns,
    check_model_matches_config,
    read_model_info,
)
from .settings import MappingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceLatent:
    """The atlas cells under the frozen reference model: latent means and classifier
    probabilities, computed once per reference (rule embed_reference)."""

    latent: np.ndarray
    probabilities: pd.DataFrame

    @property
    def cells(self) -> pd.Index:
        return self.probabilities.index


@dataclass
class ModelRun:
    """What the model gives both sides: latents, classifier probabilities, and
    how far each query cell moved from its first (frozen) embedding."""

    z_ref: np.ndarray
    probs_ref: pd.DataFrame
    z_query: np.ndarray
    probs_query: pd.DataFrame
    encoder_sees_batch: bool
    shift: np.ndarray


@dataclass
class MappingResult:
    expanded: ad.AnnData
    qc: pd.DataFrame
    alignment: GeneAlignment
    info: dict = field(default_factory=dict)


def _model_input(
    aligned: ad.AnnData,
    info: ModelInfo,
    batch: pd.Series,
    labels: pd.Series | None,
    transform: dict | None,
) -> ad.AnnData:
    """A minimal AnnData shaped as the model was set up: the user's obs is never touched."""
    transformed = apply_transform(aligned.X, transform)
    # A copy only where it would be the aligned counts themselves (no transform), which
    # the expanded atlas keeps: the model's input never aliases them.
    matrix = transformed.astype(np.float32, copy=transformed is aligned.X)
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


def _predict_by_scvi(model, adata, batch_size) -> tuple[np.ndarray, pd.DataFrame]:
    """scvi-tools' own latent and soft prediction: two passes of the encoder."""
    latent = model.get_latent_representation(adata, batch_size=batch_size)
    probs = model.predict(adata, soft=True, batch_size=batch_size)
    probs = pd.DataFrame(np.asarray(probs), index=adata.obs_names, columns=probs.columns)
    return latent, probs


def _one_pass_applies(model, manager) -> bool:
    """Whether the model is the plain SCANVI that _predict's single pass reproduces."""
    from scvi import REGISTRY_KEYS

    module = model.module
    registry = manager.data_registry
    return (
        REGISTRY_KEYS.CAT_COVS_KEY not in registry
        and REGISTRY_KEYS.CONT_COVS_KEY not in registry
        and getattr(module, "batch_representation", "one-hot") == "one-hot"
        and getattr(module, "latent_distribution", "normal") == "normal"
    )


def _predict(model, adata, batch_size) -> tuple[np.ndarray, pd.DataFrame]:
    """Latent means and classifier probabilities of every cell of ``adata``.

    scvi-tools computes the two by two passes of the encoder, each through its
    data loader; both are the same encoder's posterior mean (the classifier
    reads ``qz.loc``), so one pass over row blocks of the registered matrix gives
    both, equal to scvi-tools' own (tests/unit/test_scvi_mapping.py). Models
    with extra covariates, a batch embedding or a log-normal latent take
    scvi-tools' path.
    """
    import torch
    from scvi import REGISTRY_KEYS

    adata = model._validate_anndata(adata)
    manager = model.get_anndata_manager(adata, required=True)
    if not _one_pass_applies(model, manager):
        return _predict_by_scvi(model, adata, batch_size)
    module = model.module
    matrix = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
    batches = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).reshape(-1, 1)
    latents, probabilities = [], []
    # One dense buffer for every block of a sparse matrix: a fresh one per block costs
    # its page faults each time (a fifth of the pass at 200k cells).
    dense = (
        np.zeros((batch_size, adata.n_vars), dtype=matrix.dtype) if sp.issparse(matrix) else None
    )
    device = module.device  # a property that walks every parameter: read it once
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for start in range(0, adata.n_obs, batch_size):
                rows = matrix[start : start + batch_size]
                if dense is not None:
                    block = dense[: rows.shape[0]]
                    block.fill(0)
                    rows = rows.toarray(out=block)
                else:
                    rows = np.asarray(rows)
                x = torch.as_tensor(rows, dtype=torch.float32, device=device)
                batch = torch.as_tensor(
                    batches[start : start + batch_size], dtype=torch.long, device=device
                )
                if module.log_variational:
                    x = torch.log1p(x)
                qz, _ = module.z_encoder(x, batch)
                scores = module.classify_helper(qz.loc)
                if module.classifier.logits:
                    scores = torch.nn.functional.softmax(scores, dim=-1)
                latents.append(qz.loc.cpu().numpy())
                probabilities.append(scores.cpu().numpy())
    finally:
        module.train(was_training)
    labels = model._label_mapping[: probabilities[0].shape[1]] if probabilities else []
    n_latent = module.n_latent
    latent = np.concatenate(latents) if latents else np.zeros((0, n_latent), np.float32)
    probs = pd.DataFrame(
        np.concatenate(probabilities) if probabilities else np.zeros((0, len(labels))),
        index=adata.obs_names,
        columns=labels,
    )
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


def check_model_transform(info: ModelInfo, transform: dict | None) -> None:
    """Refuse raw counts for a model trained on a transform of them, and the reverse.

    scvi-tools keeps no record of the values a model read, only the name of
    the layer it was set up on; models trained on binned counts (the scPDAC
    ones: ``binned_data``) name it so, and that name is what can be checked.
    """
    binned_layer = bool(info.layer) and "bin" in info.layer.lower()
    method = (transform or {}).get("method")
    if binned_layer and method != "quantile_bins":
        raise AtlasmapInputError(
            f"{info.directory}: the model was set up on layer {info.layer!r} (binned counts) but "
            f"reference.transform is {transform!r}: raw counts would be fed to a model trained "
            "on bins. Set reference.transform: {method: quantile_bins, n_bins: 50} (the scPDAC "
            "models read 50 bins)."
        )
    if method == "quantile_bins" and not binned_layer:
        raise AtlasmapInputError(
            f"{info.directory}: reference.transform is quantile_bins but the model was set up on "
            f"layer {info.layer!r}, not on binned counts; set reference.transform: null"
        )


def _start_new_batches_at_the_reference_mean(model, model_dir: Path, n_reference_batches: int):
    """Give the query batches the mean of the reference batches' weights.

    ``load_query_data`` widens every batch-indexed weight for the new batches
    and leaves the new part at its random initialisation: a "frozen" embedding
    would then depend on a random draw. The mean of the reference batches is a
    deterministic, neutral start (an average reference batch), for embedding
    and as surgery's starting point alike.
    """
    import torch

    saved = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=False)
    reference_state = saved["model_state_dict"]
    widened = 0
    with torch.no_grad():
        for name, param in model.module.named_parameters():
            old = reference_state.get(name)
            if old is None or tuple(old.shape) == tuple(param.shape):
                continue
            dims = [d for d in range(param.ndim) if param.shape[d] != old.shape[d]]
            if len(dims) != 1 or old.shape[dims[0]] < n_reference_batches:
                continue
            dim = dims[0]
            n_old = old.shape[dim]
            mean = old.narrow(dim, n_old - n_reference_batches, n_reference_batches).mean(
                dim=dim, keepdim=True
            )
            new = param.narrow(dim, n_old, param.shape[dim] - n_old)
            new.copy_(mean.to(param.device, param.dtype).expand_as(new))
            widened += 1
    log.info("query batch weights set to the reference batches' mean in %d tensors", widened)


def _align_atlas(atlas, info: ModelInfo, s: MappingSettings) -> ad.AnnData:
    ref_aligned, ref_report = align_to_genes(
        atlas,
        info.genes,
        layer=s.atlas_layer,
        min_overlap=s.min_gene_overlap,
        where="reference.atlas",
    )
    if ref_report.zero_filled:
        log.warning("the atlas lacks %d of the model's genes", ref_report.zero_filled)
    return ref_aligned


def _reference_input(ref_aligned, atlas, info: ModelInfo, s: MappingSettings) -> ad.AnnData:
    return _model_input(
        ref_aligned, info, atlas.obs[s.batch_key], atlas.obs[s.labels_key], s.transform
    )


def align_inputs(
    query, atlas, info: ModelInfo, s: MappingSettings, where: str, reference_input: bool = True
):
    """Reference and query on the model's genes (sparse), and the model's input for each
    (the reference's only with ``reference_input``: none is needed when its latent is known)."""
    id_to_symbol = id_to_symbol_table(atlas.var, atlas.var_names)
    ref_aligned = _align_atlas(atlas, info, s)
    q_aligned, q_report = align_to_genes(
        query,
        info.genes,
        layer="counts",
        min_overlap=s.min_gene_overlap,
        warn_overlap=s.warn_gene_overlap,
        id_to_symbol=id_to_symbol,
        where=where,
    )
    ref_input = _reference_input(ref_aligned, atlas, info, s) if reference_input else None
    q_input = _model_input(q_aligned, info, query.obs[s.batch_key], None, s.transform)
    return ref_aligned, q_aligned, ref_input, q_input, q_report


def run_model(
    model_dir,
    ref_input,
    q_input,
    info: ModelInfo,
    mode: str,
    s: MappingSettings,
    reference: ReferenceLatent | None = None,
) -> ModelRun:
    """Load the query into the model, adapt it (surgery) or not (embed), and embed and classify.

    Returns the latents and classifier probabilities of reference and query cells,
    whether the encoder sees the batch, and each query cell's latent shift. With
    ``reference`` (embed_reference's), the reference cells are not embedded
    again: neither mode changes them (surgery trains only the query batches'
    weights, which a reference cell's one-hot batch never reads, and the
    classifier is frozen).
    """
    import scvi
    import torch

    from .training import EpochLogger, train_kwargs

    scvi.settings.seed = s.seed
    scvi.settings.verbosity = logging.WARNING  # its per-load INFO lines say nothing useful
    shared = sorted(set(q_input.obs[s.batch_key]) & set(info.batches))
    if shared:
        log.warning("query batches %s are also reference batches: their weights are reused", shared)
    model = scvi.model.SCANVI.load_query_data(
        q_input, str(model_dir), freeze_dropout=True, accelerator=s.accelerator
    )
    _start_new_batches_at_the_reference_mean(model, Path(model_dir), len(info.batches))
    # load_query_data leaves the classifier's first-layer norm trainable (its
    # parameter names match scvi-tools' ".0." first-layer rule): freeze it all,
    # so surgery cannot move the labels' decision boundaries.
    for name, parameter in model.module.named_parameters():
        if name.startswith("classifier."):
            parameter.requires_grad = False
    encoder_sees_batch = bool(getattr(model.module, "encode_covariates", False))
    model.is_trained = True
    z_before, probs_before = _predict(model, q_input, s.inference_batch_size)
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
        if mode == "surgery":
            z_query, probs_query = _predict(model, q_input, s.inference_batch_size)
        else:  # frozen: the embedding made before is the embedding
            z_query, probs_query = z_before, probs_before
        if reference is not None:
            z_ref, probs_ref = reference.latent, reference.probabilities
        elif ref_input.n_obs:
            z_ref, probs_ref = _predict(model, ref_input, s.inference_batch_size)
        else:
            z_ref = np.zeros((0, z_query.shape[1]), dtype=z_query.dtype)
            probs_ref = probs_query.iloc[:0]
    shift = np.linalg.norm(z_query - z_before, axis=1)
    log.info("mean query latent shift by %s: %.4g", mode, float(shift.mean()))
    return ModelRun(z_ref, probs_ref, z_query, probs_query, encoder_sees_batch, shift)


def map_query(
    query: ad.AnnData,
    atlas: ad.AnnData | None,
    model_dir: str | Path,
    mode: str,
    settings: MappingSettings = MappingSettings(),
    where: str = "query",
    reference: ReferenceLatent | None = None,
    query_only: bool = False,
) -> MappingResult:
    """Map ``query`` (raw counts in ``layers["counts"]``) onto the model in ``model_dir``.

    ``mode`` "surgery": scArches architecture surgery, the query batches'
    weights trained (weight decay 0) while the reference weights and the
    classifier stay frozen. ``mode`` "embed": the reference model frozen,
    query cells embedded and classified with no training. In both, the query
    batches start from the mean of the reference batches' weights. Without an
    ``atlas`` (None), embed mode maps with the model alone: no reference cells
    in the output. The result is the embedded expanded atlas; the calls are
    made from it by :mod:`atlasmap.calls`. ``reference``: the atlas cells'
    latent from :func:`embed_reference`, reused instead of embedding them again
    (unless surgery's weight decay, which moves reference weights, is set).

    With ``query_only`` (a shard of a scattered query, :mod:`atlasmap.scatter`), the
    result holds the query cells alone: the atlas cells are the reference latent's,
    the same for every shard, and are joined to the query's once, when gathered.

    Four steps, each a function: :func:`check_mapping_inputs`,
    :func:`align_inputs`, :func:`run_model`, :func:`assemble_mapping`.
    """
    s = settings
    info = read_model_info(model_dir)
    atlas, reference = check_mapping_inputs(query, atlas, info, mode, s, where, reference)
    if query_only:
        if reference is None and atlas.n_obs:
            raise AtlasmapInputError(
                f"{where}: a shard is mapped against the reference latent of embed_reference, "
                "which surgery with weight decay would move (mapping.surgery.weight_decay): "
                "set mapping.scatter.by: none, or weight_decay: 0"
            )
        atlas = atlas[:0].copy()
    ref_aligned, q_aligned, ref_input, q_input, q_report = align_inputs(
        query, atlas, info, s, where, reference_input=reference is None
    )
    run = run_model(model_dir, ref_input, q_input, info, mode, s, reference)
    if query_only:
        run.z_ref, run.probs_ref = run.z_ref[:0], run.probs_ref.iloc[:0]
    return assemble_mapping(
        atlas, query, ref_aligned, q_aligned, run, q_report, info, model_dir, mode, s
    )


def check_mapping_inputs(
    query: ad.AnnData,
    atlas: ad.AnnData | None,
    info: ModelInfo,
    mode: str,
    s: MappingSettings,
    where: str,
    reference: ReferenceLatent | None,
) -> tuple[ad.AnnData, ReferenceLatent | None]:
    """Refuse what cannot be mapped, naming the key at fault; return the atlas to map
    onto (an empty one for the model alone) and the reference latent still usable."""
    if mode not in MODES:
        raise AtlasmapInputError(f"mode must be one of {MODES}, not {mode!r}")
    check_model_matches_config(info, s.labels_key, s.batch_key)
    check_model_transform(info, s.transform)
    if atlas is None:
        if mode == "surgery":
            raise AtlasmapInputError(
                "surgery needs the reference atlas (config key reference.atlas): the expanded "
                "atlas and the joint embedding are made of its cells. Without it, use "
                "mapping.modes: [embed]."
            )
        log.warning(
            "no reference atlas: embed mode with the model alone; the output holds the query "
            "cells only, and calls come from the classifier (no kNN, calibration or novelty)"
        )
        atlas = _empty_atlas(info, s)
    check_atlas_columns(atlas, "reference.atlas", labels_key=s.labels_key, batch_key=s.batch_key)
    if s.batch_key not in query.obs.columns:
        raise AtlasmapInputError(
            f"{where}: the query has no column {s.batch_key!r}, the model's batch key; "
            f"its columns are {list(query.obs.columns)}. Rename one with queries.<name>.rename "
            f"(the tutorial renames patients to {s.batch_key})."
        )
    if reference is not None and mode == "surgery" and s.surgery_weight_decay:
        log.warning(
            "surgery with weight decay %g shrinks the reference weights too: the reference "
            "cells are embedded again after surgery",
            s.surgery_weight_decay,
        )
        reference = None
    if reference is not None:
        check_reference_latent(reference, atlas, where="reference latent (embed_reference)")
    return atlas, reference


def assemble_mapping(
    atlas: ad.AnnData,
    query: ad.AnnData,
    ref_aligned: ad.AnnData,
    q_aligned: ad.AnnData,
    run: ModelRun,
    q_report,
    info: ModelInfo,
    model_dir: str | Path,
    mode: str,
    s: MappingSettings,
) -> MappingResult:
    """The expanded atlas (counts, every obs column of both sides, latent and
    probabilities), its per-sample QC table and the run's record."""
    import scvi

    expanded = _expanded_atlas(atlas, query, ref_aligned, q_aligned, run.z_ref, run.z_query)
    classifier_labels = [str(c) for c in run.probs_query.columns]
    expanded.obsm[PROBABILITIES_KEY] = np.vstack(
        [run.probs_ref.to_numpy(), run.probs_query.to_numpy()]
    ).astype(np.float32)
    qc = _qc_table(
        query.obs[s.batch_key].astype(str), q_report, mode, run.encoder_sees_batch, run.shift
    )
    run_info = {
        "mode": mode,
        "model": str(model_dir),
        "model_scvi_version": info.scvi_version,
        "scvi_version": scvi.__version__,
        "encoder_sees_batch": run.encoder_sees_batch,
        "latent_shift_mean": float(run.shift.mean()),
        "gene_alignment": q_report.as_dict(),
        "labels_key": s.labels_key,
        "batch_key": s.batch_key,
        "label_levels": [lv for lv in s.label_levels if lv in atlas.obs.columns],
        "classifier_labels": classifier_labels,
        "query_columns": [c for c in expanded.obs.columns if c in _query_columns(query)],
        "reference_classifier_accuracy": float(
            np.mean(
                np.asarray(classifier_labels)[run.probs_ref.to_numpy().argmax(axis=1)]
                == atlas.obs[s.labels_key].astype(str).to_numpy()
            )
        )
        if atlas.n_obs
        else float("nan"),
    }
    expanded.uns["atlasmap"] = {k: v for k, v in run_info.items() if k != "gene_alignment"}
    expanded.uns["atlasmap"]["gene_alignment"] = {k: str(v) for k, v in q_report.as_dict().items()}
    return MappingResult(expanded, qc, q_report, run_info)


def check_reference_latent(reference: ReferenceLatent, atlas: ad.AnnData, where: str) -> None:
    """Refuse a reference latent made from another atlas (its cells, in order, differ)."""
    if not reference.cells.equals(atlas.obs_names):
        raise AtlasmapInputError(
            f"{where}: its {len(reference.cells)} cells are not the atlas's {atlas.n_obs} "
            "cells in the atlas's order: it was made from another atlas; rerun embed_reference"
        )


def embed_reference(
    atlas: ad.AnnData, model_dir: str | Path, settings: MappingSettings = MappingSettings()
) -> ad.AnnData:
    """The embedded atlas: the atlas on the model's genes, with its latent.

    Raw counts on the model's genes (``X``, and the configured counts layer as
    the same matrix), every obs column, Ensembl ids of the genes where the atlas
    has them (``var["gene_ids"]``, so that an Ensembl-only query still matches),
    and the cells' latent means and classifier probabilities under the frozen
    model. The same for every query and both modes (see :func:`run_model`): the
    workflow makes it once per reference, and :func:`map_query` and the baseline
    read it instead of the whole atlas.
    """
    import scvi

    s = settings
    info = read_model_info(model_dir)
    check_model_matches_config(info, s.labels_key, s.batch_key)
    check_model_transform(info, s.transform)
    check_atlas_columns(atlas, "reference.atlas", labels_key=s.labels_key, batch_key=s.batch_key)
    scvi.settings.seed = s.seed
    scvi.settings.verbosity = logging.WARNING
    ref_aligned = _align_atlas(atlas, info, s)
    ref_input = _reference_input(ref_aligned, atlas, info, s)
    model = scvi.model.SCANVI.load(str(model_dir), adata=ref_input, accelerator=s.accelerator)
    latent, probabilities = _predict(model, ref_input, s.inference_batch_size)
    log.info("reference embedded: %d cells, %d latent dimensions", *latent.shape)
    counts = ref_aligned.layers["counts"]
    embedded = ad.AnnData(X=counts, obs=atlas.obs.copy(), var=ref_aligned.var[[]].copy())
    if s.atlas_layer:
        embedded.layers[s.atlas_layer] = counts
    gene_ids = gene_ids_of(atlas.var, atlas.var_names, embedded.var_names)
    if gene_ids is not None:
        embedded.var["gene_ids"] = gene_ids
    embedded.obsm[EMBEDDING_KEY] = latent.astype(np.float32)
    embedded.obsm[PROBABILITIES_KEY] = probabilities.to_numpy().astype(np.float32)
    embedded.uns[EMBEDDED_ATLAS_KEY] = {
        "classifier_labels": [str(c) for c in probabilities.columns],
        "model": str(model_dir),
        "scvi_version": scvi.__version__,
    }
    return embedded


def reference_latent(embedded: ad.AnnData, where: str = "embedded atlas") -> ReferenceLatent:
    """The latent and probabilities of an atlas made by :func:`embed_reference`."""
    missing = [k for k in (EMBEDDING_KEY, PROBABILITIES_KEY) if k not in embedded.obsm]
    if missing or EMBEDDED_ATLAS_KEY not in embedded.uns:
        raise AtlasmapInputError(
            f"{where}: no obsm {missing} or uns[{EMBEDDED_ATLAS_KEY!r}]: not an atlas embedded "
            "by embed_reference"
        )
    probabilities = pd.DataFrame(
        np.asarray(embedded.obsm[PROBABILITIES_KEY]),
        index=embedded.obs_names,
        columns=list(embedded.uns[EMBEDDED_ATLAS_KEY]["classifier_labels"]),
    )
    return ReferenceLatent(np.asarray(embedded.obsm[EMBEDDING_KEY]), probabilities)


def read_reference_latent(path: str | Path) -> ReferenceLatent:
    """The reference latent of embed_reference's file, without reading its counts."""
    embedded = read_annotations(path, obsm=(EMBEDDING_KEY, PROBABILITIES_KEY))
    return reference_latent(embedded, where=str(path))


def embed_reference_files(
    *,
    atlas_path: str | Path,
    model_dir: str | Path,
    settings: MappingSettings,
    embedded: str | Path,
) -> ad.AnnData:
    """:func:`embed_reference` from the atlas file to the embedded atlas file."""
    from .io import write_h5ad
    from .reference import read_atlas

    atlas = embed_reference(read_atlas(atlas_path), model_dir, settings)
    write_h5ad(atlas, embedded)
    return atlas


def _query_columns(query: ad.AnnData) -> set[str]:
    """The query's metadata columns as they appear in the expanded atlas."""
    clash = set(CALL_COLUMNS) | {SOURCE_COLUMN, "barcode"}
    return {f"query_{c}" if c in clash else c for c in query.obs.columns}


def _expanded_atlas(atlas, query, ref_aligned, q_aligned, z_ref, z_query):
    """Reference + query on the model's genes; every obs column of both kept (outer join)."""
    obs = join_obs(atlas.obs, query_obs(query))
    if ref_aligned.n_obs:
        counts = sp.vstack([ref_aligned.layers["counts"], q_aligned.layers["counts"]]).tocsr()
    else:  # the model alone (embed without an atlas): the query's counts, not a copy of them
        counts = q_aligned.layers["counts"]
    expanded = ad.AnnData(X=counts, obs=obs, var=q_aligned.var.copy())
    expanded.layers["counts"] = counts
    expanded.obsm[EMBEDDING_KEY] = np.vstack([z_ref, z_query]).astype(np.float32)
    return expanded


def query_obs(query: ad.AnnData) -> pd.DataFrame:
    """The query's obs as the expanded atlas holds it: a column named as one of the calls'
    (or source, barcode) prefixed with query_, its source and its barcode."""
    q_obs = query.obs.copy()
    clash = q_obs.columns.intersection(CALL_COLUMNS + [SOURCE_COLUMN, "barcode"])
    if len(clash):
        log.warning("query metadata columns %s renamed with prefix 'query_'", list(clash))
        q_obs = q_obs.rename(columns={c: f"query_{c}" for c in clash})
    q_obs[SOURCE_COLUMN] = QUERY
    q_obs["barcode"] = query.obs_names.to_numpy()
    return q_obs


def join_obs(atlas_obs: pd.DataFrame, q_obs: pd.DataFrame) -> pd.DataFrame:
    """The expanded atlas's obs: the atlas's (its source added), then the query's from
    :func:`query_obs` (a barcode that also names an atlas cell suffixed with -query),
    every column of both kept; text columns categorical."""
    ref_obs = atlas_obs.copy()
    ref_obs[SOURCE_COLUMN] = ATLAS
    q_names = q_obs.index
    overlap = q_names.intersection(ref_obs.index)
    if len(overlap):
        log.warning(
            "%d query barcodes also name reference cells: suffixed with '-query'", len(overlap)
        )
        overlap = set(overlap)
        q_obs = q_obs.copy()
        q_obs.index = pd.Index([f"{b}-query" if b in overlap else b for b in q_names])
    obs = pd.concat([ref_obs, q_obs], axis=0, join="outer", sort=False)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    obs[SOURCE_COLUMN] = pd.Categorical(obs[SOURCE_COLUMN], categories=list(SOURCES))
    return obs


def _qc_table(samples: pd.Series, report, mode, encoder_sees_batch, shift) -> pd.DataFrame:
    """Per sample and overall: cells, gene overlap, how far the mode moved the query cells."""
    samples = samples.to_numpy()
    rows = []
    for sample in [*sorted(set(samples)), "all"]:
        mine = np.ones(len(samples), bool) if sample == "all" else samples == sample
        rows.append(
            {
                "sample": sample,
                "mode": mode,
                "cells": int(mine.sum()),
                "genes_matched": report.matched,
                "gene_overlap": round(report.overlap_fraction, 4),
                "genes_zero_filled": report.zero_filled,
                "encoder_sees_batch": encoder_sees_batch,
                "latent_shift_mean": round(float(shift[mine].mean()), 4),
            }
        )
    return pd.DataFrame(rows)


def write_mapping(result: MappingResult, embedded: str | Path, qc: str | Path) -> None:
    """Write the embedded expanded atlas and the mapping QC table, each whole or not at all."""
    from .io import atomic_path, write_h5ad

    with atomic_path(qc) as tmp:
        result.qc.to_csv(tmp, sep="\t", index=False)
    write_h5ad(result.expanded, embedded)


def map_query_files(
    *,
    query_path: str | Path,
    atlas_path: str | Path | None = None,
    model_dir: str | Path,
    mode: str,
    settings: MappingSettings,
    embedded: str | Path,
    qc: str | Path,
    embedded_atlas: str | Path | None = None,
) -> MappingResult:
    """:func:`map_query` from files to files (each output whole or not at all).

    The reference: ``atlas_path``, an atlas embedded here, or ``embedded_atlas``,
    embed_reference's file (the workflow's way: its latent is reused), or
    neither (the model alone, embed mode).
    """
    from .reference import read_atlas

    if atlas_path and embedded_atlas:
        raise ValueError("give atlas_path or embedded_atlas, not both")
    query = read_h5ad(query_path)
    atlas = read_atlas(atlas_path) if atlas_path else None
    reference = None
    if embedded_atlas:
        atlas = read_h5ad(embedded_atlas)
        reference = reference_latent(atlas, where=str(embedded_atlas))
    result = map_query(
        query, atlas, model_dir, mode, settings, where=str(query_path), reference=reference
    )
    write_mapping(result, embedded, qc)
    return result


def read_reference_side(path: str | Path, counts_layer: str | None) -> ad.AnnData:
    """embed_reference's atlas without its counts (an empty matrix in their place): all a
    shard's mapping reads of it, whatever the atlas's size in counts."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        obs, var = read_elem(f["obs"]), read_elem(f["var"])
        obsm = {k: read_elem(f["obsm"][k]) for k in (EMBEDDING_KEY, PROBABILITIES_KEY)}
        uns = {EMBEDDED_ATLAS_KEY: read_elem(f["uns"][EMBEDDED_ATLAS_KEY])}
    empty = sp.csr_matrix((len(obs), len(var)), dtype=np.float32)
    atlas = ad.AnnData(X=empty, obs=obs, var=var, obsm=obsm, uns=uns)
    if counts_layer:
        atlas.layers[counts_layer] = empty
    return atlas
