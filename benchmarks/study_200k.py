"""run_benchmark.py's 10k run (which trains the model) and 200k run alone, without its
ratios: a quicker check (~25 min on 2 cores) of the 200k study's wall time after a change.

    .venv/bin/python benchmarks/study_200k.py                 # work folder benchmarks/runs/study_200k
    .venv/bin/python benchmarks/study_200k.py --reuse         # again: the 200k run alone, cold

With ``--reuse`` the atlas, the deposits and the 10k run's trained model are taken from an
earlier run in the same folder (the 10k run is skipped; a missing 200k deposit is written);
the 200k run always starts from an empty results folder, so it is still a cold start from a
saved model.

Surgery trains the workflow's default epochs (10, what a user gets: the headline); with
``--epochs 2`` it trains 2, the shortcut run_benchmark.py takes to measure the cost of
everything but training. Outputs are named by the epochs (walls_10ep.json, ...).

Prints each run's wall time, the per-job table (seconds, peak MB) and each job's start
and end with the share of the cores' time the jobs claimed, and writes them to the work
folder (walls_<E>ep.json, stages_<E>ep.tsv, timeline_<cells>_<E>ep.tsv, E the epochs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import pandas as pd
import run_benchmark
from atlasmap.demo import deposit_names
from atlasmap.settings import schema_default
from bench import RUNS
from synthetic import Study


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RUNS / "study_200k")
    parser.add_argument(
        "--reuse", action="store_true", help="atlas, deposits and model of an earlier run"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="surgery epochs (default: the workflow's)"
    )
    args = parser.parse_args(argv)
    out, plan = args.out, run_benchmark.FULL
    label = f"{args.epochs or schema_default('mapping.surgery.max_epochs')}ep"
    out.mkdir(parents=True, exist_ok=True)
    study = Study(n_genes=plan["genes"], seed=0)
    start = time.perf_counter()
    atlas = out / "atlas.h5ad"
    trained = out / "run_10000" / "results" / "references" / "default" / "scanvi_model"
    reuse = args.reuse and atlas.exists() and trained.exists()
    if args.reuse and not reuse:
        raise SystemExit(f"--reuse: no earlier run in {out} (need {atlas} and {trained})")
    if not reuse:
        study.write_atlas(atlas, plan["atlas"])
        print(f"atlas written in {time.perf_counter() - start:.0f} s", flush=True)
    model, walls, tables = (trained if reuse else None), {}, []
    for cells in (10_000, 200_000):
        deposit = out / f"query_{cells}"
        if reuse and cells == 10_000:
            continue
        if reuse and (deposit / deposit_names("BENCH_sc")["matrix"]).exists():
            names = deposit_names("BENCH_sc")
        else:
            names = study.write_query(deposit, cells)
        workdir = out / f"run_{cells}"
        shutil.rmtree(workdir, ignore_errors=True)  # a cold start every time
        workdir = run_benchmark.workflow_copy(workdir)
        config = run_benchmark.config_for(deposit, names, atlas, model, args.epochs)
        walls[cells] = run_benchmark.run_workflow(workdir, config)
        tables.append(run_benchmark.stage_table(workdir, cells))
        timeline, packing = run_benchmark.job_timeline(workdir)
        timeline.to_csv(out / f"timeline_{cells}_{label}.tsv", sep="\t", index=False)
        print(timeline.to_string(), "\n", packing, flush=True)
        if model is None:  # trained once, reused at 200k: "from a saved model"
            model = workdir / "results" / "references" / "default" / "scanvi_model"
        print(f"{cells} cells: workflow {walls[cells]:.0f} s", flush=True)
    stages = pd.concat(tables, ignore_index=True)
    stages.to_csv(out / f"stages_{label}.tsv", sep="\t", index=False)
    (out / f"walls_{label}.json").write_text(json.dumps({str(k): v for k, v in walls.items()}))
    print(stages.to_string())


if __name__ == "__main__":
    main()
