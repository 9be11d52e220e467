"""Choose the demo's training settings on held-out *reference* donors, never on the query.

Trains the reference model on donors 1-4 of the demo atlas with each candidate
setting, maps donors 5-6 as a query (embed mode, no Unknown threshold) and
reports their accuracy next to a logistic-regression baseline. Writes
benchmarks/tune_reference.md.

    .venv/bin/python benchmarks/tune_reference.py
"""

import dataclasses
import sys
import time
from pathlib import Path

import bench  # noqa: F401  (first: the library on the path)
import numpy as np
from atlasmap.baseline import logistic_baseline
from atlasmap.demo import make_demo_study
from atlasmap.mapping import map_query
from atlasmap.reference import save_model, train_reference_models
from atlasmap.settings import MappingSettings, TrainingSettings

CANDIDATES = {
    "scvi30_scanvi10_spl100": TrainingSettings(
        n_top_genes=1500, scvi_max_epochs=30, scanvi_max_epochs=10
    ),
    "scvi30_scanvi20_all": TrainingSettings(
        n_top_genes=1500, scvi_max_epochs=30, scanvi_max_epochs=20, n_samples_per_label=None
    ),
    "scvi30_scanvi20_all_latent20": TrainingSettings(
        n_top_genes=1500,
        scvi_max_epochs=30,
        scanvi_max_epochs=20,
        n_samples_per_label=None,
        n_latent=20,
    ),
}


RESULTS = Path(__file__).with_name("tune_reference.md")


def main(out=RESULTS):
    study = make_demo_study(seed=0)
    atlas_all = study.reference
    held = atlas_all.obs["Sample_ID"].isin(["ATLAS_D05", "ATLAS_D06"]).to_numpy()
    atlas = atlas_all[~held].copy()
    query = atlas_all[held].copy()
    truth = query.obs["Level_4"].astype(str).to_numpy()
    query.obs = query.obs[["Sample_ID"]].copy()
    rows = []
    for name, settings in (
        (n, c) for n, c in CANDIDATES.items() if len(sys.argv) < 2 or n in sys.argv[1:]
    ):
        start = time.perf_counter()
        no_folds = dataclasses.replace(settings, calibration_models=0)  # mapping accuracy only
        model, _ = train_reference_models(atlas, "Level_4", "Sample_ID", settings=no_folds, seed=0)
        seconds = time.perf_counter() - start
        directory = Path("/tmp/atlasmap_tune") / name
        save_model(model, directory)
        result = map_query(query, atlas, directory, "embed", MappingSettings(unknown_threshold=0.0))
        accuracy = np.mean(result.predictions["predicted_celltype"].to_numpy() == truth)
        base = logistic_baseline(atlas, query, result.expanded.var_names, "Level_4", seed=0)
        base_accuracy = np.mean(base["predicted_celltype"].to_numpy() == truth)
        rows.append(
            (name, seconds, result.info["reference_self_accuracy"], accuracy, base_accuracy)
        )
        print(rows[-1], flush=True)
    lines = [
        "# Reference training settings, chosen on held-out reference donors",
        "",
        "Demo atlas (seed 0), trained on donors 1-4, donors 5-6 mapped in embed mode with no",
        "Unknown threshold. `python benchmarks/tune_reference.py` on 2 CPU cores.",
        "",
        "| setting | train s | reference self-accuracy | held-out accuracy | logistic baseline |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s:.0f} | {a:.3f} | {h:.3f} | {b:.3f} |" for n, s, a, h, b in rows]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
