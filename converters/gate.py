"""The accuracy gate every reduced-precision model passes before it enters a bundle.

A variant (FP16, INT8) is compared with the bundle's FP32 model, both run by
ONNX Runtime on the CPU (the one runtime every workstation has), on real
inputs the variant was not fitted to: the calibration set's held-out rows and,
when given, a labelled validation set. The comparison itself (figures, tie
handling, the verdict recorded in bundle.json) is :mod:`facediag.converters.compare`,
the same one export parity and on-device verify use:

- ``top1_agreement``: fraction of images where the variant picks FP32's class,
  FP32 near-ties left out (they are counted in ``near_ties``), and
  ``top1_agreement_all`` over every image; ``agreement`` holds both with their
  95 % lower bounds and how many photos the criterion needs;
- ``max_prob_diff`` / ``mean_prob_diff``: over every image;
- ``accuracy_reference``, ``accuracy``, ``accuracy_drop_points``,
  ``accuracy_paired``: with labels only (``--val``, or the held-out rows of a
  calibration set made from labelled photos).

The defaults (non-tie agreement >= 99 % shown at 95 % confidence, i.e. at
least 299 non-tie photos with no flip; agreement over all photos >= 97 %; drop
<= 1 point) are the bundle's promise that a station running INT8 screens like
the FP32 model did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facediag.converters.compare import Criteria, Labels, Verdict, compare_engines, ort_opener
from facediag.edge import precision as precision_table
from facediag.edge.atomicio import promote
from facediag.edge.errors import ConfigError, FacediagError

log = logging.getLogger(__name__)

REFERENCE_NAME = "fp32 (onnxruntime CPU)"


class GateFailed(FacediagError):
    """A variant did not reproduce FP32 closely enough; it was not added to the bundle."""

    def __init__(self, message: str, result: Verdict) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class LabelledInputs:
    """Validation inputs with class indices (into the bundle's classes)."""

    inputs: np.ndarray
    labels: np.ndarray
    source: str = ""


def gate_labels(heldout: np.ndarray, heldout_labels: np.ndarray | None, val: LabelledInputs | None) -> Labels | None:
    """Labels for the gate's rows (held-out rows first, then ``val``): every labelled row, or None.

    Held-out labels (from a calibration set made from labelled photos) count only when there is one
    per held-out row; they then run on into the validation labels as one block.
    """
    if val is not None and len(val.inputs) == 0:
        val = None
    if heldout_labels is not None and len(heldout_labels) != len(heldout):
        log.info("held-out labels ignored: %d labels for %d held-out rows", len(heldout_labels), len(heldout))
        heldout_labels = None
    if heldout_labels is not None and len(heldout_labels):
        values = [np.asarray(heldout_labels, dtype=np.int64)] + ([np.asarray(val.labels)] if val is not None else [])
        source = "calibration held-out labels" + (f" + {val.source}" if val is not None else "")
        return Labels(np.concatenate(values), start=0, source=source)
    if val is not None:
        return Labels(np.asarray(val.labels), start=len(heldout), source=val.source)
    return None


def run_gate(
    fp32_path: str | Path,
    variant_path: str | Path,
    precision: str,
    heldout: np.ndarray,
    criteria: Criteria,
    val: LabelledInputs | None = None,
    threads: int | None = None,
    heldout_labels: np.ndarray | None = None,
) -> Verdict:
    """Compare ``variant_path`` with ``fp32_path`` on held-out (+ validation) inputs; never raises on failure.

    ``heldout_labels``: class indices of the held-out rows when the calibration photos were labelled;
    with them (or ``val``) the paired accuracy drop is measured and judged.
    """
    parts = [heldout] + ([val.inputs] if val is not None else [])
    inputs = np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else heldout
    if len(inputs) == 0:
        raise ConfigError("the accuracy gate needs real held-out images: the calibration set has no held-out rows and no --val was given")
    labels = gate_labels(heldout, heldout_labels, val)
    result = compare_engines(
        ort_opener(Path(variant_path), precision, threads),
        ort_opener(Path(fp32_path), precision_table.REFERENCE, threads),
        inputs,
        criteria,
        labels=labels,
        candidate=f"{precision} (onnxruntime CPU)",
        reference=REFERENCE_NAME,
        inputs_name="calibration held-out rows" + (f" + {val.source}" if val is not None and len(val.inputs) else ""),
    )
    result.details["heldout_images"] = int(len(heldout))
    if labels is None:
        log.warning("no labels for the gate's images: the accuracy drop was not measured (give --val, or make the "
                    "calibration set from labelled photos)")
    return result


def gate_and_add(
    bundle: Any,
    precision: str,
    candidate: Path,
    heldout: np.ndarray,
    criteria: Criteria,
    val: LabelledInputs | None = None,
    target: str | None = None,
    settings: dict[str, Any] | None = None,
    threads: int | None = None,
    heldout_labels: np.ndarray | None = None,
) -> Verdict:
    """Gate ``candidate`` (a file inside the bundle folder) against the bundle's FP32 model.

    Passed: renamed to its final name and recorded in bundle.json (atomically). Failed: the file is
    deleted, the bundle is left as it was (an earlier accepted file of this precision stays) and
    :class:`GateFailed` is raised with the figures.
    """

    final = precision_table.file_name(precision)
    try:
        result = run_gate(bundle.model_path(precision_table.REFERENCE), candidate, precision, heldout, criteria, val, threads,
                          heldout_labels)
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
    promote(candidate, bundle.path / final)  # gated: now it may take its final name
    if settings:
        result.details["settings"] = settings
    bundle.add_precision(precision, final, result.to_dict(), target=target)
    return result
