"""The one comparison layer: run two models on the same inputs and judge the difference.

Three checks compare a candidate model with a reference, and all three go through here:

- **export parity** (``facediag export``): ONNX Runtime's FP32 model against PyTorch;
- **precision gates** (``facediag fp16``, ``facediag quantize``): a reduced-precision
  ONNX against the bundle's FP32 ONNX, both in ONNX Runtime on the CPU;
- **on-device verify** (``facediag verify``): a TensorRT engine (or an ONNX file in
  ONNX Runtime) against ONNX Runtime on the CPU.

Each runs its engines with :func:`run_batches` (anything with ``infer``/``close``: an
``OrtEngine``, a ``TensorRTEngine``, a :class:`TorchEngine`), then calls
:func:`compare` with a :class:`Criteria` and gets a :class:`Verdict`, which is what
bundle.json records per precision (``gate``) and an engine manifest records
(``verify``): the same fields, the same JSON.

Ties, the same everywhere: a row where the *reference* model's top-1 probability beats
its top-2 by less than ``tie_margin`` (default 0.01) is a near-tie. Its class flips with
any numerical noise (another CPU, another batch size, FP16 rounding), so ``min_agreement``
is judged on the other rows (``top1_agreement``, the *non-ties*), and ``near_ties`` /
``near_tie_flips`` count the rest. Flips cannot hide there: agreement over every row
(``top1_agreement_all``) is reported beside it and judged against ``min_agreement_all``
(the gates and verify default to ``min_agreement`` minus two points), and the probability
difference covers every row. Rows where the candidate gives NaN or infinity fail the
check whatever the criteria.

Too few photos: with ``confidence`` set (0.95 for the gates and verify), the one-sided
Clopper-Pearson lower bound of the non-tie agreement (:mod:`facediag.converters.agreement`)
must exceed ``min_agreement``; otherwise the verdict fails and says how many non-tie photos
would show the criterion (299 with no flip for 99 %). With labels, the accuracy of both
models on the same photos is compared pairwise (``accuracy_paired``: photos lost and
gained) and the drop is judged against ``max_drop_points``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facediag.converters.agreement import (
    BOUND_METHOD,
    DEFAULT_CONFIDENCE,
    agreement_block,
    paired_accuracy,
)
from facediag.converters.agreement import (
    read_verdict as read_verdict,  # re-exported: the reader of recorded verdicts, any version
)
from facediag.edge import precision as precision_table
from facediag.edge.errors import ConfigError, FacediagError

log = logging.getLogger(__name__)

TIE_MARGIN = 0.01
EXPORT_PARITY = "export-parity"
PRECISION_GATE = "precision-gate"
DEVICE_VERIFY = "device-verify"
KINDS = (EXPORT_PARITY, PRECISION_GATE, DEVICE_VERIFY)
VERDICT_FORMAT = "facediag-verdict/1"
# The gates and verify allow near-ties to add this much disagreement over all rows (min_agreement_all).
ALL_ROWS_ALLOWANCE = 0.02


@dataclass(frozen=True)
class Criteria:
    """Pass conditions of one check; a limit left ``None`` is reported, not enforced."""

    kind: str
    min_agreement: float | None = None  # top-1 agreement over rows that are not near-ties
    max_prob_diff: float | None = None  # largest |p_candidate - p_reference| over all rows
    max_drop_points: float | None = None  # accuracy drop in points, when labels are given
    tie_margin: float = TIE_MARGIN
    min_agreement_all: float | None = None  # top-1 agreement over every row, near-ties included
    confidence: float | None = None  # min_agreement must be shown at this level (Clopper-Pearson lower bound)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown comparison kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not 0.0 <= self.tie_margin < 1.0:
            raise ConfigError(f"--tie-margin must be in [0, 1), got {self.tie_margin}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"--min-agreement must be within 0..1, got {self.min_agreement}")
        if self.min_agreement_all is not None and not 0.0 <= self.min_agreement_all <= 1.0:
            raise ConfigError(f"--min-agreement-all must be within 0..1, got {self.min_agreement_all}")
        if self.confidence is not None and not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"--confidence must be in (0, 1) (or 0 for none), got {self.confidence}")
        if self.max_drop_points is not None and self.max_drop_points < 0:
            raise ConfigError(f"--max-drop must be >= 0 (accuracy points), got {self.max_drop_points}")
        if self.max_prob_diff is not None and not 0.0 <= self.max_prob_diff <= 1.0:
            raise ConfigError(f"--max-prob-diff must be in [0, 1], got {self.max_prob_diff}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "min_agreement": self.min_agreement,
            "max_prob_diff": self.max_prob_diff,
            "max_accuracy_drop_points": self.max_drop_points,
            "tie_margin": self.tie_margin,
            "min_agreement_all": self.min_agreement_all,
            "confidence": self.confidence,
            "confidence_bound": BOUND_METHOD if self.confidence is not None else None,
        }


def parity_criteria(tolerance: float) -> Criteria:
    """Export parity: ONNX Runtime must reproduce PyTorch's probabilities within ``tolerance``."""
    return Criteria(EXPORT_PARITY, max_prob_diff=tolerance)


