"""config/chen2025.yaml: the scPDAC tutorial as a config, planned offline."""

import pytest
import yaml
from conftest import REPO, copy_workflow
from test_query_stages import snakemake

pytestmark = pytest.mark.workflow


def test_dry_run_shows_the_whole_tutorial_chain_offline(tmp_path):
    workdir = copy_workflow(tmp_path)
    # The user has put the tutorial's atlas where the config says (no URL is public).
    atlas = workdir / "resources" / "scpdac" / "pdac_atlas.h5ad"
    atlas.parent.mkdir(parents=True)
    atlas.write_bytes(b"the atlas")
    out = snakemake(workdir, "-n", "--configfile", "config/chen2025.yaml").stdout
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz", "metadata.csv.gz"):
        assert f"resources/queries/chen2025/{name}" in out
    for rule, count in {
        "download_query": 4,
        "fetch_model_package": 1,
        "obtain_atlas": 0,  # the user's own atlas: read, never an output
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
    assert config["neighbors"]["n_trees"] == 10  # AnnoyTransformer's default, as the tutorial
    assert config["neighbors"]["search_k"] == -1  # and its search
    assert config["neighbors"]["refine"] == 0  # and its graph as it comes
    assert config["umap"]["layout"] == "joint"  # atlas and query laid out together
    assert config["umap"]["query_alone_epochs"] is None  # sc.tl.umap's own epochs
    assert config["reference"]["labels_key"] == "Level_4"
    assert config["reference"]["transform"] == {"method": "quantile_bins", "n_bins": 50}


def chen_shaped_deposit(directory, genes, n_cells=300, seed=0):
    """A synthetic deposit in GSE278688's shape (file names, `patients` with three
    samples) over the model's genes and a few others."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from atlasmap.demo import deposit_names, write_10x_deposit

    rng = np.random.default_rng(seed)
    genes = [*genes, "EXTRA1", "EXTRA2"]
    means = rng.lognormal(-1.0, 1.5, len(genes))
    counts = rng.poisson(rng.gamma(2.0, means / 2.0, size=(n_cells, len(genes))))
    query = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"patients": [f"PA0{1 + i % 3}" for i in range(n_cells)]},
            index=[f"AAAC{i:06d}-1" for i in range(n_cells)],
        ),
        var=pd.DataFrame(
            {
                "gene_ids": [f"ENSG{i:011d}" for i in range(len(genes))],
                "gene_symbols": genes,
                "feature_types": "Gene Expression",
            },
            index=genes,
        ),
    )
    names = deposit_names("GSE278688_sc")
    write_10x_deposit(query, {role: directory / name for role, name in names.items()})
    return names


def test_the_model_only_config_runs_on_a_chen_shaped_deposit(tmp_path):
    """config/chen2025_model_only.yaml end to end, the GEO download swapped for local
    files of the same shape: the scPDAC model fetched from PyPI, the query embedded."""
    import pandas as pd
    from atlasmap.model_package import fetch_model_from_wheel
    from atlasmap.reference import read_model_info

    workdir = copy_workflow(tmp_path / "run")
    config = yaml.safe_load((workdir / "config" / "chen2025_model_only.yaml").read_text())
    package = config["reference"]["model_package"]
    model = tmp_path / "model"
    fetch_model_from_wheel(
        package["name"], package["version"], package["path"], model, sha256=package["sha256"]
    )
    info = read_model_info(model)
    files = chen_shaped_deposit(tmp_path / "deposit", info.genes)
    config["queries"]["chen2025"]["source"] = {"dir": str(tmp_path / "deposit"), "files": files}
    (workdir / "config" / "local.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--configfile", "config/local.yaml")
    results = workdir / "results" / "chen2025"
    predictions = pd.read_csv(results / "embed" / "predictions.tsv", sep="\t")
    assert len(predictions) == 200  # PA01 and PA02 of three samples
    called = set(predictions["predicted_celltype"]) - {"Unknown"}
    assert called and called <= set(info.labels)
    samples = pd.read_csv(results / "query" / "samples.tsv", sep="\t").set_index("sample")
    assert samples["cells_kept"].to_dict() == {"PA01": 100, "PA02": 100, "PA03": 0, "all": 200}
    assert (results / "embed" / "plots" / "umap_celltype.png").is_file()
    assert not (workdir / "results" / "references").exists()  # no atlas: no reference side
    assert (workdir / config["reference"]["model"] / "model.pt").is_file()
