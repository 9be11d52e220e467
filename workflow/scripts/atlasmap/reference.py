"""The reference: reading the atlas, training a surgery-ready scANVI model, loading one."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .contract import MODEL_FILE
from .errors import AtlasmapInputError
from .settings import TrainingSettings

log = logging.getLogger(__name__)


def read_atlas(path: str | os.PathLike) -> ad.AnnData:
    """Read a reference atlas from h5ad or zarr."""
    path = Path(path)
    if not path.exists():
        raise AtlasmapInputError(f"{path}: reference atlas not found (config key reference.atlas)")
    if path.suffix == ".zarr" or path.is_dir():
        return ad.read_zarr(path)
    return ad.read_h5ad(path)


def check_atlas_columns(atlas: ad.AnnData, where: str, **keys: str | None) -> None:
    """Fail unless every named obs column (e.g. labels_key, batch_key) exists."""
    for config_key, column in keys.items():
        if column is not None and column not in atlas.obs.columns:
            raise AtlasmapInputError(
                f"{where}: the atlas has no obs column {column!r} (config key "
                f"reference.{config_key}); its columns are {list(atlas.obs.columns)}"
            )


def atlas_counts_layer(atlas: ad.AnnData, layer: str | None, where: str) -> str | None:
    if layer is not None and layer not in atlas.layers:
        raise AtlasmapInputError(
            f"{where}: the atlas has no layer {layer!r} (config key reference.counts_layer); "
            f"its layers are {list(atlas.layers)}; use null for X"
        )
    return layer


def label_hierarchy(obs: pd.DataFrame, levels: list[str], finest: str) -> pd.DataFrame:
    """Table finest label -> its label at each coarser level.

    A finest label found under several parents at a level is not dropped: it
    takes the parent most of its cells have, and the conflict is logged and
    kept in ``table.attrs["conflicts"]`` ({level: {label: {parent: cells}}}),
    so that a report can say which coarser calls rest on a majority.
    """
    rows = obs[[finest, *[lv for lv in levels if lv != finest]]].dropna().astype(str)
    table = pd.DataFrame(index=pd.Index(sorted(rows[finest].unique()), name=finest))
    conflicts: dict[str, dict[str, dict[str, int]]] = {}
    for level in [lv for lv in levels if lv != finest and lv in rows.columns]:
        counts = rows.groupby([finest, level]).size()
        counts = counts[counts > 0].sort_values(ascending=False, kind="stable")
        majority = counts.reset_index().drop_duplicates(subset=[finest]).set_index(finest)[level]
        table[level] = majority.reindex(table.index)
        parents = counts.groupby(level=0).size()
        ambiguous = parents[parents > 1].index
        if len(ambiguous):
            conflicts[level] = {
                str(label): {str(p): int(n) for p, n in counts.loc[label].items()}
                for label in ambiguous
            }
            log.warning(
                "%d %s labels lie under several %s labels; each takes its majority parent: %s",
                len(ambiguous),
                finest,
                level,
                {k: v for k, v in list(conflicts[level].items())[:5]},
            )
    table.attrs["conflicts"] = conflicts
    return table


def max_epochs_for(n_cells: int, scvi_epochs: int | None, scanvi_epochs: int | None):
    """Most epochs of scVI and scANVI for an atlas of ``n_cells``.

    scvi-tools' own rule: about 20,000 cells x 400 epochs of data passes,
    at most 400 epochs; scANVI a third of scVI's, between 2 and 10 (as
    ``SCANVI.from_scvi_model`` then ``train()`` would choose). Early stopping
    ends either sooner. (scvi-tools' reference-mapping tutorial trains scANVI 20
    epochs on 100 labelled cells per label: on held-out reference batches that
    lost 1.7 points, benchmarks/tune_scanvi.md.)
    """
    scvi_n = scvi_epochs or int(min(round(20_000 / max(n_cells, 1) * 400), 400))
    scanvi_n = scanvi_epochs or int(min(10, max(2, round(scvi_n / 3.0))))
    return max(scvi_n, 1), max(scanvi_n, 1)


def select_genes(atlas: ad.AnnData, n_top_genes: int | None, batch_key: str, layer: str | None):
    """Highly variable genes (seurat_v3 on raw counts, batch-aware), or all genes."""
    import scanpy as sc

    if n_top_genes is None or n_top_genes >= atlas.n_vars:
        return atlas.var_names
    kwargs = {"n_top_genes": n_top_genes, "flavor": "seurat_v3", "layer": layer, "inplace": False}
    try:
        hvg = sc.pp.highly_variable_genes(atlas, batch_key=batch_key, **kwargs)
    except ValueError as err:
        # seurat_v3's loess fit fails on a batch of a few hundred cells ("near
        # singularities"): rank the genes over all cells instead, and say so.
        log.warning(
            "highly variable genes per batch failed (%s): ranked over all cells instead", err
        )
        hvg = sc.pp.highly_variable_genes(atlas, **kwargs)
    return atlas.var_names[hvg["highly_variable"].to_numpy()]


@dataclass(frozen=True)
class HeldOutLatents:
    """The atlas cells in the latent of scANVI models that never saw their labels.

    ``latents[f]`` is every atlas cell in the latent of a scANVI trained, from the
    reference's own scVI and by the same recipe, with the labels of the cells of
    fold ``f`` (``fold == f``) hidden: those cells enter its training unlabelled,
    as query cells enter surgery. The calls score fold ``f``'s cells against the
    other folds' cells in ``latents[f]``, so the calibration and the novelty
    cut-off are not fitted on cells drawn towards their own label.
    """

    cells: pd.Index
    fold: np.ndarray  # per cell, its calibration fold
    latents: np.ndarray  # folds x cells x latent dimensions

    def aligned_to(self, cells: pd.Index, where: str) -> HeldOutLatents:
        """The same, for ``cells`` in their order; refused where one is missing."""
        position = self.cells.get_indexer(cells)
        if (position < 0).any():
            missing = list(cells[position < 0][:3])
            raise AtlasmapInputError(
                f"{where}: the model's held-out latents ({HELD_OUT_FILE}) lack atlas cells "
                f"such as {missing}: the model was trained on another atlas; train it again"
            )
        return HeldOutLatents(pd.Index(cells), self.fold[position], self.latents[:, position])


# Saved beside the model's own files in its folder; scvi-tools reads none but its own.
HELD_OUT_FILE = "held_out_latents.npz"


def train_reference_models(
    atlas: ad.AnnData,
    labels_key: str,
    batch_key: str,
    unlabeled_category: str = "Unknown",
    layer: str | None = "counts",
    settings: TrainingSettings = TrainingSettings(),
    seed: int = 0,
    accelerator: str = "auto",
    where: str = "reference.atlas",
):
    """Train scVI, then scANVI, with the architecture scArches surgery needs, and the
    held-out latents of ``settings.calibration_models`` calibration folds.

    Layer norm instead of batch norm, covariates fed to the encoder and
    dropout 0.2 (scArches' recommendation): only then can surgery adapt query
    batches. Returns the trained SCANVI model (on the selected genes) and a
    :class:`HeldOutLatents` (None for 0 folds): the folds are groups of batches,
    drawn as the calls draw theirs, each with its own scANVI that never saw its labels.
    """
    vae = train_scvi_model(
        atlas, labels_key, batch_key, unlabeled_category, layer, settings, seed, accelerator, where
    )
    model = train_scanvi_model(vae, labels_key, unlabeled_category, settings, accelerator)
    if not settings.calibration_models:
        return model, None
    return model, train_held_out_latents(
        vae,
        labels_key,
        batch_key,
        unlabeled_category,
        settings,
        seed,
        accelerator,
    )


def train_held_out_latents(
    vae, labels_key, batch_key, unlabeled_category, settings, seed, accelerator
) -> HeldOutLatents:
    """One scANVI per calibration fold from the trained scVI ``vae``, that fold's labels
    hidden; every atlas cell's latent in each."""
    import scvi

    from .folds import calibration_folds, fold_of_cells

    adata = vae.adata
    batches = adata.obs[batch_key].astype(str).to_numpy()
    folds = calibration_folds(batches, settings.calibration_models, seed)
    latents = []
    for i, held in enumerate(folds):
        hidden = adata.copy()
        labels = hidden.obs[labels_key].astype(str).to_numpy()
        labels[held] = unlabeled_category
        hidden.obs[labels_key] = pd.Categorical(
            labels, categories=adata.obs[labels_key].cat.categories
        )
        log.info("held-out fold %d of %d: %d cells' labels hidden", i + 1, len(folds), len(held))
        scvi.settings.seed = seed
        model = train_scanvi_model(
            vae, labels_key, unlabeled_category, settings, accelerator, adata=hidden
        )
        latents.append(model.get_latent_representation(hidden).astype(np.float32))
    fold = fold_of_cells(folds, adata.n_obs)
    return HeldOutLatents(pd.Index(adata.obs_names), fold, np.stack(latents))


def save_held_out_latents(held_out: HeldOutLatents, directory: str | os.PathLike) -> None:
    np.savez_compressed(
        Path(directory) / HELD_OUT_FILE,
        cells=held_out.cells.to_numpy(dtype=str),
        fold=held_out.fold,
        latents=held_out.latents,
    )


def read_held_out_latents(directory: str | os.PathLike) -> HeldOutLatents | None:
    """The model folder's held-out latents; None where it has none (a model trained
    elsewhere, or without ``calibration_models``)."""
    path = Path(directory) / HELD_OUT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return HeldOutLatents(pd.Index(saved["cells"]), saved["fold"], saved["latents"])


def train_scvi_model(
    atlas: ad.AnnData,
    labels_key: str,
    batch_key: str,
    unlabeled_category: str = "Unknown",
    layer: str | None = "counts",
    settings: TrainingSettings = TrainingSettings(),
    seed: int = 0,
    accelerator: str = "auto",
    where: str = "reference.atlas",
):
    """The unsupervised first stage: scVI on the atlas's variable genes, stopped on its
    validation ELBO."""
    import scvi

    from .training import EpochLogger, train_kwargs

    check_atlas_columns(atlas, where, labels_key=labels_key, batch_key=batch_key)
    atlas_counts_layer(atlas, layer, where)
    scvi.settings.seed = seed
    genes = select_genes(atlas, settings.n_top_genes, batch_key, layer)
    adata = atlas[:, genes].copy()
    adata.obs = adata.obs[[batch_key, labels_key]].copy()
    labels = adata.obs[labels_key].astype(str).replace("nan", unlabeled_category)
    # The unlabelled category among scVI's labels (scANVI's registry has it anyway), so
    # that a scANVI with some cells' labels hidden can start from this scVI.
    known = sorted(set(labels) - {unlabeled_category})
    adata.obs[labels_key] = pd.Categorical(labels, categories=[*known, unlabeled_category])
    log.info(
        "training on %d cells x %d genes, %d batches, %d labels",
        adata.n_obs,
        adata.n_vars,
        adata.obs[batch_key].nunique(),
        adata.obs[labels_key].nunique(),
    )
    scvi.model.SCVI.setup_anndata(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)
    vae = scvi.model.SCVI(
        adata,
        n_latent=settings.n_latent,
        n_layers=settings.n_layers,
        n_hidden=settings.n_hidden,
        dropout_rate=settings.dropout_rate,
        use_layer_norm="both",
        use_batch_norm="none",
        encode_covariates=True,
        deeply_inject_covariates=False,
    )
    scvi_epochs, _ = max_epochs_for(adata.n_obs, settings.scvi_max_epochs, None)
    log.info(
        "scVI: up to %d epochs%s",
        scvi_epochs,
        f", early stopping after {settings.early_stopping_patience} epochs without a better "
        "validation ELBO"
        if settings.early_stopping
        else "",
    )
    vae.train(
        max_epochs=scvi_epochs,
        batch_size=settings.batch_size,
        early_stopping=settings.early_stopping,
        early_stopping_patience=settings.early_stopping_patience,
        callbacks=[EpochLogger("scVI")],
        **train_kwargs(accelerator),
    )
    _log_stop("scVI", vae, scvi_epochs, "elbo_validation")
    return vae


def train_scanvi_model(
    vae,
    labels_key: str,
    unlabeled_category: str = "Unknown",
    settings: TrainingSettings = TrainingSettings(),
    accelerator: str = "auto",
    adata: ad.AnnData | None = None,
):
    """The supervised second stage: scANVI from a trained scVI (``vae`` is left as it
    was), ``n_samples_per_label`` labelled cells of each label per epoch, stopped on
    its classifier's validation loss. ``adata``: the scVI's cells with other labels
    (some hidden as ``unlabeled_category``); the scVI's own by default."""
    import scvi

    from .training import EpochLogger, train_kwargs

    _, scanvi_epochs = max_epochs_for(vae.adata.n_obs, None, settings.scanvi_max_epochs)
    model = scvi.model.SCANVI.from_scvi_model(
        vae, unlabeled_category=unlabeled_category, labels_key=labels_key, adata=adata
    )
    log.info(
        "scANVI: up to %d epochs, %s labelled cells per label each epoch%s",
        scanvi_epochs,
        settings.n_samples_per_label or "all",
        f", early stopping after {settings.scanvi_early_stopping_patience} epochs without a "
        "better validation classification loss"
        if settings.early_stopping
        else "",
    )
    model.train(
        max_epochs=scanvi_epochs,
        batch_size=settings.batch_size,
        n_samples_per_label=settings.n_samples_per_label,
        early_stopping=settings.early_stopping,
        early_stopping_monitor=SCANVI_MONITOR,
        early_stopping_patience=settings.scanvi_early_stopping_patience,
        callbacks=[EpochLogger("scANVI")],
        **train_kwargs(accelerator),
    )
    _log_stop("scANVI", model, scanvi_epochs, SCANVI_MONITOR)
    return model


# Logged by scvi-tools' semi-supervised training plan for every validation epoch with
# labelled cells; its Trainer's type hint lists only the ELBO's terms, but any logged
# metric can be monitored.
SCANVI_MONITOR = "validation_classification_loss"


def _log_stop(name: str, model, max_epochs: int, monitor: str) -> None:
    history = model.history.get(monitor)
    ran = len(model.history["elbo_train"]) if "elbo_train" in model.history else max_epochs
    best = (
        f"; best {monitor.replace('_', ' ')} {float(history.min().iloc[0]):.4g} at epoch "
        f"{int(np.argmin(history.to_numpy().ravel())) + 1}"
        if history is not None and len(history)
        else ""
    )
    log.info("%s: trained %d of at most %d epochs%s", name, ran, max_epochs, best)


def save_model(model, directory: str | os.PathLike, held_out: HeldOutLatents | None = None) -> None:
    """Save a scvi-tools model directory (with the held-out latents, if any) whole or
    not at all."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save(tmp / "model", overwrite=True, save_anndata=False)
        if held_out is not None:
            save_held_out_latents(held_out, tmp / "model")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp / "model", directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class ModelInfo:
    """What a saved SCANVI model expects of its input, read from its registry."""

    directory: Path
    genes: pd.Index
    batch_key: str
    labels_key: str
    unlabeled_category: str
    layer: str | None
    labels: list[str]
    batches: list[str]
    scvi_version: str
    other_keys: dict


def read_model_info(directory: str | os.PathLike) -> ModelInfo:
    """Read a saved model's registry, with an error that says what is wrong and what to do.

    Without importing scvi-tools (8 s): the jobs that only need the model's genes,
    labels or batches (the baseline, the evaluation) then start in a second."""
    from importlib.metadata import version

    import torch

    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
        raise AtlasmapInputError(
            f"{directory}: not a saved scvi-tools model: no {MODEL_FILE} "
            + (f"(the folder holds {found})" if found is not None else "(no such folder)")
            + ". Point reference.model at the folder that holds model.pt, or leave it null "
            "to train a model from reference.atlas."
        )
    try:
        # Read on the CPU: models saved from a GPU (as the scPDAC one) hold CUDA tensors.
        saved = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=False)
        registry = saved["attr_dict"]["registry_"]
        genes = saved["var_names"]
    except Exception as err:  # the loader's own errors say little about the cause
        raise AtlasmapInputError(
            f"{directory}/{MODEL_FILE}: cannot be read by scvi-tools {version('scvi-tools')} "
            f"({type(err).__name__}: {err}). Was it saved by a much older or newer scvi-tools? "
            "Load and re-save it with a matching version, or retrain with reference.model: null."
        ) from err
    model_name = registry.get("model_name")
    if model_name != "SCANVI":
        raise AtlasmapInputError(
            f"{directory}: a saved {model_name} model, but atlasmap needs an SCANVI model "
            "(train one with scvi.model.SCANVI.from_scvi_model, or leave reference.model null)."
        )
    setup = registry["setup_args"]
    fields = registry["field_registries"]
    labels = list(fields["labels"]["state_registry"]["categorical_mapping"])
    batches = list(fields["batch"]["state_registry"]["categorical_mapping"])
    other = {
        k: v
        for k, v in setup.items()
        if k.endswith("_keys") and v  # categorical/continuous covariates
    }
    return ModelInfo(
        directory=directory,
        genes=pd.Index(np.asarray(genes).astype(str)),
        batch_key=setup.get("batch_key"),
        labels_key=setup.get("labels_key"),
        unlabeled_category=setup.get("unlabeled_category", "Unknown"),
        layer=setup.get("layer"),
        labels=[str(label) for label in labels],
        batches=[str(b) for b in batches],
        scvi_version=str(registry.get("scvi_version", "unknown")),
        other_keys=other,
    )


def check_model_matches_config(info: ModelInfo, labels_key: str, batch_key: str) -> None:
    if info.labels_key != labels_key:
        raise AtlasmapInputError(
            f"{info.directory}: the model predicts {info.labels_key!r} but reference.labels_key "
            f"is {labels_key!r}; set reference.labels_key: {info.labels_key}"
        )
    if info.batch_key != batch_key:
        raise AtlasmapInputError(
            f"{info.directory}: the model's batch key is {info.batch_key!r} but "
            f"reference.batch_key is {batch_key!r}; set reference.batch_key: {info.batch_key}"
        )
    if info.other_keys:
        raise AtlasmapInputError(
            f"{info.directory}: the model also uses covariates {info.other_keys}, "
            "which atlasmap does not supply yet"
        )


def train_reference_files(
    *,
    atlas_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    reference_config: dict,
    settings: TrainingSettings,
    seed: int = 0,
    accelerator: str = "auto",
) -> None:
    """Train a reference model (and the calls' held-out latents) from the atlas file
    and save it (whole or not at all). ``reference_config``: the reference's keys
    labels_key, batch_key, unlabeled_category and counts_layer."""
    atlas = read_atlas(atlas_path)
    model, held_out = train_reference_models(
        atlas,
        labels_key=reference_config["labels_key"],
        batch_key=reference_config["batch_key"],
        unlabeled_category=reference_config["unlabeled_category"],
        layer=reference_config["counts_layer"],
        settings=settings,
        seed=seed,
        accelerator=accelerator,
        where=str(atlas_path),
    )
    save_model(model, model_dir, held_out)
    log.info("saved the reference model to %s", model_dir)


def read_atlas_obs(path: str | os.PathLike) -> pd.DataFrame:
    """The atlas's cell metadata only, without loading its matrix."""
    path = Path(path)
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        return ad.io.read_elem(zarr.open(str(path), mode="r")["obs"])
    import h5py

    with h5py.File(path, "r") as handle:
        return ad.io.read_elem(handle["obs"])
