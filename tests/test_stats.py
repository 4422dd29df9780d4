"""Uncertainty statistics: each checked against a hand computation or an independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from facediag.training.stats import (
    _weighted_aucs,
    bootstrap_auc_interval,
    mcnemar_exact,
    paired_bootstrap_difference,
    summary_intervals,
    wilson_interval,
)


def test_wilson_8_of_10_by_hand() -> None:
    # p = 0.8, z^2 = 3.8416, n = 10: denominator 1 + 3.8416/10 = 1.38416,
    # centre (0.8 + 3.8416/20) / 1.38416 = 0.99208 / 1.38416,
    # half-width 1.96 / 1.38416 * sqrt(0.8*0.2/10 + 3.8416/400) = 1.96 / 1.38416 * sqrt(0.025604).
    centre = 0.99208 / 1.38416
    half = 1.96 / 1.38416 * math.sqrt(0.025604)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # the textbook figures for 8/10


def test_wilson_edges_and_errors() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416)  # k = 0: upper bound z^2 / (n + z^2)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.8416)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(8, 10, z=2.5)[0] < wilson_interval(8, 10)[0]  # wider at a larger z
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_by_binomial_sum() -> None:
    # b=1, c=9: n=10, P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = 11/1024, two-sided 22/1024.
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, abs=1e-15)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    for b, c in ((3, 17), (40, 61), (700, 760)):  # large n stays exact (no float underflow)
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.4 * y, 2)  # rounded: plenty of tied scores
    return y, s


def test_weighted_auc_with_unit_weights_is_sklearns_auc() -> None:
    y, s = _scores(300, 1)
    pos, neg = s[y == 1], np.sort(s[y == 0])
    auc = _weighted_aucs(pos, neg, np.ones((1, pos.size)), np.ones((1, neg.size)))[0]
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_auc_interval_matches_a_plain_resampling_loop() -> None:
    y, s = _scores(200, 2)
    lo, hi = bootstrap_auc_interval(y, s, resamples=1000, seed=0)
    point = roc_auc_score(y, s)
    assert lo < point < hi
    assert bootstrap_auc_interval(y, s, resamples=1000, seed=0) == (lo, hi)  # seeded
    # An independent stratified bootstrap: index resampling per class, sklearn's AUC, another seed.
    rng = np.random.default_rng(12345)
    pi, ni = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    aucs = []
    for _ in range(1000):
        idx = np.r_[rng.choice(pi, pi.size), rng.choice(ni, ni.size)]
        aucs.append(roc_auc_score(y[idx], s[idx]))
    ref_lo, ref_hi = np.percentile(aucs, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)
    # perfectly separated: every resample has AUC 1
    assert bootstrap_auc_interval([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        bootstrap_auc_interval([1, 1], [0.2, 0.3])


def test_paired_bootstrap_difference() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(400) < 0.8
    b = a.copy()
    b[:40] = ~b[:40]  # B differs from A on 40 photos
    d = paired_bootstrap_difference(a, b, resamples=1000, seed=0)
    assert d.difference == pytest.approx((a.sum() - b.sum()) / 400)
    assert d.low < d.difference < d.high
    # an independent paired loop (index resampling, another seed) agrees on the interval
    idx = np.random.default_rng(99).integers(0, 400, (1000, 400))
    ref = np.percentile(a[idx].mean(1) - b[idx].mean(1), [2.5, 97.5])
    assert d.low == pytest.approx(ref[0], abs=0.01) and d.high == pytest.approx(ref[1], abs=0.01)
    same = paired_bootstrap_difference(a, a)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_difference([True] * 5, [False] * 5).to_dict()["interval"] == [1.0, 1.0]
    with pytest.raises(ValueError):
        paired_bootstrap_difference([True], [True, False])


def test_summary_intervals_on_a_hand_made_confusion() -> None:
    from facediag.training.metrics import summarize

    # 3 classes; true / predicted chosen by hand: 7 of 10 right.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), pred] = 0.8
    m = summary_intervals(summarize(y, probs, ["a", "b", "c"]), y, probs)
    assert m["top1_ci95"] == list(wilson_interval(7, 10))
    a = m["per_class"]["a"]  # class a: tp 3, fn 1, fp 1 (a 'c' called 'a'), tn 5
    assert a["sensitivity_ci95"] == list(wilson_interval(3, 4))
    assert a["precision_ci95"] == list(wilson_interval(3, 4))
    assert a["specificity_ci95"] == list(wilson_interval(5, 6))
    lo, hi = a["auc_ci95"]
    assert 0.0 <= lo <= a["auc"] <= hi <= 1.0
    assert m["intervals"]["resamples"] == 1000
