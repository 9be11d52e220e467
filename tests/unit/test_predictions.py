"""Calls with confidence: kNN uncertainty, hierarchy, Unknown; and the metrics on them."""

import numpy as np
import pandas as pd
import pytest
from atlasmap.mapping import hierarchical_calls, knn_label_uncertainty
from atlasmap.metrics import classification_metrics
from sklearn.metrics import f1_score


def test_knn_uncertainty_is_low_inside_a_cluster_and_high_between_two():
    rng = np.random.default_rng(0)
    ref = np.vstack([rng.normal(0, 0.1, (100, 2)), rng.normal(5, 0.1, (100, 2))])
    labels = np.array(["A"] * 100 + ["B"] * 100)
    query = np.array([[0.0, 0.0], [5.0, 5.0], [2.5, 2.5]])
    called, uncertainty = knn_label_uncertainty(ref, labels, query, n_neighbors=200)
    assert list(called[:2]) == ["A", "B"]
    assert uncertainty[0] < 0.05 and uncertainty[1] < 0.05
    assert uncertainty[2] == pytest.approx(0.5, abs=0.1)


HIERARCHY = pd.DataFrame(
    {"Level_1": ["Immune", "Immune", "Immune"], "Level_3": ["T cell", "T cell", "B cell"]},
    index=pd.Index(["CD4", "CD8", "B"], name="Level_4"),
)


def test_coarser_levels_sum_their_children_and_unknown_follows_the_threshold():
    probs = pd.DataFrame(
        [[0.45, 0.45, 0.10], [0.9, 0.05, 0.05]],
        columns=pd.Index(["CD4", "CD8", "B"], name="Level_4"),
    )
    calls = hierarchical_calls(probs, HIERARCHY, threshold=0.5)
    assert calls.loc[0, "predicted_Level_4"] == "Unknown"
    assert calls.loc[0, "probability_Level_4"] == pytest.approx(0.45)
    assert calls.loc[0, "predicted_Level_3"] == "T cell"
    assert calls.loc[0, "probability_Level_3"] == pytest.approx(0.9)
    assert calls.loc[0, "predicted_Level_1"] == "Immune"
    assert calls.loc[1, "predicted_Level_4"] == "CD4"


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


def test_metrics_apply_the_threshold_to_a_baseline_probability():
    truth = pd.Series(["A", "B"])
    m = classification_metrics(
        truth, pd.Series(["A", "B"]), {"A", "B"}, pd.Series([0.9, 0.3]), unknown_threshold=0.5
    )
    assert m["accuracy"] == 0.5 and m["share_unknown"] == 0.5


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
