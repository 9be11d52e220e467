"""Rule obtain_atlas: fetch the reference atlas from reference.atlas_url."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.download import fetch_atlas  # noqa: E402
from atlasmap.settings import DownloadSettings  # noqa: E402

fetch_atlas(
    snakemake.params.url,
    snakemake.output.atlas,
    DownloadSettings.from_values(snakemake.params.settings),
    checksum=snakemake.params.checksum,
)
