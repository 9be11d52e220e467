"""Rule gather_calls: a scattered query's shard calls joined into call_celltypes's files."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.scatter import gather_calls_files  # noqa: E402

gather_calls_files(
    predictions=list(snakemake.input.predictions),
    reports=list(snakemake.input.calls),
    mapping_qc=snakemake.input.mapping_qc,
    query_path=snakemake.input.query,
    batch_key=snakemake.params.batch_key,
    predictions_path=snakemake.output.predictions,
    qc_path=snakemake.output.qc,
    report_path=snakemake.output.calls,
)
