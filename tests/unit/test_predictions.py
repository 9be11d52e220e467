"""Calls with confidence: distance-weighted kNN, calibration, novelty, hierarchy; metrics."""

import logging

import numpy as np
import pandas as pd
import pytest
from atlasmap.calls import (
    CallSettings,
    LatentKNN,
    call_cells,
    coarser_calls,
    fit_call_model,
)
from atlasmap.metrics import (
    calibration_error,
    classification_metrics,
    evaluate,
    expected_calibration_error,
)
from atlasmap.neighbours import ExactNeighbours
from atlasmap.reference import label_hierarchy
from sklearn.metrics import f1_score


def test_the_vote_weighs_near_cells_more_than_many_far_ones():
    """5 A cells next to the query and 25 B cells further off: a plain 30-NN vote says B."""
    rng = np.random.default_rng(0)
    near = rng.normal(0, 0.05, (5, 2))
    far = rng.normal(0, 0.05, (25, 2)) + [1.0, 0.0]
    codes = np.array([0] * 5 + [1] * 25)
    knn = LatentKNN(np.vstack([near, far]), codes, 2, n_neighbors=30, bandwidth=0.3)
    vote, distance = knn.query(np.zeros((1, 2)))
    assert vote[0, 0] > 0.9
    assert vote.sum() == pytest.approx(1.0)
    assert distance[0] == pytest.approx(np.linalg.norm(np.vstack([near, far]), axis=1).mean())


@pytest.mark.parametrize("k", [1, 7])
def test_the_neighbour_search_is_exact(k):
    """The calls' KD-tree finds each cell's true nearest reference cells at their true
    distances, nearest first, as a brute-force search over every pair does."""
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(400, 10)).astype(np.float32)
    cells = rng.normal(size=(50, 10)).astype(np.float32)
    distances, indices = ExactNeighbours(reference).query(cells, k)
    every_pair = np.linalg.norm(
        cells[:, None, :].astype(np.float64) - reference[None, :, :], axis=2
    )
    truth = np.argsort(every_pair, axis=1)[:, :k]
    assert distances.shape == indices.shape == (50, k)
    np.testing.assert_array_equal(indices, truth)
    np.testing.assert_allclose(distances, np.take_along_axis(every_pair, truth, axis=1))


def blobs(rng, centres, n, batches=3, sd=0.3):
    """Gaussian label clusters spread over batches: a toy reference latent."""
    latent, labels, batch = [], [], []
    for label, centre in centres.items():
        latent.append(rng.normal(centre, sd, (n, len(centre))))
        labels += [label] * n
        batch += [f"b{i % batches}" for i in range(n)]
    return np.vstack(latent), np.array(labels), np.array(batch)


CENTRES = {"CD4": [0, 0, 0], "CD8": [1.2, 0, 0], "B": [0, 4, 0], "Mono": [4, 0, 0]}
HIERARCHY = pd.DataFrame(
    {
        "Level_1": ["Immune"] * 4,
        "Level_3": ["T cell", "T cell", "B cell", "Myeloid"],
    },
    index=pd.Index(["CD4", "CD8", "B", "Mono"], name="Level_4"),
)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(1)
    latent, labels, batches = blobs(rng, CENTRES, 300)
    model = fit_call_model(
        latent, labels, batches, settings=CallSettings(method="knn", n_neighbors=20)
    )
    return rng, model


def test_a_cell_far_from_every_reference_cell_is_novel_and_unknown(toy):
    rng, model = toy
    settings = CallSettings(method="knn", n_neighbors=20)
    seen = np.vstack([rng.normal(c, 0.3, (100, 3)) for c in CENTRES.values()])
    unseen = rng.normal([0, 0, 4], 0.3, (100, 3))  # a type the reference lacks
    table = call_cells(model, np.vstack([seen, unseen]), settings=settings)
    novel = table["unknown_reason"].to_numpy() == "novelty"
    assert novel[400:].mean() > 0.95
    assert novel[:400].mean() < 0.08
    assert (table.loc[novel, "predicted_celltype"] == "Unknown").all()
    assert (
        table["novelty_score"].to_numpy()[400:].min()
        > table["novelty_score"].to_numpy()[:400].mean()
    )
    # Measured on the reference alone: each label held out in turn is flagged too.
    assert model.report["held_out_label_detection"]["B"] > 0.9
    assert model.report["held_out_share_unknown"] < 0.2


