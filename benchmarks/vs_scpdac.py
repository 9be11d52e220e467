"""atlasmap against the scPDAC tutorial's own package (scpdac 0.1.1), side by side, in one run.

    .venv/bin/python benchmarks/vs_scpdac.py            # frozen 10k/100k/200k, surgery 10k
    .venv/bin/python benchmarks/vs_scpdac.py --smoke    # 1k frozen, 300 surgery: < 3 minutes (CI)
    .venv/bin/python benchmarks/vs_scpdac.py --sizes 10000,50000 --surgery-sizes 0

Both map the same synthetic query with the same model: the scPDAC authors'
human SCANVI model (2,232 genes, 64 Level_4 labels, 50 per-cell quantile bins
of the counts), which scpdac loads from its installed wheel and atlasmap takes
out of the same wheel (``atlasmap.model_package.fetch_model_from_wheel``). scpdac is
installed from PyPI with no dependencies beside a stand-in for scArches
(benchmarks/scpdac_package.py).

The query: 30,000 genes, about 1,000 detected per cell, the model's genes
among them except a tenth (223) of them, drawn sparse (benchmarks/synthetic.py's
cell-type programmes and multinomial draws; never a dense matrix), written to
h5ad once per size. Each (path, size, tool) runs in a fresh Python: it imports,
reads the h5ad, warms up on 200 cells (the model load's one-off costs: lazy
imports, Lightning), then resets the kernel's peak-RSS counter
(/proc/self/clear_refs) and times the call on the data in memory.

- frozen: scpdac ``tl.embed_and_predict`` against atlasmap ``map_query(..., "embed")``
  with the model alone, then ``call_mapping`` (classifier calls; "Unknown" below
  the chen2025 config's ``unknown_threshold``, 0.5).
- surgery: scpdac ``tl.extend_atlas`` against atlasmap ``map_query(..., "surgery")``
  then ``call_mapping`` (kNN calls, calibration, novelty). Both need reference
  cells; the scPDAC atlas is not public as an h5ad, so both get the same
  synthetic atlas over the model's genes (its Sample_IDs are 8 of the model's
  reference batches, its Level_4 one of the model's labels per synthetic type).
  Both train 10 epochs.

Agreement (frozen and surgery): over the cells atlasmap calls (not "Unknown"),
the fraction whose label equals scpdac's; the fraction atlasmap leaves Unknown;
the fraction whose classifier argmax equals scpdac's label, over all cells; and
the largest absolute difference of the latents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
import scpdac_package
from atlasmap.contract import EMBEDDING_KEY, MODEL_FILE, PROBABILITIES_KEY, UNKNOWN, query_mask
from bench import BENCHMARKS, REPO, RUNS, machine
from vs_scpdac_data import FULL, GENERATOR_VERSION, SMOKE, SURGERY_EPOCHS, TOOLS, WARMUP_CELLS
from vs_scpdac_data import Panel as Panel  # tests/integration/test_vs_scpdac.py takes it from here
from vs_scpdac_report import write_results

# ---------------------------------------------------------------- one run, in a child


def _vm(field: str) -> float:
    """A /proc/self/status memory field, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _settings(mode: str):
    import yaml
    from atlasmap.settings import CallSettings, MappingSettings

    chen = yaml.safe_load((REPO / "config" / "chen2025.yaml").read_text())
    reference = chen["reference"]
    mapping = MappingSettings(
        labels_key=reference["labels_key"],
        batch_key=reference["batch_key"],
        label_levels=(reference["labels_key"],),
        transform=reference["transform"],
        surgery_max_epochs=SURGERY_EPOCHS,
        accelerator="cpu",
    )
    calls = CallSettings(
        method="classifier" if mode == "frozen" else "knn",
        unknown_threshold=chen["mapping"]["unknown_threshold"],
    )
    return mapping, calls


