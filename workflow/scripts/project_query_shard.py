"""Rule project_query_shard: one shard's query cells projected onto the reference UMAP."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.embedding import project_shard_files  # noqa: E402
from atlasmap.settings import EmbeddingSettings  # noqa: E402

project_shard_files(
    embedded=snakemake.input.embedded,
    reference_coords=snakemake.input.reference_coords,
    reference_index=snakemake.input.reference_index,
    settings=EmbeddingSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
    projection=snakemake.output.projection,
)