def _all_rows_default(min_agreement: float, min_agreement_all: float | None) -> float:
    return max(0.0, round(min_agreement - ALL_ROWS_ALLOWANCE, 10)) if min_agreement_all is None else min_agreement_all


def _confidence(confidence: float | None) -> float | None:
    return None if confidence is None or confidence == 0 else float(confidence)  # 0: the point estimate only


def gate_criteria(
    min_agreement: float = 0.99,
    max_drop_points: float = 1.0,
    max_prob_diff: float | None = None,
    tie_margin: float = TIE_MARGIN,
    min_agreement_all: float | None = None,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> Criteria:
    """The accuracy gate a reduced-precision model passes before it enters a bundle.

    ``min_agreement_all`` None: ``min_agreement`` minus :data:`ALL_ROWS_ALLOWANCE`; ``confidence`` 0 or
    None: no sample-size requirement (the point estimate alone is judged).
    """
    return Criteria(PRECISION_GATE, min_agreement, max_prob_diff, max_drop_points, tie_margin,
                    _all_rows_default(min_agreement, min_agreement_all), _confidence(confidence))


def verify_criteria(
    precision: str,
    min_agreement: float = 0.99,
    max_prob_diff: float | None = None,
    tie_margin: float = TIE_MARGIN,
    min_agreement_all: float | None = None,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> Criteria:
    """On-device verify; ``max_prob_diff`` None: the precision table's default for ``precision``."""
    limit = precision_table.get(precision).verify_max_prob_diff if max_prob_diff is None else float(max_prob_diff)
    return Criteria(DEVICE_VERIFY, min_agreement, limit, None, tie_margin,
                    _all_rows_default(min_agreement, min_agreement_all), _confidence(confidence))


@dataclass(frozen=True)
class Labels:
    """True class indices for rows ``start .. start + len(values)`` of the compared inputs."""

    values: np.ndarray
    start: int = 0
    source: str = ""


@dataclass
class Verdict:
    """The outcome of one comparison: the figures, the criteria, and why it failed (if it did)."""

    passed: bool
    criteria: Criteria
    images: int
    top1_agreement: float
    top1_agreement_all: float
    near_ties: int
    near_tie_flips: int
    max_prob_diff: float
    mean_prob_diff: float
    nonfinite_rows: int
    disagreements: list[int]
    candidate: str = "candidate"
    reference: str = "reference"
    inputs: str = ""
    accuracy: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # what the caller adds (settings, sources, ...)
    checked_utc: str = ""
    agreement: dict[str, Any] = field(default_factory=dict)  # all rows / non-ties / ties, with bounds

    @property
    def kind(self) -> str:
        return self.criteria.kind

    def to_dict(self) -> dict[str, Any]:
        """The record written into bundle.json (``gate``) and engine manifests (``verify``)."""
        d: dict[str, Any] = dict(self.details)
        d.update(
            {
                "format": VERDICT_FORMAT,
                "kind": self.kind,
                "passed": self.passed,
                "candidate": self.candidate,
                "reference": self.reference,
                "inputs": self.inputs,
                "images": self.images,
                "top1_agreement": self.top1_agreement,
                "top1_agreement_all": self.top1_agreement_all,
                "near_ties": self.near_ties,
                "near_tie_flips": self.near_tie_flips,
                "max_prob_diff": _finite_or_none(self.max_prob_diff),
                "mean_prob_diff": _finite_or_none(self.mean_prob_diff),
                "nonfinite_rows": self.nonfinite_rows,
                "disagreements": self.disagreements[:50],
                "agreement": self.agreement,
                "criteria": self.criteria.to_dict(),
                "failures": list(self.failures),
                "checked_utc": self.checked_utc,
            }
        )
        if self.accuracy is not None:
            d.update(self.accuracy)
        return d

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        non_ties = self.images - self.near_ties
        parts = [
            f"top-1 agreement {self.top1_agreement * 100:.2f}% on {non_ties} non-tie inputs"
            + _bound_text(self.agreement.get("non_ties", {}), self.agreement.get("confidence")),
            f"{self.top1_agreement_all * 100:.2f}% on all {self.images} ({self.near_ties} reference near-ties, "
            f"{self.near_tie_flips} of them flipped)",
            f"max probability difference {self.max_prob_diff:.4g}, mean {self.mean_prob_diff:.3g}",
        ]
        if self.accuracy is not None:
            a = self.accuracy
            pair = a.get("accuracy_paired", {})
            parts.append(
                f"accuracy {a['accuracy'] * 100:.2f}% vs reference {a['accuracy_reference'] * 100:.2f}% "
                f"(drop {a['accuracy_drop_points']:.2f} points on {a['labelled_images']} labelled images: "
                f"{pair.get('lost', '?')} lost, {pair.get('gained', '?')} gained)"
            )
        where = f" ({self.inputs})" if self.inputs else ""
        return (
            f"{verdict} [{self.kind}]: {self.candidate} vs {self.reference} on {self.images} inputs{where}: "
            + ", ".join(parts)
            + "".join(f"\n  - {r}" for r in self.failures)
        )


def _bound_text(figures: dict[str, Any], confidence: float | None) -> str:
    bound = figures.get("lower_bound")
    return "" if bound is None or confidence is None else f" ({confidence * 100:g}% lower bound {bound * 100:.2f}%)"


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no infinity


def _accuracy(cand_top: np.ndarray, ref_top: np.ndarray, labels: Labels) -> dict[str, Any]:
    rows = slice(labels.start, labels.start + len(labels.values))
    truth = np.asarray(labels.values)
    if len(truth) != len(cand_top[rows]):
        raise ConfigError(f"{len(truth)} labels for rows {labels.start}.. but only {len(cand_top[rows])} such rows")
    paired = paired_accuracy(ref_top[rows] == truth, cand_top[rows] == truth)
    return {"labelled_images": paired["labelled_images"], "labels_source": labels.source,
            "accuracy_reference": paired["accuracy_reference"], "accuracy": paired["accuracy"],
            "accuracy_drop_points": paired["accuracy_drop_points"], "accuracy_paired": paired["paired"]}


def _agreement_failures(v: Verdict, c: Criteria) -> list[str]:
    out = []
    non_ties = v.agreement["non_ties"]
    n, k = non_ties["images"], non_ties["disagreeing"]
    if c.min_agreement is not None and v.top1_agreement < c.min_agreement:
        out.append(f"top-1 agreement {v.top1_agreement:.4f} is below {c.min_agreement} "
                   f"({k} of {n} decisive (non-tie) inputs differ)")
    elif c.min_agreement is not None and c.confidence is not None and not (
        n and non_ties["lower_bound"] > c.min_agreement
    ):
        need = v.agreement["photos_needed"] or {}
        zero, at_k = need.get("with_no_disagreement"), need.get("with_observed_disagreements")
        bound = "no bound" if not n else f"a {c.confidence * 100:g}% lower bound of {non_ties['lower_bound']:.4f}"
        need_text = (
            f"give at least {zero} non-tie photos (if none flips)"
            + (f", {at_k} if {k} flip as here" if k and at_k is not None else "")
            + " or lower --min-agreement"
            if zero is not None
            else "no number of photos can show this criterion: lower --min-agreement (or --confidence 0)"
        )
        out.append(
            f"too few photos to show top-1 agreement >= {c.min_agreement} at {c.confidence * 100:g}% confidence: "
            f"{n} non-tie input(s) with {k} disagreement(s) give {bound} ({BOUND_METHOD}); {need_text}"
        )
    if c.min_agreement_all is not None and v.top1_agreement_all < c.min_agreement_all:
        flips = v.agreement["all"]["disagreeing"]
        out.append(
            f"top-1 agreement over all {v.images} inputs {v.top1_agreement_all:.4f} is below {c.min_agreement_all} "
            f"({flips} changed class, {v.near_tie_flips} of them among {v.near_ties} reference near-ties)"
        )
    return out


def _failures(v: Verdict, c: Criteria) -> list[str]:
    out = []
    if v.nonfinite_rows:
        out.append(f"{v.nonfinite_rows} input(s) gave NaN/inf probabilities")
    out += _agreement_failures(v, c)
    if c.max_prob_diff is not None and not v.max_prob_diff <= c.max_prob_diff:
        out.append(f"max probability difference {v.max_prob_diff:.4g} exceeds {c.max_prob_diff}")
    if c.max_drop_points is not None and v.accuracy is not None:
        drop = v.accuracy["accuracy_drop_points"]
        if drop > c.max_drop_points:
            pair = v.accuracy["accuracy_paired"]
            out.append(f"accuracy drop {drop:.2f} points exceeds {c.max_drop_points:.2f} ({pair['lost']} labelled "
                       f"photo(s) lost, {pair['gained']} gained, of {v.accuracy['labelled_images']})")
    return out


def compare(
    candidate_probs: np.ndarray,
    reference_probs: np.ndarray,
    criteria: Criteria,
    *,
    labels: Labels | None = None,
    candidate: str = "candidate",
    reference: str = "reference",
    inputs: str = "",
) -> Verdict:
    """Judge (N, C) candidate probabilities against reference probabilities of the same inputs."""
    cand = np.asarray(candidate_probs, dtype=np.float64)
    ref = np.asarray(reference_probs, dtype=np.float64)
    if cand.ndim != 2 or cand.shape != ref.shape:
        raise FacediagError(
            f"the two models disagree on the output shape ({cand.shape} vs {ref.shape}): the candidate was not "
            "made from this model (re-export, re-convert or rebuild it)"
        )
    if cand.shape[0] == 0:
        raise ConfigError("no inputs to compare on: give at least one real crop")
    if not np.isfinite(ref).all():
        raise FacediagError(f"the reference ({reference}) gave NaN/inf probabilities: it cannot be a reference")
    bad = ~np.all(np.isfinite(cand), axis=1)
    diff = np.abs(cand - ref)
    diff[bad] = np.inf
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] >= 2 else np.concatenate([np.zeros_like(ref), ref], axis=1)
    tie = (top2[:, 1] - top2[:, 0]) < criteria.tie_margin
    cand_top = np.where(bad, -1, np.argmax(np.where(np.isfinite(cand), cand, -np.inf), axis=1))  # NaN row: no class
    ref_top = np.argmax(ref, axis=1)
    agree = cand_top == ref_top
    decisive = ~tie | bad  # a NaN row always counts against the candidate
    verdict = Verdict(
        passed=False,
        criteria=criteria,
        images=int(cand.shape[0]),
        top1_agreement=float(agree[decisive].mean()) if decisive.any() else 1.0,
        top1_agreement_all=float(agree.mean()),
        near_ties=int((~decisive).sum()),
        near_tie_flips=int((~agree & ~decisive).sum()),
        max_prob_diff=float(diff.max()),
        mean_prob_diff=float(diff[~bad].mean()) if (~bad).any() else float("inf"),
        nonfinite_rows=int(bad.sum()),
        disagreements=[int(i) for i in np.flatnonzero(~agree & decisive)],
        candidate=candidate,
        reference=reference,
        inputs=inputs,
        accuracy=_accuracy(cand_top, ref_top, labels) if labels is not None and len(labels.values) else None,
        checked_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        agreement=agreement_block(agree, decisive, criteria.min_agreement, criteria.confidence),
    )
    verdict.failures = _failures(verdict, criteria)
    verdict.passed = not verdict.failures
    return verdict


# --------------------------------------------------------------------------- running engines


class TorchEngine:
    """A PyTorch classifier behind the ``Engine`` interface (export parity's reference)."""

    backend = "pytorch"

    def __init__(self, model: Any, precision: str = precision_table.REFERENCE) -> None:
        self.model = model.eval()
        self.precision = precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return np.asarray(out.numpy(), dtype=np.float32)

    def close(self) -> None:
        pass


def run_batches(engine: Any, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run an engine (``infer`` on float32 NCHW) over ``inputs`` in batches and stack the probabilities."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    outs = [np.asarray(engine.infer(x[i : i + batch_size]), dtype=np.float32) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)


def run_engine(open_engine: Callable[[], Any], inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Open an engine, run it over ``inputs`` and close it again (also on error)."""
    engine = open_engine()
    try:
        return run_batches(engine, inputs, batch_size)
    finally:
        engine.close()


def ort_opener(path: Any, precision: str = precision_table.REFERENCE, threads: int | None = None) -> Callable[[], Any]:
    """An opener for an ONNX file in ONNX Runtime on the CPU (the reference runtime of every check)."""

    def _open() -> Any:
        from facediag.edge.engine.onnxruntime import OrtEngine

        return OrtEngine(path, threads=threads, precision=precision)

    return _open


def compare_engines(
    open_candidate: Callable[[], Any],
    open_reference: Callable[[], Any],
    inputs: np.ndarray,
    criteria: Criteria,
    *,
    batch_size: int = 32,
    labels: Labels | None = None,
    candidate: str = "candidate",
    reference: str = "reference",
    inputs_name: str = "",
) -> Verdict:
    """Run both engines (one at a time) on the same inputs and :func:`compare` their probabilities."""
    if len(inputs) == 0:
        raise ConfigError("no inputs to compare on: give at least one real crop")
    cand = run_engine(open_candidate, inputs, batch_size)
    ref = run_engine(open_reference, inputs, batch_size)
    verdict = compare(cand, ref, criteria, labels=labels, candidate=candidate, reference=reference, inputs=inputs_name)
    log.info("%s", verdict.summary())
    return verdict
