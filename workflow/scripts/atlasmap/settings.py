"""The settings of each step: one dataclass per step, each field a key of the config.

A field names the config key it mirrors (``mapping.calls.n_neighbors``; ``reference.``
keys are those of the job's reference). Defaults live in the config's schema alone
(workflow/schemas/config.schema.yaml): a field left out takes the schema's default, so
the library, the workflow and the benchmarks start from the same numbers. common.smk
gives each job the values of the keys its settings read (:func:`config_values`), so
that editing a key reruns exactly the jobs that read it.

A light module: the standard library only (the schema's YAML is read when a default is
first needed), so that common.smk can import it while the workflow is parsed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
REFERENCE = "reference"  # the first part of a key read from the job's reference


@functools.cache
def schema_defaults() -> dict:
    """The schema's default of every key that has one, nested as the config is (a
    reference's keys under ``reference``)."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())

    def defaults(node):
        if "$ref" in node:  # "#/$defs/<name>"
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if "properties" in node:
            return {key: defaults(value) for key, value in node["properties"].items()}
        return node.get("default")

    return defaults(schema)


def _lookup(config: Mapping, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _frozen(value: Any) -> Any:
    """A config value as a frozen settings field holds it: a list (YAML's) as a tuple."""
    return tuple(value) if isinstance(value, list) else value


def schema_default(key: str) -> Any:
    """The schema's default of config key ``key`` (a dotted path)."""
    return _frozen(_lookup(schema_defaults(), key))


def setting(key: str) -> Any:
    """A field mirroring config key ``key``, defaulting to the schema's default."""
    return dataclasses.field(
        default_factory=functools.partial(schema_default, key), metadata={"key": key}
    )


class Settings:
    """What every settings dataclass can do: say its config keys, be made from them."""

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Field -> the config key it mirrors (fields a job supplies, like its threads,
        have none)."""
        return {f.name: f.metadata["key"] for f in dataclasses.fields(cls) if "key" in f.metadata}

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **supplied):
        """The settings from ``values`` (config key -> value, as :func:`config_values`
        gives them); a key not among them takes the schema's default. ``supplied``: the
        fields the job gives (``n_jobs``)."""
        given = {name: _frozen(values[key]) for name, key in cls.keys().items() if key in values}
        return cls(**given, **supplied)

    @classmethod
    def from_config(cls, config: Mapping, reference: Mapping | None = None, **supplied):
        """The settings from a validated config (and the reference's section, where
        the config has several)."""
        return cls.from_values(config_values(cls, config, reference), **supplied)


def config_values(
    cls: type[Settings],
    config: Mapping,
    reference: Mapping | None = None,
    leave_out: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Config key -> value of every key ``cls`` reads, but those under ``leave_out``
    (key prefixes). ``reference``: the job's reference (default: the config's)."""

    def value(key: str) -> Any:
        head, _, rest = key.partition(".")
        if head == REFERENCE:
            return _lookup(config[REFERENCE] if reference is None else reference, rest)
        return _lookup(config, key)

    return {
        key: value(key)
        for key in cls.keys().values()
        if not any(key == out or key.startswith(out + ".") for out in leave_out)
    }


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Settings):
    """How train_reference trains scVI, then scANVI, on the atlas (reference.training).
    The choices behind the defaults: the schema's descriptions and benchmarks/."""

    n_top_genes: int | None = setting("reference.training.n_top_genes")
    n_latent: int = setting("reference.training.n_latent")
    n_layers: int = setting("reference.training.n_layers")
    n_hidden: int = setting("reference.training.n_hidden")
    dropout_rate: float = setting("reference.training.dropout_rate")
    # None: scvi-tools' rule, scaled by atlas size (reference.max_epochs_for).
    scvi_max_epochs: int | None = setting("reference.training.scvi_max_epochs")
    scanvi_max_epochs: int | None = setting("reference.training.scanvi_max_epochs")
    early_stopping: bool = setting("reference.training.early_stopping")
    early_stopping_patience: int = setting("reference.training.early_stopping_patience")
    # scANVI stops on its classifier's validation loss: its validation ELBO is best at
    # its first epoch (it starts from a trained scVI), so the ELBO could not stop it.
    # Stopping it sooner cost accuracy on held-out reference batches
    # (benchmarks/tune_scanvi.md): over scvi-tools' at most 10 epochs, 10 lets it run.
    scanvi_early_stopping_patience: int = setting(
        "reference.training.scanvi_early_stopping_patience"
    )
    batch_size: int = setting("reference.training.batch_size")
    n_samples_per_label: int | None = setting("reference.training.n_samples_per_label")
    # Calibration folds (groups of batches), each with one more scANVI trained from the
    # same scVI with the fold's labels hidden: the calls' calibration then scores
    # held-out cells in a latent that never saw their labels, as a query's cells are
    # (reference.HeldOutLatents). 0: none.
    calibration_models: int = setting("reference.training.calibration_models")