def run_scpdac(query, atlas, mode: str, scpdac_dir: Path) -> dict:
    scpdac = scpdac_package.activate(scpdac_dir)
    kwargs = {"layer": "counts", "batch_key": "Sample_ID"}
    # scpdac writes the keys and the source column that atlasmap's contract names (the
    # contract took them from the tutorial's package).
    if mode == "frozen":
        out = scpdac.tl.embed_and_predict(query, "human", **kwargs)
        labels, latent = out.obs["predicted_celltype"], out.obsm[EMBEDDING_KEY]
    else:
        out = scpdac.tl.extend_atlas(query, atlas, "human", max_epochs=SURGERY_EPOCHS, **kwargs)
        is_query = query_mask(out.obs)
        labels = out.obs["predicted_celltype"][is_query]
        latent = out.obsm[EMBEDDING_KEY][is_query]
    return {"label": np.asarray(labels, dtype=str), "latent": np.asarray(latent)}


def run_atlasmap(query, atlas, mode: str, model_dir: Path, timings: dict) -> dict:
    from atlasmap.call_adapters import call_mapping
    from atlasmap.mapping import map_query

    mapping, calls = _settings(mode)
    start = time.perf_counter()
    result = map_query(query, atlas, model_dir, "embed" if mode == "frozen" else "surgery", mapping)
    timings["map_query_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    table, _ = call_mapping(result, calls)
    timings["calls_seconds"] = time.perf_counter() - start
    expanded = result.expanded
    is_query = query_mask(expanded.obs)
    barcodes = expanded.obs["barcode"][is_query].astype(str).to_numpy()
    table = table.reindex(barcodes)
    probs = expanded.obsm[PROBABILITIES_KEY][is_query]
    names = np.asarray(result.info["classifier_labels"], dtype=str)
    return {
        "label": table["predicted_celltype"].astype(str).to_numpy(),
        "argmax": names[probs.argmax(axis=1)],
        "latent": expanded.obsm[EMBEDDING_KEY][is_query],
    }


def child(args) -> None:
    import logging

    import anndata as ad
    import scvi  # noqa: F401  (imported before the clock and the baseline, for both tools)
    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.tool == "scpdac":
        scpdac_package.activate(args.scpdac)
    else:
        import atlasmap.call_adapters  # noqa: F401
        import atlasmap.mapping  # noqa: F401

    def read():
        query = ad.read_h5ad(args.query)
        query.layers["counts"] = query.X  # the same matrix: raw counts, as both tools read them
        atlas = None
        if args.atlas:
            atlas = ad.read_h5ad(args.atlas)
            atlas.layers["counts"] = atlas.X
        return query, atlas

    def call(query, atlas, timings):
        if args.tool == "scpdac":
            return run_scpdac(query, atlas, args.mode, args.scpdac)
        return run_atlasmap(query, atlas, args.mode, args.model, timings)

    query, atlas = read()
    # Warm-up: the model load's one-off costs, the frozen path for both, on a few cells and
    # only the query's model genes (scpdac's gene alignment costs ~30 s at 30k genes, per call).
    from atlasmap.reference import read_model_info

    genes = query.var_names.isin(read_model_info(args.model).genes)
    warm = query[:WARMUP_CELLS, genes].copy()
    warm.layers["counts"] = warm.X
    mode, args.mode = args.mode, "frozen"
    call(warm, None, {})
    args.mode = mode
    del warm
    gc.collect()
    peak_reset = _reset_peak()
    baseline = _vm("VmRSS")
    timings: dict = {}
    start = time.perf_counter()
    out = call(query, atlas, timings)
    seconds = time.perf_counter() - start
    peak = _vm("VmHWM")
    arrays = {k: np.asarray(v) for k, v in out.items()}
    arrays = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}
    np.savez(Path(args.out).with_suffix(".npz"), **arrays)
    record = {
        "tool": args.tool,
        "mode": args.mode,
        "cells": int(query.n_obs),
        "atlas_cells": int(atlas.n_obs) if atlas is not None else 0,
        "seconds": seconds,
        "cells_per_second": query.n_obs / seconds,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "peak_above_baseline_mb": peak - baseline,
        "peak_reset": peak_reset,
        "torch_threads": torch.get_num_threads(),
        **timings,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------- the parent


def _run_child(
    tool, mode, query, atlas, work: Path, model: Path, scpdac_dir: Path, timeout, repeat=1
):
    suffix = "" if repeat == 1 else f"_r{repeat}"
    out = work / "runs" / f"{mode}_{Path(query).stem}_{tool}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--child", tool, "--mode", mode, "--query", str(query)]
    command += ["--model", str(model), "--scpdac", str(scpdac_dir), "--out", str(out)]
    if atlas:
        command += ["--atlas", str(atlas)]
    print(f"  {mode} {Path(query).stem} {tool} ...", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "mode": mode, "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        return {"tool": tool, "mode": mode, "error": f"exit {done.returncode}: {tail}"}
    record = json.loads(out.read_text())
    record["outputs"] = str(out.with_suffix(".npz"))
    print(
        f"    {record['seconds']:.1f} s, peak {record['peak_rss_mb']:.0f} MB "
        f"(+{record['peak_above_baseline_mb']:.0f} MB)",
        flush=True,
    )
    return record


def agreement(scpdac_npz: str, atlasmap_npz: str) -> dict:
    a, b = np.load(scpdac_npz), np.load(atlasmap_npz)
    ours, theirs = b["label"], a["label"]
    called = ours != UNKNOWN
    return {
        "label_agreement_where_atlasmap_calls": float(np.mean(ours[called] == theirs[called]))
        if called.any()
        else float("nan"),
        "atlasmap_unknown_fraction": float(np.mean(~called)),
        "argmax_agreement_all_cells": float(np.mean(b["argmax"] == theirs)),
        "latent_max_abs_difference": float(np.max(np.abs(a["latent"] - b["latent"]))),
    }


def _ratios(pair: dict) -> dict:
    s, a = pair["scpdac"], pair["atlasmap"]
    if "error" in s or "error" in a:
        return {}
    out = {
        "time_atlasmap_over_scpdac": a["seconds"] / s["seconds"],
        "peak_above_baseline_atlasmap_over_scpdac": a["peak_above_baseline_mb"]
        / s["peak_above_baseline_mb"],
        "total_peak_atlasmap_over_scpdac": a["peak_rss_mb"] / s["peak_rss_mb"],
    }
    if "map_query_seconds" in a:
        out["time_map_query_only_over_scpdac"] = a["map_query_seconds"] / s["seconds"]
    return out


def versions() -> dict:
    """bench.versions(), and scpdac's."""
    out = bench.versions()
    out["scpdac"] = scpdac_package.PACKAGE["version"] + " (PyPI wheel, scArches stand-in)"
    return out


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="frozen-path query sizes, comma-separated")
    parser.add_argument("--surgery-sizes", help="surgery-path query sizes (0: none)")
    parser.add_argument("--atlas-cells", type=int, help="synthetic atlas size for surgery")
    parser.add_argument("--smoke", action="store_true", help="1k frozen, 300 surgery (CI)")
    parser.add_argument("--results", type=Path, help="markdown table (JSON beside it)")
    parser.add_argument("--work", type=Path, default=RUNS / "vs_scpdac")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument(
        "--repeats", type=int, default=1, help="pairs of runs per size (the report's spread)"
    )
    parser.add_argument(
        "--tables-only", action="store_true", help="rewrite --results from its JSON"
    )
    # The child's own arguments.
    parser.add_argument("--child", choices=TOOLS, dest="tool", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("frozen", "surgery"), help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--atlas", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scpdac", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan_of(args) -> dict:
    """The sizes to run: the full or smoke plan, as the command line changes it."""
    plan = dict(SMOKE if args.smoke else FULL)
    if args.sizes:
        plan["frozen"] = [int(x) for x in args.sizes.split(",") if int(x) > 0]
    if args.surgery_sizes:
        plan["surgery"] = [int(x) for x in args.surgery_sizes.split(",") if int(x) > 0]
    if args.atlas_cells:
        plan["atlas"] = args.atlas_cells
    return plan


def prepare(work: Path, plan: dict, jobs: list) -> tuple[Path, Path, dict, Path | None]:
    """scpdac installed, the model taken out of its wheel, the synthetic atlas and every
    query written (before any run, none while another is timed): the model's folder,
    scpdac's, the query of each size and the atlas."""
    from atlasmap.model_package import fetch_model_from_wheel
    from atlasmap.reference import read_model_info

    scpdac_dir = scpdac_package.install(work / "scpdac")
    model = work / "model" / "human_scanvi"
    if not (model / MODEL_FILE).exists():
        p = scpdac_package.PACKAGE
        fetch_model_from_wheel(
            p["name"],
            p["version"],
            p["path"],
            model,
            p["sha256"],
            scpdac_package.wheel_dir(scpdac_dir),
        )
    info = read_model_info(model)
    panel = Panel(info.genes)

    def data(n_cells: int) -> Path:
        path = work / "data" / f"query_{n_cells}_v{GENERATOR_VERSION}.h5ad"
        if not path.exists():
            start = time.perf_counter()
            path.parent.mkdir(parents=True, exist_ok=True)
            panel.query(n_cells, seed=n_cells).write_h5ad(path.with_suffix(".tmp.h5ad"))
            os.replace(path.with_suffix(".tmp.h5ad"), path)
            print(f"  query {n_cells:,} cells written in {time.perf_counter() - start:.0f} s")
        return path

    atlas_path = None
    if plan["surgery"]:
        atlas_path = work / "data" / f"atlas_{plan['atlas']}_v{GENERATOR_VERSION}.h5ad"
        if not atlas_path.exists():
            atlas_path.parent.mkdir(parents=True, exist_ok=True)
            atlas = panel.atlas(plan["atlas"], info.batches, info.labels, seed=1)
            atlas.write_h5ad(atlas_path)
    queries = {n: data(n) for _, n in jobs}
    return model, scpdac_dir, queries, atlas_path


def run_pairs(jobs, queries, atlas_path, work, model, scpdac_dir, timeout, repeats=1) -> list[dict]:
    """Each (path, size), ``repeats`` times: both tools in turn (so that a change in the
    machine's load reaches both of a pair alike), then their ratios and agreement."""
    runs = []
    for mode, n in jobs:
        for repeat in range(1, repeats + 1):
            pair = {"mode": mode, "cells": n, "repeat": repeat, "repeats": repeats}
            for tool in TOOLS:
                atlas = atlas_path if mode == "surgery" else None
                pair[tool] = _run_child(
                    tool, mode, queries[n], atlas, work, model, scpdac_dir, timeout, repeat
                )
            pair["ratios"] = _ratios(pair)
            if "outputs" in pair["scpdac"] and "outputs" in pair["atlasmap"]:
                pair["agreement"] = agreement(
                    pair["scpdac"]["outputs"], pair["atlasmap"]["outputs"]
                )
            runs.append(pair)
            print(
                f"  {mode} {n:,} ({repeat}/{repeats}): {json.dumps(pair['ratios'])} "
                f"{json.dumps(pair.get('agreement'))}"
            )
    return runs


def main(argv=None) -> None:
    args = parse(argv)
    if args.tool:
        child(args)
        return
    results = args.results or (
        BENCHMARKS / ("results_smoke.vs_scpdac.md" if args.smoke else "vs_scpdac.md")
    )
    if args.tables_only:
        write_results(results, json.loads(results.with_suffix(".json").read_text()))
        return
    plan = plan_of(args)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    jobs = [("frozen", n) for n in plan["frozen"]] + [("surgery", n) for n in plan["surgery"]]
    model, scpdac_dir, queries, atlas_path = prepare(work, plan, jobs)
    runs = run_pairs(jobs, queries, atlas_path, work, model, scpdac_dir, args.timeout, args.repeats)

    import torch

    summary = {
        "date": dt.date.today().isoformat(),
        "command": "python "
        + " ".join([str(Path(__file__).relative_to(REPO))] + (argv or sys.argv[1:])),
        "machine": machine(),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "atlas_cells": plan["atlas"] if plan["surgery"] else 0,
        "runs": runs,
    }
    write_results(results, summary)
    print(f"wrote {results} and {results.with_suffix('.json')}")
    failed = [f"{r['mode']} {r['cells']} {t}" for r in runs for t in TOOLS if "error" in r[t]]
    if failed:
        sys.exit(f"runs failed: {failed}")


if __name__ == "__main__":
    main()
