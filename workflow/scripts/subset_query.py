"""Rule subset_query: keep the cells the config selects."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.query import subset_query_files  # noqa: E402

subset_query_files(
    input=snakemake.input.h5ad,
    output=snakemake.output.h5ad,
    selection=snakemake.params.subset,
    samples=snakemake.output.samples,
    sample_column=snakemake.params.sample_column,
)
