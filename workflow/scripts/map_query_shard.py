"""Rule map_query_shard: surgery or frozen embedding of one shard of a scattered query."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.scatter import map_shard_files  # noqa: E402
from atlasmap.settings import MappingSettings  # noqa: E402

torch.set_num_threads(snakemake.threads)
map_shard_files(
    query_path=snakemake.input.query,
    plan_path=snakemake.input.plan,
    shard=snakemake.wildcards.shard,
    embedded_atlas=snakemake.input.atlas or None,
    model_dir=snakemake.input.model,
    mode=snakemake.wildcards.mode,
    settings=MappingSettings.from_values(snakemake.params.settings),
    embedded=snakemake.output.embedded,
    qc=snakemake.output.qc,
)
