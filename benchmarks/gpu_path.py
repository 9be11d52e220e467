"""The GPU path of the workflow, timed against the CPU on the same machine, in one run.

The demo study (12k atlas cells, 5k query cells) goes through what the GPU
rules do: train_reference (scVI then scANVI, the demo's epochs), map_query in
surgery (10 epochs) and embed mode, then the calls. Each accelerator trains its
own model from the same seed; the calls are compared between the two.

    python benchmarks/gpu_path.py --out gpu_path.json      # GPU if visible, and CPU
    python benchmarks/gpu_path.py --accelerators cpu        # CPU only

At atlas scale (``--scale atlas``) a synthetic atlas (benchmarks/synthetic.py,
default 100k cells x 30,000 genes) and a 200k-cell query from the same study are
generated in memory, chunks drawn in parallel, and a saved reference model
trained beforehand on that atlas maps the query: map_query in surgery (10
epochs) and embed mode, once per accelerator in the same process. Each step's
wall time (GPU clocks stopped after torch.cuda.synchronize()), the peak GPU
memory and the process's peak RSS are written to ``--out`` after every step,
so that a run cut short still leaves what it measured.

    # once, on any machine: the atlas and the model trained on it (CPU)
    python benchmarks/gpu_path.py --scale atlas --train-model model_dir
    # then, on the GPU machine: GPU and CPU against that model
    python benchmarks/gpu_path.py --scale atlas --model model_dir --out gpu_path_atlas.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# bench.py and synthetic.py beside this file (benchmarks/, or copies carried with it)
import bench  # noqa: F401  (first: the library on the path)
import numpy as np
from atlasmap.contract import EMBEDDING_KEY, MODES, PROBABILITIES_KEY, UNKNOWN, query_mask
from bench import say


def run(accelerator: str, study, workdir: Path, seed: int) -> dict:
    import torch
    from atlasmap.call_adapters import call_mapping
    from atlasmap.mapping import map_query
    from atlasmap.reference import save_model, train_reference_models
    from atlasmap.settings import CallSettings, MappingSettings, TrainingSettings

    query = study.query.copy()
    query.obs = query.obs.rename(columns={"patients": "Sample_ID"})
    query.layers["counts"] = query.X.copy()
    timings = {}
    start = time.perf_counter()
    # The demo config's training, its two label-blind calibration models included.
    model, held_out = train_reference_models(
        study.reference,
        "Level_4",
        "Sample_ID",
        settings=TrainingSettings(
            n_top_genes=1500, scvi_max_epochs=30, scanvi_max_epochs=20, calibration_models=2
        ),
        seed=seed,
        accelerator=accelerator,
    )
    model_dir = workdir / f"model_{accelerator}"
    save_model(model, model_dir, held_out)
    timings["train_reference_s"] = time.perf_counter() - start
    calls = {}
    for mode in MODES:
        start = time.perf_counter()
        settings = MappingSettings(surgery_max_epochs=10, seed=seed, accelerator=accelerator)
        result = map_query(query, study.reference, model_dir, mode, settings)
        if accelerator == "gpu":
            torch.cuda.synchronize()
        timings[f"map_query_{mode}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        table, _ = call_mapping(result, CallSettings(seed=seed))
        timings[f"call_celltypes_{mode}_s"] = time.perf_counter() - start
        truth = table["author_cell_type"].astype(str).to_numpy()
        seen = truth != "Schwann cell"
        called = table["predicted_celltype"].astype(str).to_numpy()
        calls[mode] = called
        timings[f"{mode}_accuracy_seen"] = float(np.mean(called[seen] == truth[seen]))
        timings[f"{mode}_unknown_unseen"] = float(np.mean(called[~seen] == UNKNOWN))
    return {k: round(v, 4) for k, v in timings.items()}, calls


STEPS = (("gpu", "surgery"), ("gpu", "embed"), ("cpu", "embed"), ("cpu", "surgery"))
# The report's elapsed_s: seconds since the script started.
STARTED = time.perf_counter()


class Events(logging.Handler):
    """The library's log lines during a step, with their time since the step began."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start, self.lines, self.on_line = time.perf_counter(), [], None

    def emit(self, record) -> None:
        seconds = time.perf_counter() - self.start
        message = record.getMessage()
        self.lines.append([round(seconds, 3), message])
        say(f"  {seconds:7.2f}s {record.name}: {message}")
        if self.on_line:
            self.on_line()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def fingerprint(adata) -> dict:
    x = adata.X
    return {"cells": adata.n_obs, "genes": adata.n_vars, "nnz": int(x.nnz), "umis": int(x.sum())}


def synthetic_study(args, what: str):
    from synthetic import Study

    study = Study(n_genes=args.genes, seed=args.seed)
    start = time.perf_counter()
    atlas = study.atlas(args.atlas_cells, processes=args.processes)
    timings = {"generate_atlas_s": round(time.perf_counter() - start, 2)}
    say(f"atlas {atlas.shape}, nnz {atlas.X.nnz:,} in {timings['generate_atlas_s']} s")
    if what == "atlas":
        return atlas, None, timings
    start = time.perf_counter()
    query = study.query(args.query_cells, processes=args.processes)
    query.obs = query.obs.rename(columns={"patients": "Sample_ID"})
    query.layers["counts"] = query.X
    timings["generate_query_s"] = round(time.perf_counter() - start, 2)
    say(f"query {query.shape}, nnz {query.X.nnz:,} in {timings['generate_query_s']} s")
    return atlas, query, timings


