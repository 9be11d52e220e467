"""Rule train_reference: scVI then scANVI on the atlas, saved as a scvi-tools model folder."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.reference import train_reference_files  # noqa: E402
from atlasmap.settings import TrainingSettings  # noqa: E402

torch.set_num_threads(snakemake.threads)
train_reference_files(
    atlas_path=snakemake.input.atlas,
    model_dir=snakemake.output.model,
    reference_config=snakemake.params.reference,
    settings=TrainingSettings.from_values(snakemake.params.settings),
    seed=snakemake.params.seed,
    accelerator=snakemake.params.accelerator,
)
