"""Rule summarize_queries: one table and one label-share figure over every query, mode
and reference."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.summary import MappingRun, summarize_queries_files  # noqa: E402

plots = snakemake.params.plots
summarize_queries_files(
    [MappingRun.from_mapping(run) for run in snakemake.params.runs],
    table=snakemake.output.table,
    figure=[snakemake.output.figure, snakemake.output.figure_vector],
    level=plots["level"],
    labels_key=snakemake.params.labels_key,
    colors=plots["colors"],
    dpi=plots["dpi"],
    # The references' atlases: the palette of every mapping's own figures.
    atlases=snakemake.input.atlases,
)
