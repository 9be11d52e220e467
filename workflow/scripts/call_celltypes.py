"""Rule call_celltypes: label transfer (latent and expression), calibration and novelty."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.call_adapters import call_celltypes_files  # noqa: E402
from atlasmap.settings import CallSettings  # noqa: E402

call_celltypes_files(
    embedded_path=snakemake.input.embedded,
    mapping_qc_path=snakemake.input.mapping_qc,
    settings=CallSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
    predictions_path=snakemake.output.predictions,
    qc_path=snakemake.output.qc,
    report_path=snakemake.output.calls,
    reference_calls_path=snakemake.input.reference_calls or None,
    query_path=snakemake.input.query,
    atlas_path=snakemake.input.atlas or None,
    counts_layer=snakemake.params.counts_layer,
)
