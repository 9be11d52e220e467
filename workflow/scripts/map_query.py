"""Rule map_query: surgery or frozen embedding of one query; expanded atlas, predictions, QC."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

import torch  # noqa: E402
from atlasmap.mapping import map_query_files, mapping_settings  # noqa: E402

torch.set_num_threads(snakemake.threads)
map_query_files(
    snakemake.input.query,
    snakemake.input.atlas or None,
    snakemake.input.model,
    snakemake.wildcards.mode,
    mapping_settings(snakemake.params.reference, snakemake.params.mapping, snakemake.params.seed),
    mapped=snakemake.output.embedded,
    predictions=snakemake.output.predictions,
    qc=snakemake.output.qc,
)
