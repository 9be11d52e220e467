"""Rule embed_reference: the atlas on the model's genes with its latent, once per reference."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.mapping import embed_reference_files, mapping_settings  # noqa: E402

torch.set_num_threads(snakemake.threads)
embed_reference_files(
    atlas_path=snakemake.input.atlas,
    model_dir=snakemake.input.model,
    settings=mapping_settings(
        snakemake.params.reference, snakemake.params.mapping, snakemake.params.seed
    ),
    embedded=snakemake.output.atlas,
)
