"""A misspelt resource in a profile stops the plan, named; the shipped profiles plan.

Snakemake passes on any resource name under a profile's default-resources or
set-resources, and the SLURM plugin ignores those it does not read: `slurm_acount`
would plan silently and the plugin guess an account. common.smk checks the names at
planning (atlasmap/resources_check.py); here Snakemake's own dry run, from a user's
profile, shows it.
"""

import shutil

import pytest
import yaml
from conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow

# No conda here: plan with another deployment method; the profile is what is tested.
NO_CONDA = ("--sdm", "env-modules")
PLANNED = "This was a dry-run"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("profile_resources"))


def user_profile(workdir, name, edit) -> str:
    """profiles/slurm copied to profiles/<name>, its config.yaml's text edited by ``edit``
    as a user would edit it; the profile's path for --profile."""
    profile = workdir / "profiles" / name
    shutil.rmtree(profile, ignore_errors=True)
    shutil.copytree(workdir / "profiles" / "slurm", profile)
    config = profile / "config.yaml"
    config.write_text(edit(config.read_text()))
    yaml.safe_load(config.read_text())  # still a profile Snakemake reads
    return f"profiles/{name}"


def uncommented(text: str, line: str, replacement: str) -> str:
    assert text.count(line) == 1, line
    return text.replace(line, replacement)


# The account where the profile's comment says it goes, spelt as docs/cluster.md has it...
ACCOUNT_LINE = "  # slurm_account: my_lab_account\n"
# ... and the GPU type for train_reference, as the profile's comment shows it.
GPU_MODEL_LINES = "# set-resources:\n#   train_reference:\n#     gpu_model: a100\n"


def assert_stopped_naming(result, workdir, *expected):
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    for text in expected:
        assert text in said, said
    assert PLANNED not in said
    results = workdir / "results"
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_a_misspelt_account_in_the_profile_stops_the_plan_naming_it(workdir):
    profile = user_profile(
        workdir,
        "typo",
        lambda text: uncommented(text, ACCOUNT_LINE, "  slurm_acount: my_lab\n"),
    )
    result = run_snakemake(workdir, "-n", "--profile", profile, *NO_CONDA, check=False)
    assert_stopped_naming(
        result,
        workdir,
        "default-resources: unknown resource 'slurm_acount' (did you mean 'slurm_account'?)",
    )


def test_a_misspelt_set_resource_or_rule_stops_the_plan_naming_it(workdir):
    set_resources = "set-resources:\n  train_reference:\n    gpu_modle: a100\n"
    set_resources += "  train_referenc:\n    runtime: 600\n"
    profile = user_profile(
        workdir,
        "typo_rule",
        lambda text: uncommented(text, GPU_MODEL_LINES, set_resources),
    )
    result = run_snakemake(workdir, "-n", "--profile", profile, *NO_CONDA, check=False)
    assert_stopped_naming(
        result,
        workdir,
        "set-resources: train_reference: unknown resource 'gpu_modle' (did you mean 'gpu_model'?)",
        "set-resources: train_referenc: no rule of that name (did you mean 'train_reference'?)",
    )


def test_a_misspelt_resource_on_the_command_line_stops_a_local_plan_too(workdir):
    result = run_snakemake(workdir, "-n", "--default-resources", "slurm_acount=my_lab", check=False)
    assert_stopped_naming(result, workdir, "unknown resource 'slurm_acount'")


def test_the_slurm_profile_filled_in_as_its_comments_say_plans(workdir):
    profile = user_profile(
        workdir,
        "filled_in",
        lambda text: uncommented(
            uncommented(text, ACCOUNT_LINE, "  slurm_account: my_lab\n"),
            GPU_MODEL_LINES,
            # obtain_atlas: a rule only a fetched atlas defines, not the demo's config.
            "set-resources:\n  train_reference:\n    gpu_model: a100\n"
            "  obtain_atlas:\n    runtime: 30\n",
        ),
    )
    result = run_snakemake(workdir, "-n", "--profile", profile, *NO_CONDA)
    assert PLANNED in result.stdout


@pytest.mark.parametrize(
    "args",
    [("--profile", "profiles/slurm", *NO_CONDA), ("--profile", "profiles/local")],
    ids=["slurm", "local"],
)
def test_the_shipped_profiles_plan(workdir, args):
    result = run_snakemake(workdir, "-n", *args)
    assert PLANNED in result.stdout
