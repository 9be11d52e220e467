"""Rule map_query: surgery or frozen embedding of one query -> the embedded expanded atlas."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.mapping import map_query_files  # noqa: E402
from atlasmap.settings import MappingSettings  # noqa: E402

torch.set_num_threads(snakemake.threads)
map_query_files(
    query_path=snakemake.input.query,
    embedded_atlas=snakemake.input.atlas or None,
    model_dir=snakemake.input.model,
    mode=snakemake.wildcards.mode,
    settings=MappingSettings.from_values(snakemake.params.settings),
    embedded=snakemake.output.embedded,
    qc=snakemake.output.qc,
)
