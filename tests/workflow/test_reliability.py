"""Reliability: interrupted runs, the lock, config-driven reruns, reproducible numbers.

Each compares against `small_run` (conftest): the same small demo, run once
without interruption.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import copy_workflow, run_snakemake, write_small_config

pytestmark = pytest.mark.workflow
MODES = ("surgery", "embed")
# The demo's queries (config/queries.tsv): a 10x deposit and an h5ad.
QUERIES = ("demo", "demo_h5ad")
COMPARE = {("compare_modes", f"query={query}") for query in QUERIES}
SUMMARY = {("summarize_queries", "")}


def planned_jobs(workdir, config) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job Snakemake's dry run would run."""
    out = run_snakemake(workdir, "-n", "--configfile", config).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match[1]
            jobs.add((rule, ""))
        elif rule and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs.discard((rule, ""))
            jobs.add((rule, match[1]))
    return {job for job in jobs if job[0] != "all"}


def mode_jobs(rules, mode, queries=QUERIES):
    return {(rule, f"query={query}, mode={mode}") for rule in rules for query in queries}


def test_nothing_changed_nothing_runs(small_run):
    assert planned_jobs(small_run, "config/small.yaml") == set()


def reversed_keys(value):
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def test_a_config_saved_with_its_keys_in_another_order_reruns_nothing(small_run):
    import yaml

    config = yaml.safe_load((small_run / "config" / "small.yaml").read_text())
    text = yaml.safe_dump(reversed_keys(config), sort_keys=False)
    assert text != yaml.safe_dump(config, sort_keys=False)
    (small_run / "config" / "reordered.yaml").write_text(text)
    assert planned_jobs(small_run, "config/reordered.yaml") == set()


def test_a_neighbour_setting_reruns_the_layouts_and_figures_only(small_run):
    config = write_small_config(
        small_run, "neighbours.yaml", lambda c: c.update(neighbors={"n_neighbors": 12})
    )
    after = ["neighbors_umap", "plot_mapping"]
    expected = (
        mode_jobs(after, "surgery")
        | mode_jobs(after, "embed")
        | {("layout_reference", "reference=default")}
        | COMPARE
    )
    # The summary reads none of what they write.
    assert planned_jobs(small_run, config) == expected


def test_more_surgery_epochs_rerun_only_the_surgery_mapping_and_what_follows(small_run):
    config = write_small_config(
        small_run, "epochs.yaml", lambda c: c["mapping"]["surgery"].update(max_epochs=5)
    )
    expected = mode_jobs(["map_query", *AFTER_THE_CALLS], "surgery") | COMPARE | SUMMARY
    assert planned_jobs(small_run, config) == expected


# What follows a change of the calls: never the mapping, the reference's latent or layout.
AFTER_THE_CALLS = [
    "call_celltypes",
    "neighbors_umap",
    "plot_mapping",
    "evaluate_mapping",
    "plot_confusion",
]


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["mapping"].update(unknown_threshold=0.45),
        lambda c: c["mapping"].update(calls={"method": "consensus"}),
        lambda c: c["mapping"].update(calls={"novelty_false_positive_rate": 0.1}),
    ],
    ids=["threshold", "method", "novelty"],
)
def test_a_calls_setting_reruns_only_the_calls_and_what_follows(small_run, edit):
    config = write_small_config(small_run, "calls.yaml", edit)
    expected = (
        mode_jobs(AFTER_THE_CALLS, "surgery")
        | mode_jobs(AFTER_THE_CALLS, "embed")
        | {("fit_calls", "reference=default")}
        | COMPARE
        | SUMMARY
    )
    assert planned_jobs(small_run, config) == expected


def test_a_plot_setting_reruns_only_the_figures(small_run):
    config = write_small_config(small_run, "dpi.yaml", lambda c: c.update(plots={"dpi": 150}))
    expected = (
        mode_jobs(["plot_mapping", "plot_confusion"], "surgery")
        | mode_jobs(["plot_mapping", "plot_confusion"], "embed")
        | COMPARE
        | SUMMARY
    )
    assert planned_jobs(small_run, config) == expected


