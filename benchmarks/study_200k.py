"""run_benchmark.py's 10k run (which trains the model) and 200k run alone, without its
ratios: a quicker check (~25 min on 2 cores) of the 200k study's wall time after a change.

    .venv/bin/python benchmarks/study_200k.py                 # work folder benchmarks/runs/study_200k

Prints each run's wall time and the per-job table (seconds, peak MB) and writes
them to the work folder (walls.json, stages.tsv).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_benchmark as bench  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=bench.REPO / "benchmarks/runs/study_200k")
    args = parser.parse_args(argv)
    out, plan = args.out, bench.FULL
    out.mkdir(parents=True, exist_ok=True)
    study = bench.Study(n_genes=plan["genes"], seed=0)
    start = time.perf_counter()
    atlas = study.write_atlas(out / "atlas.h5ad", plan["atlas"])
    print(f"atlas written in {time.perf_counter() - start:.0f} s", flush=True)
    model, walls, tables = None, {}, []
    for cells in (10_000, 200_000):
        deposit = out / f"query_{cells}"
        names = study.write_query(deposit, cells)
        workdir = bench.workflow_copy(out / f"run_{cells}")
        walls[cells] = bench.run_workflow(workdir, bench.config_for(deposit, names, atlas, model))
        tables.append(bench.stage_table(workdir, cells))
        if model is None:  # trained once, reused at 200k: "from a saved model"
            model = workdir / "results" / "reference" / "scanvi_model"
        print(f"{cells} cells: workflow {walls[cells]:.0f} s", flush=True)
    stages = pd.concat(tables, ignore_index=True)
    stages.to_csv(out / "stages.tsv", sep="\t", index=False)
    (out / "walls.json").write_text(json.dumps({str(k): v for k, v in walls.items()}))
    print(stages.to_string())


if __name__ == "__main__":
    main()
