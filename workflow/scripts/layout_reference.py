"""Rule layout_reference: the atlas cells' Annoy index and UMAP, once per reference."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.embedding import layout_reference_files  # noqa: E402
from atlasmap.settings import EmbeddingSettings  # noqa: E402

layout_reference_files(
    embedded_atlas=snakemake.input.atlas,
    coords=snakemake.output.coords,
    index=snakemake.output.index,
    settings=EmbeddingSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
)
