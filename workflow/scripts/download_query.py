"""Rule download_query: fetch one deposit file of a query into resources/."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.download import DownloadSettings, fetch  # noqa: E402

fetch(
    snakemake.params.location,
    snakemake.output.file,
    DownloadSettings(**snakemake.params.download),
    checksum=snakemake.params.checksum,
)
