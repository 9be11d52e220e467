"""Rule load_query: 10x matrix + metadata -> one h5ad with raw counts."""

from pathlib import Path

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.query import load_query_files  # noqa: E402

load_query_files(
    deposit_dir=Path(snakemake.input.matrix).parent,
    metadata_path=snakemake.input.metadata,
    output=snakemake.output.h5ad,
    rename=snakemake.params.rename,
    barcode_column=snakemake.params.metadata["barcode_column"],
    max_unmatched_fraction=snakemake.params.metadata["max_unmatched_fraction"],
)
