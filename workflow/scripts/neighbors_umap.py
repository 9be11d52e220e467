"""Rule neighbors_umap: Annoy neighbours and UMAP on the scANVI latent, with the calls -> mapped.h5ad."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.embedding import neighbors_umap_files  # noqa: E402
from atlasmap.settings import EmbeddingSettings  # noqa: E402

neighbors_umap_files(
    embedded=snakemake.input.embedded,
    predictions=snakemake.input.predictions,
    mapped=snakemake.output.mapped,
    reference_coords=snakemake.input.reference_coords or None,
    reference_index=snakemake.input.reference_index or None,
    projections=list(snakemake.input.projections),
    settings=EmbeddingSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
)
