"""Uncertainty for the evaluation figures: Wilson intervals, bootstrap intervals, paired tests.

- ``wilson_interval(k, n)``: 95% (z = 1.96) Wilson score interval of a proportion k/n.
- ``bootstrap_auc_interval(y, scores)``: percentile interval of the ROC AUC over stratified
  resamples (positives and negatives resampled separately, so every resample has both).
- ``mcnemar_exact(b, c)``: two-sided exact McNemar p-value (binomial, p = 1/2, on the
  discordant pairs b + c), computed with exact integers.
- ``paired_bootstrap_difference(correct_a, correct_b)``: accuracy of A minus accuracy of B
  on the same samples, with a percentile interval over paired resamples.

Bootstraps are seeded (``numpy.random.default_rng(seed)``) so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

DEFAULT_Z = 1.96
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
_CHUNK = 100  # resamples drawn at a time, to bound memory on large sets


def wilson_interval(k: int, n: int, z: float = DEFAULT_Z) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials; (nan, nan) when n is 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n) resample counts: how often each of n items is drawn in n draws with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _weighted_aucs(pos: np.ndarray, neg_sorted: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """AUC (ties 1/2) per row of resample weights: w_pos (B, P) over ``pos``, w_neg (B, N) over sorted negatives."""
    cum = np.concatenate([np.zeros((w_neg.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    wins = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])  # (B, P): weighted negatives below each positive
    return np.asarray((w_pos * wins).sum(axis=1) / (pos.size * neg_sorted.size))


def bootstrap_auc_interval(
    y_binary: np.ndarray,
    scores: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC, positives and negatives resampled separately.

    Raises ValueError when either class is absent (the AUC is undefined then).
    """
    y = np.asarray(y_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"need 1-D labels and scores of the same length, got {y.shape} and {s.shape}")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    pos = s[y]
    neg_sorted = np.sort(s[~y])
    if pos.size == 0 or neg_sorted.size == 0:
        raise ValueError("AUC needs both positive and negative samples")
    rng = np.random.default_rng(seed)
    aucs = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        aucs.append(_weighted_aucs(pos, neg_sorted, _counts(rng, pos.size, size), _counts(rng, neg_sorted.size, size)))
    return _percentile_interval(np.concatenate(aucs), level)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c are the discordant counts (A right/B wrong, A wrong/B right).

    Under the null each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1.0 when b + c is 0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same samples, with its bootstrap interval."""

    difference: float
    low: float
    high: float
    resamples: int
    seed: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return {"difference": self.difference, "interval": [self.low, self.high], "level": self.level,
                "resamples": self.resamples, "seed": self.seed}


def paired_bootstrap_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> PairedDifference:
    """mean(correct_a) - mean(correct_b), and a percentile interval over paired resamples of the samples."""
    a = np.asarray(correct_a).astype(bool)
    b = np.asarray(correct_b).astype(bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no samples")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    delta = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs = [(_counts(rng, a.size, min(_CHUNK, resamples - start)) @ delta) / a.size
             for start in range(0, resamples, _CHUNK)]
    lo, hi = _percentile_interval(np.concatenate(diffs), level)
    return PairedDifference(float(delta.mean()), lo, hi, resamples, seed, level)


def _ci(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    lo, hi = wilson_interval(k, n)
    return [lo, hi]


def summary_intervals(
    summary: dict[str, Any],
    y_true: np.ndarray,
    probs: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Add 95% intervals to a ``facediag.training.metrics.summarize`` dict, in place, and return it.

    Top-1 gets ``top1_ci95`` (Wilson); each class gets ``precision_ci95``, ``sensitivity_ci95``,
    ``specificity_ci95`` (Wilson on the confusion-matrix counts) and ``auc_ci95`` (stratified
    bootstrap). An interval is None where its figure is undefined.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    cm = np.asarray(summary["confusion_matrix"], dtype=np.int64)
    total = int(cm.sum())
    correct = int(np.trace(cm)) if cm.size else 0
    summary["top1_ci95"] = _ci(correct, total)
    for c, name in enumerate(summary["classes"]):
        row = summary["per_class"][name]
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = total - tp - fn - fp
        row["precision_ci95"] = _ci(tp, tp + fp)
        row["sensitivity_ci95"] = _ci(tp, tp + fn)
        row["specificity_ci95"] = _ci(tn, tn + fp)
        positive = y == c
        if row.get("auc") is None or positive.all() or not positive.any():
            row["auc_ci95"] = None
        else:
            row["auc_ci95"] = list(bootstrap_auc_interval(positive, p[:, c], resamples, seed + c))
    summary["intervals"] = {"level": 0.95, "proportions": "wilson", "auc": "stratified percentile bootstrap",
                            "resamples": resamples, "seed": seed}
    return summary