@dataclasses.dataclass(frozen=True)
class MappingSettings(Settings):
    """How map_query and embed_reference put cells into the reference's latent space.
    The surgery_ and train_batch_size fields are surgery's alone."""

    labels_key: str = setting("reference.labels_key")
    batch_key: str = setting("reference.batch_key")
    label_levels: tuple[str, ...] = setting("reference.label_levels")
    atlas_layer: str | None = setting("reference.counts_layer")
    transform: dict | None = setting("reference.transform")
    surgery_max_epochs: int = setting("mapping.surgery.max_epochs")
    surgery_early_stopping: bool = setting("mapping.surgery.early_stopping")
    surgery_weight_decay: float = setting("mapping.surgery.weight_decay")
    train_batch_size: int = setting("mapping.surgery.batch_size")
    inference_batch_size: int = setting("mapping.batch_size")
    min_gene_overlap: float = setting("mapping.min_gene_overlap")
    warn_gene_overlap: float = setting("mapping.warn_gene_overlap")
    seed: int = setting("seed")
    accelerator: str = setting("mapping.accelerator")


# Keys only surgery reads: left out of the other jobs' settings, so that editing them
# reruns the surgery mapping alone.
SURGERY_KEYS = ("mapping.surgery",)


@dataclasses.dataclass(frozen=True)
class CallSettings(Settings):
    """How call_celltypes (and fit_calls, on the atlas) call cell types: mapping.calls
    and the Unknown threshold."""

    # The method, the neighbours and the ensemble's expression member (its weight, the
    # atlas's variable genes it reads, its penalty, the atlas cells each fit may use)
    # were chosen on held-out reference batches (benchmarks/tune_ensemble.md).
    method: str = setting("mapping.calls.method")
    n_neighbors: int = setting("mapping.calls.n_neighbors")
    unknown_threshold: float = setting("mapping.unknown_threshold")
    novelty: bool = setting("mapping.calls.novelty")
    novelty_false_positive_rate: float = setting("mapping.calls.novelty_false_positive_rate")
    # Quantile of a batch's novelty scores taken as that batch's shift from the
    # reference (None: no correction); see calls.batch_shift.
    novelty_batch_quantile: float | None = setting("mapping.calls.novelty_batch_quantile")
    calibrate: bool = setting("mapping.calls.calibrate")
    calibration_folds: int = setting("mapping.calls.calibration_folds")
    calibration_cells: int = setting("mapping.calls.calibration_cells")
    expression_weight: float = setting("mapping.calls.expression_weight")
    expression_genes: int = setting("mapping.calls.expression_genes")
    expression_c: float = setting("mapping.calls.expression_c")
    expression_cells: int = setting("mapping.calls.expression_cells")
    # Query cells of the same batch whose probabilities each cell's are averaged with
    # (0: none); chosen on held-out reference batches (benchmarks/tune_smoothing.md).
    query_smoothing: int = setting("mapping.calls.query_smoothing")
    seed: int = setting("seed")
    n_jobs: int = 1  # the job's threads


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings(Settings):
    """The Annoy neighbour graph and the UMAP (neighbors, umap)."""

    n_neighbors: int = setting("neighbors.n_neighbors")
    # Trees, search and refinement chosen together (benchmarks/tune_neighbors.md).
    n_trees: int = setting("neighbors.n_trees")
    search_k: int = setting("neighbors.search_k")
    refine: int = setting("neighbors.refine")
    metric: str = setting("neighbors.metric")
    min_dist: float = setting("umap.min_dist")
    spread: float = setting("umap.spread")
    query_alone: bool = setting("umap.query_alone")
    query_alone_epochs: int | None = setting("umap.query_alone_epochs")
    layout: str = setting("umap.layout")
    seed: int = setting("seed")
    n_jobs: int = 1  # the job's threads


@dataclasses.dataclass(frozen=True)
class DownloadSettings(Settings):
    """How deposit files and atlases are fetched over HTTP (download)."""

    retries: int = setting("download.retries")
    timeout: float = setting("download.timeout")
    backoff: float = setting("download.backoff")
    max_backoff: float = setting("download.max_backoff")
    geo_mirror: str = setting("download.geo_mirror")
