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
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

import scpdac_package  # noqa: E402

FULL = {"frozen": [10_000, 100_000, 200_000], "surgery": [10_000], "atlas": 10_000}
SMOKE = {"frozen": [1_000], "surgery": [300], "atlas": 300}
N_GENES = 30_000
DROPPED = 0.10
UMIS = 1_150  # about 1,000 detected genes per cell
N_SAMPLES = 14
WARMUP_CELLS = 200
SURGERY_EPOCHS = 10
GENERATOR_VERSION = 1  # bump when the data change: cached h5ad files are named by it
TOOLS = ("scpdac", "atlasmap")


# ---------------------------------------------------------------- synthetic data


class Panel:
    """The study: 30k genes, the model's genes on the most type-variable of them, a tenth dropped."""

    def __init__(self, model_genes, seed: int = 0):
        from synthetic import _type_log_weights

        rng = np.random.default_rng(seed)
        self.log_weights = _type_log_weights(rng, N_GENES)
        self.n_types = self.log_weights.shape[0]
        self.share = rng.dirichlet(np.full(self.n_types, 5.0))
        model_genes = np.asarray(model_genes, dtype=object)
        # The model's genes are markers: put them on the genes whose level varies most by type.
        self.model_columns = np.argsort(-self.log_weights.var(axis=0), kind="stable")[
            : len(model_genes)
        ]
        self.model_genes = model_genes
        dropped = rng.choice(len(model_genes), int(round(DROPPED * len(model_genes))), False)
        self.dropped = np.sort(dropped)
        names = np.array([f"XGENE{i:05d}" for i in range(N_GENES)], dtype=object)
        kept = np.setdiff1d(np.arange(len(model_genes)), self.dropped)
        names[self.model_columns[kept]] = model_genes[kept]
        self.query_genes = names
        self.tech = rng.normal(0, 0.4, N_GENES)

    def _counts(self, rng, n_cells: int, shifts: list[np.ndarray], chunk: int = 20_000):
        """CSR counts and cell types, sample by sample, chunk by chunk."""
        import scipy.sparse as sp
        from synthetic import _draw

        parts, types_all, samples = [], [], []
        for s, size in enumerate(np.array_split(np.arange(n_cells), len(shifts))):
            for cells in np.array_split(size, max(1, len(size) // chunk)):
                types = rng.choice(self.n_types, len(cells), p=self.share)
                parts.append(_draw(rng, self.log_weights, types, shifts[s], UMIS))
                types_all.append(types)
                samples.append(np.full(len(cells), s))
        return sp.vstack(parts).tocsr(), np.concatenate(types_all), np.concatenate(samples)

    def query(self, n_cells: int, seed: int):
        """The query AnnData: counts in X (float32 CSR), Sample_ID PA01..PA14 (new batches)."""
        import anndata as ad
        import pandas as pd

        rng = np.random.default_rng(seed)
        n_samples = min(N_SAMPLES, max(1, n_cells // 50))
        shifts = [self.tech + rng.normal(0, 0.2, N_GENES) for _ in range(n_samples)]
        counts, types, samples = self._counts(rng, n_cells, shifts)
        obs = pd.DataFrame(
            {
                "Sample_ID": pd.Categorical([f"PA{s + 1:02d}" for s in samples]),
                "tissue": "tumour",
                "synthetic_type": types,
            },
            index=[f"BC{i:09d}-1" for i in range(n_cells)],
        )
        return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(self.query_genes)))

    def atlas(self, n_cells: int, model_batches, model_labels, seed: int):
        """A reference over the model's genes: 8 of its batches, one of its labels per type."""
        import anndata as ad
        import pandas as pd

        rng = np.random.default_rng(seed)
        batches = list(model_batches)[:8]
        shifts = [rng.normal(0, 0.25, N_GENES) for _ in batches]
        counts, types, samples = self._counts(rng, n_cells, shifts)
        counts = counts[:, self.model_columns].tocsr()
        labels = [x for x in model_labels if x != "Unknown"]
        type_label = np.asarray(labels, dtype=object)[
            np.random.default_rng(seed + 1).choice(len(labels), self.n_types, replace=False)
        ]
        obs = pd.DataFrame(
            {
                "Sample_ID": pd.Categorical(np.asarray(batches, dtype=object)[samples]),
                "Level_4": pd.Categorical(type_label[types]),
            },
            index=[f"atlas_{i:07d}" for i in range(n_cells)],
        )
        atlas = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=list(self.model_genes)))
        atlas.layers["counts"] = atlas.X
        return atlas


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
    from atlasmap.calls import CallSettings
    from atlasmap.mapping import MappingSettings

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
    if mode == "frozen":
        out = scpdac.tl.embed_and_predict(query, "human", **kwargs)
        labels, latent = out.obs["predicted_celltype"], out.obsm["X_scANVI_emb"]
    else:
        out = scpdac.tl.extend_atlas(query, atlas, "human", max_epochs=SURGERY_EPOCHS, **kwargs)
        is_query = (out.obs["source"] == "query").to_numpy()
        labels = out.obs["predicted_celltype"][is_query]
        latent = out.obsm["X_scANVI_emb"][is_query]
    return {"label": np.asarray(labels, dtype=str), "latent": np.asarray(latent)}


