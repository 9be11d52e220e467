"""Rule evaluate_mapping: metrics of the mapping and the baseline against the known labels."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.metrics import evaluate_files  # noqa: E402

evaluate_files(
    snakemake.input.predictions,
    snakemake.input.baseline or None,
    snakemake.input.atlas or None,
    snakemake.input.model,
    snakemake.params.truth,
    snakemake.params.reference,
    snakemake.params.unknown_threshold,
    snakemake.output.metrics,
)
