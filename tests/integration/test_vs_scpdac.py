"""atlasmap's frozen mapping against the scPDAC tutorial's own package, on the same cells.

scpdac 0.1.1 (PyPI, no dependencies, a stand-in for scArches beside it:
benchmarks/scpdac_package.py) and atlasmap map the same synthetic query with the
same model, the human SCANVI model inside that wheel. The query is
benchmarks/vs_scpdac.py's (the model's genes a tenth short, extra genes
beside them), cut to 300 cells and 1,000 extra genes: scpdac's gene alignment
costs half a minute at 30,000 genes.
"""

import sys

import numpy as np
import pytest
from atlasmap.call_adapters import call_mapping
from atlasmap.contract import PROBABILITIES_KEY
from atlasmap.genes import align_to_genes, quantile_bins
from atlasmap.mapping import map_query
from atlasmap.model_package import fetch_model_from_wheel
from atlasmap.reference import read_model_info
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import scpdac_package  # noqa: E402
import vs_scpdac  # noqa: E402


@pytest.fixture(scope="module")
def scpdac_and_model(tmp_path_factory):
    root = scpdac_package.install(tmp_path_factory.mktemp("scpdac_package"))
    package = scpdac_package.PACKAGE
    model = fetch_model_from_wheel(
        package["name"],
        package["version"],
        package["path"],
        root / "model" / "human_scanvi",
        sha256=package["sha256"],
        wheel_dir=scpdac_package.wheel_dir(root),
    )
    return scpdac_package.activate(root), model


@pytest.fixture(scope="module")
def query(scpdac_and_model):
    _, model = scpdac_and_model
    panel = vs_scpdac.Panel(read_model_info(model).genes)
    full = panel.query(300, seed=3)
    extra = np.flatnonzero(~full.var_names.isin(panel.model_genes))[:1000]
    model_genes = np.flatnonzero(full.var_names.isin(panel.model_genes))
    query = full[:, np.sort(np.concatenate([model_genes, extra]))].copy()
    query.layers["counts"] = query.X.copy()
    assert query.var_names.isin(panel.model_genes).sum() == 2232 - 223
    return query


def test_the_binned_input_is_the_same(scpdac_and_model, query):
    """Gene order, zero-filled genes and 50 quantile bins: the model reads the same matrix."""
    scpdac, model = scpdac_and_model
    theirs = scpdac.pp.slice_and_bin(query, "human", 50, layer_key="counts")
    aligned, report = align_to_genes(query, read_model_info(model).genes, layer="counts")
    ours = quantile_bins(aligned.layers["counts"], 50)
    assert report.zero_filled == 223
    assert list(theirs.var_names) == list(aligned.var_names)
    assert (theirs.layers["binned_data"] != ours).nnz == 0


def test_frozen_mapping_gives_scpdacs_latent_and_labels(scpdac_and_model, query):
    scpdac, model = scpdac_and_model
    theirs = scpdac.tl.embed_and_predict(
        query.copy(), "human", layer="counts", batch_key="Sample_ID"
    )
    mapping, calls = vs_scpdac._settings("frozen")
    result = map_query(query, None, model, "embed", mapping)
    table, _ = call_mapping(result, calls)
    table = table.reindex(query.obs_names)
    # The encoder does not read the batch: the query batches' weights (scpdac: random,
    # atlasmap: the reference batches' mean) reach the decoder only, not the latent.
    assert result.info["encoder_sees_batch"] is False
    np.testing.assert_allclose(
        result.expanded.obsm["X_scANVI_emb"], theirs.obsm["X_scANVI_emb"], rtol=0, atol=1e-5
    )
    names = np.asarray(result.info["classifier_labels"])
    argmax = names[result.expanded.obsm[PROBABILITIES_KEY].argmax(axis=1)]
    their_labels = theirs.obs["predicted_celltype"].astype(str).to_numpy()
    assert (argmax == their_labels).all()
    ours = table["predicted_celltype"].astype(str).to_numpy()
    called = ours != "Unknown"
    assert called.any()  # below the 0.5 threshold atlasmap says Unknown; scpdac never does
    assert (ours[called] == their_labels[called]).all()


def test_surgery_leaves_the_classifier_frozen(scpdac_and_model, query):
    """The scPDAC model's classifier has a BatchNorm that load_query_data leaves trainable.

    Its encoder ignores the batch, so surgery cannot move a cell in the latent
    space; with the classifier frozen too, every probability is the frozen one.
    """
    from dataclasses import replace

    _, model = scpdac_and_model
    info = read_model_info(model)
    panel = vs_scpdac.Panel(info.genes)
    atlas = panel.atlas(400, info.batches, info.labels, seed=5)
    mapping, _ = vs_scpdac._settings("surgery")
    mapping = replace(mapping, surgery_max_epochs=3)
    embedded = map_query(query, atlas, model, "embed", mapping)
    adapted = map_query(query, atlas, model, "surgery", mapping)
    np.testing.assert_allclose(
        adapted.expanded.obsm[PROBABILITIES_KEY],
        embedded.expanded.obsm[PROBABILITIES_KEY],
        rtol=0,
        atol=1e-6,
    )
