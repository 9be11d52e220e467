# Config validation, wildcard constraints and input functions shared by all rules.
import sys
from pathlib import Path

from snakemake.utils import validate

# Validate twice: without defaults first, so that a wrong type (e.g. a string
# where a mapping belongs) is reported as such rather than crashing the
# default-filling pass; then again to fill in the schema's defaults.
validate(config, "../schemas/config.schema.yaml", set_default=False)
validate(config, "../schemas/config.schema.yaml")

# The atlasmap library, for input functions that need it (rule scripts get it
# on their path from Snakemake).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))
from atlasmap.download import resolve_sources, is_url  # noqa: E402

QUERIES = list(config["queries"])
MODES = config["mapping"]["modes"]
VECTOR_FORMAT = config["plots"]["vector_format"]
# Each figure of plot_mapping, with the caption of its place in the report.
MAPPING_FIGURES = {
    "umap_celltype": "umap_celltype.rst",
    "umap_query": "umap_query.rst",
    "umap_sample": "umap_sample.rst",
    "umap_uncertainty": "umap_uncertainty.rst",
    "label_distribution": "label_distribution.rst",
}
if config["umap"]["query_alone"]:
    MAPPING_FIGURES["umap_query_alone"] = "umap_query_alone.rst"


wildcard_constraints:
    # Names become folders: no separators, no dots, no spaces.
    query="|".join(QUERIES),
    mode="surgery|embed",


def query_config(wildcards):
    return config["queries"][wildcards.query]


def query_sources(wildcards):
    """Path or URL of each deposit file of a query."""
    return resolve_sources(
        query_config(wildcards)["source"], where=f"queries.{wildcards.query}.source"
    )


def local_deposit_files(wildcards):
    """Local deposit files are inputs, so that a changed file reruns the chain."""
    return {
        role: location
        for role, location in query_sources(wildcards).items()
        if not is_url(location)
    }


def reference_model(wildcards):
    """The saved model the config names, or the one train_reference makes."""
    return config["reference"]["model"] or rules.train_reference.output.model


def mapping_params(wildcards):
    """Mapping settings; surgery's own only for surgery, so that editing them
    reruns the surgery mapping alone."""
    params = {
        k: v for k, v in config["mapping"].items() if k not in ("modes", "surgery")
    }
    if wildcards.mode == "surgery":
        params["surgery"] = config["mapping"]["surgery"]
    return params


def mapping_figure_outputs():
    """Named outputs of plot_mapping: a PNG in the report and a vector file per figure."""
    outputs = {}
    for name, caption in MAPPING_FIGURES.items():
        outputs[name] = report(
            f"results/{{query}}/{{mode}}/plots/{name}.png",
            caption=f"../report/{caption}",
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
            rules.map_query.output.predictions,
            rules.map_query.output.qc,
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


def all_outputs(wildcards):
    return [path for query in QUERIES for path in query_outputs(query)]
