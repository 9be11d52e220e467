"""The demo's numbers over several seeds: mean ± sd, as docs/demo.md reports them.

Each seed is a whole run of the embedded demo (`snakemake --config seed=N`, the
data, the training and the calls all seeded by it) in its own folder under
benchmarks/runs/demo_seeds/. Training differs a little across machines and
seeds, so one run's figures are not the demo's figures.

    .venv/bin/python benchmarks/demo_seeds.py                 # seeds 0 1 2
    .venv/bin/python benchmarks/demo_seeds.py --seeds 0 1 2 3 --cores 2
    .venv/bin/python benchmarks/demo_seeds.py --tables-only   # rebuild the table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
from atlasmap.contract import MODES
from bench import BENCHMARKS
from run_benchmark import workflow_copy

RUNS = bench.RUNS / "demo_seeds"
RESULTS = BENCHMARKS / "demo_seeds.md"

# (row label, metrics.json section, key); accuracy-like values are shown as shares.
ROWS = [
    ("accuracy, all cells", "accuracy"),
    ("accuracy on types the atlas has", "accuracy_seen"),
    ("macro-F1 on types the atlas has", "macro_f1_seen"),
    ("Unknown among types the atlas has", "share_unknown_seen"),
    ("Unknown among Schwann cells (type the atlas lacks)", "share_unknown_unseen"),
    ("calibration error (ECE)", "ece"),
]


def run_seed(seed: int, cores: int) -> Path:
    """One whole demo run in its own copy of the workflow; returns its folder.

    A folder from an earlier run is reused: Snakemake reruns only what the
    current code and config change (a new call setting reruns only the calls).
    """
    workdir = workflow_copy(RUNS / f"seed_{seed}")
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", f"seed={seed}"]
    print(f"seed {seed}: {' '.join(command[2:])} in {workdir}", flush=True)
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    return workdir


def collect(seeds: list[int]) -> dict:
    """metrics.json and agreement.json of each seed's run."""
    out = {}
    for seed in seeds:
        base = RUNS / f"seed_{seed}" / "results" / "demo"
        out[seed] = {mode: json.loads((base / mode / "metrics.json").read_text()) for mode in MODES}
        out[seed]["agreement"] = json.loads((base / "compare" / "agreement.json").read_text())
    return out


def mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def table(results: dict) -> str:
    seeds = sorted(results)
    columns = [
        ("scANVI surgery", "surgery", "mapping"),
        ("scANVI embed", "embed", "mapping"),
        ("logistic regression", "embed", "baseline"),
    ]
    lines = [
        f"Seeds {', '.join(map(str, seeds))} (each a whole `make demo` run: data, training, "
        "calls); mean ± sd.",
        "",
        "| | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, key in ROWS:
        cells = [
            mean_sd(results[s][mode][side].get(key) for s in seeds) for _, mode, side in columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    agreement = [results[s]["agreement"].get("agreement") for s in seeds]
    lines += ["", f"Surgery and embed agree on {mean_sd(agreement)} of query calls."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    if not args.tables_only:
        for seed in args.seeds:
            run_seed(seed, args.cores)
    text = "# The demo over seeds\n\n" + table(collect(args.seeds))
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