@pytest.mark.parametrize("quantile", [None, 0.5])
def test_a_query_batch_shifted_as_a_whole_keeps_the_false_positive_rate(quantile):
    """Another lab: every seen type sits a little off the reference, the unseen type far off.

    Without the batch correction the shift alone makes a fifth of the seen cells
    "novel"; with it they stay near the nominal rate, the unseen type is still
    caught, and a batch that is not shifted is not touched.
    """
    rng = np.random.default_rng(1)
    latent, labels, batches = blobs(rng, CENTRES, 300)
    settings = CallSettings(method="knn", n_neighbors=20, novelty_batch_quantile=quantile)
    model = fit_call_model(latent, labels, batches, settings=settings)
    rng = np.random.default_rng(5)
    seen = np.vstack([rng.normal(c, 0.3, (100, 3)) for c in CENTRES.values()])
    unseen = rng.normal([0, 0, 4], 0.3, (20, 3))
    cells = np.vstack([seen + [0, 0, 0.5], unseen, seen[:200]])
    cell_batches = np.array(["lab2"] * 420 + ["lab1"] * 200)
    table = call_cells(model, cells, settings=settings, batches=cell_batches)
    novel = (table["unknown_reason"] == "novelty").to_numpy()
    assert novel[400:420].all()
    assert novel[420:].mean() < 0.05
    if quantile is None:
        assert novel[:400].mean() > 0.15
    else:
        assert novel[:400].mean() < 0.1
        assert model.report["novelty_batch_quantile"] == quantile


def test_novelty_switched_off_flags_nothing_far(toy):
    rng, _ = toy
    latent, labels, batches = blobs(rng, CENTRES, 100)
    settings = CallSettings(method="knn", n_neighbors=20, novelty=False, unknown_threshold=0.0)
    model = fit_call_model(latent, labels, batches, settings=settings)
    table = call_cells(model, rng.normal([0, 0, 8], 0.3, (20, 3)), settings=settings)
    assert (table["predicted_celltype"] != "Unknown").all()


def test_calibration_makes_probabilities_match_accuracy(toy):
    """CD4 and CD8 overlap: raw vote shares overstate how often the call is right."""
    rng, model = toy
    settings = CallSettings(method="knn", n_neighbors=20, novelty=False)
    truth = np.repeat(list(CENTRES), 300)
    cells = np.vstack([rng.normal(c, 0.3, (300, 3)) for c in CENTRES.values()])
    calibrated = call_cells(model, cells, settings=settings)
    raw_model = fit_call_model(
        *blobs(np.random.default_rng(1), CENTRES, 300),
        settings=CallSettings(method="knn", n_neighbors=20, calibrate=False, novelty=False),
    )
    raw = call_cells(raw_model, cells, settings=settings)
    right = calibrated["candidate_celltype"].to_numpy() == truth
    ece_cal = expected_calibration_error(calibrated["prediction_probability"], right)
    ece_raw = expected_calibration_error(raw["prediction_probability"], right)
    assert ece_cal < 0.05
    assert ece_cal < ece_raw


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_coarser_calls_follow_the_finest_call_for_any_threshold(threshold):
    rng = np.random.default_rng(2)
    labels = np.array(["CD4", "CD8", "B", "Mono"], dtype=object)
    probs = rng.dirichlet([0.5] * 4, size=500)
    best = probs.argmax(axis=1)
    probability = probs[np.arange(500), best] * rng.uniform(0.6, 1.0, 500)  # "calibrated"
    reason = np.where(probability < threshold, "probability", "none").astype(object)
    reason[:20] = "novelty"
    called = np.where(reason == "none", labels[best], "Unknown").astype(object)
    settings = CallSettings(unknown_threshold=threshold)
    coarse = coarser_calls(probs, labels, called, probability, reason, HIERARCHY, settings)
    known = reason == "none"
    for level in HIERARCHY.columns:
        parent = HIERARCHY[level].reindex(called[known]).to_numpy()
        assert (coarse[f"predicted_{level}"].to_numpy()[known] == parent).all()
        assert (
            coarse[f"probability_{level}"].to_numpy()[known] >= probability[known] - 1e-12
        ).all()
        assert (coarse[f"predicted_{level}"].to_numpy()[:20] == "Unknown").all()
    # A cell torn between two T-cell types is still confidently a T cell.
    torn = np.array([[0.45, 0.45, 0.05, 0.05]])
    one = coarser_calls(
        torn,
        labels,
        np.array(["Unknown"], dtype=object),
        np.array([0.45]),
        np.array(["probability"], dtype=object),
        HIERARCHY,
        CallSettings(unknown_threshold=0.5),
    )
    assert one.loc[0, "predicted_Level_3"] == "T cell"
    assert one.loc[0, "probability_Level_3"] == pytest.approx(0.9)


