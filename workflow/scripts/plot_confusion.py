"""Rule plot_confusion: known labels against the calls."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.plots import confusion_figure  # noqa: E402

confusion_figure(
    snakemake.input.predictions,
    snakemake.input.metrics,
    snakemake.params.truth,
    [snakemake.output.png, snakemake.output.vector],
    labels_key=snakemake.params.reference["labels_key"],
    colors=snakemake.params.plots["colors"],
    dpi=snakemake.params.plots["dpi"],
    title=f"{snakemake.wildcards.query}, {snakemake.wildcards.mode}",
)
