"""Metrics against examples worked out by hand, plus properties that must hold for any input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from facediag.training import metrics as M

# A 3-class example. Counted by hand, row = true class, column = predicted class:
#   true 0: predicted 0, 1, 0      -> [2, 1, 0]
#   true 1: predicted 1, 2         -> [0, 1, 1]
#   true 2: predicted 2, 2, 0, 2   -> [1, 0, 3]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2])
CM = [[2, 1, 0], [0, 1, 1], [1, 0, 3]]


def test_confusion_matrix_and_top1_by_hand() -> None:
    assert M.confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == CM
    assert M.top1_accuracy(Y_TRUE, Y_PRED) == pytest.approx(6 / 9)


def test_per_class_metrics_by_hand() -> None:
    pc = M.per_class_metrics(np.array(CM))
    # class 0: TP 2, FN 1, FP 1 (a true 2 called 0), TN 9-2-1-1 = 5
    # class 1: TP 1, FN 1, FP 1 (a true 0 called 1), TN 6
    # class 2: TP 3, FN 1, FP 1 (a true 1 called 2), TN 4
    np.testing.assert_allclose(pc["precision"], [2 / 3, 1 / 2, 3 / 4])
    np.testing.assert_allclose(pc["sensitivity"], [2 / 3, 1 / 2, 3 / 4])
    np.testing.assert_allclose(pc["specificity"], [5 / 6, 6 / 7, 4 / 5])
    np.testing.assert_allclose(pc["f1"], [2 * 2 / (4 + 1 + 1), 2 / (2 + 1 + 1), 6 / (6 + 1 + 1)])
    assert pc["tn"].tolist() == [5, 6, 4]
    assert pc["support"].tolist() == [3, 2, 4]


def test_undefined_precision_is_nan_not_zero() -> None:
    # Class 2 is never predicted and never true: precision, sensitivity and F1 are undefined.
    pc = M.per_class_metrics(M.confusion_matrix([0, 1, 1], [0, 1, 0], 3))
    assert np.isnan(pc["precision"][2]) and np.isnan(pc["sensitivity"][2]) and np.isnan(pc["f1"][2])
    assert pc["specificity"][2] == 1.0


def test_bad_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        M.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="differ in length"):
        M.confusion_matrix([0, 1], [0], 2)


def test_roc_separable_reversed_and_tied() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    fpr, tpr, thr = M.roc_curve(y, [0.5, 0.5, 0.5, 0.5])
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]  # tied scores move together


def test_roc_points_by_hand() -> None:
    # Positives score 0.9 and 0.7, negatives 0.8 and 0.1. Walking the threshold down:
    # >=0.9: TP 1 FP 0; >=0.8: TP 1 FP 1; >=0.7: TP 2 FP 1; >=0.1: TP 2 FP 2.
    fpr, tpr, thr = M.roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thr[1:].tolist() == [0.9, 0.8, 0.7, 0.1] and np.isinf(thr[0])
    # 3 of the 4 positive-negative pairs are ordered correctly.
    assert M.roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half: pairs 0.5 (tie), 1, 1, 1 -> 3.5 / 4.
    assert M.roc_auc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(0.875)


def test_roc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        M.roc_curve([1, 1], [0.2, 0.3])


def test_one_vs_rest_marks_absent_class() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    rocs = M.one_vs_rest_roc([0, 1, 0], probs)
    assert rocs[2] is None  # class 2 has no sample
    assert rocs[0]["auc"] == 1.0 and rocs[1]["auc"] == 1.0


def test_ece_by_hand() -> None:
    # 10 bins. Two samples at confidence 0.95, one right -> bin (0.9, 1]: |0.5 - 0.95| = 0.45.
    # Two at 0.65, both right -> bin (0.6, 0.7]: |1 - 0.65| = 0.35. Each bin holds half the samples.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    y = np.array([0, 1, 1, 1])
    assert M.expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    rel = M.reliability_bins(y, probs, n_bins=10)
    assert rel["count"].tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert rel["accuracy"][9] == 0.5 and rel["accuracy"][6] == 1.0
    assert np.isnan(rel["accuracy"][0])


def test_ece_bin_edge_goes_to_lower_bin() -> None:
    # Bins are (b/n, (b+1)/n]: a confidence of exactly 0.7 belongs to (0.6, 0.7], bin 6 of 10.
    rel = M.reliability_bins([0], np.array([[0.7, 0.3]]), n_bins=10)
    assert rel["count"][6] == 1


def test_ece_calibrated_data_is_small_and_overconfident_is_large() -> None:
    rng = np.random.default_rng(1)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < conf  # right with exactly the stated probability
    y = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], axis=1)
    assert M.expected_calibration_error(y, probs) < 0.02
    # Says 99% but is right 60% of the time: ECE close to 0.39.
    y_over = np.where(rng.uniform(size=n) < 0.6, 0, 1)
    probs_over = np.tile([0.99, 0.01], (n, 1))
    assert M.expected_calibration_error(y_over, probs_over) == pytest.approx(0.39, abs=0.02)


def test_threshold_for_sensitivity_by_hand() -> None:
    pos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    y = np.array([1] * 10 + [0] * 3)
    s = np.array(pos + [0.95, 0.15, 0.0])
    # 90% of 10 positives = 9 must be caught: the 9th highest positive score is 0.1.
    assert M.threshold_for_sensitivity(y, s, 0.9) == 0.1
    assert M.threshold_for_sensitivity(y, s, 0.85) == 0.1  # 8.5 -> 9 positives
    assert M.threshold_for_sensitivity(y, s, 0.8) == 0.2
    assert M.threshold_for_sensitivity(y, s, 1.0) == 0.05
    sens, spec = M.sensitivity_specificity_at(y, s, 0.1)
    assert sens == 0.9 and spec == pytest.approx(1 / 3)  # negatives 0.95 and 0.15 are called positive


def test_thresholds_skip_healthy_class() -> None:
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    th = M.thresholds_at_sensitivity([0, 0, 1, 1], probs, ["healthy", "sick"], 1.0, skip=("healthy",))
    assert th == {"sick": 0.7}


def test_summarize_is_strict_json_with_hand_values() -> None:
    probs = np.eye(3)[Y_PRED] * 0.6 + 0.4 / 3  # top-1 = Y_PRED, confidence 0.7333...
    s = M.summarize(Y_TRUE, probs, ["a", "b", "c"], thresholds={"b": 0.5})
    text = json.dumps(s, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    assert back["confusion_matrix"] == CM
    assert back["top1"] == pytest.approx(6 / 9)
    assert back["per_class"]["c"]["specificity"] == pytest.approx(4 / 5)
    # Every sample sits in the bin of 0.7333: ECE = |6/9 - 0.7333|.
    assert back["ece"] == pytest.approx(abs(6 / 9 - (0.6 + 0.4 / 3)))
    assert back["at_thresholds"]["b"]["sensitivity"] == pytest.approx(1 / 2)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney: share of (positive, negative) pairs ordered right, ties one half."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


labelled_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.int64, n, elements=st.integers(0, 1)),
        hnp.arrays(np.float64, n, elements=st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 1))),
    )
).filter(lambda t: 0 < t[0].sum() < len(t[0]))


@settings(max_examples=150, deadline=None)
@given(labelled_scores)
def test_auc_equals_pairwise_count_and_is_invariant_to_monotone_maps(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    auc = M.roc_auc(y, s)
    assert 0.0 <= auc <= 1.0
    assert auc == pytest.approx(_pairwise_auc(y, s))
    # Strictly increasing maps keep the order (and the ties), so the AUC.
    assert M.roc_auc(y, np.exp(s)) == pytest.approx(auc)
    assert M.roc_auc(y, 3.0 * s + 7.0) == pytest.approx(auc)
    assert M.roc_auc(y, s**3) == pytest.approx(auc)
    # Reversing the order swaps the roles: AUC -> 1 - AUC.
    assert M.roc_auc(y, -s) == pytest.approx(1.0 - auc)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda c: st.tuples(
            st.just(c),
            hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.just(c)), elements=st.floats(0.01, 1.0)),
            st.randoms(use_true_random=False),
        )
    )
)
def test_metrics_stay_in_range_and_counts_add_up(data) -> None:  # type: ignore[no-untyped-def]
    c, raw, rnd = data
    probs = raw / raw.sum(axis=1, keepdims=True)
    y = np.array([rnd.randrange(c) for _ in range(len(probs))])
    classes = [f"k{i}" for i in range(c)]
    s = M.summarize(y, probs, classes)
    cm = np.array(s["confusion_matrix"])
    assert cm.sum() == len(y) and cm.sum(axis=1).tolist() == np.bincount(y, minlength=c).tolist()
    assert 0.0 <= s["top1"] <= 1.0 and 0.0 <= s["ece"] <= 1.0
    for row in s["per_class"].values():
        for key in ("precision", "sensitivity", "specificity", "f1", "auc"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0
    assert sum(s["reliability"]["count"]) == len(y)


@settings(max_examples=100, deadline=None)
@given(labelled_scores, st.floats(0.05, 1.0))
def test_threshold_is_the_highest_that_reaches_the_sensitivity(data, target: float) -> None:  # type: ignore[no-untyped-def]
    y, s = data
    t = M.threshold_for_sensitivity(y == 1, s, target)
    sens, _ = M.sensitivity_specificity_at(y == 1, s, t)
    assert sens >= target - 1e-12
    higher = s[(y == 1) & (s > t)]
    if higher.size:  # the next higher positive score would miss the target
        sens_up, _ = M.sensitivity_specificity_at(y == 1, s, higher.min())
        assert sens_up < target
