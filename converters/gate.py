"""The accuracy gate every reduced-precision model passes before it enters a bundle.

A variant (FP16, INT8) is compared with the bundle's FP32 model, both run by
ONNX Runtime on the CPU (the one runtime every workstation has), on real
inputs the variant was not fitted to: the calibration set's held-out rows and,
when given, a labelled validation set. Figures:

- ``top1_agreement``: fraction of images where the variant picks FP32's class
  (needs no labels: what matters on a station is that the decision is the same).
  Images on which FP32 itself is at a tie (top-1 minus top-2 probability below
  ``tie_margin``, default 0.01) are left out of this figure and counted in
  ``near_ties``: there the class flips with any numerical noise (another CPU,
  another batch size), so a flip says nothing about the variant; the
  probability difference below still covers them. ``top1_agreement_all``
  reports the figure over every image;
- ``max_prob_diff`` / ``mean_prob_diff``: largest and mean absolute difference of
  any class probability (thresholds act on probabilities, so they matter too);
- ``accuracy_fp32``, ``accuracy``, ``accuracy_drop_points``: with labels only.

The defaults (agreement >= 99 %, drop <= 1 point) are the bundle's promise that
a station running INT8 screens like the FP32 model did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, FacediagError

log = logging.getLogger(__name__)


class GateFailed(FacediagError):
    """A variant did not reproduce FP32 closely enough; it was not added to the bundle."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class GateCriteria:
    """Pass conditions. ``max_prob_diff`` None: reported, not enforced."""

    min_agreement: float = 0.99
    max_drop_points: float = 1.0
    max_prob_diff: float | None = None
    tie_margin: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.tie_margin < 1.0:
            raise ConfigError(f"--tie-margin must be in [0, 1), got {self.tie_margin}")
        if not 0.0 <= self.min_agreement:
            raise ConfigError(f"--min-agreement must be >= 0, got {self.min_agreement}")
        if self.max_drop_points < 0:
            raise ConfigError(f"--max-drop must be >= 0 (accuracy points), got {self.max_drop_points}")
        if self.max_prob_diff is not None and not 0.0 <= self.max_prob_diff <= 1.0:
            raise ConfigError(f"--max-prob-diff must be in [0, 1], got {self.max_prob_diff}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_agreement": self.min_agreement,
            "max_accuracy_drop_points": self.max_drop_points,
            "max_prob_diff": self.max_prob_diff,
            "tie_margin": self.tie_margin,
        }


@dataclass
class LabelledInputs:
    """Validation inputs with class indices (into the bundle's classes)."""

    inputs: np.ndarray
    labels: np.ndarray
    source: str = ""


@dataclass
class GateResult:
    precision: str
    passed: bool
    figures: dict[str, Any]
    criteria: GateCriteria
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": "fp32 (onnxruntime CPU)",
            "passed": self.passed,
            **self.figures,
            "criteria": self.criteria.to_dict(),
            "failures": list(self.failures),
        }

    def summary(self) -> str:
        f = self.figures
        parts = [f"top-1 agreement {f['top1_agreement'] * 100:.2f}% on {f['images']} held-out images "
                 f"({f.get('near_ties', 0)} FP32 near-ties left out; {f.get('top1_agreement_all', 0) * 100:.2f}% over all)",
                 f"max probability difference {f['max_prob_diff']:.4f}"]
        if "accuracy" in f:
            parts.append(
                f"accuracy {f['accuracy'] * 100:.2f}% vs FP32 {f['accuracy_fp32'] * 100:.2f}% "
                f"(drop {f['accuracy_drop_points']:.2f} points on {f['val_images']} labelled images)"
            )
        return f"{self.precision}: " + ", ".join(parts)


