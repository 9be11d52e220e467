"""GPUs only where they pay, from Snakemake's own plan (dry runs).

Training (train_reference, surgery-mode map_query) asks for a GPU; a frozen
embedding (embed-mode map_query, embed_reference) does not, unless
mapping.accelerator says gpu;
with mapping.accelerator: cpu no job does. On SLURM the profile routes by that
request (profiles/slurm/partitions.yaml), so it must survive the profile.
"""

import re

import pytest
from conftest import copy_workflow, run_snakemake, write_small_config

pytestmark = pytest.mark.workflow

JOBS = {
    ("train_reference", ""),
    ("embed_reference", ""),
    ("map_query", "query=demo, mode=surgery"),
    ("map_query", "query=demo, mode=embed"),
}


def planned_gpus(workdir, *args) -> dict[tuple[str, str], int]:
    """(rule, wildcards) -> the gpu resource of each planned torch job."""
    out = run_snakemake(workdir, "-n", *args).stdout
    gpus, rule, wildcards = {}, None, ""
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, wildcards = match[1], ""
        elif match := re.match(r"^\s+wildcards: (.*)$", line):
            wildcards = match[1]
        elif rule and (match := re.match(r"^\s+resources: (.*)$", line)):
            resources = dict(item.split("=", 1) for item in match[1].split(", "))
            if "gpu" in resources:
                gpus[(rule, wildcards)] = int(resources["gpu"])
    return gpus


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("gpu_requests"))


def test_through_the_slurm_profile_training_asks_for_a_gpu_and_embedding_does_not(workdir):
    # The user's command; no conda here, so plan with another deployment method.
    gpus = planned_gpus(workdir, "--profile", "profiles/slurm", "--sdm", "env-modules")
    assert gpus == {
        ("train_reference", ""): 1,
        ("embed_reference", ""): 0,
        ("map_query", "query=demo, mode=surgery"): 1,
        ("map_query", "query=demo, mode=embed"): 0,
    }


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [("gpu", {job: 1 for job in JOBS}), ("cpu", {job: 0 for job in JOBS})],
)
def test_mapping_accelerator_decides_the_requests(workdir, accelerator, expected):
    config = write_small_config(
        workdir,
        f"{accelerator}.yaml",
        lambda c: c["mapping"].update(accelerator=accelerator),
    )
    assert planned_gpus(workdir, "--configfile", config) == expected
