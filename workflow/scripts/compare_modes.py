"""Rule compare_modes: surgery and embed side by side, and how often their calls agree."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.plots import compare_figures  # noqa: E402

out = snakemake.output
compare_figures(
    snakemake.input.surgery[0],
    snakemake.input.embed[0],
    side_by_side=[out.side_by_side, out.side_by_side_vector],
    heatmap=[out.heatmap, out.heatmap_vector],
    agreement=out.agreement,
    agreement_summary=out.summary,
    labels_key=snakemake.params.reference["labels_key"],
    level=snakemake.params.plots["level"],
    colors=snakemake.params.plots["colors"],
    dpi=snakemake.params.plots["dpi"],
    title=snakemake.wildcards.query,
)
