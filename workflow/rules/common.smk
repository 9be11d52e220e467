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


def query_outputs(query):
    """Everything the workflow delivers for one query."""
    outputs = expand(
        [
            rules.map_query.output.mapped,
            rules.map_query.output.predictions,
            rules.map_query.output.qc,
        ],
        query=query,
        mode=MODES,
    )
    if config["queries"][query]["truth"]:
        outputs += expand(
            rules.evaluate_mapping.output.metrics, query=query, mode=MODES
        )
    return outputs


def all_outputs(wildcards):
    return [path for query in QUERIES for path in query_outputs(query)]
