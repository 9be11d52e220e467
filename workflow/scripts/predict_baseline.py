"""Rule predict_baseline: logistic regression on log counts, the yardstick for the mapping."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.baseline import baseline_files  # noqa: E402

baseline_files(
    snakemake.input.query,
    snakemake.input.atlas,
    snakemake.input.model,
    snakemake.params.reference,
    snakemake.params.baseline,
    snakemake.params.seed,
    snakemake.output.predictions,
)
