"""Rule call_celltypes_shard: the calls of one shard of a scattered query."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.call_adapters import call_shard_files  # noqa: E402
from atlasmap.settings import CallSettings  # noqa: E402

call_shard_files(
    embedded_path=snakemake.input.embedded,
    settings=CallSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
    predictions_path=snakemake.output.predictions,
    report_path=snakemake.output.calls,
    reference_calls_path=snakemake.input.reference_calls or None,
    query_path=snakemake.input.query,
    plan_path=snakemake.input.plan,
    shard=snakemake.wildcards.shard,
)