def run_atlasmap(query, atlas, mode: str, model_dir: Path, timings: dict) -> dict:
    from atlasmap.calls import call_mapping
    from atlasmap.contract import EMBEDDING_KEY
    from atlasmap.mapping import PROBABILITIES_KEY, map_query

    mapping, calls = _settings(mode)
    start = time.perf_counter()
    result = map_query(query, atlas, model_dir, "embed" if mode == "frozen" else "surgery", mapping)
    timings["map_query_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    table, _ = call_mapping(result, calls)
    timings["calls_seconds"] = time.perf_counter() - start
    expanded = result.expanded
    is_query = (expanded.obs["source"] == "query").to_numpy()
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
        import atlasmap.calls  # noqa: F401
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


def _run_child(tool, mode, query, atlas, work: Path, model: Path, scpdac_dir: Path, timeout):
    out = work / "runs" / f"{mode}_{Path(query).stem}_{tool}.json"
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
    called = ours != "Unknown"
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


def machine() -> dict:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def versions() -> dict:
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out = {"python": platform.python_version(), "atlasmap": f"git {commit}"}
    for name in ("scvi-tools", "torch", "anndata", "scanpy", "numpy", "scipy"):
        out[name] = version(name)
    out["scpdac"] = scpdac_package.PACKAGE["version"] + " (PyPI wheel, scArches stand-in)"
    return out


def _fmt(x, digits=1):
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:,.{digits}f}"


