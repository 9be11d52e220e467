"""A synthetic 1,000,000-cell query of 50 samples on the 100k-cell atlas, from a saved
model, on this machine's 2 cores: end to end scattered by sample and, beside it, the
same query unscattered; the peak memory of every job, the wall time and its exponent
from 200k to 1M cells, and the wall time projected on a cluster of N nodes.

    .venv/bin/python benchmarks/scatter_1m.py                  # 200k and 1M, both variants
    .venv/bin/python benchmarks/scatter_1m.py --reuse          # atlas, model, queries kept
    .venv/bin/python benchmarks/scatter_1m.py --cells 20000 40000 --samples 4 --no-scatter \\
        --out /tmp/scatter_small                               # the script's check

Data, made once in the work folder (benchmarks/runs/scatter_1m): the 100k-cell atlas
and a model trained by the workflow on a 10k query, as study_200k.py makes them; each
query one h5ad written chunk by chunk (synthetic.write_query_h5ad). Every run starts
cold from that saved model in a fresh copy of the workflow. Surgery runs ``--epochs``
(2, not the default 10): a shortcut, since the aim is how every step scales.

Training the model is most of a first run at small sizes (the 10k run took 50 min in
the small check, on 2 cores shared with other work); with --reuse it takes minutes.
Disk: about 12 GB for the two queries, and about 45 GB more while a 1M run holds its
copies of the query (checked before the runs; files over 1 GiB under a run's results/
are removed once it is measured).

The report (scatter_1m.md and .json: in benchmarks/ for the default work folder, else
in the work folder) comes from each job's Snakemake benchmark file and Snakemake's log:
the jobs' times and peaks, and, from the files each job read and wrote, the wall the
same jobs would take on N nodes.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import pandas as pd
import run_benchmark
from atlasmap.contract import DEFAULT_REFERENCE, MODEL_FILE
from bench import BENCHMARKS, REPO, RUNS, say, template, write_json
from synthetic import Study, write_query_h5ad

# What the scattered run adds to the config (mapping.scatter, the scatter feature's keys):
# whole samples packed into shards of at most max_cells (--shard-cells overrides it).
SCATTER_CONFIG = {"mapping": {"scatter": {"by": "sample", "max_cells": 100_000}}}
VARIANTS = ("scattered", "unscattered")
SIZES = (200_000, 1_000_000)
TRAINING_CELLS = 10_000
# The benchmark's query, named in the config (results/<name>/, logs/<rule>/<name>_...).
QUERY_NAME = "bench"
# Rules whose name ends so run once per shard (the scatter feature's naming).
SHARD_SUFFIX = "_shard"
NODE_CORES = 2
CLUSTER_NODES = (1, 2, 4, 8, 16, 50)
LARGEST_JOB_MIB = 6 * 1024
EXPONENT_TARGET = 1.1
# Files this large under a run's results/ are removed once the run is measured: a 1M
# query is 10 GB in each of several copies (--keep-files keeps them).
LARGE_FILE_BYTES = 1 << 30
# A run's results/ holds about 4.5x its query file at its peak (the loaded and subset
# copies, each mode's embedded and mapped files: 1.84 GB for a 0.41 GB query at 40k).
RUN_DISK_PER_QUERY_BYTE = 4.5
REPORT = "scatter_1m.md.tmpl"
JOB_COLUMNS = ["rule", "job", "seconds", "max_rss_mb", "benchmark"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samples", type=int, default=50, help="samples of each query")
    parser.add_argument("--epochs", type=int, default=2, help="surgery epochs (a shortcut)")
    parser.add_argument(
        "--scatter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only the scattered run (--no-scatter: only the unscattered one); default both",
    )
    parser.add_argument(
        "--shard-cells", type=int, default=None, help="mapping.scatter.max_cells of the run"
    )
    parser.add_argument("--out", type=Path, default=None, help="work folder")
    parser.add_argument("--reuse", action="store_true", help="atlas, model, queries kept")
    parser.add_argument("--processes", type=int, default=2, help="processes drawing cells")
    parser.add_argument("--keep-files", action="store_true", help="keep runs' large files")
    args = parser.parse_args(argv)
    args.cells = sorted(args.cells)
    args.variants = [
        name
        for name, scattered in (("scattered", True), ("unscattered", False))
        if args.scatter in (None, scattered)
    ]
    args.report = (BENCHMARKS if args.out is None else args.out) / "scatter_1m.md"
    args.out = args.out or RUNS / "scatter_1m"
    return args


def check_config(config: dict, variant: str) -> None:
    """Stop before any data is made if the workflow's schema refuses ``config`` (the
    scatter feature's keys are read from the schema as it is now)."""
    import copy

    from snakemake.utils import validate

    try:
        validate(copy.deepcopy(config), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    except Exception as refused:  # snakemake's WorkflowError, naming the key
        raise SystemExit(
            f"the workflow's schema refuses the {variant} config ({refused}); "
            "for the unscattered run alone: --no-scatter"
        ) from refused


def saved_model(out: Path, study: Study, reuse: bool) -> tuple[Path, Path, dict]:
    """The atlas and a model trained on it by the workflow (a 10k query, as
    study_200k.py's first run): made once, then every run maps from the saved model."""
    atlas = out / "atlas.h5ad"
    workdir = out / f"run_{TRAINING_CELLS}"
    model = workdir / "results" / "references" / DEFAULT_REFERENCE / "scanvi_model"
    record = out / "training.json"
    if reuse:
        if not (atlas.exists() and (model / MODEL_FILE).exists() and record.exists()):
            raise SystemExit(f"--reuse: no earlier run in {out} (need {atlas} and {model})")
        return atlas, model, json.loads(record.read_text())
    started = time.perf_counter()
    study.write_atlas(atlas, run_benchmark.FULL["atlas"])
    say(f"atlas written in {time.perf_counter() - started:.0f} s")
    deposit = out / f"query_{TRAINING_CELLS}"
    names = study.write_query(deposit, TRAINING_CELLS)
    shutil.rmtree(workdir, ignore_errors=True)
    run_benchmark.workflow_copy(workdir)
    wall = run_benchmark.run_workflow(
        workdir, run_benchmark.config_for(deposit, names, atlas, None)
    )
    say(f"model trained: the {TRAINING_CELLS:,}-cell run took {wall:.0f} s")
    training = {"cells": TRAINING_CELLS, "wall_seconds": round(wall, 1)}
    write_json(record, training)
    return atlas, model, training


def query_files(out: Path, study: Study, args) -> dict[int, dict]:
    """One h5ad per query size, with what it holds; kept from an earlier run with --reuse."""
    record = out / "queries.json"
    known = json.loads(record.read_text()) if args.reuse and record.exists() else {}
    facts = {}
    for cells in args.cells:
        path = out / f"query_{cells}_{args.samples}.h5ad"
        fact = known.get(path.name)
        if fact is None or not path.exists():
            say(f"writing the {cells:,}-cell query ({args.samples} samples)")
            fact = write_query_h5ad(study, path, cells, args.samples, args.processes)
            check_readable(path, cells, study.n_genes)
            known[path.name] = fact
            write_json(record, known)
        facts[cells] = {**fact, "path": str(path)}
        say(
            f"query {cells:,} cells: {fact['nnz_per_cell']} nnz a cell, "
            f"{fact['bytes'] / 1e9:.2f} GB, written in {fact['seconds']} s"
        )
    return facts


def check_disk(out: Path, queries: dict[int, dict]) -> None:
    """Stop before the runs if the largest one would fill the disk midway."""
    largest = max(queries.values(), key=lambda fact: fact["bytes"])
    need = RUN_DISK_PER_QUERY_BYTE * largest["bytes"]
    free = shutil.disk_usage(out).free
    if free < need:
        raise SystemExit(
            f"{free / 1e9:.0f} GB free in {out}; a run of the {largest['cells']:,}-cell query "
            f"writes about {need / 1e9:.0f} GB ({RUN_DISK_PER_QUERY_BYTE}x its file)"
        )


def check_readable(path: Path, cells: int, genes: int) -> None:
    """The file opens as AnnData (backed, X left on disk) with the shape it was written with."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        if backed.X.shape != (cells, genes) or backed.obs["patients"].isna().any():
            raise SystemExit(f"{path}: reads back as {backed.X.shape}, not {(cells, genes)}")
    finally:
        backed.file.close()


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s keys set, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_config(query: Path, atlas: Path, model: Path, args, variant: str) -> dict:
    """run_benchmark's config with the query an h5ad read in place and the given variant."""
    config = run_benchmark.config_for(query, {}, atlas, model)
    config["queries"] = {
        QUERY_NAME: {
            "path": str(query),
            "format": "h5ad",
            "rename": {"patients": "Sample_ID"},
            "truth": "author_cell_type",
        }
    }
    config["mapping"]["surgery"]["max_epochs"] = args.epochs
    if variant == "scattered":
        config = deep_merge(config, {"mapping": {"scatter": scatter_settings(args)}})
    return config


def scatter_settings(args) -> dict:
    """SCATTER_CONFIG's mapping.scatter, its max_cells from --shard-cells where given."""
    settings = dict(SCATTER_CONFIG["mapping"]["scatter"])
    if args.shard_cells is not None:
        settings["max_cells"] = args.shard_cells
    return settings


def job_table(workdir: Path) -> pd.DataFrame:
    """Every job's wall seconds and peak memory from its Snakemake benchmark file: each
    *.benchmark.tsv under logs/, its rule the first folder, its job the rest of its path."""
    rows = []
    logs = workdir / "logs"
    for tsv in sorted(logs.rglob("*.benchmark.tsv")):
        measured = pd.read_csv(tsv, sep="\t")
        relative = tsv.relative_to(logs)
        rows.append(
            {
                "rule": relative.parts[0],
                "job": "/".join(relative.parts[1:]).removesuffix(".benchmark.tsv"),
                "seconds": float(measured["s"].iloc[0]),
                "max_rss_mb": float(pd.to_numeric(measured["max_rss"], errors="coerce").iloc[0]),
                "benchmark": str(tsv.relative_to(workdir)),
            }
        )
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def jobs_of(run: dict) -> pd.DataFrame:
    return pd.DataFrame(run["jobs"], columns=JOB_COLUMNS)


def dependencies(table: pd.DataFrame) -> dict[int, set[int]]:
    """For each job, the jobs that wrote a file it read."""
    writer = {
        path: job.jobid
        for job in table.itertuples()
        for path in str(job.output).split(", ")
        if path
    }
    return {
        job.jobid: {writer[p] for p in str(job.input).split(", ") if p in writer}
        for job in table.itertuples()
    }


def chain_after(seconds: dict, children: dict) -> dict:
    """Each job's longest chain of seconds to the end of the run, itself included."""
    chain: dict = {}
    for job in seconds:
        stack = [job]
        while stack:  # depth first, without recursion: a chain is hundreds of jobs at most
            top = stack[-1]
            waiting = [c for c in children[top] if c not in chain]
            if waiting:
                stack.extend(waiting)
                continue
            chain[top] = seconds[top] + max((chain[c] for c in children[top]), default=0.0)
            stack.pop()
    return chain


def simulate(seconds: dict, threads: dict, parents: dict, nodes: int) -> float:
    """The wall of the jobs on ``nodes`` nodes of NODE_CORES cores: list scheduling, the
    ready job with the longest chain after it first (so one stage's shards longest
    first, LPT), each job on the node with the most cores free, when it fits there."""
    children = {job: [] for job in seconds}
    for job, before in parents.items():
        for parent in before:
            children[parent].append(job)
    chain = chain_after(seconds, children)
    waiting = {job: set(before) for job, before in parents.items()}
    free, running, clock = [NODE_CORES] * nodes, [], 0.0
    ready = [job for job, before in waiting.items() if not before]
    while ready or running:
        ready.sort(key=lambda job: (-chain[job], -seconds[job]))
        for job in list(ready):
            need = min(threads[job], NODE_CORES)
            node = max(range(nodes), key=free.__getitem__)
            if free[node] >= need:
                free[node] -= need
                ready.remove(job)
                heapq.heappush(running, (clock + seconds[job], job, node, need))
        clock, job, node, need = heapq.heappop(running)
        free[node] += need
        for child in children[job]:
            waiting[child].discard(job)
            if not waiting[child]:
                ready.append(child)
    return clock


def critical_path(seconds: dict, parents: dict, rules: dict) -> list[str]:
    """The rules along the run's longest chain of jobs, first to last."""
    children = {job: [] for job in seconds}
    for job, before in parents.items():
        for parent in before:
            children[parent].append(job)
    chain = chain_after(seconds, children)
    job = max((j for j, before in parents.items() if not before), key=chain.get)
    path = [rules[job]]
    while children[job]:
        job = max(children[job], key=chain.get)
        path.append(rules[job])
    return path


def projection(jobs: pd.DataFrame, table: pd.DataFrame) -> dict:
    """The run's wall on N nodes, each job taking its measured seconds (benchmark file;
    the log's where it has none) and waiting for the jobs whose files it reads."""
    measured = dict(zip(jobs["benchmark"], jobs["seconds"], strict=True))
    seconds = {
        job.jobid: measured.get(job.benchmark, job.end_s - job.start_s)
        for job in table.itertuples()
    }
    threads = dict(zip(table["jobid"], table["threads"], strict=True))
    parents = dependencies(table)
    rows = [
        {
            "nodes": nodes,
            "cores": NODE_CORES * nodes,
            "projected_wall_s": round(simulate(seconds, threads, parents, nodes), 1),
        }
        for nodes in CLUSTER_NODES
    ]
    shards = table.loc[table["rule"].str.endswith(SHARD_SUFFIX), "jobid"]
    rules = dict(zip(table["jobid"], table["rule"], strict=True))
    return {
        "rows": rows,
        "critical_path_s": round(simulate(seconds, threads, parents, len(table)), 1),
        "critical_path": critical_path(seconds, parents, rules),
        "job_seconds": round(sum(seconds.values()), 1),
        "shard_job_seconds": round(sum(seconds[job] for job in shards), 1),
    }


def free_disk(workdir: Path) -> list[dict]:
    """Remove the run's files over LARGE_FILE_BYTES under results/, saying which."""
    removed = []
    for path in sorted((workdir / "results").rglob("*")):
        if path.is_file() and path.stat().st_size >= LARGE_FILE_BYTES:
            removed.append({"file": str(path.relative_to(workdir)), "bytes": path.stat().st_size})
            path.unlink()
    return removed


def run_variant(
    out: Path, cells: int, variant: str, config: dict, keep_files: bool, reuse: bool
) -> dict:
    """One cold run of the workflow, measured; a failed run is recorded, not raised.
    Each completed run is kept as run.json in its folder: with --reuse, a run done with
    the same config is read back rather than run again (a 1M run takes the better part
    of an hour, so the sizes and variants can be run one invocation at a time)."""
    workdir = out / f"run_{cells}_{variant}"
    record = workdir / "run.json"
    if reuse and record.exists():
        kept = json.loads(record.read_text())
        same = kept.get("config") == json.loads(json.dumps(config, default=float))
        if same and "failed" not in kept:
            say(f"{cells:,} cells, {variant}: kept from {record}")
            return {**kept, "kept": True}
    shutil.rmtree(workdir, ignore_errors=True)
    run_benchmark.workflow_copy(workdir)
    result = {"cells": cells, "variant": variant, "workdir": str(workdir)}
    say(f"{cells:,} cells, {variant}: running")
    try:
        result["wall_seconds"] = round(run_benchmark.run_workflow(workdir, config), 1)
    except SystemExit as failed:  # run_workflow's way of saying the workflow failed
        result["failed"] = str(failed)[-3000:]
        say(f"{cells:,} cells, {variant}: FAILED (see {workdir}/logs)")
    jobs = job_table(workdir)
    result["jobs"] = jobs.to_dict("records")
    if "failed" not in result:
        table = run_benchmark.log_jobs(workdir)
        table.to_csv(workdir / "timeline.tsv", sep="\t", index=False)
        result["packing"] = run_benchmark.packing(table, NODE_CORES)
        result["projection"] = projection(jobs, table)
        say(f"{cells:,} cells, {variant}: {result['wall_seconds']:.0f} s, {result['packing']}")
    if not keep_files:
        result["removed_files"] = free_disk(workdir)
    write_json(record, {**result, "config": config})
    return result


def exponent(n0: int, t0: float, n1: int, t1: float) -> float:
    return math.log(t1 / t0) / math.log(n1 / n0)


def completed(runs: list[dict], variant: str) -> list[dict]:
    return [r for r in runs if r["variant"] == variant and "failed" not in r]


def wall_exponents(runs: list[dict]) -> list[dict]:
    """Per variant, the wall's exponent between each pair of sizes, and first to last."""
    rows = []
    for variant in VARIANTS:
        done = completed(runs, variant)
        pairs = list(zip(done, done[1:], strict=False))
        if len(done) > 2:
            pairs.append((done[0], done[-1]))
        for small, large in pairs:
            value = exponent(
                small["cells"], small["wall_seconds"], large["cells"], large["wall_seconds"]
            )
            rows.append(
                {
                    "variant": variant,
                    "from_cells": small["cells"],
                    "to_cells": large["cells"],
                    "exponent": round(value, 3),
                }
            )
    return rows


def rule_table(runs: list[dict]) -> pd.DataFrame:
    """Per variant and rule: jobs, summed and longest seconds, largest peak, at each size;
    the exponent of the summed seconds from the smallest size to the largest."""
    rows = []
    for run in runs:
        for rule, group in jobs_of(run).groupby("rule"):
            rows.append(
                {
                    "variant": run["variant"],
                    "rule": rule,
                    "cells": run["cells"],
                    "jobs": len(group),
                    "seconds": round(group["seconds"].sum(), 1),
                    "longest_job_s": round(group["seconds"].max(), 1),
                    "peak_mb": round(group["max_rss_mb"].max(), 0),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["variant", "rule", "cells"], ignore_index=True)
    table["exponent"] = None
    for _, group in table.sort_values("cells").groupby(["variant", "rule"]):
        small, large = group.iloc[0], group.iloc[-1]
        if large["cells"] > small["cells"]:
            table.loc[group.index[-1], "exponent"] = round(
                exponent(
                    small["cells"],
                    max(small["seconds"], 0.01),
                    large["cells"],
                    max(large["seconds"], 0.01),
                ),
                2,
            )
    return table


def largest_job(run: dict) -> dict:
    """The run's job of the highest peak memory (none measured: NaN)."""
    jobs = jobs_of(run)
    jobs = jobs.dropna(subset=["max_rss_mb"])
    if jobs.empty:
        return {"rule": "-", "job": "-", "max_rss_mb": float("nan")}
    row = jobs.loc[jobs["max_rss_mb"].idxmax()]
    return {"rule": row["rule"], "job": row["job"], "max_rss_mb": float(row["max_rss_mb"])}


def targets(runs: list[dict], exponents: list[dict]) -> list[dict]:
    """The issue's targets, on the scattered run of the largest size (and from the smallest)."""
    sizes = sorted({r["cells"] for r in runs})
    largest = [r for r in runs if r["variant"] == "scattered" and r["cells"] == sizes[-1]]
    if not largest:
        return []
    run = largest[0]
    rows = [
        {
            "target": f"{sizes[-1]:,} cells scattered, end to end",
            "measured": "failed" if "failed" in run else f"{run['wall_seconds']:.0f} s",
            "met": "failed" not in run,
        }
    ]
    if "failed" in run:
        return rows
    peak = largest_job(run)
    rows.append(
        {
            "target": "largest job <= 6 GiB",
            "measured": f"{peak['max_rss_mb'] / 1024:.2f} GiB ({peak['rule']}, {peak['job']})",
            "met": peak["max_rss_mb"] <= LARGEST_JOB_MIB,
        }
    )
    span = [
        e
        for e in exponents
        if e["variant"] == "scattered" and (e["from_cells"], e["to_cells"]) == (sizes[0], sizes[-1])
    ]
    if span:
        rows.append(
            {
                "target": f"wall exponent {sizes[0]:,} -> {sizes[-1]:,} <= {EXPONENT_TARGET}",
                "measured": span[0]["exponent"],
                "met": span[0]["exponent"] <= EXPONENT_TARGET,
            }
        )
    return rows


def markdown(rows, empty: str = "(none)") -> str:
    table = pd.DataFrame(rows)
    return empty if table.empty else table.to_markdown(index=False)


def baseline_rows(runs: list[dict]) -> list[dict]:
    """predict_baseline (it cannot be switched off), apart: its time, peak, and whether
    it ended last in its run (then it set the wall)."""
    rows = []
    for run in runs:
        jobs = jobs_of(run)
        for job in jobs[jobs["rule"] == "predict_baseline"].itertuples():
            rows.append(
                {
                    "cells": run["cells"],
                    "variant": run["variant"],
                    "seconds": job.seconds,
                    "peak_mb": job.max_rss_mb,
                    "share_of_wall": round(job.seconds / run["wall_seconds"], 2)
                    if run.get("wall_seconds")
                    else None,
                }
            )
    return rows


def run_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for run in runs:
        peak = largest_job(run)
        rows.append(
            {
                "cells": run["cells"],
                "variant": run["variant"],
                "wall_s": run.get("wall_seconds", "failed"),
                "jobs": len(run["jobs"]),
                "core_share": run.get("packing", {}).get("cores_claimed_share"),
                "largest_job_gib": round(peak["max_rss_mb"] / 1024, 2),
                "largest_job": peak["rule"],
            }
        )
    return rows


def projection_text(runs: list[dict]) -> str:
    """Per completed run: its projection table and what bounds it."""
    parts = []
    for run in runs:
        if "failed" in run:
            continue
        plan = run["projection"]
        parts.append(
            f"**{run['cells']:,} cells, {run['variant']}**: measured here "
            f"{run['wall_seconds']:.0f} s; {plan['job_seconds']:.0f} job-seconds, "
            f"{plan['shard_job_seconds']:.0f} of them in `*{SHARD_SUFFIX}` jobs; on unlimited "
            f"nodes (the critical path) {plan['critical_path_s']:.0f} s: "
            + " → ".join(f"`{rule}`" for rule in plan["critical_path"])
            + f"\n\n{markdown(plan['rows'])}"
        )
    return "\n\n".join(parts) or "no run completed."


def query_row(fact: dict) -> dict:
    return {
        "cells": f"{fact['cells']:,}",
        "samples": fact["samples"],
        "genes": f"{fact['genes']:,}",
        "nnz": f"{fact['nnz']:,}",
        "nnz per cell": fact["nnz_per_cell"],
        "file GB": round(fact["bytes"] / 1e9, 2),
        "seconds": fact["seconds"],
    }


def kept_text(runs: list[dict]) -> str:
    """Which runs an earlier invocation measured (--reuse), so the command is not
    read as having run them."""
    kept = [f"{r['cells']:,} cells {r['variant']}" for r in runs if r.get("kept")]
    if not kept:
        return ""
    return (
        "Measured by an earlier invocation of the same script and kept (`--reuse`, the "
        f"same config, its `run.json`): {', '.join(kept)}."
    )


def write_report(path: Path, record: dict) -> None:
    runs = record["runs"]
    text = template(REPORT).format(
        command=record["command"],
        date=record["date"],
        machine="{cpu}, {cores} cores, {memory_gb} GiB, {platform}".format(**record["machine"]),
        versions=", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        epochs=record["args"]["epochs"],
        samples=record["args"]["samples"],
        atlas=run_benchmark.FULL["atlas"],
        genes=run_benchmark.FULL["genes"],
        training_cells=record["training"]["cells"],
        training_s=record["training"]["wall_seconds"],
        kept=kept_text(runs),
        scatter=json.dumps({"mapping": {"scatter": record["scatter"]}}),
        data=markdown([query_row(q) for q in record["queries"].values()]),
        targets=markdown(
            [{**t, "met": "yes" if t["met"] else "**no**"} for t in record["targets"]],
            "(the scattered run of the largest size did not run)",
        ),
        runs=markdown(run_rows(runs)),
        exponents=markdown(record["exponents"]),
        rules=markdown(rule_table(runs).fillna("").to_dict("records")),
        baseline=markdown(baseline_rows(runs)),
        projection=projection_text(runs),
        failures="\n\n".join(
            f"{r['cells']:,} cells, {r['variant']}:\n\n```\n{r['failed']}\n```"
            for r in runs
            if "failed" in r
        )
        or "none",
    )
    path.write_text(text)
    write_json(path.with_suffix(".json"), record)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out = args.out
    atlas = out / "atlas.h5ad"
    model = out / f"run_{TRAINING_CELLS}" / "results" / "references" / DEFAULT_REFERENCE
    for variant in args.variants:  # refused keys stop here, before hours of data
        check_config(run_config(out / "query.h5ad", atlas, model, args, variant), variant)
    out.mkdir(parents=True, exist_ok=True)
    study = Study(n_genes=run_benchmark.FULL["genes"], seed=0)
    atlas, model, training = saved_model(out, study, args.reuse)
    queries = query_files(out, study, args)
    check_disk(out, queries)
    runs = []
    for cells in args.cells:
        query = Path(queries[cells]["path"])
        for variant in args.variants:
            config = run_config(query, atlas, model, args, variant)
            runs.append(run_variant(out, cells, variant, config, args.keep_files, args.reuse))
    exponents = wall_exponents(runs)
    record = {
        "command": shlex.join([".venv/bin/python", "benchmarks/scatter_1m.py", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": bench.machine(),
        "versions": bench.versions(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": training,
        "scatter": scatter_settings(args),
        "queries": {str(k): v for k, v in queries.items()},
        "runs": runs,
        "exponents": exponents,
        "targets": targets(runs, exponents),
    }
    write_report(args.report, record)
    say(f"report: {args.report}")
    print(args.report.read_text())


if __name__ == "__main__":
    main()
