"""The GPU path of the workflow, timed against the CPU on the same machine, in one run.

The demo study (12k atlas cells, 5k query cells) goes through what the GPU
rules do: train_reference (scVI then scANVI, the demo's epochs), map_query in
surgery (10 epochs) and embed mode, then the calls. Each accelerator trains its
own model from the same seed; the calls are compared between the two.

    python benchmarks/gpu_path.py --out gpu_path.json      # GPU if visible, and CPU
    python benchmarks/gpu_path.py --accelerators cpu        # CPU only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import numpy as np  # noqa: E402


def run(accelerator: str, study, workdir: Path, seed: int) -> dict:
    import torch
    from atlasmap.calls import CallSettings, call_mapping
    from atlasmap.mapping import MappingSettings, map_query
    from atlasmap.reference import TrainingSettings, save_model, train_reference_model

    query = study.query.copy()
    query.obs = query.obs.rename(columns={"patients": "Sample_ID"})
    query.layers["counts"] = query.X.copy()
    timings = {}
    start = time.perf_counter()
    model = train_reference_model(
        study.reference,
        "Level_4",
        "Sample_ID",
        settings=TrainingSettings(n_top_genes=1500, scvi_max_epochs=30, scanvi_max_epochs=20),
        seed=seed,
        accelerator=accelerator,
    )
    model_dir = workdir / f"model_{accelerator}"
    save_model(model, model_dir)
    timings["train_reference_s"] = time.perf_counter() - start
    calls = {}
    for mode in ("surgery", "embed"):
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
        timings[f"{mode}_unknown_unseen"] = float(np.mean(called[~seen] == "Unknown"))
    return {k: round(v, 4) for k, v in timings.items()}, calls


def main() -> None:
    import torch
    from atlasmap.demo import make_demo_study

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerators", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    accelerators = args.accelerators or (["gpu", "cpu"] if torch.cuda.is_available() else ["cpu"])
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
            for mode in ("surgery", "embed")
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
