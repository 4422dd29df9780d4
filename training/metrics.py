"""Classification metrics for the evaluation report (numpy, and scikit-learn where it has the metric).

Everything here takes integer labels ``y_true`` (N,) with values in
``0..C-1`` and, where scores are needed, class probabilities ``probs`` (N, C).
These are the numbers the seed study reported (top-1, per-class sensitivity /
specificity) plus the ones a screening threshold needs (ROC, calibration).

Conventions:
- Confusion matrix rows are the true class, columns the predicted class.
- A metric whose denominator is zero (e.g. precision of a class never
  predicted) is ``nan``, not 0: "undefined" must not look like "bad".
- ROC: a sample is called positive when its score is ``>= threshold``; tied
  scores move together, so a fully tied score gives the diagonal (AUC 0.5).
- Expected calibration error uses the top-1 confidence in
  ``DEFAULT_ECE_BINS`` = 15 equal-width bins over [0, 1] (the convention of
  Guo et al. 2017, "On Calibration of Modern Neural Networks"); bin ``b``
  holds confidences in ``(b/15, (b+1)/15]``, the first bin also holds 0.
  The bins, per-bin accuracy and mean confidence are scikit-learn's
  ``calibration_curve`` (strategy "uniform") on "top-1 is right" against the
  top-1 confidence, so the ECE is the count-weighted gap of exactly the points
  the reliability diagram (``CalibrationDisplay``) draws.
- Confusion matrix, precision-recall curves, average precision, macro and
  weighted averages and balanced accuracy are scikit-learn's
  (``facediag.training.averages`` for the averages and their intervals).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_ECE_BINS = 15


def _labels(y_true: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError("labels must be >= 0")
    if n_classes is not None and y.size and y.max() >= n_classes:
        raise ValueError(f"label {int(y.max())} is out of range for {n_classes} classes")
    return y


def _probs(probs: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probabilities must be (N={n}, C), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinity")
    return p


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def top1_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose predicted class is the true class (nan for no samples)."""
    y = _labels(y_true)
    p = _labels(y_pred)
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y.shape} vs {p.shape}")
    return float("nan") if y.size == 0 else float(np.mean(y == p))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: entry [i, j] = samples of true class i predicted as j."""
    y = _labels(y_true, n_classes)
    p = _labels(y_pred, n_classes)
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y.shape} vs {p.shape}")
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    if y.size == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return np.asarray(sk_confusion_matrix(y, p, labels=np.arange(n_classes)), dtype=np.int64)


def normalized_confusion_matrix(cm: np.ndarray) -> list[list[float] | None]:
    """Each true class's row divided by its count (rows sum to 1); None for a class without samples.

    The same numbers as scikit-learn's ``confusion_matrix(..., normalize="true")``, except that a class
    with no sample gets None (undefined) where scikit-learn writes zeros.
    """
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1)
    return [None if rows[i] == 0 else (cm[i] / rows[i]).tolist() for i in range(cm.shape[0])]


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, sensitivity (recall), specificity, F1 and support per class, one-vs-rest from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    total = cm.sum()
    tp = np.diag(cm).astype(np.float64)
    fn = cm.sum(axis=1) - tp  # true class i, predicted something else
    fp = cm.sum(axis=0) - tp  # predicted i, true class something else
    tn = total - tp - fn - fp
    precision = _safe_div(tp, tp + fp)
    sensitivity = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": f1,
        "support": cm.sum(axis=1),
        "tp": tp.astype(np.int64),
        "fp": fp.astype(np.int64),
        "fn": fn.astype(np.int64),
        "tn": tn.astype(np.int64),
    }


def roc_curve(y_binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for "positive when score >= threshold".

    Returns (fpr, tpr, thresholds), starting at (0, 0) with threshold +inf and
    ending at (1, 1); one point per distinct score, so ties move together.
    Raises ValueError when the labels hold only one of the two classes (the
    curve is undefined then).
    """
    y = np.asarray(y_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"need 1-D labels and scores of the same length, got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both positive and negative samples")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: the curve only moves there.
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def auc_trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve given by points with non-decreasing x (trapezoid rule)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if np.any(np.diff(x) < 0):
        raise ValueError("x must be non-decreasing")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_auc(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (probability that a random positive outscores a random negative, ties 1/2)."""
    fpr, tpr, _ = roc_curve(y_binary, scores)
    return auc_trapezoid(fpr, tpr)


def one_vs_rest_roc(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any] | None]:
    """Per class c: ROC of "class c vs the rest" scored by probs[:, c]; None when c or the rest is absent."""
    y = _labels(y_true)
    p = _probs(probs, y.size)
    out: list[dict[str, Any] | None] = []
    for c in range(p.shape[1]):
        positive = y == c
        if positive.all() or not positive.any():
            out.append(None)
            continue
        fpr, tpr, thr = roc_curve(positive, p[:, c])
        out.append({"fpr": fpr, "tpr": tpr, "thresholds": thr, "auc": auc_trapezoid(fpr, tpr)})
    return out


def one_vs_rest_pr(y_true: np.ndarray, probs: np.ndarray) -> list[dict[str, Any] | None]:
    """Per class c: precision-recall curve and average precision of "class c vs the rest" scored by probs[:, c].

    scikit-learn's ``precision_recall_curve`` and ``average_precision_score`` (AP = sum over thresholds of
    (R_n - R_(n-1)) * P_n, no interpolation). None when class c has no sample (recall is undefined).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = _labels(y_true)
    p = _probs(probs, y.size)
    out: list[dict[str, Any] | None] = []
    for c in range(p.shape[1]):
        positive = y == c
        if not positive.any():
            out.append(None)
            continue
        precision, recall, thr = precision_recall_curve(positive, p[:, c])
        out.append({"precision": precision, "recall": recall, "thresholds": thr,
                    "average_precision": float(average_precision_score(positive, p[:, c])),
                    "prevalence": float(positive.mean())})
    return out


