"""How sure a comparison can be: exact confidence bounds on top-1 agreement, and paired accuracy counts.

A gate that reads "agreement >= 99 %" off 43 photos says little: one flip moves the figure by 2.3
points, and 43 agreeing photos are what a model that flips 5 % of all photos shows one time in ten.
So the gates and ``verify`` ask for the criterion to be shown at a confidence level (95 % by
default): the one-sided **Clopper-Pearson** (exact binomial) lower bound of the agreement rate,
from ``n`` compared photos of which ``k`` changed class, must exceed the criterion.

The bound is the ``p`` at which ``n - k`` or more agreements out of ``n`` have probability
``1 - confidence``; it is computed here from the binomial tail (summed over the ``k + 1`` terms
with ``k`` or fewer disagreements, in logarithms) and bisection, with no SciPy. It equals
``scipy.stats.beta.ppf(1 - confidence, n - k, k + 1)``. With no disagreement at all it is
``(1 - confidence) ** (1 / n)``, so a 99 % criterion needs ``n >= 299`` photos at 95 %.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BOUND_METHOD = "clopper-pearson one-sided"
DEFAULT_CONFIDENCE = 0.95
_MAX_PHOTOS = 10_000_000  # photos_needed gives up beyond this (a criterion of 1 - 1e-7)


def _log_tail_at_most(k: int, n: int, p: float) -> float:
    """log P(X <= k) for X ~ Binomial(n, 1 - p): at most ``k`` disagreements when agreement is ``p``."""
    if p <= 0.0:
        return 0.0 if k >= n else -math.inf
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + (n - j) * log_p + j * log_q
        for j in range(0, k + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def agreement_lower_bound(agreeing: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower confidence bound of a rate seen as ``agreeing`` out of ``n``.

    0.0 when ``agreeing`` is 0 or ``n`` is 0 (nothing shown).
    """
    if n < 0 or not 0 <= agreeing <= max(n, 0):
        raise ValueError(f"need 0 <= agreeing <= n, got agreeing={agreeing}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0 or agreeing == 0:
        return 0.0
    k = n - agreeing
    alpha = 1.0 - confidence
    if k == 0:
        return float(alpha ** (1.0 / n))
    log_alpha = math.log(alpha)
    lo, hi = 0.0, agreeing / n  # P(X <= k) grows with p; at p = agreeing / n it is about 1/2 > alpha
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _log_tail_at_most(k, n, mid) > log_alpha:  # mid is still plausible: the bound lies above
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-13:
            break
    return lo


def photos_needed(criterion: float, confidence: float = DEFAULT_CONFIDENCE, disagreements: int = 0) -> int | None:
    """Fewest compared photos, ``disagreements`` of them flipped, whose lower bound exceeds ``criterion``.

    None when no number can (a criterion of 1.0, or beyond ``_MAX_PHOTOS`` photos).
    """
    if criterion >= 1.0:
        return None
    if criterion < 0.0:
        return max(1, disagreements + 1)

    def shows(n: int) -> bool:
        return agreement_lower_bound(n - disagreements, n, confidence) > criterion

    lo = disagreements + 1
    if shows(lo):
        return lo
    hi = lo
    while not shows(hi):
        hi *= 2
        if hi > _MAX_PHOTOS:
            return None
    while hi - lo > 1:  # shows(lo) is False, shows(hi) is True; the bound grows with n for fixed flips
        mid = (lo + hi) // 2
        if shows(mid):
            hi = mid
        else:
            lo = mid
    return hi


def agreement_figures(agree: np.ndarray, rows: np.ndarray, confidence: float) -> dict[str, Any]:
    """``images``, ``agreeing``, ``rate`` and the lower bound over the rows selected by the mask ``rows``."""
    n = int(rows.sum())
    agreeing = int((agree & rows).sum())
    return {
        "images": n,
        "agreeing": agreeing,
        "disagreeing": n - agreeing,
        "rate": agreeing / n if n else None,
        "lower_bound": agreement_lower_bound(agreeing, n, confidence) if n else None,
    }


def paired_accuracy(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> dict[str, Any]:
    """Accuracy of both models on the same labelled photos, with the four paired counts.

    ``lost``: photos the reference got right and the candidate wrong; ``gained``: the reverse. The
    drop in points is ``(lost - gained) / n * 100``; ``lost + gained`` is what McNemar's test reads.
    """
    ref = np.asarray(reference_correct, dtype=bool)
    cand = np.asarray(candidate_correct, dtype=bool)
    n = int(ref.size)
    if n == 0 or cand.shape != ref.shape:
        raise ValueError(f"need the same non-empty set of photos for both models, got {ref.shape} and {cand.shape}")
    lost = int((ref & ~cand).sum())
    gained = int((~ref & cand).sum())
    return {
        "labelled_images": n,
        "accuracy_reference": float(ref.mean()),
        "accuracy": float(cand.mean()),
        "accuracy_drop_points": (lost - gained) / n * 100.0,
        "paired": {"both_right": int((ref & cand).sum()), "lost": lost, "gained": gained,
                   "both_wrong": int((~ref & ~cand).sum())},
    }


def agreement_block(
    agree: np.ndarray, decisive: np.ndarray, min_agreement: float | None, confidence: float | None
) -> dict[str, Any]:
    """A verdict's ``agreement`` block: all rows, non-ties (``decisive``), ties, and photos needed.

    Bounds are at ``confidence`` (95 % when None: they are always reported, enforced only when set).
    """
    level = confidence or DEFAULT_CONFIDENCE
    non_ties = agreement_figures(agree, decisive, level)
    needed = None
    if min_agreement is not None:
        needed = {
            "criterion": min_agreement,
            "with_no_disagreement": photos_needed(min_agreement, level, 0),
            "with_observed_disagreements": photos_needed(min_agreement, level, non_ties["disagreeing"]),
        }
    return {
        "all": agreement_figures(agree, np.ones_like(agree), level),
        "non_ties": non_ties,
        "ties": int((~decisive).sum()),
        "tie_flips": int((~agree & ~decisive).sum()),
        "confidence": level,
        "bound": BOUND_METHOD,
        "photos_needed": needed,
    }


def read_verdict(record: dict[str, Any]) -> dict[str, Any]:
    """A verdict record from bundle.json or a manifest, any version, with the newer fields filled in.

    Records written before the ``agreement`` block existed (only ``images``, ``near_ties`` and the
    two agreement rates) get one worked out from those, bounds at 95 %; ``passed`` defaults to False.
    """
    out = dict(record)
    out.setdefault("passed", False)
    out.setdefault("failures", [])
    out.setdefault("criteria", {})
    if not isinstance(out.get("agreement"), dict) or not out["agreement"]:
        images = int(out.get("images") or 0)
        ties = int(out.get("near_ties") or 0)
        non_ties = images - ties

        def block(n: int, rate: Any) -> dict[str, Any]:
            agreeing = int(round(float(rate) * n)) if rate is not None and n else None
            bound = None if agreeing is None else agreement_lower_bound(agreeing, n, DEFAULT_CONFIDENCE)
            return {"images": n, "agreeing": agreeing, "rate": rate, "lower_bound": bound,
                    "disagreeing": None if agreeing is None else n - agreeing}

        out["agreement"] = {
            "all": block(images, out.get("top1_agreement_all")),
            "non_ties": block(non_ties, out.get("top1_agreement")),
            "ties": ties,
            "tie_flips": out.get("near_tie_flips"),
            "confidence": DEFAULT_CONFIDENCE,
            "bound": BOUND_METHOD,
            "photos_needed": None,
            "recorded_before_bounds": True,  # counts worked out from the rates; nothing was enforced
        }
    return out
