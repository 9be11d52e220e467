"""The scPDAC authors' human SCANVI model as a real reference, in embed mode.

The model is taken out of the scpdac 0.1.1 wheel on PyPI exactly as the
workflow's fetch_model_package rule does (pip download --no-deps, nothing
installed or imported). Its 2,232 genes, 65 Level_4 labels and 50-bin input
transform are the real thing; the query is synthetic counts over its genes.
"""

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from atlasmap.call_adapters import call_mapping
from atlasmap.errors import AtlasmapInputError
from atlasmap.mapping import map_query
from atlasmap.model_package import fetch_model_from_wheel
from atlasmap.reference import read_model_info
from atlasmap.settings import MappingSettings
from conftest import REPO

CHEN = yaml.safe_load((REPO / "config" / "chen2025.yaml").read_text())
PACKAGE = CHEN["reference"]["model_package"]


@pytest.fixture(scope="module")
def scpdac_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scpdac") / "human_scanvi"
    fetch_model_from_wheel(
        PACKAGE["name"], PACKAGE["version"], PACKAGE["path"], directory, sha256=PACKAGE["sha256"]
    )
    return directory


def synthetic_query(genes, n_cells=240, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.lognormal(-1.0, 1.5, len(genes))
    counts = rng.poisson(rng.gamma(2.0, means / 2.0, size=(n_cells, len(genes))))
    query = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"Sample_ID": [f"PA0{1 + i % 2}" for i in range(n_cells)], "tissue": "tumour"},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame({"gene_symbols": list(genes)}, index=list(genes)),
    )
    query.layers["counts"] = query.X.copy()
    return query


def settings():
    reference = CHEN["reference"]
    return MappingSettings(
        labels_key=reference["labels_key"],
        batch_key=reference["batch_key"],
        transform=reference["transform"],
    )


def test_the_packaged_model_is_what_the_config_says(scpdac_model):
    info = read_model_info(scpdac_model)
    assert len(info.genes) == 2232
    assert (info.labels_key, info.batch_key, info.layer) == ("Level_4", "Sample_ID", "binned_data")
    assert len(info.labels) == 65 and "Unknown" in info.labels
    assert info.scvi_version == "1.3.3"


def test_embed_with_the_model_alone_gives_only_its_labels(scpdac_model):
    info = read_model_info(scpdac_model)
    query = synthetic_query(info.genes)
    result = map_query(query, None, scpdac_model, "embed", settings())
    table, report = call_mapping(result)
    assert set(table["predicted_celltype"]) <= set(info.labels) | {"Unknown"}
    assert len(table) == query.n_obs
    assert result.alignment.zero_filled == 0
    assert result.expanded.n_obs == query.n_obs  # the query alone: no atlas given
    assert table["prediction_probability"].between(0, 1).all()
    # No atlas: the classifier calls, with no kNN, calibration or novelty to report.
    assert report["method"] == "classifier" and not report["calibrated"]
    assert table["prediction_uncertainty"].isna().all() and table["novelty_score"].isna().all()
    assert list(table["tissue"].unique()) == ["tumour"]
    # Query samples are new batches to the model; its 257 reference studies stay.
    assert result.info["model_scvi_version"] == "1.3.3"


def test_a_query_missing_a_tenth_of_the_genes_maps_with_the_gap_reported(scpdac_model, caplog):
    info = read_model_info(scpdac_model)
    rng = np.random.default_rng(1)
    kept = np.sort(rng.choice(len(info.genes), len(info.genes) - 223, replace=False))
    query = synthetic_query(info.genes)[:, kept].copy()
    with caplog.at_level(logging.INFO):
        result = map_query(query, None, scpdac_model, "embed", settings())
    qc = result.qc.set_index("sample")
    assert qc.loc["all", "genes_zero_filled"] == 223
    assert qc.loc["all", "gene_overlap"] == pytest.approx(1 - 223 / 2232, abs=1e-4)
    table, _ = call_mapping(result)
    assert set(table["predicted_celltype"]) <= set(info.labels) | {"Unknown"}
    assert "matched 2009 of 2232 model genes (90.0%)" in caplog.text
    json.dumps(result.info)  # the run record is plain data


def test_raw_counts_fed_to_the_binned_model_are_refused(scpdac_model):
    """The model was trained on 50 quantile bins: without the transform it would mispredict."""
    info = read_model_info(scpdac_model)
    query = synthetic_query(info.genes, n_cells=20)
    raw = MappingSettings(labels_key="Level_4", batch_key="Sample_ID", transform=None)
    with pytest.raises(AtlasmapInputError, match=r"layer 'binned_data'.*reference.transform"):
        map_query(query, None, scpdac_model, "embed", raw)
