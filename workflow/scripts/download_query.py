"""Rule download_query: fetch one deposit file of a query into resources/."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.download import fetch  # noqa: E402
from atlasmap.settings import DownloadSettings  # noqa: E402

fetch(
    snakemake.params.location,
    snakemake.output.file,
    DownloadSettings.from_values(snakemake.params.settings),
    checksum=snakemake.params.checksum,
)
