"""Rule plot_mapping: the per-mode figures (UMAPs, label distribution), PNG and vector."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.plots import mapping_figures  # noqa: E402

plots, reference = snakemake.params.plots, snakemake.params.reference
# A Namedlist iterates over its files, so ask for its keys.
names = [n for n in snakemake.output.keys() if not n.endswith("_vector")]  # noqa: SIM118
mapping_figures(
    snakemake.input.mapped,
    {name: [snakemake.output[name], snakemake.output[f"{name}_vector"]] for name in names},
    labels_key=reference["labels_key"],
    batch_key=reference["batch_key"],
    level=plots["level"],
    colors=plots["colors"],
    dpi=plots["dpi"],
    title=f"{snakemake.wildcards.query}, {snakemake.wildcards.mode}",
)