def train_atlas_model(args) -> None:
    """The reference model for --scale atlas, trained on the CPU and saved to --train-model."""
    from atlasmap.reference import save_model, train_reference_models
    from atlasmap.settings import TrainingSettings

    atlas, _, timings = synthetic_study(args, "atlas")
    start = time.perf_counter()
    cells = atlas
    if args.train_cells and args.train_cells < atlas.n_obs:
        # Mapping's cost does not depend on how long the model trained: a sample of the
        # atlas (every donor and type in it) keeps the training short on a small machine.
        keep = np.random.default_rng(args.seed).choice(atlas.n_obs, args.train_cells, replace=False)
        cells = atlas[np.sort(keep)].copy()
    settings = TrainingSettings(
        n_top_genes=args.n_top_genes,
        scvi_max_epochs=args.scvi_epochs,
        scanvi_max_epochs=args.scanvi_epochs,
        early_stopping=False,
        calibration_models=0,  # the mapping's cost is measured here, not the calls' fit
    )
    model, _ = train_reference_models(
        cells, "Level_4", "Sample_ID", settings=settings, seed=args.seed, accelerator="cpu"
    )
    save_model(model, args.train_model)
    timings["train_reference_s"] = round(time.perf_counter() - start, 1)
    record = {
        "atlas": fingerprint(atlas),
        "settings": {
            k: getattr(settings, k) for k in ("n_top_genes", "scvi_max_epochs", "scanvi_max_epochs")
        },
        "trained_on_cells": cells.n_obs,
        "seed": args.seed,
        "torch_threads": __import__("torch").get_num_threads(),
        **timings,
    }
    Path(f"{args.train_model}.json").write_text(json.dumps(record, indent=2) + "\n")
    say(f"model saved to {args.train_model}: {record}")


def query_outputs(result, query) -> dict:
    """The query cells' latent and classifier calls from a mapping result."""
    expanded = result.expanded
    mine = query_mask(expanded.obs)
    labels = np.asarray(result.info["classifier_labels"])
    called = labels[expanded.obsm[PROBABILITIES_KEY][mine].argmax(axis=1)]
    return {"latent": np.asarray(expanded.obsm[EMBEDDING_KEY][mine]), "called": called}


def atlas_scale(args) -> None:
    import torch

    say(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"CUDA {'visible' if torch.cuda.is_available() else 'not visible'}"
    )
    gpu = torch.cuda.is_available() and "gpu" in args.accelerators
    report = {
        "scale": "atlas",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "atlas_cells": args.atlas_cells,
        "query_cells": args.query_cells,
        "genes": args.genes,
        "surgery_epochs": args.surgery_epochs,
        "model": str(args.model),
        "steps": {},
    }
    out = Path(args.out) if args.out else None

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - STARTED, 1)
        if out:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, out)

    atlas, query = atlas_data(args, report)
    save()
    if gpu:
        start = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        report["cuda_init_s"] = round(time.perf_counter() - start, 2)
        save()
    outputs = {}
    events = Events()
    logging.getLogger("atlasmap").addHandler(events)
    logging.getLogger("atlasmap").setLevel(logging.INFO)
    events.on_line = save
    for accelerator, mode in STEPS:
        if accelerator not in args.accelerators or (accelerator == "gpu" and not gpu):
            continue
        name = f"{accelerator}_{mode}"
        step = report["steps"][name] = {"accelerator": accelerator, "mode": mode}
        events.lines = step["log"] = []
        outputs[name] = map_step(args, atlas, query, accelerator, mode, step, events)
        say(f"{name}: {json.dumps({k: v for k, v in step.items() if k != 'log'})}")
        other = f"{'cpu' if accelerator == 'gpu' else 'gpu'}_{mode}"
        if other in outputs:
            agree = agreement(outputs[name], outputs[other])
            report.setdefault("agreement_gpu_cpu", {})[mode] = agree
            say(f"{mode} GPU vs CPU: {agree}")
        save()
    step_s = {n: s.get("map_query_s") for n, s in report["steps"].items()}
    for mode in MODES:
        g, c = step_s.get(f"gpu_{mode}"), step_s.get(f"cpu_{mode}")
        if g and c:
            report.setdefault("gpu_over_cpu", {})[mode] = round(g / c, 3)
    report["finished"] = True
    save()
    say("done")


def atlas_data(args, report: dict):
    """The synthetic atlas and query, with what made them and the model in ``report``."""
    import scvi

    report["scvi"] = scvi.__version__
    trained = Path(f"{args.model}.json")
    if trained.exists():
        report["model_training"] = json.loads(trained.read_text())
    atlas, query, timings = synthetic_study(args, "both")
    report["data"] = {**timings, "atlas": fingerprint(atlas), "query": fingerprint(query)}
    if "model_training" in report:
        report["data"]["atlas_same_as_training"] = (
            report["data"]["atlas"] == report["model_training"]["atlas"]
        )
    report["data"]["peak_rss_mb"] = peak_rss_mb()
    return atlas, query


