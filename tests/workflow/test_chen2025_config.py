"""config/chen2025.yaml: the scPDAC tutorial as a config, planned offline."""

import pytest
import yaml
from conftest import REPO, copy_workflow
from test_query_stages import snakemake

pytestmark = pytest.mark.workflow


def test_dry_run_shows_the_whole_tutorial_chain_offline(tmp_path):
    workdir = copy_workflow(tmp_path)
    out = snakemake(workdir, "-n", "--configfile", "config/chen2025.yaml").stdout
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz", "metadata.csv.gz"):
        assert f"resources/queries/chen2025/{name}" in out
    for rule, count in {
        "download_query": 4,
        "fetch_model_package": 1,
        "obtain_atlas": 1,
        "load_query": 1,
        "subset_query": 1,
        "map_query": 2,
        "neighbors_umap": 2,
        "plot_mapping": 2,
        "compare_modes": 1,
    }.items():
        assert out.count(f"rule {rule}:") == count, rule
    assert "train_reference" not in out  # the packaged model is used, never retrained
    assert "results/demo" not in out  # --configfile replaces the demo config, not merged
    assert "results/chen2025/surgery/mapped.h5ad" in out


def test_the_config_says_what_the_tutorial_does():
    config = yaml.safe_load((REPO / "config" / "chen2025.yaml").read_text())
    query = config["queries"]["chen2025"]
    assert query["source"]["geo"] == "GSE278688"
    assert query["rename"] == {"patients": "Sample_ID"}
    assert query["subset"] == {"Sample_ID": ["PA01", "PA02"]}
    assert config["mapping"]["modes"] == ["surgery", "embed"]
    assert config["mapping"]["surgery"]["max_epochs"] == 10
    assert config["neighbors"]["n_neighbors"] == 15
    assert config["reference"]["labels_key"] == "Level_4"
    assert config["reference"]["transform"] == {"method": "quantile_bins", "n_bins": 50}
