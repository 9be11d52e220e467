"""Rule gather_mapping: a scattered query's shards joined into one embedded expanded atlas."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.scatter import gather_mapping_files  # noqa: E402

gather_mapping_files(
    shards=list(snakemake.input.shards),
    shard_qc=list(snakemake.input.shard_qc),
    query_path=snakemake.input.query,
    embedded_atlas=snakemake.input.atlas or None,
    embedded=snakemake.output.embedded,
    qc=snakemake.output.qc,
)