def _top1(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 confidence clipped to [0, 1], 1.0 where the top-1 class is the true class)."""
    y = _labels(y_true)
    p = _probs(probs, y.size)
    confidence = np.clip(p.max(axis=1), 0.0, 1.0)
    return confidence, (p.argmax(axis=1) == y).astype(np.float64)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict[str, np.ndarray]:
    """Data for a reliability diagram: per equal-width confidence bin, count, mean confidence, accuracy.

    Confidence is the top-1 probability; a sample is correct when its top-1 class is the true
    class. Accuracy and mean confidence are scikit-learn's ``calibration_curve(correct, confidence,
    n_bins=n_bins, strategy="uniform")`` placed in their bins; counts use the same binning (bin b
    holds (edge_b, edge_(b+1)], 0 in bin 0). Empty bins have count 0 and nan confidence/accuracy.
    """
    from sklearn.calibration import calibration_curve

    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    confidence, correct = _top1(y_true, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], confidence)  # scikit-learn's binning in calibration_curve
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    accuracy = np.full(n_bins, np.nan)
    mean_conf = np.full(n_bins, np.nan)
    if confidence.size:
        prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
        filled = count > 0
        if int(filled.sum()) != prob_true.size:
            raise AssertionError("reliability bins disagree with scikit-learn's calibration_curve")
        accuracy[filled], mean_conf[filled] = prob_true, prob_pred
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    """Count-weighted mean |accuracy - mean confidence| over the non-empty bins of ``reliability_bins``."""
    n = int(bins["count"].sum())
    if n == 0:
        return float("nan")
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] / n * gaps))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE: sum over bins of (bin count / N) * |accuracy - mean confidence|, equal-width bins on top-1 confidence."""
    return ece_from_bins(reliability_bins(y_true, probs, n_bins))


