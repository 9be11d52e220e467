"""Rule fit_calls: the calls' label transfer, calibration and novelty cut-off, fitted on
the atlas once per reference and reused by every query and mode."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.call_adapters import fit_calls_files  # noqa: E402
from atlasmap.settings import CallSettings  # noqa: E402

fit_calls_files(
    atlas_path=snakemake.input.atlas,
    reference=snakemake.params.reference,
    settings=CallSettings.from_values(snakemake.params.settings, n_jobs=snakemake.threads),
    output=snakemake.output.model,
    counts_path=snakemake.input.counts,
    model_dir=snakemake.input.model,
)
