"""Benchmark atlasmap at the study's size, and write benchmarks/results.md.

    .venv/bin/python benchmarks/run_benchmark.py            # 10k, 50k, 200k query cells, 100k atlas, 30k genes
    .venv/bin/python benchmarks/run_benchmark.py --smoke    # 5k cells, minutes (run in CI)

For each query size it generates a synthetic study (benchmarks/synthetic.py,
sparse throughout), runs the real workflow on it with Snakemake (every rule's
`benchmark:` file gives wall time and peak memory), and tabulates each stage.
Ratios are measured in the same run, on the largest size: Annoy against
scanpy's default neighbour search and exact neighbours; frozen-embedding
throughput at two batch sizes; peak memory of our sparse gene alignment
against a dense zero-filled alignment.

The ratios are measured by run_benchmark_ratios.py, the report written by
run_benchmark_report.py (its fixed text in templates/results.md.tmpl).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import pandas as pd
import yaml
from bench import BENCHMARKS, REPO
from run_benchmark_ratios import (
    alignment_memory,
    comparable,
    embed_throughput,
    neighbour_ratios,
    plain_overhead,
)
from run_benchmark_report import write_results
from synthetic import Study

FULL = {"sizes": [10_000, 50_000, 200_000], "atlas": 100_000, "genes": 30_000}
SMOKE = {"sizes": [5_000], "atlas": 5_000, "genes": 3_000}


def workflow_copy(dest: Path) -> Path:
    """The workflow as it is now, copied into ``dest``; a copy left there by an earlier
    run is replaced (kept, a rerun would measure that run's code), its results kept:
    Snakemake reruns what the code changed."""
    dest.mkdir(parents=True, exist_ok=True)
    # A Snakefile at the top, left by a copy from before workflow/Snakefile, would
    # be the one Snakemake runs.
    (dest / "Snakefile").unlink(missing_ok=True)
    for name in ("config", "workflow", "profiles"):
        src = REPO / name
        target = dest / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    return dest


def config_for(
    deposit: Path, names: dict, atlas: Path, model: Path | None, surgery_epochs: int | None = 2
) -> dict:
    """The benchmark's config. Surgery trains ``surgery_epochs`` (2: a shortcut that
    measures the cost of everything else); None leaves the workflow's default (10)."""
    config = {
        "seed": 0,
        "queries": {
            "bench": {
                "source": {"dir": str(deposit), "files": names},
                "rename": {"patients": "Sample_ID"},
                "truth": "author_cell_type",
            }
        },
        "reference": {
            "atlas": str(atlas),
            "model": str(model) if model else None,
            # A few epochs are enough to measure cost; accuracy is not the point here.
            "training": {
                "n_top_genes": 2000,
                "scvi_max_epochs": 2,
                "scanvi_max_epochs": 1,
                "early_stopping": False,
            },
        },
    }
    if surgery_epochs is not None:
        config["mapping"] = {"surgery": {"max_epochs": surgery_epochs}}
    return config