def threshold_for_sensitivity(y_binary: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold t such that "score >= t" catches at least ``target`` of the positives.

    Choosing the highest such t keeps specificity as high as possible for that
    sensitivity. Raises ValueError when there are no positives.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = np.asarray(y_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        raise ValueError("no positive samples: cannot choose a threshold for a sensitivity")
    # Need k positives at or above t; the small epsilon guards 0.9 * 10 = 9.000000000000002.
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def sensitivity_specificity_at(y_binary: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of "score >= threshold"; nan where a side has no samples."""
    y = np.asarray(y_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    called = s >= threshold
    sens = _safe_div(np.sum(called & y), np.sum(y))
    spec = _safe_div(np.sum(~called & ~y), np.sum(~y))
    return float(sens), float(spec)


def thresholds_at_sensitivity(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    target: float,
    skip: tuple[str, ...] = (),
) -> dict[str, float]:
    """Per class (except those in ``skip``, e.g. the healthy class): threshold on its probability reaching ``target``.

    Computed one-vs-rest; classes without any sample are left out (logged by the caller).
    Use validation data: a threshold chosen on the test split makes the test figures optimistic.
    """
    y = _labels(y_true, len(classes))
    p = _probs(probs, y.size)
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        if name in skip or not np.any(y == c):
            continue
        out[name] = threshold_for_sensitivity(y == c, p[:, c], target)
    return out


def _num(v: Any) -> float | None:
    """JSON-friendly float: nan becomes None (JSON has no NaN)."""
    f = float(v)
    return None if math.isnan(f) else f


def _curves(names: list[str], curves: list[dict[str, Any] | None], keys: tuple[str, ...]) -> dict[str, Any]:
    return {n: None if c is None else {k: np.asarray(c[k]).tolist() for k in keys} for n, c in zip(names, curves, strict=True)}


def summarize(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_bins: int = DEFAULT_ECE_BINS,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-ready dict (nan written as null).

    ``thresholds`` (class -> probability), when given, are applied one-vs-rest
    and the resulting sensitivity / specificity per class are reported too (the
    operating points marked on the ROC plot).
    """
    from facediag.training.averages import CONVENTION, averaged_scores

    y = _labels(y_true, len(classes))
    p = _probs(probs, y.size)
    if p.shape[1] != len(classes):
        raise ValueError(f"probabilities have {p.shape[1]} columns but there are {len(classes)} classes")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, len(classes))
    pc = per_class_metrics(cm)
    rocs = one_vs_rest_roc(y, p)
    prs = one_vs_rest_pr(y, p)
    rel = reliability_bins(y, p, n_bins)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        roc_c, pr_c = rocs[c], prs[c]
        per_class[name] = {
            "support": int(pc["support"][c]),
            "precision": _num(pc["precision"][c]),
            "sensitivity": _num(pc["sensitivity"][c]),
            "specificity": _num(pc["specificity"][c]),
            "f1": _num(pc["f1"][c]),
            "auc": None if roc_c is None else _num(roc_c["auc"]),
            "average_precision": None if pr_c is None else _num(pr_c["average_precision"]),
        }
    aucs = [r["auc"] for r in rocs if r is not None]
    aps = [r["average_precision"] for r in prs if r is not None]
    f1s = pc["f1"][~np.isnan(pc["f1"])]
    averages = averaged_scores(y, pred)
    summary: dict[str, Any] = {
        "n": int(y.size),
        "classes": list(classes),
        "top1": _num(top1_accuracy(y, pred)) if y.size else None,
        "balanced_accuracy": averages.pop("balanced_accuracy"),
        "macro_f1": _num(f1s.mean()) if f1s.size else None,
        "macro_auc": _num(np.mean(aucs)) if aucs else None,
        "macro_average_precision": _num(np.mean(aps)) if aps else None,
        "averages": {**averages, "convention": CONVENTION},
        "ece": _num(ece_from_bins(rel)) if y.size else None,
        "ece_bins": int(n_bins),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalized_confusion_matrix(cm),
        "per_class": per_class,
        "roc": _curves(classes, rocs, ("fpr", "tpr")),
        "pr": _curves(classes, prs, ("precision", "recall")),
        "reliability": {
            "edges": rel["edges"].tolist(),
            "count": rel["count"].tolist(),
            "confidence": [_num(v) for v in rel["confidence"]],
            "accuracy": [_num(v) for v in rel["accuracy"]],
        },
    }
    if thresholds:
        summary["at_thresholds"] = _at_thresholds(y, p, classes, thresholds)
    return summary


def _at_thresholds(y: np.ndarray, p: np.ndarray, classes: list[str], thresholds: dict[str, float]) -> dict[str, Any]:
    """Per class with a threshold: sensitivity and specificity of "probability >= threshold" (one vs rest)."""
    at: dict[str, Any] = {}
    for name, t in thresholds.items():
        if name not in classes:
            continue
        c = classes.index(name)
        sens, spec = sensitivity_specificity_at(y == c, p[:, c], t)
        at[name] = {"threshold": float(t), "sensitivity": _num(sens), "specificity": _num(spec)}
    return at
