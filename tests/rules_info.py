"""Print the workflow's rules as JSON (run as a script in the repository root).

Loading a workflow changes the process's working directory and global state,
so tests run this in a subprocess. The demo config is loaded with the atlas and
the model to be fetched (FETCHED), so that the rules defined only then are listed
too.
"""

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

FETCHED = {
    "reference": {
        "atlas_url": "https://example.org/atlas.h5ad",
        "model": "resources/models/packaged",
        "model_package": {"name": "scpdac", "version": "0.1.1", "path": "scpdac/models/x"},
    }
}


def main() -> None:
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(config=FETCHED),
            snakefile=Path("workflow/Snakefile"),
            workdir=Path("."),
        )
        rules, workflow = [], workflow_api._workflow
        for rule in workflow.rules:
            rules.append(
                {
                    "name": rule.name,
                    "basedir": str(rule.basedir),
                    "conda": str(rule.conda_env) if rule.conda_env else None,
                    "script": rule.script,
                    "log": [str(entry) for entry in rule.log],
                    "benchmark": str(rule.benchmark) if rule.benchmark else None,
                    "outputs": [str(entry) for entry in rule.output],
                    "resources": sorted(rule.resources),
                    "params": sorted(rule.params._names),
                    # the caption file of each output marked for the report
                    "captions": sorted(
                        str(entry.flags["report"].caption)
                        for entry in rule.output
                        if "report" in getattr(entry, "flags", {})
                    ),
                    # run on the head node under a cluster executor (localrules)
                    "local": rule.name in workflow._localrules,
                }
            )
    json.dump(rules, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
