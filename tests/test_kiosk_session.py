"""The kiosk's session and consent rules (facediag.edge.kiosk.session) and the controller's gate, on a fake clock.

The gate is exercised through the real ScreeningPipeline API it plugs into (admit/observe), with a real
SessionTracker: nothing is screened before Start, one Start gives one screening, Cancel records nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from facediag.edge.kiosk.controller import KioskController, instruction_for, retake_key
from facediag.edge.kiosk.session import (
    AUTO,
    BUTTON,
    IDLE,
    RESULT,
    SCREENING,
    ConsentMachine,
    SessionRuleError,
)
from facediag.edge.screening.session import SessionConfig, SessionTracker


def test_button_mode_screens_only_after_start_and_once_per_start():
    m = ConsentMachine(trigger=BUTTON, result_hold_s=5.0, start_timeout_s=30.0)
    assert m.state == IDLE and not m.armed
    with pytest.raises(SessionRuleError):
        m.cancel(0.0)
    m.start(1.0)
    assert m.state == SCREENING and m.armed and m.reset_tracker and m.number == 1
    with pytest.raises(SessionRuleError, match="already"):
        m.start(1.5)
    assert m.finished({"decision": "no_finding"}, 3.0)
    assert m.state == RESULT and not m.armed, "after the outcome the station is disarmed: one Start, one screening"
    assert not m.finished({"decision": "refer"}, 3.5), "a result with nobody screened changes nothing"
    assert not m.tick(7.9) and m.state == RESULT
    assert m.tick(8.0) and m.state == IDLE and m.outcome is None


def test_cancel_and_timeout_return_to_idle_and_keep_the_visit_waiting():
    m = ConsentMachine(trigger=BUTTON, start_timeout_s=10.0)
    m.set_visit("V-1")
    m.start(0.0)
    assert m.visit_id == "V-1" and m.pending_visit is None
    m.cancel(2.0)
    assert m.state == IDLE and m.reset_tracker and m.pending_visit == "V-1", "a cancelled visit still waits"
    m.reset_tracker = False
    m.start(3.0)
    assert m.visit_id == "V-1"
    assert not m.tick(12.9)
    assert m.tick(13.0) and m.state == IDLE and m.reset_tracker and m.last_event == "timeout"


def test_visit_ids_are_checked_and_belong_to_one_session():
    m = ConsentMachine()
    for bad in ("has space", "x" * 65, "-leading", "semi;colon"):
        with pytest.raises(SessionRuleError):
            m.set_visit(bad)
    m.set_visit(" AB-12/3 ")
    assert m.pending_visit == "AB-12/3"
    m.start(0.0)
    m.finished({"decision": "retake"}, 1.0)
    assert m.visit_id is None and m.pending_visit is None
    m.set_visit("")
    assert m.pending_visit is None
    with pytest.raises(ValueError):
        ConsentMachine(trigger="sometimes")


def test_auto_mode_is_always_armed_and_counts_faces_as_sessions():
    m = ConsentMachine(trigger=AUTO, result_hold_s=2.0)
    assert m.armed
    m.set_visit("V-9")
    m.face_appeared(1.0)
    assert m.state == SCREENING and m.visit_id == "V-9" and m.number == 1
    assert m.finished({"decision": "refer"}, 2.0) and m.armed and m.state == RESULT
    assert m.tick(4.0) and m.state == IDLE


def test_instructions_follow_the_most_important_failing_gate():
    assert instruction_for([], face=False) == "face_camera"
    assert instruction_for([], face=True) == "hold"
    assert instruction_for(["blurred: sharpness 3 < 20 (hold still)", "face too small: 30 px < 64 px"], True) == "closer"
    assert instruction_for(["too dark: mean level 20 < 40"], True) == "more_light"
    assert instruction_for(["not frontal: head turned (yaw 0.5 > 0.3)"], True) == "look"
    assert retake_key("face left before enough good frames: 2/5 good frames (rejected: too dark x9)") == "more_light"
    assert retake_key("subject changed: 1/5 good frames") == "left"
    assert retake_key("the engine failed on 3 sessions in a row") == "station_fault"


class _Face:
    def __init__(self, box):
        self.box = box


class _Pipeline:
    """The two attributes of ScreeningPipeline the gate touches, with a real SessionTracker."""

    def __init__(self):
        self.tracker = SessionTracker(SessionConfig(good_frames=3))
        self.visit_id = None


def test_the_gate_admits_frames_only_while_armed_and_reports_progress():
    clock = [0.0]
    k = KioskController(trigger=BUTTON, good_frames=3, clock=lambda: clock[0])
    p = _Pipeline()
    image = np.zeros((480, 640, 3), np.uint8)
    assert not k.admit(p, image, 0.0), "no frame is looked at before Start"
    # a face session left over from before must not carry into the next person's screening
    p.tracker.step(0.0, _Face((100, 100, 200, 220)), np.zeros((112, 96, 3), np.uint8), [])
    k.machine.set_visit("V-7")
    k.machine.start(0.1)
    assert k.admit(p, image, 0.2) and p.tracker.current is None and p.visit_id == "V-7"
    seq = k.hub.seq
    face = _Face((160.0, 120.0, 320.0, 360.0))
    p.tracker.step(0.3, face, np.zeros((112, 96, 3), np.uint8), [])
    k.observe(p, face, [], 0.3)
    events = k.hub.after(seq, 0.0)
    assert events and events[-1][1] == "progress"
    import json

    progress = json.loads(events[-1][2])
    assert progress["good"] == 1 and progress["needed"] == 3 and progress["instruction"] == "hold"
    assert progress["box"] == [0.25, 0.25, 0.5, 0.75]
    k.observe(p, None, [], 0.31)  # the face was lost: a new instruction is published at once
    assert json.loads(k.hub.after(k.hub.seq - 1, 0.0)[-1][2])["instruction"] == "face_camera"
    k.machine.cancel(0.5)
    assert not k.admit(p, image, 0.6) and p.tracker.current is None and p.visit_id is None