def test_a_sample_added_to_the_subset_reruns_from_the_subset_on(small_run):
    sheet = (small_run / "config" / "queries.tsv").read_text()
    assert "\tPA01,PA02\t" in sheet
    (small_run / "config" / "more_samples.tsv").write_text(
        sheet.replace("\tPA01,PA02\t", "\tPA01,PA02,PA03\t")
    )
    config = write_small_config(
        small_run, "more_samples.yaml", lambda c: c.update(queries="config/more_samples.tsv")
    )
    jobs = planned_jobs(small_run, config)
    # Only the query whose row changed, from its subset on; and the summary.
    assert {query for _, wildcards in jobs for query in re.findall(r"query=(\w+)", wildcards)} == {
        "demo"
    }
    assert {rule for rule, _ in jobs} == {
        "subset_query",
        "predict_baseline",
        "map_query",
        "call_celltypes",
        "evaluate_mapping",
        "neighbors_umap",
        "plot_mapping",
        "plot_confusion",
        "compare_modes",
        "summarize_queries",
    }


def assert_same_results(a, b):
    for mode, query in ((mode, query) for mode in MODES for query in QUERIES):
        left = pd.read_csv(a / "results" / query / mode / "predictions.tsv", sep="\t")
        right = pd.read_csv(b / "results" / query / mode / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(left, right)
        metrics = [
            json.loads((x / "results" / query / mode / "metrics.json").read_text()) for x in (a, b)
        ]
        assert metrics[0] == metrics[1]


def run_and_kill(workdir, args, log, pattern, timeout=300):
    """Start the workflow and SIGKILL it (all of it) once ``pattern`` shows in ``log``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not (log.exists() and pattern in log.read_text()):
            assert process.poll() is None, f"the run ended before {pattern!r} showed in {log}"
            assert time.monotonic() < deadline, f"{pattern!r} never showed in {log}"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def resume(workdir, config):
    """What a user does after a crash: rerun, unlocking and redoing incomplete jobs as asked."""
    result = run_snakemake(workdir, "--configfile", config, check=False)
    if result.returncode != 0:
        text = result.stdout + result.stderr
        assert "--unlock" in text or "--rerun-incomplete" in text, text[-3000:]
        # A killed run leaves its lock and its jobs' incomplete files, and Snakemake may
        # name either first (which, depends on what was running): unlock, then redo them.
        run_snakemake(workdir, "--unlock", "--configfile", config)
        run_snakemake(workdir, "--rerun-incomplete", "--configfile", config)


def test_killed_during_training_and_during_surgery_then_rerun_equals_an_uninterrupted_run(
    small_run, tmp_path
):
    """Also the reproducibility check: a second run from scratch with the same seed,
    on the CPU, gives identical predictions.tsv and metrics.json."""
    workdir = copy_workflow(tmp_path / "killed")
    config = write_small_config(workdir)
    training_log = workdir / "logs/train_reference/default.log"
    run_and_kill(workdir, ["--configfile", config], training_log, "scVI epoch 3/")
    assert not (workdir / "results/references/default/scanvi_model").exists()
    # The crash left Snakemake's lock: unlock, rerun, and kill it again during surgery.
    run_snakemake(workdir, "--unlock", "--configfile", config)
    surgery_log = workdir / "logs/map_query/demo_surgery.log"
    # Surgery starts after the reference model and its calibration models are trained.
    run_and_kill(
        workdir,
        ["--rerun-incomplete", "--configfile", config],
        surgery_log,
        "surgery epoch 2/",
        timeout=900,
    )
    assert not (workdir / "results/demo/surgery/embedded.h5ad").exists()
    resume(workdir, config)
    assert_same_results(small_run, workdir)


def test_a_second_run_in_the_same_folder_is_refused_and_nothing_is_lost(tmp_path):
    workdir = copy_workflow(tmp_path / "locked")
    config = write_small_config(workdir)
    first = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", config],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        training_log = workdir / "logs" / "train_reference" / "default.log"
        while not (training_log.exists() and "scVI epoch" in training_log.read_text()):
            assert time.monotonic() < deadline and first.poll() is None, (
                "the first run never locked"
            )
            time.sleep(0.1)
        second = run_snakemake(workdir, "--configfile", config, check=False)
        assert second.returncode != 0
        # Snakemake checks for incomplete outputs before it takes the lock: once the
        # running job has created its output folder, the refusal names that instead.
        said = second.stdout + second.stderr
        assert "cannot be locked" in said or "Incomplete files" in said, said[-2000:]
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    # The first run was not disturbed: it finished, and a plain rerun has nothing to do.
    for mode in MODES:
        for query in QUERIES:
            assert (workdir / "results" / query / mode / "mapped.h5ad").exists()
    assert "Nothing to be done" in run_snakemake(workdir, "-n", "--configfile", config).stdout
