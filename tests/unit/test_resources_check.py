"""The resource names a profile may give (atlasmap/resources_check.py): a misspelt one is
named with its likely meaning; the names known are those the workflow's rules, Snakemake
and the installed SLURM plugin read."""

import re
from pathlib import Path

import pytest
import snakemake_executor_plugin_slurm
import snakemake_executor_plugin_slurm_jobstep
import yaml
from atlasmap.errors import AtlasmapInputError
from atlasmap.resources_check import (
    KNOWN_RESOURCES,
    SLURM_JOBSTEP_RESOURCES,
    SLURM_PLUGIN_RESOURCES,
    SNAKEMAKE_RESOURCES,
    WORKFLOW_RESOURCES,
    check_resources,
    resource_problems,
    workflow_rule_names,
)
from conftest import REPO, rules_info
from snakemake.resources import Resources

RULES_DIR = REPO / "workflow" / "rules"
RULES = workflow_rule_names(RULES_DIR)


# --- The check ----------------------------------------------------------------------


def test_a_misspelt_default_resource_is_named_with_its_likely_meaning():
    problems = resource_problems({"slurm_acount": "my_lab", "mem_mb": 4000}, {}, RULES)
    assert problems == [
        "default-resources: unknown resource 'slurm_acount' (did you mean 'slurm_account'?)"
    ]


def test_a_misspelt_set_resource_is_named_with_its_rule():
    problems = resource_problems({}, {"train_reference": {"gpu_modle": "a100"}}, RULES)
    assert problems == [
        "set-resources: train_reference: unknown resource 'gpu_modle' (did you mean 'gpu_model'?)"
    ]


def test_set_resources_for_a_rule_the_workflow_lacks_are_named():
    problems = resource_problems({}, {"train_referenc": {"gpu_model": "a100"}}, RULES)
    assert problems == [
        "set-resources: train_referenc: no rule of that name (did you mean 'train_reference'?)"
    ]
    # Nothing close: the rules are listed instead.
    (problem,) = resource_problems({}, {"xyz": {"runtime": 5}}, RULES)
    assert problem.startswith("set-resources: xyz: no rule of that name; the workflow's rules are")
    assert "train_reference" in problem


def test_a_name_in_other_case_is_suggested_as_written_and_a_far_one_gets_no_guess():
    assert resource_problems(["MEM_MB", "frobnicate"], {}, RULES) == [
        "default-resources: unknown resource 'MEM_MB' (did you mean 'mem_mb'?)",
        "default-resources: unknown resource 'frobnicate'",
    ]


def test_without_rule_names_only_the_resources_are_checked():
    """A Snakefile read from a URL: its rules files are not here to be read."""
    assert workflow_rule_names("https://example.org/workflow/rules") == set()
    assert workflow_rule_names(object()) == set()
    assert resource_problems({}, {"anything": {"runtime": 5}}, set()) == []


def test_check_resources_raises_every_problem_at_once():
    with pytest.raises(AtlasmapInputError) as raised:
        check_resources(["slurm_acount"], {"map_query": ["slurm_partiton"]}, RULES)
    message = str(raised.value)
    assert "default-resources: unknown resource 'slurm_acount'" in message
    assert "set-resources: map_query: unknown resource 'slurm_partiton'" in message
    assert "(did you mean 'slurm_partition'?)" in message
    check_resources(["slurm_account", "mem_mb"], {"train_reference": ["gpu_model"]}, RULES)


# --- What is known --------------------------------------------------------------------


def test_the_resources_snakemake_adds_by_itself_are_known():
    """--default-resources (a profile's default-resources) starts from Snakemake's full
    defaults; without it, the bare ones."""
    for mode in ("full", "bare"):
        assert set(Resources.default(mode)) <= KNOWN_RESOURCES, mode
    parsed = Resources.parse(["mem_mb=4000"], allow_expressions=True, defaults="full")
    assert set(parsed) <= KNOWN_RESOURCES
    assert resource_problems(parsed, {}, RULES) == []


@pytest.mark.parametrize(
    "profile", sorted((REPO / "profiles").glob("*/config.yaml")), ids=lambda p: p.parent.name
)
def test_what_the_shipped_profiles_give_is_known(profile):
    """(Their commented examples, uncommented: tests/workflow/test_profile_resources.py.)"""
    settings = yaml.safe_load(profile.read_text())
    default, per_rule = settings.get("default-resources"), settings.get("set-resources")
    assert resource_problems(default or {}, per_rule or {}, RULES) == []


@pytest.fixture(scope="module")
def rule_resources() -> dict[str, list[str]]:
    """Each rule's resources as Snakemake parsed them, every rule defined (rules_info)."""
    return {rule["name"]: rule["resources"] for rule in rules_info()}


def test_every_resource_the_rules_declare_is_known_and_listed_as_theirs(rule_resources):
    declared = {name for names in rule_resources.values() for name in names}
    assert declared <= KNOWN_RESOURCES
    # Beside Snakemake's own (_cores, _nodes, tmpdir), exactly the rules' list.
    assert declared - {"_cores", "_nodes", "tmpdir"} == WORKFLOW_RESOURCES


def test_the_rule_names_read_from_the_files_are_the_rules_snakemake_defines(rule_resources):
    assert set(rule_resources) == RULES


def plugin_source(package) -> str:
    return "\n".join(p.read_text() for p in sorted(Path(package.__file__).parent.glob("*.py")))


def resources_read(source: str) -> set[str]:
    """Names read as job.resources.get("x"), job.resources.x, getattr(job.resources, "x"),
    "x" in job.resources, and the keys of a `for key in (...)` that .get(key) reads."""
    names = set(re.findall(r"resources\.get\(\s*[\"'](\w+)[\"']", source))
    names |= set(re.findall(r"resources\.([a-z_]+)\b(?!\s*\()", source))
    names |= set(re.findall(r"getattr\(\s*[\w.]*resources,\s*[\"'](\w+)[\"']", source))
    names |= set(re.findall(r"[\"'](\w+)[\"']\s+in\s+[\w.]*resources\b", source))
    for keys in re.findall(
        r"for key in \(([^)]*)\):\s*\n\s*value = job\.resources\.get\(key\)", source
    ):
        names |= set(re.findall(r"[\"'](\w+)[\"']", keys))
    return names


def test_the_slurm_plugins_names_are_those_the_installed_plugins_read():
    """An upgrade of snakemake-executor-plugin-slurm (or its job step plugin) that reads
    a new name fails here: add it to resources_check.py, with the version."""
    slurm = resources_read(plugin_source(snakemake_executor_plugin_slurm))
    assert slurm == SLURM_PLUGIN_RESOURCES
    jobstep = resources_read(plugin_source(snakemake_executor_plugin_slurm_jobstep))
    assert jobstep <= KNOWN_RESOURCES, jobstep - KNOWN_RESOURCES
    assert jobstep >= SLURM_JOBSTEP_RESOURCES, SLURM_JOBSTEP_RESOURCES - jobstep


def test_snakemakes_own_sized_resources_are_known_in_each_unit():
    for name in ("mem", "disk"):
        assert {name, f"{name}_mb", f"{name}_mib"} <= SNAKEMAKE_RESOURCES
    assert {"runtime", "tmpdir"} <= SNAKEMAKE_RESOURCES
