"""Screening decisions and session tracking (pure logic; the daemon tests cover it end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from facediag.edge.face.types import Face
from facediag.edge.screening.decision import NO_FINDING, REFER, RETAKE, decide
from facediag.edge.screening.session import SessionConfig, SessionTracker

CLASSES = ["healthy", "pale_skin", "round_face"]
LM = np.zeros((5, 2), np.float32)
CROP = np.zeros((112, 112, 3), np.uint8)


def _face(x: float = 100) -> Face:
    return Face((x, 100, x + 150, 250), LM, 0.99)


def test_refer_when_a_condition_reaches_its_threshold() -> None:
    d = decide([0.5, 0.35, 0.15], CLASSES, "healthy", {"pale_skin": 0.3, "round_face": 0.6})
    assert d.kind == REFER and d.condition == "pale_skin" and d.probability == pytest.approx(0.35)


def test_most_probable_crossing_condition_wins() -> None:
    d = decide([0.1, 0.4, 0.5], CLASSES, "healthy", {"pale_skin": 0.3, "round_face": 0.3})
    assert d.condition == "round_face"


def test_no_finding_and_retake() -> None:
    assert decide([0.8, 0.1, 0.1], CLASSES, "healthy", {}).kind == NO_FINDING
    d = decide([0.4, 0.35, 0.25], CLASSES, "healthy", {"pale_skin": 0.5, "round_face": 0.5}, min_confidence=0.5)
    assert d.kind == RETAKE and "confidence too low" in d.reason
    with pytest.raises(ValueError, match="healthy class"):
        decide([0.5, 0.5], ["a", "b"], "healthy", {})


def test_session_asks_for_inference_after_n_good_frames_and_gives_one_result_per_person() -> None:
    tracker = SessionTracker(SessionConfig(good_frames=3, window_s=5, face_lost_s=1.0))
    out = tracker.step(0.0, _face(), None, ["blurred: sharpness 3 < 20"])
    assert out.ready is None
    for t in (0.1, 0.2):
        assert tracker.step(t, _face(), CROP, []).ready is None
    ready = tracker.step(0.3, _face(), CROP, []).ready
    assert ready is not None and len(ready.crops) == 3
    summary = ready.quality_summary()
    assert summary.to_json() == {"frames_seen": 4, "good_frames": 3, "rejected_frames": 1, "rejections": {"blurred": 1}}
    tracker.conclude(ready, decide([0.9, 0.05, 0.05], CLASSES, "healthy", {}), 0.3)
    # Same person stays: no second inference.
    assert all(tracker.step(0.4 + i / 10, _face(), CROP, []).ready is None for i in range(5))
    # Person leaves, then someone arrives: a new session.
    tracker.step(2.0, None, None, [])
    tracker.step(3.5, None, None, [])
    assert tracker.current is None
    tracker.step(4.0, _face(), CROP, [])
    assert tracker.current is not None and tracker.current.id != ready.id


def test_face_leaving_early_ends_as_retake_with_reasons() -> None:
    tracker = SessionTracker(SessionConfig(good_frames=8, face_lost_s=0.5))
    tracker.step(0.0, _face(), CROP, [])
    tracker.step(0.1, _face(), None, ["too dark: mean level 10 < 40"])
    ended = tracker.step(1.0, None, None, []).ended
    assert len(ended) == 1 and ended[0].decision.kind == RETAKE
    assert "face left" in ended[0].decision.reason and "too dark x1" in ended[0].decision.reason


def test_a_different_person_ends_the_session() -> None:
    tracker = SessionTracker(SessionConfig(good_frames=8))
    tracker.step(0.0, _face(100), CROP, [])
    out = tracker.step(0.1, _face(450), CROP, [])
    assert len(out.ended) == 1 and "subject changed" in out.ended[0].decision.reason
    assert tracker.current is not None and tracker.current.good == 1


def test_window_expiry_is_a_retake() -> None:
    tracker = SessionTracker(SessionConfig(good_frames=5, window_s=1.0))
    tracker.step(0.0, _face(), CROP, [])
    out = tracker.step(1.5, _face(), CROP, [])
    assert out.ready is None and out.ended and out.ended[0].decision.kind == RETAKE


def test_below_min_confidence_is_a_retake_whatever_the_class() -> None:
    """min_confidence means what the config says: an unsure top class is a retake, even over a threshold."""
    low = {"pale_skin": 0.3, "round_face": 0.3}
    d = decide([0.2, 0.45, 0.35], CLASSES, "healthy", low, min_confidence=0.5)
    assert d.kind == RETAKE and d.condition is None
    assert "pale_skin 0.45 < min_confidence 0.50" in d.reason and "threshold reached by pale_skin, round_face" in d.reason
    # The same vector with a confident enough top class: refer, as before.
    d = decide([0.2, 0.45, 0.35], CLASSES, "healthy", low, min_confidence=0.4)
    assert d.kind == REFER and d.condition == "pale_skin"
    # An unsure healthy top class is a retake too; confident and under every threshold: no finding.
    assert decide([0.45, 0.3, 0.25], CLASSES, "healthy", {"pale_skin": 0.5, "round_face": 0.5}).kind == RETAKE
    assert decide([0.6, 0.3, 0.1], CLASSES, "healthy", {"pale_skin": 0.5, "round_face": 0.5}).kind == NO_FINDING
    # Exactly at min_confidence is confident enough.
    assert decide([0.5, 0.5], ["healthy", "pale_skin"], "healthy", {"pale_skin": 0.5}).kind == REFER
