"""`snakemake --profile profiles/slurm` on a real one-node SLURM.

setup_slurm.sh starts SLURM (partitions cpu and gpu, one fake GPU). The demo,
made small, runs through a copy of the repository's profile that differs only
where this machine must: no conda (no channel is reachable here; the venv runs
the jobs), job status by squeue (no slurmdbd), small memory requests and two
threads (one 2-core node). What is asserted comes from SLURM's own records
(`scontrol show job`): the training jobs (train_reference, surgery-mode
map_query) ran in the gpu partition with a GPU, every other cluster job
(embed-mode map_query included) in cpu without one, as the plugin chose from the
profile's partitions.yaml; the fetching rules ran on the head node; and the
results equal a local run's.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow

pytestmark = pytest.mark.slurm

HERE = Path(__file__).parent
# The jobs that ask for a GPU (workflow/rules/common.smk, gpu_request): (rule, wildcards).
GPU_JOBS = {("train_reference", ""), ("map_query", "demo_surgery")}
LOCAL_RULES = {"download_query", "obtain_atlas", "fetch_model_package"}
SMALL = {
    "demo": {"reference_cells": 1200, "query_cells": 400, "genes": 400},
    "training": {"n_top_genes": 300, "scvi_max_epochs": 8, "scanvi_max_epochs": 4},
    "surgery": {"max_epochs": 3},
}


def small_config(workdir: Path) -> str:
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["demo"].update(SMALL["demo"])
    config["reference"]["training"].update(SMALL["training"])
    config["mapping"]["surgery"].update(SMALL["surgery"])
    (workdir / "config" / "small.yaml").write_text(yaml.safe_dump(config))
    return "config/small.yaml"


def adapted_profile(workdir: Path) -> Path:
    """profiles/slurm as shipped, adapted only where this test machine differs."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for key in ("software-deployment-method", "conda-prefix", "conda-frontend"):
        profile.pop(key)
    profile.update(
        {
            "jobs": 4,
            "max-threads": 2,
            "latency-wait": 5,
            "retries": 0,
            "keep-going": False,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-keep-successful-logs": True,
        }
    )
    profile["default-resources"].update(mem_mb=1500, runtime=20)
    for rule in (
        "train_reference",
        "map_query",
        "load_query",
        "subset_query",
        "generate_demo",
        "predict_baseline",
        "neighbors_umap",
        "plot_mapping",
        "compare_modes",
    ):
        profile.setdefault("set-resources", {}).setdefault(rule, {})["mem_mb"] = 3000
    folder = workdir / "test-profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    # setup_slurm.sh's partitions are the shipped ones: cpu, and gpu with one GPU.
    shutil.copy2(REPO / "profiles" / "slurm" / "partitions.yaml", folder / "partitions.yaml")
    return folder


@pytest.fixture(scope="module")
def slurm():
    setup = subprocess.run(
        ["bash", str(HERE / "setup_slurm.sh")], capture_output=True, text=True, timeout=600
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    yield
    subprocess.run(["bash", str(HERE / "teardown_slurm.sh")], timeout=60)


def run_snakemake(workdir, *args, timeout=900):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    # INT, not TERM, stops a hung Snakemake; -k kills it if that fails too.
    command = [
        "timeout",
        "-s",
        "INT",
        "-k",
        "30",
        str(timeout),
        sys.executable,
        "-m",
        "snakemake",
        *args,
    ]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result


def slurm_jobs() -> list[dict]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30
    ).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields:
            jobs.append(fields)
    return jobs


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    """The same small demo on SLURM through the profile, and locally."""
    cluster = copy_workflow(tmp_path_factory.mktemp("slurm"))
    config = small_config(cluster)
    profile = adapted_profile(cluster)
    before = {job["JobId"] for job in slurm_jobs()}
    run_snakemake(cluster, "--profile", str(profile), "--configfile", config)
    jobs = [
        job
        for job in slurm_jobs()
        if job["JobId"] not in before and job.get("WorkDir") == str(cluster)
    ]
    local = copy_workflow(tmp_path_factory.mktemp("local"))
    run_snakemake(local, "--cores", "2", "--configfile", small_config(local))
    return cluster, local, jobs


def rule_of(job: dict) -> tuple[str, str]:
    """(rule, wildcard values joined by _) from the comment the plugin gives each job."""
    match = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", job.get("Comment", ""))
    assert match, f"SLURM job {job['JobId']} has no rule in its comment: {job.get('Comment')}"
    return match[1], match[2] or ""


def test_training_ran_on_the_gpu_partition_with_a_gpu_and_the_rest_on_cpu(runs):
    _, _, jobs = runs
    assert jobs, "no SLURM job of this run was recorded"
    by_job: dict[tuple[str, str], list[dict]] = {}
    for job in jobs:
        by_job.setdefault(rule_of(job), []).append(job)
    by_rule = {rule for rule, _ in by_job}
    assert set(by_job) >= GPU_JOBS | {("map_query", "demo_embed")}, by_job.keys()
    assert not LOCAL_RULES & set(by_rule), "fetching rules must run on the head node"
    assert {"generate_demo", "load_query", "subset_query", "neighbors_umap", "plot_mapping"} <= (
        by_rule
    )
    for key, key_jobs in by_job.items():
        for job in key_jobs:
            assert job["JobState"] == "COMPLETED", (key, job["JobState"])
            gpus = "gpu" in job.get("TresPerJob", "") or "gres/gpu" in job.get("TRES", "")
            if key in GPU_JOBS:
                assert job["Partition"] == "gpu" and gpus, (
                    key,
                    job["Partition"],
                    job.get("TresPerJob"),
                )
            else:
                assert job["Partition"] == "cpu" and not gpus, (
                    key,
                    job["Partition"],
                    job.get("TresPerJob"),
                )


def test_slurm_results_equal_a_local_run(runs):
    cluster, local, _ = runs
    for mode in ("surgery", "embed"):
        a = pd.read_csv(cluster / "results" / "demo" / mode / "predictions.tsv", sep="\t")
        b = pd.read_csv(local / "results" / "demo" / mode / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(a, b)
        metrics_a = json.loads((cluster / "results" / "demo" / mode / "metrics.json").read_text())
        metrics_b = json.loads((local / "results" / "demo" / mode / "metrics.json").read_text())
        assert metrics_a == metrics_b
    assert list((cluster / "logs" / "slurm").iterdir()), "SLURM job logs go to logs/slurm"


def test_make_slurm_profile_lets_users_type_profile_slurm(tmp_path):
    """`make slurm-profile` links the profile where Snakemake looks for one by name."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    subprocess.run(
        ["make", "-s", "slurm-profile", f"SNAKEMAKE_PROFILES={tmp_path / 'xdg' / 'snakemake'}"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "xdg" / "snakemake" / "slurm").resolve() == (
        REPO / "profiles" / "slurm"
    ).resolve()
    workdir = copy_workflow(tmp_path / "run")
    # No conda here: plan with another deployment method; the profile is what is tested.
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--sdm", "env-modules"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The profile alone: no workflow profile (profiles/default) overrides its settings.
    assert "Using profile slurm for" in result.stdout + result.stderr
    assert "rule train_reference:" in result.stdout
