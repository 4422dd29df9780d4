"""From averaged class probabilities to a screening decision, with the bundle's thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from facediag.edge.compat import zip_strict

REFER = "refer"
NO_FINDING = "no_finding"
RETAKE = "retake"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Decision:
    kind: str  # refer | no_finding | retake
    condition: str | None = None  # for refer: the class that crossed its threshold
    probability: float | None = None  # for refer: that class's probability
    reason: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)


def decide(
    mean_probabilities: Sequence[float] | np.ndarray,
    classes: Sequence[str],
    healthy_class: str,
    thresholds: Mapping[str, float],
    min_confidence: float = 0.5,
) -> Decision:
    """Decide for one subject, in this order.

    - retake: the top class's probability is below ``min_confidence``, whatever that class is (a
      condition crossing its threshold included): the model is unsure, so the station asks for
      another capture rather than guess.
    - refer: some non-healthy class reaches its threshold (chosen on validation data for a target
      sensitivity; ``DEFAULT_THRESHOLD`` when the bundle has none); the most probable such class wins.
    - no_finding: no condition reaches its threshold (the top class is then confident).
    """
    p = np.asarray(mean_probabilities, dtype=np.float64).reshape(-1)
    if len(p) != len(classes):
        raise ValueError(f"{len(p)} probabilities for {len(classes)} classes")
    if healthy_class not in classes:
        raise ValueError(f"healthy class {healthy_class!r} is not one of {list(classes)}")
    probs = {c: float(v) for c, v in zip_strict(classes, p)}
    limits = {c: float(thresholds.get(c, DEFAULT_THRESHOLD)) for c in classes if c != healthy_class}
    crossing = [c for c in classes if c != healthy_class and probs[c] >= limits[c]]
    top = max(classes, key=lambda c: probs[c])
    if probs[top] < min_confidence:
        also = f"; threshold reached by {', '.join(crossing)}" if crossing else ""
        return Decision(RETAKE, None, None,
                        f"confidence too low (top: {top} {probs[top]:.2f} < min_confidence {min_confidence:.2f}{also})", probs)
    if crossing:
        best = max(crossing, key=lambda c: probs[c])
        return Decision(REFER, best, probs[best],
                        f"{best} probability {probs[best]:.2f} reached its threshold {limits[best]:.2f}", probs)
    return Decision(NO_FINDING, None, None, f"no condition reached its threshold (top: {top} {probs[top]:.2f})", probs)
