"""Rule obtain_atlas: fetch the reference atlas from reference.atlas_url."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.download import DownloadSettings, fetch_atlas  # noqa: E402

fetch_atlas(
    snakemake.params.url,
    snakemake.output.atlas,
    DownloadSettings(**snakemake.params.download),
    checksum=snakemake.params.checksum,
)
