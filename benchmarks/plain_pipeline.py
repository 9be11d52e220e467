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

import bench  # noqa: F401  (first: the library on the path)
import yaml
from atlasmap.contract import MODES, local_threads
from bench import REPO


def run(config_path: Path, out: Path, threads: int = 2) -> None:
    import torch
    from snakemake.utils import validate

    config = yaml.safe_load(config_path.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))

    # Each job's threads as in a local run on ``threads`` cores (common.smk:
    # side_by_side): torch's thread count moves surgery's sums, so the script matches
    # it to give the workflow's calls.
    torch.set_num_threads(min(4, threads))  # train_reference asks for 4, nothing beside it
    ((name, query),) = config["queries"].items()
    model = trained_model(config, out)
    subset = load_query(config, name, query, out)
    reference = reference_side(config, name, subset, model, out, threads)
    results = out / "results" / name
    for mode in MODES:
        folder = results / mode
        # The threads map_query's job gets (common.smk: mapping_threads).
        torch.set_num_threads(local_threads(4, threads) if mode == "surgery" else 1)
        map_and_call(config, query, subset, model, mode, folder, reference)
        figures(config, name, query, mode, folder, reference)
    compare(config, name, results)


def trained_model(config: dict, out: Path) -> Path:
    """The config's model, or one trained on its atlas as the workflow trains it."""
    from atlasmap.reference import train_reference_files
    from atlasmap.settings import TrainingSettings

    reference, mapping = config["reference"], config["mapping"]
    model = reference["model"]
    if model is None:
        model = out / "results" / "references" / "default" / "scanvi_model"
        train_reference_files(
            atlas_path=reference["atlas"],
            model_dir=model,
            reference_config=reference,
            settings=TrainingSettings.from_config(config),
            seed=config["seed"],
            accelerator=mapping["accelerator"],
        )
    return model


def load_query(config: dict, name: str, query: dict, out: Path) -> Path:
    """download_query, load_query and subset_query: the query's subset.h5ad."""
    from atlasmap.download import fetch, resolve_sources
    from atlasmap.query import DEPOSIT_FILES, load_query_files, subset_query_files
    from atlasmap.settings import DownloadSettings

    reference = config["reference"]
    deposit = out / "resources" / "queries" / name
    sources = resolve_sources(query["source"], geo_mirror=config["download"]["geo_mirror"])
    for role, location in sources.items():
        fetch(location, deposit / DEPOSIT_FILES[role], DownloadSettings.from_config(config))

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
    return subset


def reference_side(config: dict, name: str, subset: Path, model, out: Path, threads: int) -> dict:
    """The reference side, once for both modes (embed_reference, predict_baseline,
    layout_reference, fit_calls): what the modes' steps read of it."""
    import torch
    from atlasmap.baseline import predict_baseline_files
    from atlasmap.call_adapters import fit_calls_files
    from atlasmap.embedding import layout_reference_files
    from atlasmap.mapping import embed_reference_files
    from atlasmap.settings import CallSettings, EmbeddingSettings, MappingSettings

    reference, seed = config["reference"], config["seed"]
    atlas = reference["atlas"]
    reference_dir = out / "results" / "references" / "default"
    embedded_atlas = reference_dir / "embedded_atlas.h5ad"
    map_settings = MappingSettings.from_config(config)
    torch.set_num_threads(local_threads(2, threads))
    embed_reference_files(
        atlas_path=atlas,
        model_dir=model,
        settings=map_settings,
        embedded=embedded_atlas,
    )
    layout = {"coords": reference_dir / "umap.h5ad", "index": reference_dir / "annoy_index.ann"}
    layout_settings = EmbeddingSettings.from_config(config, n_jobs=threads)
    baseline = out / "results" / name / "baseline" / "predictions.tsv"
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
    calls_settings = CallSettings.from_config(config, n_jobs=local_threads(2, threads))
    reference_calls = reference_dir / "call_model.npz"
    fit_calls_files(
        atlas_path=embedded_atlas,
        reference=reference,
        settings=calls_settings,
        output=reference_calls,
        counts_path=atlas,
        model_dir=model,
    )
    return {
        "embedded_atlas": embedded_atlas,
        "map_settings": map_settings,
        "layout": layout,
        "layout_settings": layout_settings,
        "baseline": baseline,
        "calls_settings": calls_settings,
        "reference_calls": reference_calls,
    }