def map_step(args, atlas, query, accelerator: str, mode: str, step: dict, events) -> dict:
    """One mapping (and with --calls, its calls) on ``accelerator``, timed into ``step``;
    the query cells' latent and calls."""
    import torch
    from atlasmap.mapping import map_query
    from atlasmap.settings import MappingSettings

    say(f"{accelerator}_{mode}: map_query starts")
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    settings = MappingSettings(
        surgery_max_epochs=args.surgery_epochs, seed=args.seed, accelerator=accelerator
    )
    start = events.start = time.perf_counter()
    result = map_query(query, atlas, args.model, mode, settings)
    if accelerator == "gpu":
        torch.cuda.synchronize()
    step["map_query_s"] = round(time.perf_counter() - start, 2)
    if accelerator == "gpu":
        step["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        step["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    step["peak_rss_mb"] = peak_rss_mb()
    outputs = query_outputs(result, query)
    truth = query.obs["author_cell_type"].astype(str).to_numpy()
    step["classifier_accuracy"] = round(float(np.mean(outputs["called"] == truth)), 4)
    step["reference_classifier_accuracy"] = round(result.info["reference_classifier_accuracy"], 4)
    if args.calls:
        from atlasmap.call_adapters import call_mapping
        from atlasmap.settings import CallSettings

        start = time.perf_counter()
        table, _ = call_mapping(result, CallSettings(seed=args.seed, n_jobs=os.cpu_count()))
        step["call_celltypes_s"] = round(time.perf_counter() - start, 2)
        called = table["predicted_celltype"].astype(str).to_numpy()
        outputs["calls"] = called
        step["calls_accuracy"] = round(
            float(np.mean(called == table["author_cell_type"].astype(str).to_numpy())), 4
        )
    del result
    gc.collect()
    return outputs


def agreement(a: dict, b: dict) -> dict:
    """How far two accelerators' outputs of the same mapping agree."""
    agree = {
        "classifier_calls": round(float(np.mean(a["called"] == b["called"])), 4),
        # three significant digits: a GPU/CPU difference is often ~1e-7
        "latent_max_abs_diff": float(f"{np.abs(a['latent'] - b['latent']).max():.3g}"),
        "latent_mean_abs_diff": float(f"{np.abs(a['latent'] - b['latent']).mean():.3g}"),
    }
    if "calls" in a and "calls" in b:
        agree["calls"] = round(float(np.mean(a["calls"] == b["calls"])), 4)
    return agree


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerators", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--scale", choices=("demo", "atlas"), default="demo")
    atlas = parser.add_argument_group("--scale atlas")
    atlas.add_argument("--atlas-cells", type=int, default=100_000)
    atlas.add_argument("--query-cells", type=int, default=200_000)
    atlas.add_argument("--genes", type=int, default=30_000)
    atlas.add_argument("--processes", type=int, default=os.cpu_count(), help="to draw the cells")
    atlas.add_argument("--model", type=Path, help="the saved reference model to map onto")
    atlas.add_argument("--surgery-epochs", type=int, default=10)
    atlas.add_argument("--calls", action="store_true", help="also call_mapping (CPU) each result")
    atlas.add_argument("--train-model", type=Path, help="train the model on the atlas, save, stop")
    atlas.add_argument("--train-cells", type=int, default=None, help="train on a sample")
    atlas.add_argument("--n-top-genes", type=int, default=2000)
    atlas.add_argument("--scvi-epochs", type=int, default=20)
    atlas.add_argument("--scanvi-epochs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    args.accelerators = args.accelerators or (
        ["gpu", "cpu"] if torch.cuda.is_available() else ["cpu"]
    )
    if args.scale == "atlas":
        if args.train_model:
            logging.getLogger("atlasmap").setLevel(logging.INFO)
            logging.getLogger().handlers[0].setFormatter(
                logging.Formatter("%(asctime)s %(name)s: %(message)s")
            )
            train_atlas_model(args)
        elif args.model is None:
            parser.error("--scale atlas needs --model (a model saved with --train-model)")
        else:
            atlas_scale(args)
        return
    demo(args)


def demo(args) -> None:
    import torch
    from atlasmap.demo import make_demo_study

    accelerators = args.accelerators
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    study = make_demo_study(seed=args.seed)
    report = {"gpu": device, "cpu_threads": torch.get_num_threads(), "runs": {}}
    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for accelerator in accelerators:
            report["runs"][accelerator], calls[accelerator] = run(
                accelerator, study, Path(tmp), args.seed
            )
            print(accelerator, report["runs"][accelerator], flush=True)
    if {"gpu", "cpu"} <= set(calls):
        report["calls_agree_gpu_cpu"] = {
            mode: round(float(np.mean(calls["gpu"][mode] == calls["cpu"][mode])), 4)
            for mode in MODES
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
