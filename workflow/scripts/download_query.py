"""Rule download_query: fetch the deposit files of one query into resources/."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.download import fetch_deposit  # noqa: E402

fetch_deposit(snakemake.params.sources, dict(snakemake.output.items()))