def test_a_finest_label_under_two_parents_is_reported_not_dropped(caplog):
    obs = pd.DataFrame(
        {
            "Level_4": ["cDC2"] * 5 + ["Mono"] * 4 + ["B"] * 3,
            "Level_3": ["Dendritic"] * 3 + ["Myeloid"] * 2 + ["Myeloid"] * 4 + ["B cell"] * 3,
        }
    )
    with caplog.at_level(logging.WARNING):
        table = label_hierarchy(obs, ["Level_3", "Level_4"], "Level_4")
    assert table.loc["cDC2", "Level_3"] == "Dendritic"  # the majority parent
    assert table.loc["Mono", "Level_3"] == "Myeloid"
    assert table.attrs["conflicts"] == {"Level_3": {"cDC2": {"Dendritic": 3, "Myeloid": 2}}}
    assert "cDC2" in caplog.text and "several Level_3" in caplog.text


def test_metrics_count_unknown_right_only_for_labels_the_reference_lacks():
    truth = pd.Series(["CD4", "CD4", "CD8", "B", "Schwann", None])
    predicted = pd.Series(["CD4", "Unknown", "CD4", "B", "Unknown", "B"])
    m = classification_metrics(truth, predicted, {"CD4", "CD8", "B"})
    assert m["cells"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_confident"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["share_unknown"] == pytest.approx(2 / 5, abs=1e-4)
    assert m["recall"] == {"B": 1.0, "CD4": 0.5, "CD8": 0.0, "Unknown": 1.0}
    y_true = ["CD4", "CD4", "CD8", "B", "Unknown"]
    y_pred = ["CD4", "Unknown", "CD4", "B", "Unknown"]
    expected_f1 = f1_score(y_true, y_pred, labels=["B", "CD4", "CD8", "Unknown"], average="macro")
    assert m["macro_f1"] == pytest.approx(expected_f1, abs=1e-4)
    # Seen and unseen cells apart: what the real-data targets are stated on.
    assert (m["seen_cells"], m["unseen_cells"]) == (4, 1)
    assert m["accuracy_seen"] == pytest.approx(0.5)
    assert m["share_unknown_seen"] == pytest.approx(0.25)
    assert m["share_unknown_unseen"] == 1.0


def test_metrics_apply_the_threshold_to_a_baseline_probability():
    truth = pd.Series(["A", "B"])
    m = classification_metrics(
        truth, pd.Series(["A", "B"]), {"A", "B"}, pd.Series([0.9, 0.3]), unknown_threshold=0.5
    )
    assert m["accuracy"] == 0.5 and m["share_unknown"] == 0.5


def test_expected_calibration_error():
    # Confidence 0.9 and right 9 times in 10: calibrated. Confidence 0.9, right half: gap 0.4.
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) < 9) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) < 5) == pytest.approx(0.4)
    truth = pd.Series(["A", "A", "Z"])
    ece = calibration_error(
        truth, pd.Series(["A", "B", "A"]), pd.Series([1.0, 1.0, 1.0]), {"A", "B"}
    )
    assert ece == pytest.approx(0.5)  # the unseen Z is left out


def test_truth_sharing_no_label_with_the_reference_warns_with_both_vocabularies(caplog):
    predictions = pd.DataFrame(
        {
            "barcode": ["c1", "c2"],
            "predicted_celltype": ["CD4", "B"],
            "candidate_celltype": ["CD4", "B"],
            "prediction_probability": [0.9, 0.8],
            "celltype": ["T helper", "B lymphocyte"],
        }
    )
    with caplog.at_level(logging.WARNING):
        evaluate(predictions, None, "celltype", {"CD4", "B"}, pd.DataFrame(), 0.5)
    assert "share no name" in caplog.text
    assert "T helper" in caplog.text and "CD4" in caplog.text


def test_baseline_fits_on_one_blas_thread_whatever_the_job_gets(small_study, monkeypatch):
    """With two BLAS threads the summation order changed 32 of the demo's 2,500 calls:
    the baseline must not depend on the core count of the machine or job."""
    from atlasmap.baseline import logistic_baseline
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    query = small_study.query.copy()
    query.layers["counts"] = query.X.copy()
    with threadpool_limits(limits=2):
        calls = logistic_baseline(
            small_study.reference, query, list(small_study.reference.var_names), "Level_4"
        )
    assert len(calls) == query.n_obs
    assert seen and set(seen) == {1}


def toy_embedded(rng, n=200):
    """obs/obsm/run of an expanded atlas as map_query writes it: toy atlas + query."""
    from atlasmap.contract import EMBEDDING_KEY, PROBABILITIES_KEY

    latent, labels, batches = blobs(rng, CENTRES, n)
    query_latent = np.vstack(
        [rng.normal(CENTRES["CD4"], 0.3, (40, 3)), rng.normal([0, 0, 6], 0.3, (20, 3))]
    )
    names = sorted(CENTRES)
    probs = rng.dirichlet([1.0] * 4, size=len(latent) + len(query_latent)).astype(np.float32)
    atlas_obs = pd.DataFrame(
        {
            "Level_4": labels,
            "Level_3": HIERARCHY["Level_3"].reindex(labels).to_numpy(),
            "batch": batches,
        },
        index=[f"atlas{i}" for i in range(len(latent))],
    )
    query_obs = pd.DataFrame(
        {"batch": "q1", "barcode": [f"q{i}" for i in range(len(query_latent))]},
        index=[f"q{i}" for i in range(len(query_latent))],
    )
    obs = pd.concat([atlas_obs.assign(source="atlas"), query_obs.assign(source="query")])
    obsm = {
        EMBEDDING_KEY: np.vstack([latent, query_latent]).astype(np.float32),
        PROBABILITIES_KEY: probs,
    }
    run = {
        "labels_key": "Level_4",
        "batch_key": "batch",
        "label_levels": ["Level_3", "Level_4"],
        "classifier_labels": names,
        "query_columns": ["batch"],
    }
    return obs, obsm, run


