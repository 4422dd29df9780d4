"""Averages over classes for the evaluation report: macro / weighted precision, recall, F1 and balanced accuracy.

The figures themselves are scikit-learn's (``precision_recall_fscore_support`` with
``average="macro"`` / ``"weighted"`` and ``zero_division=0``, ``balanced_accuracy_score``),
called with scikit-learn's default class set: the classes present in the true or the
predicted labels. So:

- a class that is predicted but never true has recall 0 in the macro average and weight 0 in
  the weighted one; a class never predicted has precision 0 (``zero_division=0``): an average
  over classes counts a class the model never names as a failure, not as "undefined";
- balanced accuracy is the mean recall over the classes that have samples.

Their 95% intervals are percentile bootstraps over the photos (seeded, so a report is
reproducible). Each resample's figures come from its confusion matrix with the same rules
(``from_confusion``), vectorised; the tests check ``from_confusion`` against scikit-learn.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
_CHUNK = 100
STATS = ("precision", "recall", "f1")
KINDS = ("macro", "weighted")
CONVENTION = ("scikit-learn precision_recall_fscore_support (zero_division=0) and balanced_accuracy_score, "
              "over the classes present in the true or predicted labels")


def averaged_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """``{"balanced_accuracy": b, "macro": {precision, recall, f1}, "weighted": {...}}`` from scikit-learn."""
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if y.size == 0:
        return {"balanced_accuracy": None, **{k: dict.fromkeys(STATS) for k in KINDS}}
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the convention above
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, p))
        for kind in KINDS:
            prec, rec, f1, _ = precision_recall_fscore_support(y, p, average=kind, zero_division=0)
            out[kind] = {"precision": float(prec), "recall": float(rec), "f1": float(f1)}
    return out


def from_confusion(cms: np.ndarray) -> dict[str, np.ndarray]:
    """The same figures as ``averaged_scores`` for each of B confusion matrices (B, C, C) (rows = true class).

    Returns arrays of shape (B,): ``balanced_accuracy``, ``macro_precision``, ..., ``weighted_f1``.
    """
    cms = np.asarray(cms, dtype=np.float64)
    tp = np.diagonal(cms, axis1=1, axis2=2)
    support = cms.sum(axis=2)
    predicted = cms.sum(axis=1)
    present = (support + predicted) > 0
    fp, fn = predicted - tp, support - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        weights = support / support.sum(axis=1, keepdims=True)
        has = support > 0
        out = {"balanced_accuracy": np.where(has, recall, 0.0).sum(axis=1) / has.sum(axis=1)}
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[f"macro_{name}"] = np.where(present, values, 0.0).sum(axis=1) / present.sum(axis=1)
            out[f"weighted_{name}"] = (weights * values).sum(axis=1)
    return out


def bootstrap_averages(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0, level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (photos resampled with replacement) of every figure of ``from_confusion``."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if y.size == 0:
        raise ValueError("no samples")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    cell = np.zeros((y.size, n_classes * n_classes))
    cell[np.arange(y.size), y * n_classes + p] = 1.0
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        counts = rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=size)
        cms = (counts @ cell).reshape(size, n_classes, n_classes)
        for k, v in from_confusion(cms).items():
            parts.setdefault(k, []).append(v)
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for k, chunks in parts.items():
        lo, hi = np.percentile(np.concatenate(chunks), [tail, 100.0 - tail])
        out[k] = (float(lo), float(hi))
    return out


def add_average_intervals(
    summary: dict[str, Any], y_true: np.ndarray, probs: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Add ``balanced_accuracy_ci95`` and ``averages[kind][stat + "_ci95"]`` to a ``summarize`` dict, in place."""
    y = np.asarray(y_true, dtype=np.int64)
    if y.size == 0 or "averages" not in summary:
        return summary
    pred = np.asarray(probs).argmax(axis=1)
    ci = bootstrap_averages(y, pred, len(summary["classes"]), resamples, seed)
    summary["balanced_accuracy_ci95"] = list(ci["balanced_accuracy"])
    for kind in KINDS:
        for stat in STATS:
            summary["averages"][kind][f"{stat}_ci95"] = list(ci[f"{kind}_{stat}"])
    summary["averages"]["intervals"] = {"level": 0.95, "method": "percentile bootstrap over photos",
                                        "resamples": resamples, "seed": seed}
    return summary
