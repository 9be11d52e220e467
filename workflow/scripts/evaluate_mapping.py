"""Rule evaluate_mapping: metrics of the mapping and the baseline against the known labels."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.metrics import evaluate_mapping_files  # noqa: E402

evaluate_mapping_files(
    predictions_path=snakemake.input.predictions,
    baseline_path=snakemake.input.baseline or None,
    atlas_path=snakemake.input.atlas or None,
    model_dir=snakemake.input.model,
    truth_column=snakemake.params.truth,
    reference_config=snakemake.params.reference,
    unknown_threshold=snakemake.params.unknown_threshold,
    output=snakemake.output.metrics,
)