def toy_counts(rng, labels, cells, n_markers=10, background=0.3):
    """Counts (layer "counts", all genes by symbol): each label expresses its own marker
    genes; a label not in ``MARKED`` (a type the reference lacks) expresses genes of its own."""
    import anndata as ad
    import scipy.sparse as sp

    kinds = [*MARKED, "other"]
    means = np.full((len(kinds), n_markers * len(kinds)), background)
    for i in range(len(kinds)):
        means[i, i * n_markers : (i + 1) * n_markers] = 6.0
    row = [kinds.index(x) if x in MARKED else len(MARKED) for x in labels]
    counts = sp.csr_matrix(rng.poisson(means[row]).astype(np.float32))
    genes = pd.Index([f"G{i}" for i in range(means.shape[1])])
    return ad.AnnData(
        X=counts,
        obs=pd.DataFrame(index=pd.Index(cells)),
        var=pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(len(genes))]}, index=genes),
        layers={"counts": counts},
    )


MARKED = ["B", "CD4", "CD8", "Mono"]


def toy_expression(obs, seed=7):
    """Counts of an expanded atlas's atlas cells and of its query cells (CD4, then unseen)."""
    rng = np.random.default_rng(seed)
    atlas = (obs["source"] == "atlas").to_numpy()
    query_labels = ["CD4"] * 40 + ["unseen"] * (int((~atlas).sum()) - 40)
    return (
        toy_counts(rng, obs.loc[atlas, "Level_4"], obs.index[atlas]),
        toy_counts(rng, query_labels, obs.loc[~atlas, "barcode"]),
    )


@pytest.mark.parametrize("method", ["knn", "consensus", "ensemble"])
def test_calls_from_the_fit_made_once_per_reference_are_the_calls_fitted_in_place(tmp_path, method):
    """fit_calls fits on the atlas once; every query and mode reads that fit back: the
    calls, probabilities, novelty and report are those of a fit made in the call step."""
    from atlasmap.call_adapters import call_embedded
    from atlasmap.contract import EMBEDDING_KEY, PROBABILITIES_KEY
    from atlasmap.reference_calls import (
        fit_reference_calls,
        read_reference_calls,
        write_reference_calls,
    )

    obs, obsm, run = toy_embedded(np.random.default_rng(3))
    atlas_counts, query_counts = toy_expression(obs)
    settings = CallSettings(method=method, n_neighbors=20, calibration_folds=3)
    in_place, in_place_report = call_embedded(
        obs, obsm, run, settings, None, query_counts, lambda: atlas_counts
    )

    atlas = (obs["source"] == "atlas").to_numpy()
    fitted = fit_reference_calls(
        obs.loc[atlas],
        obsm[EMBEDDING_KEY][atlas],
        obsm[PROBABILITIES_KEY][atlas],
        run["classifier_labels"],
        labels_key="Level_4",
        batch_key="batch",
        label_levels=run["label_levels"],
        settings=settings,
        expression=atlas_counts if method == "ensemble" else None,
    )
    write_reference_calls(fitted, tmp_path / "call_model.npz")
    reused, reused_report = call_embedded(
        obs, obsm, run, settings, read_reference_calls(tmp_path / "call_model.npz"), query_counts
    )
    pd.testing.assert_frame_equal(reused, in_place)
    assert reused_report == json_round_trip(in_place_report)
    assert (in_place.loc["q40":, "unknown_reason"] == "novelty").mean() > 0.9  # the unseen type
    assert set(in_place["predicted_Level_3"]) >= {"T cell"}
    if method == "ensemble":
        assert (in_place.loc[:"q39", "expression_celltype"] == "CD4").all()
        assert in_place_report["held_out_member_accuracy"]["expression"] > 0.95


def rng_shift(n):
    return np.random.default_rng(5).normal(0, 0.2, (n, 3)).astype(np.float32)


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value, default=float))


