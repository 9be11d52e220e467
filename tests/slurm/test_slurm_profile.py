"""`snakemake --profile slurm`, as users type it, on a real one-node SLURM.

setup_slurm.sh starts SLURM as a site runs it (partitions cpu and gpu, one fake
GPU, accounting in slurmdbd, associations and memory requests enforced).
`make slurm-profile` installs the shipped profile under the test's
XDG_CONFIG_HOME and the small demo runs with `--profile slurm`; the command
line adds only what this machine needs (THIS_CLUSTER, each with its reason)
and one job that runs out of memory on its first attempt (FAIL_ONCE). What is
asserted comes from SLURM's own records (`scontrol show job`, `sacct`): the
training jobs (train_reference, surgery-mode map_query) ran in the gpu
partition with a GPU, every other cluster job (embed-mode map_query included)
in cpu without one, as the plugin chose from the profile's partitions.yaml;
the job killed for memory was retried, with more; the fetching rules ran on
the head node; and the results equal a local run's. Bad site settings (a
partition or an account the cluster does not have) stop at once with SLURM's
or the plugin's message naming them.
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
# The demo maps two queries (config/queries.tsv) onto one reference, named default.
GPU_JOBS = {
    ("train_reference", "default"),
    ("map_query", "demo_surgery"),
    ("map_query", "demo_h5ad_surgery"),
}
LOCAL_RULES = {"download_query", "obtain_atlas", "fetch_model_package"}
SMALL = {
    "demo": {"reference_cells": 1200, "query_cells": 400, "genes": 400},
    "training": {"n_top_genes": 300, "scvi_max_epochs": 8, "scanvi_max_epochs": 4},
    "surgery": {"max_epochs": 3},
}
# What this test machine needs beyond the user's command, and why.
THIS_CLUSTER = [
    # No conda channel is reachable here: the jobs run in the venv instead.
    "--sdm",
    "env-modules",
    # The one node has 2 CPUs; train_reference asks for 4.
    "--max-threads",
    "2",
    # Jobs here take seconds, not the hours the profile's 20 s first wait suits.
    "--slurm-init-seconds-before-status-checks",
    "2",
]
# subset_query asks for 64 MB on its first attempt (less than Python itself),
# so SLURM kills it for memory; the profile's retry asks again with 3000 MB.
FAILING_RULE = "subset_query"
FAIL_ONCE = ["--set-resources", f"{FAILING_RULE}:mem_mb=64 if attempt == 1 else 3000"]


# The small demo's queries hold about 100 cells of each of two samples: one shard each.
SCATTER = {"by": "sample", "max_cells": 150}


def small_config(workdir: Path, scatter: dict | None = None) -> str:
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["demo"].update(SMALL["demo"])
    config["reference"]["training"].update(SMALL["training"])
    config["mapping"]["surgery"].update(SMALL["surgery"])
    name = "small.yaml"
    if scatter:
        config["mapping"]["scatter"] = scatter
        name = "scattered.yaml"
    (workdir / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


@pytest.fixture(scope="module")
def slurm():
    setup = subprocess.run(
        ["bash", str(HERE / "setup_slurm.sh")], capture_output=True, text=True, timeout=600
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    yield
    subprocess.run(["bash", str(HERE / "teardown_slurm.sh")], timeout=60)


def user_env(xdg: Path) -> dict:
    """The environment of a user whose Snakemake config folder is ``xdg``/snakemake."""
    return dict(
        os.environ,
        XDG_CONFIG_HOME=str(xdg),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )


def make_slurm_profile(xdg: Path) -> dict:
    """`make slurm-profile` for a user whose config folder is ``xdg``; their environment."""
    env = user_env(xdg)
    subprocess.run(
        ["make", "-s", "slurm-profile", f"SNAKEMAKE_PROFILES={xdg / 'snakemake'}"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return env


def edited_profile(xdg: Path, edit) -> dict:
    """A user's own copy of the profile as profile "slurm", changed by ``edit(folder)``."""
    folder = xdg / "snakemake" / "slurm"
    shutil.copytree(REPO / "profiles" / "slurm", folder)
    edit(folder)
    return user_env(xdg)


