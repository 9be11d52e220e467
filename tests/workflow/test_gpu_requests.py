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

# The demo's two queries (config/queries.tsv) on its one reference, named default.
QUERIES = ("demo", "demo_h5ad")
REFERENCE = "reference=default"


def per_query(rule, mode):
    return {(rule, f"query={query}, mode={mode}") for query in QUERIES}


JOBS = {
    ("train_reference", REFERENCE),
    ("embed_reference", REFERENCE),
    *per_query("map_query", "surgery"),
    *per_query("map_query", "embed"),
}


def planned_jobs(workdir, *args) -> dict[tuple[str, str], dict]:
    """(rule, wildcards) -> the threads and resources Snakemake plans each job with."""
    out = run_snakemake(workdir, "-n", *args).stdout
    jobs, job = {}, None
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            # Snakemake prints the wildcards after the job's name, threads only above 1
            # and priority only above 0.
            job = {"rule": match[1], "wildcards": "", "threads": 1, "priority": 0, "resources": {}}
            jobs[id(job)] = job
        elif job and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            job["wildcards"] = match[1]
        elif job and (match := re.match(r"^\s+(threads|priority): (\d+)$", line)):
            job[match[1]] = int(match[2])
        elif job and (match := re.match(r"^\s+resources: (.*)$", line)):
            job["resources"] = dict(item.split("=", 1) for item in match[1].split(", "))
    return {(job["rule"], job["wildcards"]): job for job in jobs.values()}


def planned_gpus(workdir, *args) -> dict[tuple[str, str], int]:
    """(rule, wildcards) -> the gpu resource of each planned torch job."""
    return {
        key: int(job["resources"]["gpu"])
        for key, job in planned_jobs(workdir, *args).items()
        if "gpu" in job["resources"]
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("gpu_requests"))


def test_through_the_slurm_profile_training_asks_for_a_gpu_and_embedding_does_not(workdir):
    # The user's command; no conda here, so plan with another deployment method.
    gpus = planned_gpus(workdir, "--profile", "profiles/slurm", "--sdm", "env-modules")
    assert gpus == {
        ("train_reference", REFERENCE): 1,
        ("embed_reference", REFERENCE): 0,
        **{job: 1 for job in per_query("map_query", "surgery")},
        **{job: 0 for job in per_query("map_query", "embed")},
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


SIDE_BY_SIDE = {
    ("embed_reference", REFERENCE): 2,
    ("fit_calls", REFERENCE): 2,
    **{job: 4 for job in per_query("map_query", "surgery")},
    **{job: 2 for job in per_query("call_celltypes", "surgery")},
    **{job: 2 for job in per_query("call_celltypes", "embed")},
}


@pytest.mark.parametrize("cores", [2, 4, 16])
def test_run_locally_a_job_that_others_can_run_beside_claims_at_most_half_the_cores(workdir, cores):
    """On 2 cores a 2-thread job waits until every other job is done (Snakemake keeps no
    cores free for it): locally, those jobs claim at most half the cores. Training the
    reference, which nothing runs beside, still takes what it asks for."""
    jobs = planned_jobs(workdir, "--cores", str(cores))
    planned = {key: job["threads"] for key, job in jobs.items()}
    assert {job: planned[job] for job in SIDE_BY_SIDE} == {
        job: min(wanted, cores // 2) for job, wanted in SIDE_BY_SIDE.items()
    }
    assert planned[("train_reference", REFERENCE)] == min(4, cores)
    assert all(planned[job] == 1 for job in per_query("map_query", "embed"))
    # Surgery's chain, the longest, goes first when one of its jobs and another are ready
    # and only one fits: its mapping, calls, neighbours and UMAP, figures.
    prioritised = {key for key, job in jobs.items() if job["priority"] > 0}
    assert prioritised == {
        job
        for rule in ("map_query", "call_celltypes", "neighbors_umap", "plot_mapping")
        for job in per_query(rule, "surgery")
    }