def write_embedded_atlas(path, obs, obsm, run) -> np.ndarray:
    """embed_reference's file of the toy expanded atlas's atlas cells; returns their mask."""
    import anndata as ad
    from atlasmap.contract import EMBEDDED_ATLAS_KEY
    from atlasmap.io import write_h5ad

    atlas = (obs["source"] == "atlas").to_numpy()
    embedded_atlas = ad.AnnData(
        obs=obs.loc[atlas].drop(columns=["source", "barcode"]),
        obsm={key: value[atlas] for key, value in obsm.items()},
        uns={EMBEDDED_ATLAS_KEY: {"classifier_labels": run["classifier_labels"]}},
    )
    write_h5ad(embedded_atlas, path)
    return atlas


def test_a_fit_of_another_atlas_or_other_settings_is_refused(tmp_path):
    from atlasmap.call_adapters import call_embedded, fit_calls_files
    from atlasmap.errors import AtlasmapInputError
    from atlasmap.reference_calls import read_reference_calls

    obs, obsm, run = toy_embedded(np.random.default_rng(4))
    atlas = write_embedded_atlas(tmp_path / "embedded_atlas.h5ad", obs, obsm, run)
    settings = CallSettings(method="knn", n_neighbors=20, calibration_folds=3)
    reference = {
        "labels_key": "Level_4",
        "batch_key": "batch",
        "label_levels": ["Level_3"],
        "counts_layer": "counts",
    }
    fit_calls_files(
        atlas_path=tmp_path / "embedded_atlas.h5ad",
        reference=reference,
        settings=settings,
        output=tmp_path / "call_model.npz",
    )
    fitted = read_reference_calls(tmp_path / "call_model.npz")
    call_embedded(obs, obsm, run, settings, fitted)  # the atlas it was fitted on: fine

    with pytest.raises(AtlasmapInputError, match="other mapping.calls settings.*n_neighbors"):
        call_embedded(
            obs, obsm, run, CallSettings(method="knn", n_neighbors=30, calibration_folds=3), fitted
        )
    fewer = np.flatnonzero(atlas)[10:]
    keep = np.r_[fewer, np.flatnonzero(~atlas)]
    with pytest.raises(AtlasmapInputError, match="another atlas; rerun fit_calls"):
        call_embedded(obs.iloc[keep], {k: v[keep] for k, v in obsm.items()}, run, settings, fitted)
    # A mapping that moved the atlas cells (surgery with weight decay embeds them again)
    # gets calls fitted on its own atlas latent, as without a saved fit.
    moved = {k: v.copy() for k, v in obsm.items()}
    moved["X_scANVI_emb"][atlas] += rng_shift(np.flatnonzero(atlas).size)
    own, _ = call_embedded(obs, moved, run, settings)
    pd.testing.assert_frame_equal(call_embedded(obs, moved, run, settings, fitted)[0], own)
    with pytest.raises(
        AtlasmapInputError, match="no obs column .sample. \\(config key reference.batch_key\\)"
    ):
        fit_calls_files(
            atlas_path=tmp_path / "embedded_atlas.h5ad",
            reference={**reference, "batch_key": "sample"},
            settings=settings,
            output=tmp_path / "other.npz",
        )
    assert not (tmp_path / "other.npz").exists()


def test_the_expression_member_calls_right_what_the_latent_confuses():
    """CD4 and CD8 overlap in the latent but not in expression (another lab's cells sit
    between clusters): the ensemble calls them right, kNN alone cannot, and each held-out
    fold's expression classifier was fitted without that fold's cells."""
    rng = np.random.default_rng(11)
    centres = {**CENTRES, "CD8": [0.1, 0, 0]}  # on top of CD4 in the latent
    latent, labels, batches = blobs(rng, centres, 150)
    cells = pd.Index([f"a{i}" for i in range(len(labels))])
    atlas_counts = toy_counts(rng, labels, cells)
    truth = np.repeat(["CD4", "CD8"], 100)
    query_latent = rng.normal(0.05, 0.3, (200, 3))
    query_counts = toy_counts(rng, truth, [f"q{i}" for i in range(200)])
    right = {}
    for method in ("knn", "ensemble"):
        settings = CallSettings(
            method=method,
            n_neighbors=20,
            novelty=False,
            unknown_threshold=0,
            expression_weight=0.5,
        )
        model = fit_call_model(latent, labels, batches, settings=settings, expression=atlas_counts)
        expression = None
        if model.expression is not None:
            expression = model.expression.probabilities(query_counts, "counts", "query")
        table = call_cells(model, query_latent, settings=settings, expression_probs=expression)
        right[method] = (table["candidate_celltype"].to_numpy() == truth).mean()
        if method == "ensemble":
            assert model.report["held_out_member_accuracy"]["expression"] > 0.95
            assert model.report["held_out_member_accuracy"]["knn"] < 0.9
            assert (table["expression_celltype"].to_numpy() == truth).mean() > 0.95
    assert right["knn"] < 0.7
    assert right["ensemble"] > 0.9


