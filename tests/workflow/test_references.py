"""Two references in one run: each its own folder, model and calls; no file shared."""

import anndata as ad
import pandas as pd
import pytest
import yaml
from atlasmap.reference import read_model_info
from conftest import SMALL, copy_workflow, run_snakemake

pytestmark = pytest.mark.workflow

REFERENCE_FILES = (
    "scanvi_model/model.pt",
    "embedded_atlas.h5ad",
    "call_model.npz",
    "umap.h5ad",
    "annoy_index.ann",
)


@pytest.fixture(scope="module")
def two_references(tmp_path_factory):
    """The small demo's deposit mapped onto two references made from the demo atlas,
    one calling its finest labels and one a coarser level (embed mode: the reference
    side is what differs)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("two_references"))
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["demo"].update(SMALL["demo"])
    fine = config.pop("reference")
    fine["training"].update(SMALL["training"], calibration_models=0)
    coarse = {**fine, "labels_key": "Level_2", "label_levels": ["Level_1", "Level_2"]}
    config["references"] = {"fine": fine, "coarse": coarse}
    config["mapping"] = {"modes": ["embed"], "calls": SMALL["calls"]}
    config["queries"] = "config/two.tsv"
    row = "\t10x_mtx\tresources/synthetic/deposit/DEMO_sc\tresources/synthetic/deposit/DEMO_sc_metadata.csv.gz\tpatients\tPA01\t{}"
    (workdir / "config" / "two.tsv").write_text(
        "name\tformat\tpath\tmetadata\tsample_column\tsubset\treference\n"
        + f"onto_fine{row.format('fine')}\nonto_coarse{row.format('coarse')}\n"
    )
    (workdir / "config" / "two.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workdir, "--configfile", "config/two.yaml", timeout=1500)
    return workdir


def test_each_reference_has_its_own_folder_and_logs(two_references):
    for name in ("fine", "coarse"):
        folder = two_references / "results" / "references" / name
        for file in REFERENCE_FILES:
            assert (folder / file).is_file(), folder / file
        assert (two_references / "logs" / "train_reference" / f"{name}.log").is_file()
    assert not (two_references / "results" / "references" / "default").exists()


def test_no_file_is_shared_and_each_query_reads_its_own_reference(two_references):
    results = two_references / "results"
    fine = ad.read_h5ad(results / "references" / "fine" / "embedded_atlas.h5ad", backed="r")
    coarse = ad.read_h5ad(results / "references" / "coarse" / "embedded_atlas.h5ad", backed="r")
    fine_labels = set(fine.obs["Level_4"].astype(str))
    coarse_labels = set(coarse.obs["Level_2"].astype(str))
    assert fine_labels.isdisjoint(coarse_labels)
    # The same cells, called in each reference's own labels.
    calls = {
        name: pd.read_csv(results / f"onto_{name}" / "embed" / "predictions.tsv", sep="\t")
        for name in ("fine", "coarse")
    }
    assert list(calls["fine"]["barcode"]) == list(calls["coarse"]["barcode"])
    assert set(calls["fine"]["predicted_celltype"]) <= fine_labels | {"Unknown"}
    assert set(calls["coarse"]["predicted_celltype"]) <= coarse_labels | {"Unknown"}
    # Each reference's model was trained on its own labels.
    for name, key in (("fine", "Level_4"), ("coarse", "Level_2")):
        info = read_model_info(results / "references" / name / "scanvi_model")
        assert info.labels_key == key, name


def test_the_summary_has_a_row_per_query_and_reference(two_references):
    summary = pd.read_csv(two_references / "results" / "summary.tsv", sep="\t")
    assert list(zip(summary["query"], summary["reference"], summary["mode"], strict=True)) == [
        ("onto_fine", "fine", "embed"),
        ("onto_coarse", "coarse", "embed"),
    ]
    assert (summary["cells_kept"] == summary["cells_kept"].iloc[0]).all()
    assert (two_references / "results" / "summary_label_distribution.png").is_file()


def test_the_report_names_every_reference(two_references):
    run_snakemake(two_references, "--configfile", "config/two.yaml", "--report", "report.html")
    html = (two_references / "report.html").read_text()
    for name, labels in (("fine", "Level_4"), ("coarse", "Level_2")):
        assert f'Reference <tt class=\\"docutils literal\\">{name}</tt>' in html, name
        assert labels in html
    assert "summary.tsv" in html
