"""Rule generate_demo: write the synthetic reference atlas, and the query as a 10x
deposit and as an h5ad (log-normalised X, raw counts in a layer, as a notebook leaves it)."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.contract import DEPOSIT_ROLES  # noqa: E402
from atlasmap.demo import make_demo_study, write_demo_study, write_query_h5ad  # noqa: E402

demo = snakemake.params.demo
study = make_demo_study(
    seed=snakemake.params.seed,
    n_reference_cells=demo["reference_cells"],
    n_query_cells=demo["query_cells"],
    n_genes=demo["genes"],
    n_donors=demo["donors"],
    n_patients=demo["patients"],
    query_missing_gene_fraction=demo["query_missing_gene_fraction"],
)
deposit = {role: snakemake.output[role] for role in DEPOSIT_ROLES}
write_demo_study(study, snakemake.output.atlas, deposit)
write_query_h5ad(study.query, snakemake.output.query_h5ad)