def write_results(path: Path, summary: dict) -> None:
    lines = [
        "# atlasmap against scpdac (the scPDAC tutorial's package)",
        "",
        f"Run {summary['date']} on {summary['machine']['cpu']} "
        f"({summary['machine']['cores']} cores, {summary['machine']['memory_gb']} GB), "
        f"torch on {summary['torch_threads']} threads, CPU only.",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
        "",
        "The same synthetic query (30,000 genes, about 1,000 detected per cell, a tenth of the "
        "model's 2,232 genes missing) and the same model (scPDAC's human SCANVI, from the "
        "scpdac 0.1.1 wheel) for both; each run in a fresh process, timed on the data in memory "
        f"after a {WARMUP_CELLS}-cell warm-up. atlasmap's time is `map_query` plus "
        "`call_mapping` (its labels); scpdac's is the one call that returns its labels. Peak "
        "memory: the process's peak RSS during the call (the kernel's counter reset after the "
        "read), total and above the RSS after the read. Surgery runs against a synthetic "
        f"atlas ({summary['atlas_cells']:,} cells over the model's genes) given to both, "
        f"{SURGERY_EPOCHS} epochs each. See benchmarks/vs_scpdac.py for the details.",
        "",
        "| path | cells | tool | seconds | cells/s | peak above read (MB) | total peak (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in summary["runs"]:
        for tool in TOOLS:
            r = run[tool]
            if "error" in r:
                lines.append(f"| {run['mode']} | {run['cells']:,} | {tool} | {r['error'][:80]} |")
                continue
            seconds = _fmt(r["seconds"])
            if tool == "atlasmap" and "map_query_seconds" in r:
                seconds += f" ({_fmt(r['map_query_seconds'])} + {_fmt(r['calls_seconds'])})"
            lines.append(
                f"| {run['mode']} | {run['cells']:,} | {tool} | {seconds} | "
                f"{_fmt(r['cells_per_second'], 0)} | {_fmt(r['peak_above_baseline_mb'], 0)} | "
                f"{_fmt(r['peak_rss_mb'], 0)} |"
            )
    lines += [
        "",
        "atlasmap's seconds: total (`map_query` + `call_mapping`).",
        "",
        "## Ratios (atlasmap / scpdac) and agreement",
        "",
        "| path | cells | time | time, map_query only | peak above read | total peak | "
        "same label where atlasmap calls one | atlasmap Unknown | same argmax, all cells | "
        "max latent difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in summary["runs"]:
        r, g = run.get("ratios") or {}, run.get("agreement") or {}

        def pct(key, digits=2, g=g):
            return f"{_fmt(100 * g[key], digits)}%" if key in g else "—"

        latent = g.get("latent_max_abs_difference")
        lines.append(
            f"| {run['mode']} | {run['cells']:,} | "
            f"{_fmt(r.get('time_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('time_map_query_only_over_scpdac'), 2)} | "
            f"{_fmt(r.get('peak_above_baseline_atlasmap_over_scpdac'), 2)} | "
            f"{_fmt(r.get('total_peak_atlasmap_over_scpdac'), 2)} | "
            f"{pct('label_agreement_where_atlasmap_calls')} | "
            f"{pct('atlasmap_unknown_fraction', 1)} | {pct('argmax_agreement_all_cells')} | "
            f"{'—' if latent is None else f'{latent:.1e}'} |"
        )
    lines += [
        "",
        "Reading the agreement columns:",
        "",
        "- *same label where atlasmap calls one*: frozen, atlasmap's classifier call against "
        "scpdac's; surgery, atlasmap's calls are kNN votes over the synthetic atlas, whose "
        "Level_4 labels are one arbitrary model label per synthetic type, so they are not "
        "comparable with scpdac's classifier labels there: read *same argmax* instead.",
        "- *atlasmap Unknown*: scpdac always names the classifier's argmax; atlasmap says "
        "Unknown below the chen2025 config's threshold (0.5). Synthetic cells resemble no PDAC "
        "type, so most classifier probabilities are low.",
        "- *same argmax, all cells*: atlasmap's classifier argmax against scpdac's label, on "
        "every cell. Surgery cannot move the latent of this model (its encoder does not read "
        "the batch), but scvi-tools' `load_query_data` leaves the classifier's BatchNorm scale "
        "and shift trainable (the parameter name `classifier.classifier.0.fc_layers.Layer 0.1.*` "
        "matches its `.0.` first-layer rule), so each tool's 10 epochs move the classifier a "
        "little, differently (their minibatches, scpdac's 90% train split and weight decay).",
    ]
    for note in summary.get("notes", []):
        lines += ["", note]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="frozen-path query sizes, comma-separated")
    parser.add_argument("--surgery-sizes", help="surgery-path query sizes (0: none)")
    parser.add_argument("--atlas-cells", type=int, help="synthetic atlas size for surgery")
    parser.add_argument("--smoke", action="store_true", help="1k frozen, 300 surgery (CI)")
    parser.add_argument("--results", type=Path, help="markdown table (JSON beside it)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "runs" / "vs_scpdac")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
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
    args = parser.parse_args(argv)
    if args.tool:
        child(args)
        return

    results = args.results or (
        REPO / "benchmarks" / ("results_smoke.vs_scpdac.md" if args.smoke else "vs_scpdac.md")
    )
    if args.tables_only:
        write_results(results, json.loads(results.with_suffix(".json").read_text()))
        return
    plan = dict(SMOKE if args.smoke else FULL)
    if args.sizes:
        plan["frozen"] = [int(x) for x in args.sizes.split(",") if int(x) > 0]
    if args.surgery_sizes:
        plan["surgery"] = [int(x) for x in args.surgery_sizes.split(",") if int(x) > 0]
    if args.atlas_cells:
        plan["atlas"] = args.atlas_cells
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    from atlasmap.model_package import fetch_model_from_wheel
    from atlasmap.reference import read_model_info

    scpdac_dir = scpdac_package.install(work / "scpdac")
    model = work / "model" / "human_scanvi"
    if not (model / "model.pt").exists():
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
    jobs = [("frozen", n) for n in plan["frozen"]] + [("surgery", n) for n in plan["surgery"]]
    for _, n in jobs:
        data(n)  # every query written before any run, none while another is timed

    runs = []
    for mode, n in jobs:
        pair = {"mode": mode, "cells": n}
        for tool in TOOLS:
            atlas = atlas_path if mode == "surgery" else None
            pair[tool] = _run_child(
                tool, mode, data(n), atlas, work, model, scpdac_dir, args.timeout
            )
        pair["ratios"] = _ratios(pair)
        if "outputs" in pair["scpdac"] and "outputs" in pair["atlasmap"]:
            pair["agreement"] = agreement(pair["scpdac"]["outputs"], pair["atlasmap"]["outputs"])
        runs.append(pair)
        print(f"  {mode} {n:,}: {json.dumps(pair['ratios'])} {json.dumps(pair.get('agreement'))}")

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
