"""Resource names in a profile's default-resources and set-resources, checked at planning.

Snakemake passes on any resource name a profile (or --default-resources, --set-resources)
gives, and the SLURM plugin ignores those it does not read: a misspelt account
(``slurm_acount: my_lab``) plans silently, and the plugin then guesses an account. Each
name is checked here against those something reads: the workflow's rules, Snakemake
and the SLURM plugin; each set-resources rule against the workflow's rules.

Read while Snakemake parses the workflow (``common.smk``), where only Snakemake may be
installed: the standard library alone.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import AtlasmapInputError

# The resources the workflow's rules declare (`resources:` in workflow/rules/*.smk);
# tests/unit/test_resources_check.py checks every rule's, as Snakemake parses them.
WORKFLOW_RESOURCES = frozenset({"mem_mb", "runtime", "gpu"})

# Snakemake 9's own (snakemake/resources.py): the sized resources mem and disk, bare or
# with _mb or _mib (Resources._normalize_sizes), runtime (a time resource) and tmpdir
# (the job's temporary folder); any --default-resources adds mem_mb, disk_mb and tmpdir
# by itself (Resources.DEFAULTS). _cores and _nodes are the scheduler's own.
SNAKEMAKE_RESOURCES = frozenset(
    {
        "mem",
        "mem_mb",
        "mem_mib",
        "disk",
        "disk_mb",
        "disk_mib",
        "runtime",
        "tmpdir",
        "_cores",
        "_nodes",
    }
)

# What snakemake-executor-plugin-slurm 2.8.0 reads (job.resources.get("...") and
# job.resources.<name> in snakemake_executor_plugin_slurm/*.py: submit_string.py,
# partitions.py, __init__.py, utils.py, validation.py).
SLURM_PLUGIN_RESOURCES = frozenset(
    {
        "slurm_account",
        "slurm_partition",
        "slurm_extra",
        "slurm_cluster",
        "cluster",
        "clusters",
        "qos",
        "constraint",
        "nodes",
        "tasks",
        "tasks_per_node",
        "tasks_per_gpu",
        "cpus_per_task",
        "cpus_per_gpu",
        "threads",
        "mem_mb",
        "mem_mb_per_cpu",
        "runtime",
        "gpu",
        "gpu_model",
        "gres",
        "mpi",
    }
)

# What the job step plugin it runs inside each job reads (snakemake-executor-plugin-
# slurm-jobstep 0.6.1, snakemake_executor_plugin_slurm_jobstep/__init__.py).
SLURM_JOBSTEP_RESOURCES = frozenset(
    {
        "cpus_per_task",
        "cpus_per_gpu",
        "gpus",
        "gpu",
        "nvidia_gpu",
        "nodes",
        "node",
        "slurm_nodes",
        "mpi",
    }
)

KNOWN_RESOURCES = (
    WORKFLOW_RESOURCES | SNAKEMAKE_RESOURCES | SLURM_PLUGIN_RESOURCES | SLURM_JOBSTEP_RESOURCES
)

# A rule's first line: `rule name:` or `checkpoint name:`, at any indent.
RULE_LINE = re.compile(r"^[ \t]*(?:rule|checkpoint)[ \t]+([A-Za-z_]\w*)[ \t]*:", re.MULTILINE)


def workflow_rule_names(rules_dir: object) -> set[str]:
    """Every rule the workflow defines, by its `rule <name>:` lines in rules/*.smk and in
    the Snakefile beside rules/ (``rules_dir``: common.smk's folder, its basedir): those
    only some configs define too (obtain_atlas, fetch_model_package), which a profile may
    name for the runs that have them, and before Snakemake has defined any. None (an
    empty set) where the basedir is no local folder (a Snakefile read from a URL)."""
    if not isinstance(rules_dir, str | os.PathLike):
        return set()
    rules_dir = Path(rules_dir)
    files = [rules_dir.parent / "Snakefile", *sorted(rules_dir.glob("*.smk"))]
    return {
        name for path in files if path.is_file() for name in RULE_LINE.findall(path.read_text())
    }


def _suggestion(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or nothing."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _unknown(where: str, names: Iterable[str], known: frozenset[str]) -> list[str]:
    return [
        f"{where}: unknown resource {name!r}{_suggestion(name, known)}"
        for name in dict.fromkeys(names)
        if name not in known
    ]


def resource_problems(
    default_resources: Iterable[str],
    set_resources: Mapping[str, Iterable[str]],
    rule_names: Iterable[str],
    known: frozenset[str] = KNOWN_RESOURCES,
) -> list[str]:
    """One message per unknown name: each resource of ``default_resources`` (names, or a
    mapping names -> values) and of ``set_resources`` (rule -> names or a mapping), and
    each rule of ``set_resources`` the workflow lacks (``rule_names``: its rules; none
    given, the rules are not checked)."""
    problems = _unknown("default-resources", default_resources, known)
    rule_names = set(rule_names)
    for rule, resources in set_resources.items():
        if rule_names and rule not in rule_names:
            hint = _suggestion(rule, rule_names) or (
                f"; the workflow's rules are {', '.join(sorted(rule_names))}"
            )
            problems.append(f"set-resources: {rule}: no rule of that name{hint}")
        problems += _unknown(f"set-resources: {rule}", resources, known)
    return problems


def check_resources(
    default_resources: Iterable[str],
    set_resources: Mapping[str, Iterable[str]],
    rule_names: Iterable[str],
) -> None:
    """Raise an AtlasmapInputError naming each unknown resource or rule
    (resource_problems), where there is one."""
    problems = resource_problems(default_resources, set_resources, rule_names)
    if problems:
        raise AtlasmapInputError(
            "\n".join(problems) + "\nA resource name in the profile's default-resources or "
            "set-resources (or --default-resources, --set-resources) that nothing reads "
            "would be ignored. Known: the rules' "
            f"({', '.join(sorted(WORKFLOW_RESOURCES))}), Snakemake's "
            f"({', '.join(sorted(SNAKEMAKE_RESOURCES - {'_cores', '_nodes'}))}) and "
            "snakemake-executor-plugin-slurm 2.8.0's "
            f"({', '.join(sorted(SLURM_PLUGIN_RESOURCES | SLURM_JOBSTEP_RESOURCES))})."
        )
