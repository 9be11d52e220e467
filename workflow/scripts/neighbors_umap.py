"""Rule neighbors_umap: Annoy neighbours and UMAP on the scANVI latent, with the calls -> mapped.h5ad."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.embedding import embedding_settings, neighbors_umap_files  # noqa: E402

neighbors_umap_files(
    embedded=snakemake.input.embedded,
    predictions=snakemake.input.predictions,
    mapped=snakemake.output.mapped,
    reference_coords=snakemake.input.reference_coords or None,
    reference_index=snakemake.input.reference_index or None,
    settings=embedding_settings(
        snakemake.params.neighbors,
        snakemake.params.umap,
        snakemake.params.seed,
        n_jobs=snakemake.threads,
    ),
)
