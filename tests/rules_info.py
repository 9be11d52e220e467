"""Print the workflow's rules as JSON (run as a script in the repository root).

Loading a workflow changes the process's working directory and global state,
so tests run this in a subprocess.
"""

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings


def main() -> None:
    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            snakefile=Path("workflow/Snakefile"),
            workdir=Path("."),
        )
        rules = []
        for rule in workflow_api._workflow.rules:
            rules.append(
                {
                    "name": rule.name,
                    "basedir": str(rule.basedir),
                    "conda": str(rule.conda_env) if rule.conda_env else None,
                    "script": rule.script,
                    "log": [str(entry) for entry in rule.log],
                    "benchmark": str(rule.benchmark) if rule.benchmark else None,
                    "outputs": [str(entry) for entry in rule.output],
                }
            )
    json.dump(rules, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
