"""Rule plan_shards: a query's cells split into shards of whole samples (mapping.scatter)."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.scatter import plan_shards_files  # noqa: E402

plan_shards_files(
    query_path=snakemake.input.query,
    plan_path=snakemake.output.plan,
    batch_key=snakemake.params.batch_key,
    max_cells=snakemake.params.max_cells,
)
