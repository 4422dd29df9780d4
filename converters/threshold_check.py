"""What decision thresholds cost: the validation specificity floor that ``export --thresholds`` enforces.

``facediag evaluate`` chooses each condition's threshold on validation data for a target
sensitivity and records, beside it, the sensitivity and specificity reached there
(``threshold_selection.on_val``), and those of the station's "refer" with all thresholds
together (``threshold_selection.refer_on_val``: any condition reaching its threshold refers,
so the combined specificity is lower than any one class's). A threshold low enough to reach the sensitivity may refer most
people who do not have the condition; the export refuses it below a specificity floor unless the
user accepts it explicitly, and the bundle records that acceptance.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facediag.edge.errors import FacediagError

log = logging.getLogger(__name__)

DEFAULT_MIN_SPECIFICITY = 0.5
ACCEPT_FLAG = "--accept-low-specificity"


def validation_figures(report: Mapping[str, Any], condition: str) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) recorded on validation data at ``condition``'s threshold; None when absent."""
    selection = report.get("threshold_selection")
    on_val = selection.get("on_val") if isinstance(selection, Mapping) else None
    figures = on_val.get(condition) if isinstance(on_val, Mapping) else None
    if not isinstance(figures, Mapping):
        return None, None

    def number(key: str) -> float | None:
        v = figures.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    return number("sensitivity"), number("specificity")


def _refer_on_val(report: Mapping[str, Any], thresholds: Mapping[str, float]) -> dict[str, Any] | None:
    """The report's combined "refer" figures on validation data, when they belong to these very thresholds."""
    selection = report.get("threshold_selection")
    refer = selection.get("refer_on_val") if isinstance(selection, Mapping) else None
    chosen = report.get("thresholds")
    if not isinstance(refer, Mapping) or not isinstance(chosen, Mapping):
        return None
    if {str(k): float(v) for k, v in chosen.items()} != {str(k): float(v) for k, v in thresholds.items()}:
        log.warning("the exported thresholds differ from the report's: the combined refer specificity is not checked")
        return None
    spec = refer.get("specificity")
    if isinstance(spec, bool) or not isinstance(spec, int | float) or not math.isfinite(spec):
        return {**dict(refer), "specificity": None}
    return {**dict(refer), "specificity": float(spec)}


def _who(condition: str, classes: Sequence[str], healthy_class: str) -> str:
    """The people a false referral for ``condition`` falls on, in words."""
    others = [c for c in classes if c != condition]
    return "healthy people" if others == [healthy_class] else f"people without {condition}"


def check_threshold_specificity(
    report_path: str | Path,
    thresholds: Mapping[str, float],
    classes: Sequence[str],
    healthy_class: str,
    *,
    min_specificity: float = DEFAULT_MIN_SPECIFICITY,
    accept_low: bool = False,
) -> dict[str, Any]:
    """Refuse (FacediagError) thresholds whose validation specificity is below ``min_specificity``
    or unknown, unless ``accept_low``; return the record that goes into bundle.json.
    """
    if not 0.0 <= min_specificity <= 1.0:
        raise FacediagError(f"--min-specificity must be within 0..1, got {min_specificity}")
    path = Path(report_path)
    report = json.loads(path.read_text())
    validation: dict[str, dict[str, float | None]] = {}
    low: list[str] = []
    unknown: list[str] = []
    low_names: list[str] = []
    for c in (c for c in classes if c in thresholds and c != healthy_class):
        sens, spec = validation_figures(report, c)
        validation[c] = {"threshold": float(thresholds[c]), "sensitivity": sens, "specificity": spec}
        if spec is None:
            unknown.append(c)
        elif spec < min_specificity:
            low_names.append(c)
            sens_txt = "" if sens is None else f", sensitivity {sens:.0%}"
            low.append(
                f"{c} at threshold {thresholds[c]:.3f} has validation specificity {spec:.0%}{sens_txt}: "
                f"at this threshold about {1 - spec:.0%} of {_who(c, classes, healthy_class)} would be referred for {c}"
            )
    refer = _refer_on_val(report, thresholds)
    several = sum(1 for c in classes if c in thresholds and c != healthy_class) > 1  # one: the same as its own figure
    if several and refer is not None and refer["specificity"] is not None and refer["specificity"] < min_specificity:
        sens = refer.get("sensitivity")
        sens_txt = "" if not isinstance(sens, int | float) else f", sensitivity {sens:.0%}"
        low.append(
            f"all thresholds together (the station refers when any condition reaches its threshold) have validation "
            f"specificity {refer['specificity']:.0%}{sens_txt}: about {1 - refer['specificity']:.0%} of "
            f"{healthy_class} people would be referred"
        )
        low_names.append("refer")
    problems = []
    if low:
        problems.append(f"specificity below the floor of {min_specificity:.0%}: " + "; ".join(low))
    if unknown:
        problems.append(
            "the report records no validation specificity for " + ", ".join(unknown)
            + " (threshold_selection.on_val), so what these thresholds cost cannot be told"
        )
    text = f"{path}: " + "; and ".join(problems)
    if problems and not accept_low:
        raise FacediagError(
            f"{text}. Choose thresholds for a lower sensitivity (`facediag evaluate --sensitivity`), lower "
            f"--min-specificity, or pass {ACCEPT_FLAG} to export them anyway"
        )
    if problems:
        log.warning("%s; exporting them anyway (%s)", text, ACCEPT_FLAG)
    return {
        "min_specificity": float(min_specificity),
        "validation": validation,
        "refer": refer,
        "below_floor": low_names,
        "unknown_specificity": unknown,
        "accepted_low_specificity": bool(problems),
    }