def test_the_expression_member_scales_a_query_cell_by_all_its_counts():
    """The classifier reads a few variable genes, but each cell is scaled by its counts
    over all its genes, for the fit and for a query alike: the atlas's own cells, read
    back as a query, get exactly the probabilities the fit gave them. (Scaled by the
    classifier's genes alone, it lost 2-7 points on the tuning folds.)"""
    from atlasmap.expression import fit_expression_model

    rng = np.random.default_rng(13)
    labels = np.repeat(MARKED, 40)
    atlas = toy_counts(rng, labels, [f"a{i}" for i in range(len(labels))])
    codes, names = pd.factorize(labels, sort=True)
    model, logged = fit_expression_model(atlas, codes, len(names), layer="counts", n_genes=12)
    assert len(model.genes) == 12 < atlas.n_vars
    np.testing.assert_allclose(
        model.probabilities(atlas, "counts", "atlas"),
        model.probabilities_of_logged(logged),
        rtol=1e-4,
        atol=1e-6,
    )


def test_a_gene_the_query_lacks_is_no_evidence_against_the_type_that_expresses_it():
    """A query measured on another panel lacks 8 of the Mono markers: read as zeros they
    would argue against Mono; they take the atlas's mean instead, so the Mono cells keep
    Mono probability."""
    from atlasmap.expression import fit_expression_model

    rng = np.random.default_rng(14)
    labels = np.repeat(MARKED, 40)
    atlas = toy_counts(rng, labels, [f"a{i}" for i in range(len(labels))])
    codes, names = pd.factorize(labels, sort=True)
    model, _ = fit_expression_model(atlas, codes, len(names), layer="counts", n_genes=10**4)
    query = toy_counts(rng, ["Mono"] * 30, [f"q{i}" for i in range(30)])
    panel = query[:, ~query.var_names.isin([f"G{i}" for i in range(30, 38)])].copy()
    mono = list(names).index("Mono")
    filled = model.probabilities(panel, "counts", "query")[:, mono]
    zeros = model.probabilities_of_logged(_zero_filled(model, panel))[:, mono]
    assert np.median(zeros) < 0.5  # read as zeros, the absent markers outvote the rest
    assert (filled > zeros).all()
    assert (filled > 0.5).mean() >= 0.9


def _zero_filled(model, cells):
    """``cells``' log-normalised counts on the model's genes, absent genes as zeros."""
    from atlasmap.expression import log_normalise
    from atlasmap.genes import align_to_genes

    aligned, _ = align_to_genes(cells, list(model.genes), layer="counts", min_overlap=0.0)
    totals = np.asarray(cells.layers["counts"].sum(axis=1)).ravel()
    return log_normalise(aligned.layers["counts"], totals=totals)


def test_a_query_named_by_ensembl_ids_reaches_the_expression_member():
    rng = np.random.default_rng(12)
    latent, labels, batches = blobs(rng, CENTRES, 100)
    atlas_counts = toy_counts(rng, labels, [f"a{i}" for i in range(len(labels))])
    settings = CallSettings(method="ensemble", n_neighbors=20, novelty=False)
    model = fit_call_model(latent, labels, batches, settings=settings, expression=atlas_counts)
    query = toy_counts(rng, ["B"] * 30, [f"q{i}" for i in range(30)])
    by_id = query.copy()
    by_id.var_names = by_id.var["gene_ids"].to_numpy()
    by_id.var = by_id.var.drop(columns="gene_ids")
    np.testing.assert_allclose(
        model.expression.probabilities(by_id, "counts", "query"),
        model.expression.probabilities(query, "counts", "query"),
    )


def test_labels_short_of_cells_are_called_and_reported_not_dropped():
    """A label of 8 cells, all in one batch, with a vote of 20 neighbours: its fold's
    training lacks it (the expression classifier gives it probability 0 there), the fit
    goes on, and calls.json names the label and why."""
    from atlasmap.expression import fit_linear

    rng = np.random.default_rng(13)
    latent, labels, batches = blobs(rng, CENTRES, 200)
    rare = rng.normal([0, 0, 5], 0.2, (8, 3))
    latent = np.vstack([latent, rare])
    labels = np.concatenate([labels, ["pDC"] * 8])
    batches = np.concatenate([batches, ["b0"] * 8])
    counts = toy_counts(rng, labels, [f"a{i}" for i in range(len(labels))])
    settings = CallSettings(method="ensemble", n_neighbors=20, calibration_folds=3)
    model = fit_call_model(latent, labels, batches, settings=settings, expression=counts)
    short = model.report["labels_short_of_cells"]
    assert short["pDC"]["cells"] == 8 and short["pDC"]["fewer_than_n_neighbors"] == 20
    assert "only_in_fold" in short["pDC"]
    assert "pDC" in list(model.labels)

    codes = np.array([0, 0, 1, 1, 0, 1])
    coef, intercept = fit_linear(np.eye(6, 4), codes, 3)
    assert coef.shape == (3, 4) and np.isneginf(intercept[2]) and not coef[2].any()