def snakemake(workdir, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Snakemake as the user runs it, stopped (INT, then KILL) should it hang."""
    env = env or user_env(workdir / "no-user-config")
    command = ["timeout", "-s", "INT", "-k", "30", str(timeout), sys.executable, "-m", "snakemake"]
    return subprocess.run([*command, *args], cwd=workdir, env=env, capture_output=True, text=True)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"{result.args}:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )
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


def sacct_jobs(job_ids) -> dict[str, dict]:
    """The accounting records (allocation lines) of ``job_ids``, by job id."""
    fields = ["JobID", "State", "ReqMem", "Partition", "Account", "Comment"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    records = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return {record["JobID"]: record for record in records}


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    """The small demo by `snakemake --profile slurm` after `make slurm-profile`, and locally."""
    env = make_slurm_profile(tmp_path_factory.mktemp("xdg"))
    cluster = copy_workflow(tmp_path_factory.mktemp("slurm"))
    config = small_config(cluster)
    before = {job["JobId"] for job in slurm_jobs()}
    result = succeeded(
        snakemake(
            cluster,
            "--profile",
            "slurm",
            "--configfile",
            config,
            *THIS_CLUSTER,
            *FAIL_ONCE,
            env=env,
        )
    )
    jobs = [
        job
        for job in slurm_jobs()
        if job["JobId"] not in before and job.get("WorkDir") == str(cluster)
    ]
    local = copy_workflow(tmp_path_factory.mktemp("local"))
    succeeded(snakemake(local, "--cores", "2", "--configfile", small_config(local)))
    return cluster, local, jobs, result.stdout + result.stderr


@pytest.fixture(scope="module")
def scattered_runs(runs, tmp_path_factory):
    """Both runs' folders mapped again in shards by sample (mapping.scatter), on SLURM and
    locally: the reference's work is reused, every mapping made again."""
    cluster, local, _, _ = runs
    env = make_slurm_profile(tmp_path_factory.mktemp("xdg_scattered"))
    copies = []
    for run in (cluster, local):
        copy = tmp_path_factory.mktemp(f"scattered_{run.name}") / "run"
        shutil.copytree(run, copy, symlinks=True)
        copies.append(copy)
    before = {job["JobId"] for job in slurm_jobs()}
    config = small_config(copies[0], SCATTER)
    # Mapped already, whole: what a user types to map them again in shards.
    again = ("--forcerun", "plan_shards")
    succeeded(
        snakemake(
            copies[0], "--profile", "slurm", "--configfile", config, *again, *THIS_CLUSTER, env=env
        )
    )
    jobs = [
        job
        for job in slurm_jobs()
        if job["JobId"] not in before and job.get("WorkDir") == str(copies[0])
    ]
    succeeded(
        snakemake(
            copies[1], "--cores", "2", "--configfile", small_config(copies[1], SCATTER), *again
        )
    )
    return copies[0], copies[1], jobs


def test_scattered_shards_ran_as_separate_jobs_of_the_right_partitions(scattered_runs):
    cluster, _, jobs = scattered_runs
    by_job = jobs_by_rule(jobs)
    for query in ("demo", "demo_h5ad"):
        shards = pd.read_csv(cluster / "results" / query / "query" / "shards.tsv", sep="\t")
        names = list(dict.fromkeys(shards["shard"]))
        assert len(names) == 2, shards
        for mode in ("surgery", "embed"):
            for rule in ("map_query_shard", "call_celltypes_shard", "project_query_shard"):
                for shard in names:
                    key = (rule, f"{query}_{mode}_{shard}")
                    assert key in by_job, (key, sorted(by_job))
            assert (("gather_mapping", f"{query}_{mode}")) in by_job
    records = sacct_jobs([job["JobId"] for job in jobs])
    for (rule, wildcards), key_jobs in by_job.items():
        for job in key_jobs:
            record = records[job["JobId"]]
            assert record["State"] == "COMPLETED", (rule, wildcards, record)
            # Surgery trains (a GPU); a frozen embedding, the calls, the projections and the
            # gathers do not.
            gpu = rule == "map_query_shard" and "_surgery_" in wildcards
            gpus = "gpu" in job.get("TresPerJob", "") or "gres/gpu" in job.get("TRES", "")
            assert record["Partition"] == ("gpu" if gpu else "cpu"), (rule, wildcards, record)
            assert gpus == gpu, (rule, wildcards, job.get("TresPerJob"))
    assert "map_query" not in {rule for rule, _ in by_job}, "no query was mapped whole"


def test_scattered_slurm_results_equal_a_local_run(runs, scattered_runs):
    cluster, local, _ = scattered_runs
    whole, _, _, _ = runs
    for query, mode in ((q, m) for q in ("demo", "demo_h5ad") for m in ("surgery", "embed")):
        out = Path("results") / query / mode
        gathered = pd.read_csv(cluster / out / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(
            gathered, pd.read_csv(local / out / "predictions.tsv", sep="\t")
        )
        if mode == "embed":  # and a frozen embedding's calls are those of the whole query
            mapped_whole = pd.read_csv(whole / out / "predictions.tsv", sep="\t")
            # Latents equal to the last float bits, which the calibration's steep steps
            # can grow to a few 1e-6 (tests/workflow/test_scatter_workflow.py).
            pd.testing.assert_frame_equal(gathered, mapped_whole, rtol=1e-4, atol=1e-5)
    summary = [pd.read_csv(run / "results" / "summary.tsv", sep="\t") for run in (cluster, local)]
    pd.testing.assert_frame_equal(*summary)


def rule_of(job: dict) -> tuple[str, str]:
    """(rule, wildcard values joined by _) from the comment the plugin gives each job."""
    match = re.match(r"rule_(\w+?)(?:_wildcards_(.*))?$", job.get("Comment", ""))
    assert match, f"SLURM job {job['JobId']} has no rule in its comment: {job.get('Comment')}"
    return match[1], match[2] or ""


def jobs_by_rule(jobs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Each (rule, wildcards)'s SLURM jobs, in submission order."""
    by_job: dict[tuple[str, str], list[dict]] = {}
    for job in sorted(jobs, key=lambda job: int(job["JobId"])):
        by_job.setdefault(rule_of(job), []).append(job)
    return by_job


def test_training_ran_on_the_gpu_partition_with_a_gpu_and_the_rest_on_cpu(runs):
    _, _, jobs, _ = runs
    assert jobs, "no SLURM job of this run was recorded"
    by_job = jobs_by_rule(jobs)
    by_rule = {rule for rule, _ in by_job}
    assert set(by_job) >= GPU_JOBS | {("map_query", "demo_embed")}, by_job.keys()
    assert ("summarize_queries", "") in by_job
    assert {"generate_demo", "load_query", "subset_query", "neighbors_umap", "plot_mapping"} <= (
        by_rule
    )
    for key, key_jobs in by_job.items():
        assert key_jobs[-1]["JobState"] == "COMPLETED", (key, key_jobs[-1]["JobState"])
        for job in key_jobs:
            gpus = "gpu" in job.get("TresPerJob", "") or "gres/gpu" in job.get("TRES", "")
            where = (key, job["Partition"], job.get("TresPerJob"))
            if key in GPU_JOBS:
                assert job["Partition"] == "gpu" and gpus, where
            else:
                assert job["Partition"] == "cpu" and not gpus, where


def test_a_job_killed_for_memory_is_retried_with_more(runs):
    _, _, jobs, _ = runs
    by_job = jobs_by_rule(jobs)
    failing = [key for key in by_job if key[0] == FAILING_RULE]  # one job per query
    assert len(failing) == 2, failing
    for key in failing:
        first, retry = by_job[key]  # one failure, one retry (the profile's retries: 1)
        records = sacct_jobs([first["JobId"], retry["JobId"]])
        assert records[first["JobId"]]["State"] in {"OUT_OF_MEMORY", "FAILED"}, records
        assert records[first["JobId"]]["ReqMem"] == "64M", records
        assert records[retry["JobId"]]["State"] == "COMPLETED", records
        assert records[retry["JobId"]]["ReqMem"] == "3000M", records
    # No other job failed: the retried ones are the only jobs run twice.
    assert [k for k, key_jobs in by_job.items() if len(key_jobs) > 1] == failing
    # Accounting has every job under an account the cluster knows (the plugin's guess).
    accounts = {record["Account"] for record in sacct_jobs([j["JobId"] for j in jobs]).values()}
    assert accounts and accounts <= {"root", "atlasmap"}, accounts


def test_fetching_rules_ran_on_the_head_node(runs):
    cluster, _, jobs, log = runs
    assert not LOCAL_RULES & {rule for rule, _ in jobs_by_rule(jobs)}
    # They ran, all the same: Snakemake ran them itself, and their outputs are there.
    assert "localrule download_query:" in log
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz", "metadata.csv.gz"):
        assert (cluster / "resources" / "queries" / "demo" / name).stat().st_size > 0


def test_slurm_results_equal_a_local_run(runs):
    cluster, local, _, _ = runs
    for query, mode in ((q, m) for q in ("demo", "demo_h5ad") for m in ("surgery", "embed")):
        out = Path("results") / query / mode
        a = pd.read_csv(cluster / out / "predictions.tsv", sep="\t")
        b = pd.read_csv(local / out / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(a, b)
        metrics_a = json.loads((cluster / out / "metrics.json").read_text())
        metrics_b = json.loads((local / out / "metrics.json").read_text())
        assert metrics_a == metrics_b
    summary = [pd.read_csv(run / "results" / "summary.tsv", sep="\t") for run in (cluster, local)]
    pd.testing.assert_frame_equal(*summary)
    assert list((cluster / "logs" / "slurm").iterdir()), "SLURM job logs go to logs/slurm"


def rename_cpu_partition(folder: Path) -> None:
    partitions = yaml.safe_load((folder / "partitions.yaml").read_text())
    partitions["partitions"]["our_cpu"] = partitions["partitions"].pop("cpu")
    (folder / "partitions.yaml").write_text(yaml.safe_dump(partitions))


def set_account(folder: Path) -> None:
    profile = yaml.safe_load((folder / "config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = "other_lab"
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))


@pytest.mark.parametrize(
    "edit, message",
    [
        (rename_cpu_partition, "invalid partition specified: our_cpu"),
        (set_account, "The given account other_lab appears to be invalid"),
    ],
    ids=["partition the cluster lacks", "account the cluster refuses"],
)
def test_a_site_setting_the_cluster_refuses_stops_the_run_with_its_message(
    slurm, tmp_path, edit, message
):
    env = edited_profile(tmp_path / "xdg", edit)
    workdir = copy_workflow(tmp_path / "run")
    result = snakemake(
        workdir,
        "--profile",
        "slurm",
        *THIS_CLUSTER,
        "--until",
        "generate_demo",
        env=env,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-4000:]  # an error, neither success nor a timeout
    assert message in log, log[-4000:]
    assert not (workdir / "resources" / "synthetic").exists()


def test_make_slurm_profile_lets_users_type_profile_slurm(tmp_path):
    """`make slurm-profile` links the profile where Snakemake looks for one by name."""
    env = make_slurm_profile(tmp_path / "xdg")
    assert (tmp_path / "xdg" / "snakemake" / "slurm").resolve() == (
        REPO / "profiles" / "slurm"
    ).resolve()
    workdir = copy_workflow(tmp_path / "run")
    # No conda here: plan with another deployment method; the profile is what is tested.
    result = succeeded(
        snakemake(workdir, "--profile", "slurm", "-n", "--sdm", "env-modules", env=env, timeout=120)
    )
    # The profile alone: no workflow profile (profiles/default) overrides its settings.
    assert "Using profile slurm for" in result.stdout + result.stderr
    assert "rule train_reference:" in result.stdout
