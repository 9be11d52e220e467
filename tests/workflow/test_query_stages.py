"""The real Snakemake on the demo, in a temporary copy of the workflow."""

import gzip

import anndata as ad
import pandas as pd
import pytest
import scipy.io
import yaml
from atlasmap import __version__
from conftest import copy_workflow, with_demo_query
from conftest import run_snakemake as snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo config as shipped, run through the query stages."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    snakemake(workdir, "results/demo/query/subset.h5ad")
    return workdir


def test_subset_holds_exactly_the_selected_cells_with_metadata_and_counts(demo_run):
    deposit = demo_run / "resources" / "synthetic" / "deposit"
    metadata = pd.read_csv(deposit / "DEMO_sc_metadata.csv.gz", index_col=0)
    expected = metadata.index[metadata["patients"].isin(["PA01", "PA02"])]

    subset = ad.read_h5ad(demo_run / "results" / "demo" / "query" / "subset.h5ad")
    assert list(subset.obs_names) == list(expected)
    assert list(subset.obs["Sample_ID"]) == list(metadata.loc[expected, "patients"])
    assert list(subset.obs["tissue"]) == list(metadata.loc[expected, "tissue"])
    # The sheet's sample column is copied to the reference's batch column, and kept.
    assert list(subset.obs["patients"]) == list(subset.obs["Sample_ID"])

    with gzip.open(deposit / "DEMO_sc_matrix.mtx.gz") as fh:
        counts = scipy.io.mmread(fh).T.tocsr()
    barcodes = pd.read_csv(deposit / "DEMO_sc_barcodes.tsv.gz", header=None)[0]
    rows = barcodes.reset_index().set_index(0).loc[expected, "index"].to_numpy()
    assert (subset.layers["counts"] != counts[rows]).nnz == 0
    features = pd.read_csv(deposit / "DEMO_sc_features.tsv.gz", sep="\t", header=None)
    assert list(subset.var["gene_ids"]) == list(features[0])


def test_every_rule_wrote_its_log(demo_run):
    for rule in ("generate_demo", "download_query", "load_query", "subset_query"):
        logs = list((demo_run / "logs" / rule).glob("*.log"))
        assert logs, f"no log for {rule}"
        for log in logs:  # which release wrote the outputs
            assert f"atlasmap {__version__}" in log.read_text().splitlines()[0], log
    assert "kept 2500 of 5000 cells" in (demo_run / "logs/subset_query/demo.log").read_text()


def test_nothing_to_do_after_a_complete_run(demo_run):
    result = snakemake(demo_run, "-n", "results/demo/query/subset.h5ad")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_shows_the_chain(tmp_path):
    workdir = copy_workflow(tmp_path)
    out = snakemake(workdir, "-n").stdout
    for rule in (
        "generate_demo",
        "download_query",
        "load_query",
        "subset_query",
        "train_reference",
        "map_query",
        "predict_baseline",
        "evaluate_mapping",
    ):
        assert f"rule {rule}:" in out


def test_lint_is_clean(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def write_config(workdir, edit):
    """The demo config with its first query as a config mapping, edited."""
    config = with_demo_query(yaml.safe_load((workdir / "config" / "config.yaml").read_text()))
    edit(config)
    path = workdir / "config" / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_typo_is_refused_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = write_config(workdir, lambda c: c["queries"]["demo"].update(subet={"x": ["y"]}))
    result = snakemake(workdir, "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert "'subet' was unexpected" in result.stdout + result.stderr
    assert not (workdir / "resources").exists() and not (workdir / "results").exists()


def test_a_query_error_fails_the_job_with_the_message_and_no_output(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = write_config(
        workdir,
        lambda c: (
            c["queries"]["demo"].update(rename={"patient": "Sample_ID"}),
            c["demo"].update(reference_cells=300, query_cells=200, genes=300),
        ),
    )
    # Targets go before --configfile, which takes several values.
    result = snakemake(
        workdir, "results/demo/query/subset.h5ad", "--configfile", str(config), check=False
    )
    assert result.returncode != 0
    log = (workdir / "logs" / "load_query" / "demo.log").read_text()
    assert "cannot rename column(s) ['patient']" in log
    assert not (workdir / "results" / "demo" / "query").exists() or not any(
        (workdir / "results" / "demo" / "query").iterdir()
    )
    # The user's deposit is still there, untouched by the failure.
    assert (workdir / "resources" / "queries" / "demo" / "metadata.csv.gz").exists()


def test_a_config_may_hold_several_queries(tmp_path):
    workdir = copy_workflow(tmp_path)

    def add_query(config):
        demo = config["queries"]["demo"]
        files = demo["source"]["files"]
        config["queries"]["second"] = {
            "source": {
                "urls": {
                    k: f"file://{workdir}/{demo['source']['dir']}/{v}" for k, v in files.items()
                }
            },
            "rename": {"patients": "Sample_ID"},
            "subset": {"Sample_ID": ["PA03"]},
        }

    config = write_config(workdir, add_query)
    out = snakemake(workdir, "-n", "--configfile", str(config)).stdout
    for query in ("demo", "second"):
        assert f"results/{query}/query/subset.h5ad" in out
    assert out.count("rule load_query:") == 2


@pytest.mark.parametrize(
    "target",
    [
        "results/../x/query/subset.h5ad",
        "results/demo/../../x/mapped.h5ad",
        "results/other query/query/subset.h5ad",
        "results/demo/surgery extra/mapped.h5ad",
        "/abs/results/demo/query/subset.h5ad",
    ],
)
def test_targets_outside_the_configured_names_match_no_rule(tmp_path, target):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", target, check=False)
    assert result.returncode != 0
    assert "MissingRuleException" in result.stdout + result.stderr or "No rule to produce" in (
        result.stdout + result.stderr
    )