def map_and_call(config: dict, query: dict, subset: Path, model, mode: str, folder, ref: dict):
    """map_query, call_celltypes and evaluate_mapping of one mode."""
    from atlasmap.call_adapters import call_celltypes_files
    from atlasmap.mapping import map_query_files
    from atlasmap.metrics import evaluate_mapping_files

    reference = config["reference"]
    map_query_files(
        query_path=subset,
        embedded_atlas=ref["embedded_atlas"],
        model_dir=model,
        mode=mode,
        settings=ref["map_settings"],
        embedded=folder / "embedded.h5ad",
        qc=folder / "mapping_qc.tsv",
    )
    call_celltypes_files(
        embedded_path=folder / "embedded.h5ad",
        mapping_qc_path=folder / "mapping_qc.tsv",
        settings=ref["calls_settings"],
        predictions_path=folder / "predictions.tsv",
        qc_path=folder / "qc.tsv",
        report_path=folder / "calls.json",
        reference_calls_path=ref["reference_calls"],
        query_path=subset,
        atlas_path=reference["atlas"],
        counts_layer=reference["counts_layer"],
    )
    evaluate_mapping_files(
        predictions_path=folder / "predictions.tsv",
        baseline_path=ref["baseline"],
        atlas_path=reference["atlas"],
        model_dir=model,
        truth_column=query["truth"],
        reference_config=reference,
        unknown_threshold=config["mapping"]["unknown_threshold"],
        output=folder / "metrics.json",
    )


def figures(config: dict, name: str, query: dict, mode: str, folder, ref: dict) -> None:
    """neighbors_umap, plot_mapping and plot_confusion of one mode."""
    from atlasmap.contract import mapping_figure_names
    from atlasmap.embedding import neighbors_umap_files
    from atlasmap.plots import confusion_figure, mapping_figures

    reference, plots = config["reference"], config["plots"]
    vector = plots["vector_format"]
    layout = ref["layout"]
    neighbors_umap_files(
        embedded=folder / "embedded.h5ad",
        predictions=folder / "predictions.tsv",
        mapped=folder / "mapped.h5ad",
        settings=ref["layout_settings"],
        **(
            {"reference_coords": layout["coords"], "reference_index": layout["index"]}
            if config["umap"]["layout"] == "reference"
            else {}
        ),
    )
    names = mapping_figure_names(config["umap"]["query_alone"])
    style = {"colors": plots["colors"], "dpi": plots["dpi"], "title": f"{name}, {mode}"}
    mapping_figures(
        folder / "mapped.h5ad",
        {f: [folder / "plots" / f"{f}.png", folder / "plots" / f"{f}.{vector}"] for f in names},
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


def compare(config: dict, name: str, results: Path) -> None:
    """compare_modes: the two modes side by side."""
    from atlasmap.plots import compare_figures

    plots = config["plots"]
    vector = plots["vector_format"]
    compare = results / "compare"
    compare_figures(
        results / "surgery" / "mapped.h5ad",
        results / "embed" / "mapped.h5ad",
        side_by_side=[compare / f"umap_surgery_vs_embed.{ext}" for ext in ("png", vector)],
        heatmap=[compare / f"agreement_heatmap.{ext}" for ext in ("png", vector)],
        agreement=compare / "agreement.tsv",
        agreement_summary=compare / "agreement.json",
        labels_key=config["reference"]["labels_key"],
        level=plots["level"],
        colors=plots["colors"],
        dpi=plots["dpi"],
        title=name,
    )


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