def test_the_ensembles_fit_reads_the_atlas_counts_and_refuses_another_atlas(tmp_path):
    """fit_calls reads the atlas's counts on all its genes beside embed_reference's file;
    an atlas file whose cells are not the embedded ones is refused, naming the file, and
    no fit is written."""
    from atlasmap.call_adapters import fit_calls_files
    from atlasmap.errors import AtlasmapInputError
    from atlasmap.io import write_h5ad

    obs, obsm, run = toy_embedded(np.random.default_rng(4))
    write_embedded_atlas(tmp_path / "embedded_atlas.h5ad", obs, obsm, run)
    counts, _ = toy_expression(obs)
    write_h5ad(counts, tmp_path / "atlas.h5ad")
    reference = {
        "labels_key": "Level_4",
        "batch_key": "batch",
        "label_levels": ["Level_3"],
        "counts_layer": "counts",
    }
    settings = CallSettings(method="ensemble", n_neighbors=20, calibration_folds=3)
    fitted = fit_calls_files(
        atlas_path=tmp_path / "embedded_atlas.h5ad",
        reference=reference,
        settings=settings,
        output=tmp_path / "call_model.npz",
        counts_path=tmp_path / "atlas.h5ad",
    )
    assert len(fitted.model.expression.genes) == counts.n_vars
    write_h5ad(counts[::-1].copy(), tmp_path / "other.h5ad")
    with pytest.raises(AtlasmapInputError, match="other.h5ad: its cells are not those"):
        fit_calls_files(
            atlas_path=tmp_path / "embedded_atlas.h5ad",
            reference=reference,
            settings=settings,
            output=tmp_path / "other_fit.npz",
            counts_path=tmp_path / "other.h5ad",
        )
    assert not (tmp_path / "other_fit.npz").exists()


def noisy_classifier(rng, labels, names, right=0.6):
    """Classifier probabilities that name the true label for a share ``right`` of the
    cells and a random other label for the rest, with 0.55 on the label named."""
    codes = pd.Index(names).get_indexer(labels)
    named = np.where(
        rng.random(len(codes)) < right,
        codes,
        (codes + rng.integers(1, len(names), len(codes))) % len(names),
    )
    probs = np.full((len(codes), len(names)), 0.45 / (len(names) - 1))
    probs[np.arange(len(codes)), named] = 0.55
    return probs


def test_smoothing_over_the_query_mends_scattered_errors_and_stays_calibrated():
    """A member wrong on 40% of cells at random: averaged over each cell's query
    neighbours the errors wash out, and the calibration, fitted on held-out atlas
    batches smoothed alike, still matches the accuracy."""
    rng = np.random.default_rng(3)
    names = sorted(CENTRES)
    latent, labels, batches = blobs(rng, CENTRES, 300)
    reference_probs = noisy_classifier(rng, labels, names)
    truth = np.repeat(list(CENTRES), 150)
    cells = np.vstack([rng.normal(c, 0.3, (150, 3)) for c in CENTRES.values()])
    query_probs = noisy_classifier(rng, truth, names)
    tables = {}
    for smoothing in (0, 15):
        settings = CallSettings(method="classifier", n_neighbors=20, query_smoothing=smoothing)
        model = fit_call_model(latent, labels, batches, reference_probs, names, settings)
        tables[smoothing] = call_cells(model, cells, query_probs, names, settings=settings)
        assert model.report["query_smoothing"] == smoothing  # said in calls.json
    accuracy = {s: (t["candidate_celltype"].to_numpy() == truth).mean() for s, t in tables.items()}
    assert accuracy[0] < 0.7
    assert accuracy[15] > 0.85
    smoothed = tables[15]
    right = smoothed["candidate_celltype"].to_numpy() == truth
    assert expected_calibration_error(smoothed["prediction_probability"], right) < 0.08


def test_smoothing_stays_within_a_query_batch():
    """Two batches at the same place, their members naming different labels: neither
    batch's calls take the other's, and a batch called alone gets the same calls."""
    rng = np.random.default_rng(4)
    names = sorted(CENTRES)
    latent, labels, batches = blobs(rng, CENTRES, 300)
    settings = CallSettings(method="classifier", n_neighbors=20, query_smoothing=15)
    model = fit_call_model(
        latent, labels, batches, noisy_classifier(rng, labels, names, 1.0), names, settings
    )
    cells = rng.normal(CENTRES["CD4"], 0.3, (100, 3))
    says_cd4 = noisy_classifier(rng, ["CD4"] * 100, names, 1.0)
    says_b = noisy_classifier(rng, ["B"] * 100, names, 1.0)
    together = call_cells(
        model,
        np.vstack([cells, cells]),
        np.vstack([says_cd4, says_b]),
        names,
        settings=settings,
        batches=np.array(["a"] * 100 + ["b"] * 100),
    )
    assert (together["candidate_celltype"].to_numpy()[:100] == "CD4").all()
    assert (together["candidate_celltype"].to_numpy()[100:] == "B").all()
    alone = call_cells(
        model, cells, says_cd4, names, settings=settings, batches=np.array(["a"] * 100)
    )
    np.testing.assert_allclose(
        alone["prediction_probability"].to_numpy(),
        together["prediction_probability"].to_numpy()[:100],
    )


