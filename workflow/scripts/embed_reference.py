"""Rule embed_reference: the atlas on the model's genes with its latent, once per reference."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.mapping import embed_reference_files  # noqa: E402
from atlasmap.settings import MappingSettings  # noqa: E402

torch.set_num_threads(snakemake.threads)
embed_reference_files(
    atlas_path=snakemake.input.atlas,
    model_dir=snakemake.input.model,
    settings=MappingSettings.from_values(snakemake.params.settings),
    embedded=snakemake.output.atlas,
)
