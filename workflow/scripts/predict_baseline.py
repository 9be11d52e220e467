"""Rule predict_baseline: logistic regression on log counts, the yardstick for the mapping."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.baseline import predict_baseline_files  # noqa: E402

predict_baseline_files(
    query_path=snakemake.input.query,
    atlas_path=snakemake.input.atlas,
    model_dir=snakemake.input.model,
    reference_config=snakemake.params.reference,
    baseline_config=snakemake.params.baseline,
    seed=snakemake.params.seed,
    output=snakemake.output.predictions,
)