def test_a_rare_type_of_a_small_query_is_not_smoothed_into_its_far_neighbours(toy):
    """Ten B cells among 200 CD4 cells: most of each B cell's 50 nearest query cells are
    CD4 cells, far off; weighted by the vote's kernel they count for almost nothing."""
    rng, _ = toy
    latent, labels, batches = blobs(np.random.default_rng(1), CENTRES, 300)
    settings = CallSettings(method="knn", n_neighbors=20, query_smoothing=50)
    model = fit_call_model(latent, labels, batches, settings=settings)
    cells = np.vstack(
        [rng.normal(CENTRES["B"], 0.3, (10, 3)), rng.normal(CENTRES["CD4"], 0.3, (200, 3))]
    )
    table = call_cells(model, cells, settings=settings)
    assert (table["candidate_celltype"].to_numpy()[:10] == "B").all()
    assert table["prediction_probability"].to_numpy()[:10].min() > 0.5


def test_the_calibration_scores_each_fold_in_its_own_label_blind_latent():
    """With held-out latents, each fold's cells are scored in the latent of the model that
    did not see their labels: the fit takes that model's folds (not calibration_folds),
    its held-out accuracy is what that latent allows, and the novelty cut-off fitted
    there holds in the reference latent whatever the other model's scale."""
    from atlasmap.reference import HeldOutLatents

    rng = np.random.default_rng(2)
    latent, labels, batches = blobs(rng, CENTRES, 150, batches=4)
    settings = CallSettings(method="knn", n_neighbors=20, calibration_folds=4, query_smoothing=0)
    fold = pd.Series(batches).map({"b0": 0, "b1": 0, "b2": 1, "b3": 1}).to_numpy()
    cells = pd.Index([f"c{i}" for i in range(len(labels))])
    # A label-blind model places CD4 and CD8 cells on top of each other.
    blind = latent.copy()
    blind[np.isin(labels, ["CD4", "CD8"]), 0] = rng.normal(0.6, 0.3, 300)
    held_out = HeldOutLatents(cells, fold, np.stack([blind, blind]))
    own = fit_call_model(latent, labels, batches, settings=settings).report
    honest = fit_call_model(latent, labels, batches, settings=settings, held_out=held_out)
    assert own["held_out_latent"] == "reference model" and own["folds"] == 4
    assert honest.report["held_out_latent"] == "fold models" and honest.report["folds"] == 2
    assert own["held_out_accuracy"] > 0.95
    assert 0.65 < honest.report["held_out_accuracy"] < 0.85  # CD4 and CD8 a coin toss
    assert "trained without its labels" in honest.report["held_out_caveats"][0]
    # The same latents ten times larger: the same fit, distances rescaled.
    larger = HeldOutLatents(cells, fold, np.stack([blind, blind]) * 10)
    scaled = fit_call_model(latent, labels, batches, settings=settings, held_out=larger)
    assert scaled.novelty_cutoff == pytest.approx(honest.novelty_cutoff, rel=1e-6)
    np.testing.assert_allclose(scaled.distance_scale, honest.distance_scale, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_probabilities_follow_the_references_labels(dtype):
    # The classifier names six labels; the reference holds three of them in another
    # order and one it lacks: that one reads zero, each row sums to 1 over the rest.
    from atlasmap.calls import _align_probabilities

    probs = np.random.default_rng(0).random((500, 6)).astype(dtype)
    aligned = _align_probabilities(probs, list("abcdef"), ["f", "x", "a", "c"])
    kept = probs[:, [5, 0, 2]].astype(float)
    expected = kept / kept.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(aligned[:, [0, 2, 3]], expected, rtol=1e-6)
    assert (aligned[:, 1] == 0).all()
    # All the reference's labels known: the classifier's dtype, reordered.
    reordered = _align_probabilities(probs, list("abcdef"), list("fedcba"))
    assert reordered.dtype == dtype
    total = probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(reordered, probs[:, ::-1] / total, rtol=1e-6)
    np.testing.assert_allclose(
        _align_probabilities(probs, list("abcdef"), list("abcdef")), probs / total, rtol=1e-6
    )
