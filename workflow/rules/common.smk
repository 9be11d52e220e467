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
DEPOSIT_ROLES = ("matrix", "features", "barcodes", "metadata")


wildcard_constraints:
    # Names become folders: no separators, no dots, no spaces.
    query="|".join(QUERIES),


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


def all_outputs(wildcards):
    return expand(rules.subset_query.output.h5ad, query=QUERIES)
