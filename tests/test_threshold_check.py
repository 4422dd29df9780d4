"""The validation-specificity floor on exported thresholds (hand-made evaluate reports; the CLI path is in
tests/test_export_quantize.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from facediag.converters.threshold_check import check_threshold_specificity
from facediag.edge.errors import FacediagError

CLASSES = ["healthy", "pale_skin", "round_face"]


def _report(tmp_path: Path, on_val: dict[str, dict[str, float]]) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"model": {"classes": CLASSES}, "thresholds": {"pale_skin": 0.1, "round_face": 0.4},
                                "threshold_selection": {"target_sensitivity": 0.9, "on_val": on_val}}))
    return path


def test_low_specificity_is_refused_with_its_cost_and_accepted_only_explicitly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    thresholds = {"pale_skin": 0.1, "round_face": 0.4}
    report = _report(tmp_path, {"pale_skin": {"sensitivity": 0.9, "specificity": 0.35},
                                "round_face": {"sensitivity": 0.9, "specificity": 0.8}})
    with pytest.raises(FacediagError) as err:
        check_threshold_specificity(report, thresholds, CLASSES, "healthy")
    text = str(err.value)
    assert "65% of people without pale_skin would be referred for pale_skin" in text
    assert "round_face" not in text  # its specificity is over the floor
    # A lower floor lets the same thresholds through, with nothing accepted.
    ok = check_threshold_specificity(report, thresholds, CLASSES, "healthy", min_specificity=0.3)
    assert ok["accepted_low_specificity"] is False and ok["below_floor"] == []
    with caplog.at_level(logging.WARNING):
        accepted = check_threshold_specificity(report, thresholds, CLASSES, "healthy", accept_low=True)
    assert "65% of people without pale_skin" in caplog.text
    assert accepted["accepted_low_specificity"] is True and accepted["below_floor"] == ["pale_skin"]
    assert accepted["validation"]["round_face"] == {"threshold": 0.4, "sensitivity": 0.9, "specificity": 0.8}


def test_missing_specificity_is_refused_unless_accepted(tmp_path: Path) -> None:
    thresholds = {"pale_skin": 0.1, "round_face": 0.4}
    report = _report(tmp_path, {"pale_skin": {"sensitivity": 0.9, "specificity": 0.7}})  # none for round_face
    with pytest.raises(FacediagError, match="no validation specificity for round_face"):
        check_threshold_specificity(report, thresholds, CLASSES, "healthy")
    accepted = check_threshold_specificity(report, thresholds, CLASSES, "healthy", accept_low=True)
    assert accepted["unknown_specificity"] == ["round_face"] and accepted["accepted_low_specificity"] is True
    with pytest.raises(FacediagError, match="within 0..1"):
        check_threshold_specificity(report, thresholds, CLASSES, "healthy", min_specificity=1.5)
