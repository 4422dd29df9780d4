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


def test_refer_on_val_uses_the_station_rule_on_a_hand_checked_case() -> None:
    """Three healthy and three condition photos. Each threshold alone lets only one healthy photo through, but
    together they refer two of the three healthy photos: specificity 1/3 where each class shows 2/3."""
    import numpy as np

    from facediag.training.evaluation import refer_on_val

    classes = ["healthy", "pale_skin", "round_face"]
    probs = np.array([
        [0.50, 0.45, 0.05],  # healthy, pale_skin >= 0.4: referred
        [0.50, 0.05, 0.45],  # healthy, round_face >= 0.4: referred
        [0.90, 0.05, 0.05],  # healthy, not referred
        [0.20, 0.70, 0.10],  # pale_skin: referred
        [0.20, 0.10, 0.70],  # round_face: referred
        [0.70, 0.20, 0.10],  # pale_skin, missed
    ])
    y = np.array([0, 0, 0, 1, 2, 1])
    thresholds = {"pale_skin": 0.4, "round_face": 0.4}
    got = refer_on_val(y, probs, classes, "healthy", thresholds)
    assert got is not None
    assert got["specificity"] == 1 / 3 and got["sensitivity"] == 2 / 3
    assert (got["n_healthy"], got["n_condition"]) == (3, 3)
    assert refer_on_val(y, probs, classes, None, thresholds) is None


def test_thresholds_fine_one_by_one_but_not_together_are_refused(tmp_path: Path) -> None:
    thresholds = {"pale_skin": 0.1, "round_face": 0.4}
    on_val = {"pale_skin": {"sensitivity": 0.9, "specificity": 0.7}, "round_face": {"sensitivity": 0.9, "specificity": 0.8}}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"model": {"classes": CLASSES}, "thresholds": thresholds, "threshold_selection": {
        "target_sensitivity": 0.9, "on_val": on_val,
        "refer_on_val": {"sensitivity": 0.95, "specificity": 0.3, "n_healthy": 10, "n_condition": 20}}}))
    with pytest.raises(FacediagError, match=r"all thresholds together .* specificity 30%.*about 70% of healthy"):
        check_threshold_specificity(report, thresholds, CLASSES, "healthy")
    record = check_threshold_specificity(report, thresholds, CLASSES, "healthy", accept_low=True)
    assert record["below_floor"] == ["refer"] and record["refer"]["specificity"] == 0.3
    assert check_threshold_specificity(report, thresholds, CLASSES, "healthy", min_specificity=0.25)["below_floor"] == []
    # thresholds other than the report's: the combined figure does not describe them and is not used
    other = {"pale_skin": 0.2, "round_face": 0.4}
    assert check_threshold_specificity(report, other, CLASSES, "healthy")["refer"] is None
