"""The workflow's steps as one plain Python process: the yardstick for workflow overhead.

    .venv/bin/python benchmarks/plain_pipeline.py CONFIG OUTDIR

Calls the same atlasmap library functions as the rule scripts, in the order of
the DAG, with the same settings (the config is validated and filled with the
schema's defaults, as the workflow does), for a config with one query, both
modes and an atlas; without a model it trains one, as the workflow does. It writes the same files under OUTDIR, so
the only difference from `snakemake` is Snakemake itself: planning, one Python
process and one set of imports per job, and its bookkeeping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))


def run(config_path: Path, out: Path, threads: int = 2) -> None:
    import torch
    from atlasmap.baseline import predict_baseline_files
    from atlasmap.calls import call_celltypes_files, call_settings, fit_calls_files
    from atlasmap.contract import local_threads, mapping_figure_names
    from atlasmap.download import DownloadSettings, fetch, resolve_sources
    from atlasmap.embedding import (
        embedding_settings,
        layout_reference_files,
        neighbors_umap_files,
    )
    from atlasmap.mapping import embed_reference_files, map_query_files, mapping_settings
    from atlasmap.metrics import evaluate_mapping_files
    from atlasmap.plots import compare_figures, confusion_figure, mapping_figures
    from atlasmap.query import DEPOSIT_FILES, load_query_files, subset_query_files
    from atlasmap.reference import train_reference_files
    from snakemake.utils import validate

    config = yaml.safe_load(config_path.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))

    # Each job's threads as in a local run on ``threads`` cores (common.smk:
    # side_by_side): torch's thread count moves surgery's sums, so the script matches
    # it to give the workflow's calls.
    torch.set_num_threads(min(4, threads))  # train_reference asks for 4, nothing beside it
    ((name, query),) = config["queries"].items()
    reference, mapping, plots = config["reference"], config["mapping"], config["plots"]
    atlas, model, seed = reference["atlas"], reference["model"], config["seed"]
    modes = ("surgery", "embed")
    vector = plots["vector_format"]
    if model is None:
        model = out / "results" / "references" / "default" / "scanvi_model"
        train_reference_files(
            atlas_path=atlas,
            model_dir=model,
            reference_config=reference,
            seed=seed,
            accelerator=mapping["accelerator"],
        )

    deposit = out / "resources" / "queries" / name
    sources = resolve_sources(query["source"], geo_mirror=config["download"]["geo_mirror"])
    for role, location in sources.items():
        fetch(location, deposit / DEPOSIT_FILES[role], DownloadSettings(**config["download"]))

    results = out / "results" / name
    loaded, subset = results / "query" / "loaded.h5ad", results / "query" / "subset.h5ad"
    load_query_files(
        files={role: deposit / DEPOSIT_FILES[role] for role in ("matrix", "features", "barcodes")},
        format="10x_mtx",
        metadata_path=deposit / DEPOSIT_FILES["metadata"],
        output=loaded,
        rename=query["rename"],
        barcode_column=query["metadata"]["barcode_column"],
        max_unmatched_fraction=query["metadata"]["max_unmatched_fraction"],
        counts_layer=query["counts_layer"],
        sample_column=query["sample_column"],
        batch_key=reference["batch_key"],
        sample_name=name,
    )
    subset_query_files(
        input=loaded,
        output=subset,
        selection=query["subset"],
        samples=results / "query" / "samples.tsv",
        sample_column=reference["batch_key"],
    )
    # The reference side, once for both modes (embed_reference, fit_calls, layout_reference).
    reference_dir = out / "results" / "references" / "default"
    embedded_atlas = reference_dir / "embedded_atlas.h5ad"
    map_settings = {k: v for k, v in mapping.items() if k != "modes"}
    torch.set_num_threads(local_threads(2, threads))
    embed_reference_files(
        atlas_path=atlas,
        model_dir=model,
        settings=mapping_settings(reference, map_settings, seed),
        embedded=embedded_atlas,
    )
    layout = {"coords": reference_dir / "umap.h5ad", "index": reference_dir / "annoy_index.ann"}
    layout_settings = embedding_settings(config["neighbors"], config["umap"], seed, n_jobs=threads)
    baseline = results / "baseline" / "predictions.tsv"
    predict_baseline_files(
        query_path=subset,
        atlas_path=embedded_atlas,
        model_dir=model,
        reference_config=reference,
        baseline_config=config["baseline"],
        seed=seed,
        output=baseline,
    )
    if config["umap"]["layout"] == "reference":
        layout_reference_files(embedded_atlas=embedded_atlas, settings=layout_settings, **layout)
    calls_settings = call_settings(mapping, seed=seed, n_jobs=local_threads(2, threads))
    reference_calls = reference_dir / "call_model.npz"
    fit_calls_files(
        atlas_path=embedded_atlas,
        reference=reference,
        settings=calls_settings,
        output=reference_calls,
        counts_path=atlas,
        model_dir=model,
    )
    for mode in modes:
        folder = results / mode
        # The threads map_query's job gets (common.smk: mapping_threads).
        torch.set_num_threads(local_threads(4, threads) if mode == "surgery" else 1)
        map_query_files(
            query_path=subset,
            embedded_atlas=embedded_atlas,
            model_dir=model,
            mode=mode,
            settings=mapping_settings(reference, map_settings, seed),
            embedded=folder / "embedded.h5ad",
            qc=folder / "mapping_qc.tsv",
        )
        call_celltypes_files(
            embedded_path=folder / "embedded.h5ad",
            mapping_qc_path=folder / "mapping_qc.tsv",
            settings=calls_settings,
            predictions_path=folder / "predictions.tsv",
            qc_path=folder / "qc.tsv",
            report_path=folder / "calls.json",
            reference_calls_path=reference_calls,
            query_path=subset,
            atlas_path=atlas,
            counts_layer=reference["counts_layer"],
        )
        evaluate_mapping_files(
            predictions_path=folder / "predictions.tsv",
            baseline_path=baseline,
            atlas_path=atlas,
            model_dir=model,
            truth_column=query["truth"],
            reference_config=reference,
            unknown_threshold=mapping["unknown_threshold"],
            output=folder / "metrics.json",
        )
        neighbors_umap_files(
            embedded=folder / "embedded.h5ad",
            predictions=folder / "predictions.tsv",
            mapped=folder / "mapped.h5ad",
            settings=layout_settings,
            **(
                {"reference_coords": layout["coords"], "reference_index": layout["index"]}
                if config["umap"]["layout"] == "reference"
                else {}
            ),
        )
        figures = mapping_figure_names(config["umap"]["query_alone"])
        style = {"colors": plots["colors"], "dpi": plots["dpi"], "title": f"{name}, {mode}"}
        mapping_figures(
            folder / "mapped.h5ad",
            {
                f: [folder / "plots" / f"{f}.png", folder / "plots" / f"{f}.{vector}"]
                for f in figures
            },
            labels_key=reference["labels_key"],
            batch_key=reference["batch_key"],
            level=plots["level"],
            **style,
        )
        confusion_figure(
            folder / "predictions.tsv",
            folder / "metrics.json",
            query["truth"],
            [folder / "plots" / f"confusion_matrix.{ext}" for ext in ("png", vector)],
            labels_key=reference["labels_key"],
            **style,
        )
    compare = results / "compare"
    compare_figures(
        results / "surgery" / "mapped.h5ad",
        results / "embed" / "mapped.h5ad",
        side_by_side=[compare / f"umap_surgery_vs_embed.{ext}" for ext in ("png", vector)],
        heatmap=[compare / f"agreement_heatmap.{ext}" for ext in ("png", vector)],
        agreement=compare / "agreement.tsv",
        agreement_summary=compare / "agreement.json",
        labels_key=reference["labels_key"],
        level=plots["level"],
        colors=plots["colors"],
        dpi=plots["dpi"],
        title=name,
    )


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