def run_workflow(workdir: Path, config: dict) -> float:
    (workdir / "config" / "bench.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/bench.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"workflow failed in {workdir}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return time.perf_counter() - start


def stage_table(workdir: Path, cells: int) -> pd.DataFrame:
    rows = []
    for tsv in sorted((workdir / "logs").glob("*/*.benchmark.tsv")):
        bench = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "cells": cells,
                "rule": tsv.parent.name,
                "job": tsv.name.removesuffix(".benchmark.tsv"),
                "seconds": float(bench["s"].iloc[0]),
                "max_rss_mb": float(bench["max_rss"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


# Snakemake's log of a run: a job's header (a checkpoint's too), its fields, its end,
# and the time stamps.
LOG_PATTERNS = {
    "time": re.compile(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]"),
    "job": re.compile(r"(?:local)?(?:rule|checkpoint) (\w+):"),
    "field": re.compile(r"(input|output|benchmark|jobid|threads|wildcards): (.*)"),
    "end": re.compile(r"Finished job(?:id:)? (\d+)"),
}


def log_jobs(workdir: Path) -> pd.DataFrame:
    """Each job of the latest Snakemake run in ``workdir`` (from Snakemake's own log, to
    the second): rule, wildcards, threads, the files it read and wrote, its benchmark
    file, its start and end (seconds from the first start)."""
    import datetime

    log_file = max((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    jobs, ends, now, current = {}, {}, None, {}
    for line in log_file.read_text().splitlines():
        line = line.strip()
        if match := LOG_PATTERNS["time"].fullmatch(line):
            now = datetime.datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y")
        elif match := LOG_PATTERNS["job"].fullmatch(line):
            current = {"rule": match[1], "threads": "1", "start": now}
            current.update(dict.fromkeys(("wildcards", "input", "output", "benchmark"), ""))
        elif match := LOG_PATTERNS["field"].fullmatch(line):
            current[match[1]] = match[2]
            if match[1] == "jobid":
                jobs[int(match[2])] = current
        elif match := LOG_PATTERNS["end"].match(line):
            ends[int(match[1])] = now
    table = pd.DataFrame(
        [{**job, "jobid": i, "end": ends[i]} for i, job in jobs.items() if i in ends]
    )
    table = table[table["rule"] != "all"].reset_index(drop=True)
    begin = table["start"].min()
    table["start_s"] = (table["start"] - begin).dt.total_seconds()
    table["end_s"] = (table["end"] - begin).dt.total_seconds()
    table["threads"] = table["threads"].astype(int)
    return table.drop(columns=["start", "end"])


def packing(table: pd.DataFrame, cores: int = 2) -> dict:
    """The run's wall from the log, and how full the cores were: the threads jobs
    claimed, summed over their run time, against ``cores`` x wall."""
    wall = float(table["end_s"].max())
    claimed = float(((table["end_s"] - table["start_s"]) * table["threads"]).sum())
    return {
        "wall_seconds": wall,
        "claimed_core_seconds": round(claimed, 1),
        "cores_claimed_share": round(claimed / (cores * wall), 3) if wall else None,
    }


def job_timeline(workdir: Path, cores: int = 2) -> tuple[pd.DataFrame, dict]:
    """When each job of the latest Snakemake run in ``workdir`` started and finished, and
    how full the cores were (:func:`packing`)."""
    table = log_jobs(workdir).sort_values(["start_s", "end_s"])
    columns = ["rule", "wildcards", "threads", "start_s", "end_s"]
    return table[columns].reset_index(drop=True), packing(table, cores)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default benchmarks/runs/<full|smoke>)"
    )
    parser.add_argument("--results", type=Path, default=None, help="results file to write")
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="rewrite the results file from an earlier run's folder and .json, running nothing",
    )
    parser.add_argument(
        "--neighbours-only",
        action="store_true",
        help="as --tables-only, but first measure the neighbour ratios again (after a change "
        "of the neighbour defaults), on the earlier run's largest mapped latent",
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    kind = "smoke" if args.smoke else "full"
    out = args.out or bench.RUNS / kind
    results = args.results or BENCHMARKS / ("results_smoke.md" if args.smoke else "results.md")
    if args.tables_only or args.neighbours_only:
        saved = json.loads(results.with_suffix(".json").read_text())
        if args.neighbours_only:
            largest = out / f"run_{plan['sizes'][-1]}" / "results" / "bench" / "embed"
            before = saved["ratios"]["neighbours"]
            now = neighbour_ratios(largest / "mapped.h5ad")
            # The earlier measurements of the same latent, newest first: those of the same
            # Annoy settings, timed the same way, count with this one; others are kept apart.
            measured = [
                {k: v for k, v in before.items() if k not in ("earlier", "other_settings")},
                *before.get("earlier", []),
            ]
            same = [m for m in measured if comparable(m, now)]
            saved["ratios"]["neighbours"] = {
                **now,
                "measured_again": time.strftime("%Y-%m-%d %H:%M"),
                "earlier": same,
                "other_settings": [m for m in measured if m not in same]
                + before.get("other_settings", []),
            }
            results.with_suffix(".json").write_text(json.dumps(saved, indent=2))
        stages = pd.concat(
            [stage_table(out / f"run_{cells}", cells) for cells in plan["sizes"]], ignore_index=True
        )
        walls = {int(c): w for c, w in saved["walls"].items()}
        write_results(results, kind, plan, stages, walls, saved["ratios"], saved["total_seconds"])
        print(results.read_text())
        return
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    study = Study(n_genes=plan["genes"], seed=0)
    atlas = study.write_atlas(out / "atlas.h5ad", plan["atlas"])
    stages, walls, model = [], {}, None
    for cells in plan["sizes"]:
        deposit = out / f"query_{cells}"
        names = study.write_query(deposit, cells)
        workdir = workflow_copy(out / f"run_{cells}")
        walls[cells] = run_workflow(workdir, config_for(deposit, names, atlas, model))
        stages.append(stage_table(workdir, cells))
        if model is None:  # train once, reuse for the larger sizes
            model = workdir / "results" / "references" / "default" / "scanvi_model"
        print(f"{cells} cells: workflow {walls[cells]:.0f} s", flush=True)
    stages = pd.concat(stages, ignore_index=True)
    largest = out / f"run_{plan['sizes'][-1]}"
    subset = largest / "results" / "bench" / "query" / "subset.h5ad"
    ratios = {
        "workflow_overhead": plain_overhead(
            largest, walls[plan["sizes"][-1]], out / f"plain_{plan['sizes'][-1]}"
        ),
        "neighbours": neighbour_ratios(largest / "results" / "bench" / "embed" / "mapped.h5ad"),
        "embed_throughput": embed_throughput(subset, atlas, model),
        "gene_alignment_memory": alignment_memory(subset, model),
    }
    total = time.perf_counter() - started
    write_results(results, kind, plan, stages, walls, ratios, total)
    (results.with_suffix(".json")).write_text(
        json.dumps({"walls": walls, "ratios": ratios, "total_seconds": total}, indent=2)
    )
    print(results.read_text())


if __name__ == "__main__":
    main()
    print(
        f"peak RSS of the benchmark driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
