"""Rule load_query: a query (10x matrix, 10x HDF5 or h5ad) + metadata -> one h5ad with raw counts."""

import logging

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.errors import AtlasmapInputError  # noqa: E402
from atlasmap.query import load_query_files  # noqa: E402

logging.getLogger(__name__).info("%s: %s", snakemake.params.origin, snakemake.params.format_choice)
try:
    load_query_files(
        # The data files by role (matrix/features/barcodes, h5 or h5ad): every input but
        # the metadata table (joined on barcodes) and "local".
        files={
            role: path
            for role, path in snakemake.input.items()
            if role not in ("metadata", "local")
        },
        format=snakemake.params.format,
        metadata_path=snakemake.input.get("metadata") or None,
        output=snakemake.output.h5ad,
        rename=snakemake.params.rename,
        barcode_column=snakemake.params.metadata["barcode_column"],
        max_unmatched_fraction=snakemake.params.metadata["max_unmatched_fraction"],
        counts_layer=snakemake.params.counts_layer,
        sample_column=snakemake.params.sample_column,
        batch_key=snakemake.params.batch_key,
        sample_name=snakemake.wildcards.query,
    )
except AtlasmapInputError as error:
    # Name where the query was written (its sheet or config key) beside the file at fault.
    raise AtlasmapInputError(f"{snakemake.params.origin}: {error}") from error