def _run(path: Path, inputs: np.ndarray, threads: int | None, precision: str, batch_size: int = 32) -> np.ndarray:
    from edge.engine.onnxruntime import OrtEngine

    engine = OrtEngine(path, threads=threads, precision=precision)
    try:
        outs = [engine.infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    finally:
        engine.close()
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def run_gate(
    fp32_path: str | Path,
    variant_path: str | Path,
    precision: str,
    heldout: np.ndarray,
    criteria: GateCriteria,
    val: LabelledInputs | None = None,
    threads: int | None = None,
) -> GateResult:
    """Compare ``variant_path`` with ``fp32_path`` on held-out (+ validation) inputs; never raises on failure."""
    parts = [heldout] + ([val.inputs] if val is not None else [])
    inputs = np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else heldout
    if len(inputs) == 0:
        raise ConfigError("the accuracy gate needs real held-out images: the calibration set has no held-out rows and no --val was given")
    ref = _run(Path(fp32_path), inputs, threads, "fp32")
    got = _run(Path(variant_path), inputs, threads, precision)
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).any(axis=1).sum())
        figures: dict[str, Any] = {"images": int(len(inputs)), "top1_agreement": 0.0, "max_prob_diff": 1.0,
                                   "mean_prob_diff": 1.0, "non_finite_rows": bad}
        return GateResult(precision, False, figures, criteria, [f"{bad} output rows are NaN or infinite"])
    diff = np.abs(got - ref)
    same = got.argmax(1) == ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= criteria.tie_margin
    agreement = float(same[decisive].mean()) if decisive.any() else 1.0
    figures = {
        "images": int(len(inputs)),
        "heldout_images": int(len(heldout)),
        "top1_agreement": agreement,
        "top1_agreement_all": float(same.mean()),
        "near_ties": int((~decisive).sum()),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
    }
    failures = []
    if agreement < criteria.min_agreement:
        failures.append(f"top-1 agreement {agreement * 100:.2f}% < required {criteria.min_agreement * 100:.2f}%")
    if criteria.max_prob_diff is not None and figures["max_prob_diff"] > criteria.max_prob_diff:
        failures.append(f"max probability difference {figures['max_prob_diff']:.4f} > allowed {criteria.max_prob_diff:.4f}")
    if val is not None and len(val.inputs):
        n_held = len(heldout)
        acc_ref = float((ref[n_held:].argmax(1) == val.labels).mean())
        acc = float((got[n_held:].argmax(1) == val.labels).mean())
        drop = (acc_ref - acc) * 100.0
        figures.update(val_images=int(len(val.inputs)), val_source=val.source, accuracy_fp32=acc_ref, accuracy=acc,
                       accuracy_drop_points=drop)
        if drop > criteria.max_drop_points:
            failures.append(f"accuracy drop {drop:.2f} points > allowed {criteria.max_drop_points:.2f}")
    result = GateResult(precision, not failures, figures, criteria, failures)
    log.info("gate %s", result.summary())
    return result


def gate_and_add(
    bundle: Any,
    precision: str,
    candidate: Path,
    heldout: np.ndarray,
    criteria: GateCriteria,
    val: LabelledInputs | None = None,
    target: str | None = None,
    settings: dict[str, Any] | None = None,
    threads: int | None = None,
) -> GateResult:
    """Gate ``candidate`` (a file inside the bundle folder) against the bundle's FP32 model.

    Passed: renamed to its final name and recorded in bundle.json (atomically). Failed: the file is
    deleted, the bundle is left as it was (an earlier accepted file of this precision stays) and
    :class:`GateFailed` is raised with the figures.
    """
    import os

    from edge.bundle import PRECISION_FILES

    final = PRECISION_FILES[precision]
    try:
        result = run_gate(bundle.model_path("fp32"), candidate, precision, heldout, criteria, val, threads)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    if not result.passed:
        candidate.unlink(missing_ok=True)
        raise GateFailed(
            f"{precision} model rejected, not added to {bundle.path}: {'; '.join(result.failures)} "
            f"({result.summary()}). Try more or more representative calibration images, "
            f"--method percentile/entropy, or keep FP32/FP16 for this model.",
            result,
        )
    os.replace(candidate, bundle.path / final)
    gate = result.to_dict()
    if settings:
        gate["settings"] = settings
    bundle.add_precision(precision, final, gate, target=target)
    return result
