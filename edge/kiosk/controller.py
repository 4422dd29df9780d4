"""The kiosk inside the station: consent gate for the pipeline, live progress, outcome, station state.

``KioskController`` is three things at once:

* the pipeline's ``FrameGate``: ``admit`` lets frames through only while the
  ``ConsentMachine`` is armed (after Start, or always with ``trigger = "auto"``) and
  keeps a reference to the newest frame for the preview (memory only); ``observe``
  turns the quality gates' reasons into one instruction and counts progress;
* a ``StationAddOn`` named ``kiosk``: ``on_result`` shows the outcome, ``status()`` is
  the current session in ``/status``, ``start``/``stop`` run a small poller that
  applies timeouts and notices station-wide changes (camera lost, degraded);
* the source of the pages' events (``EventHub``).

The page's ``data-state`` is ``view()``: ``stopping`` > ``loading`` (not READY) >
``camera-missing`` (the capture supervisor is reconnecting) > the person's flow when a
screening or an outcome is on screen > ``degraded`` (``/health`` says so) > ``idle``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from facediag.edge.kiosk.events import EventHub
from facediag.edge.kiosk.session import AUTO, IDLE, RESULT, SCREENING, ConsentMachine
from facediag.edge.screening.record import ScreeningResult

if TYPE_CHECKING:
    from facediag.edge.face.types import Face
    from facediag.edge.station.pipeline import ScreeningPipeline
    from facediag.edge.station.status import StationStatus

log = logging.getLogger(__name__)

POLL_S = 0.2
PROGRESS_EVERY_S = 0.1
CAMERA_STATES = ("connecting", "backoff", "stalled", "stopped")

# quality-gate reason prefixes (facediag.edge.face.quality) -> the one instruction shown
INSTRUCTIONS = (
    ("face too small", "closer"),
    ("too dark", "more_light"),
    ("too bright", "less_light"),
    ("badly exposed", "less_light"),
    ("head tilted", "look"),
    ("not frontal", "look"),
    ("blurred", "still"),
)


def instruction_for(reasons: list[str], face: bool) -> str:
    """One instruction key for the page: the first failing gate in order of importance."""
    if not face:
        return "face_camera"
    for prefix, key in INSTRUCTIONS:
        if any(r.startswith(prefix) for r in reasons):
            return key
    return "hold"


def retake_key(reason: str) -> str:
    """Why a retake, as a key for the page: the instruction behind its most frequent rejection."""
    if "engine" in reason or "inference" in reason or "invalid probabilities" in reason:
        return "station_fault"
    if "confidence" in reason or "abstain" in reason:
        return "unsure"
    for prefix, key in INSTRUCTIONS:
        if prefix in reason:
            return key
    if "left" in reason or "changed" in reason:
        return "left"
    return "retry"


class KioskController:
    name = "kiosk"

    def __init__(self, *, trigger: str = "button", result_hold_s: float = 12.0, start_timeout_s: float = 60.0,
                 good_frames: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.machine = ConsentMachine(trigger=trigger, result_hold_s=result_hold_s, start_timeout_s=start_timeout_s)
        self.good_frames = good_frames
        self.hub = EventHub()
        self.clock = clock
        self._lock = threading.RLock()
        self._status: StationStatus | None = None
        self._pipeline: ScreeningPipeline | None = None
        self._stopping = False
        self._view: tuple[str, str] = ("loading", "")
        self._progress: dict[str, Any] = {}
        self._progress_at = 0.0
        self._frame: np.ndarray | None = None
        self.frame_seq = 0
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.acknowledged: dict[str, float] = {}  # session id -> wall time (memory only)

    def bind(self, pipeline: ScreeningPipeline, status: StationStatus) -> None:
        self._pipeline = pipeline
        self._status = status
        pipeline.gate = self

    # -- FrameGate (processing thread) ---------------------------------------------------------
    def admit(self, pipeline: ScreeningPipeline, image: np.ndarray, now: float) -> bool:
        self._frame = image  # a reference for the preview; never copied to disk
        self.frame_seq += 1
        with self._lock:
            m = self.machine
            if m.reset_tracker:
                m.reset_tracker = False
                pipeline.tracker.current = None
                self._progress = {}
            pipeline.visit_id = m.visit_id
            if m.tick(now):
                self._changed()
            return m.armed

    def observe(self, pipeline: ScreeningPipeline, subject: Face | None, reasons: list[str], now: float) -> None:
        session = pipeline.tracker.current
        with self._lock:
            m = self.machine
            if m.trigger == AUTO and session is not None and session.decision is None and m.state == IDLE:
                m.face_appeared(now)
                pipeline.visit_id = m.visit_id
                self._changed()
            if m.state != SCREENING:
                return
        box = None
        if subject is not None and self._frame is not None:
            h, w = self._frame.shape[:2]
            x0, y0, x1, y1 = subject.box
            box = [round(x0 / w, 4), round(y0 / h, 4), round(x1 / w, 4), round(y1 / h, 4)]
        good = session.good if session is not None and session.decision is None else 0
        progress = {"good": min(good, self.good_frames), "needed": self.good_frames,
                    "instruction": instruction_for(reasons, subject is not None), "box": box}
        same = {k: v for k, v in progress.items() if k != "box"} == \
            {k: v for k, v in self._progress.items() if k != "box"}
        if same and now - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress, self._progress_at = progress, now
        self.hub.publish("progress", progress)

    def latest_frame(self) -> tuple[int, np.ndarray | None]:
        return self.frame_seq, self._frame

    # -- StationAddOn ------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="facediag-kiosk", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self.announce_stopping()
        self._stop.set()
        if self._poller is not None:
            self._poller.join(2)
            self._poller = None

    def on_result(self, result: ScreeningResult) -> None:
        outcome = self.outcome_of(result)
        with self._lock:
            shown = self.machine.finished(outcome, self.clock())
        if shown:
            self.hub.publish("result", outcome)
            self._changed()
        self.hub.publish("recorded", {"session_id": result.session_id, "decision": result.decision})

    def status(self) -> dict[str, Any]:
        with self._lock:
            doc = self.machine.to_dict(self.clock())
            doc["view"], doc["view_reason"] = self._view
            doc["progress"] = self._progress or None
        doc["listeners"] = self.hub.listeners
        return doc

    # -- actions (API threads) ----------------------------------------------------------------
    def start_session(self) -> dict[str, Any]:
        """Start (consent) pressed. Raises SessionRuleError (409) when not possible now."""
        from facediag.edge.kiosk.session import SessionRuleError

        state, reason = self.view()
        if state in ("loading", "stopping", "camera-missing") or (state == "degraded" and not self.screening_possible()):
            raise SessionRuleError(f"the station cannot screen now ({state}{': ' + reason if reason else ''})")
        with self._lock:
            self.machine.start(self.clock())
            self._progress = {}
        self._changed()
        return self.status()

    def cancel_session(self) -> dict[str, Any]:
        with self._lock:
            self.machine.cancel(self.clock())
        self._changed()
        return self.status()

    def set_visit(self, visit_id: str | None) -> dict[str, Any]:
        with self._lock:
            self.machine.set_visit(visit_id)
        self._changed()
        return self.status()

    def acknowledge(self, session_id: str) -> None:
        self.acknowledged[session_id] = time.time()
        self.hub.publish("acknowledged", {"session_id": session_id})

    def announce_stopping(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._changed()
            self.hub.close()

    # -- the state the pages show ------------------------------------------------------------
    def view(self) -> tuple[str, str]:
        """(data-state, reason) as in the module docstring."""
        if self._stopping:
            return "stopping", ""
        st = self._status
        if st is None or not st.liveness.ready:
            return "loading", ""
        source = st.supervisor.state
        if source in CAMERA_STATES:
            stats = st.supervisor.stats()
            return "camera-missing", str(getattr(stats, "last_error", "") or source)
        with self._lock:
            person = self.machine.state
        if person in (SCREENING, RESULT):
            return person, ""
        health = st.health()
        if health.get("status") == "degraded":
            faults = getattr(st, "faults", None)
            summary = faults.summary() if faults is not None else ""
            doc_reason = getattr(st, "degraded_reason", None) or summary or health.get("degraded") or "degraded"
            return "degraded", str(doc_reason)
        return IDLE, ""

    def screening_possible(self) -> bool:
        """Degraded only by the CPU fallback still screens (slower); other faults (invalid model output,
        repeated engine errors, results not durable) do not let a person start."""
        st = self._status
        if st is None:
            return False
        health = st.health()
        return health.get("status") != "degraded" or health.get("degraded") in (None, "engine-fallback")

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        """What a new page is sent first: the state (and the outcome or progress on screen)."""
        events: list[tuple[str, dict[str, Any]]] = [("state", self._state_event())]
        with self._lock:
            if self.machine.state == RESULT and self.machine.outcome:
                events.append(("result", dict(self.machine.outcome)))
            elif self.machine.state == SCREENING and self._progress:
                events.append(("progress", dict(self._progress)))
        return events

    def _state_event(self) -> dict[str, Any]:
        state, reason = self.view()
        with self._lock:
            m = self.machine
            can_start = m.trigger != AUTO and (state in (IDLE, RESULT) or (state == "degraded"
                                                                         and self.screening_possible()))
            return {"state": state, "reason": reason, "person": m.state, "trigger": m.trigger,
                    "can_start": can_start, "visit_pending": m.pending_visit is not None, "number": m.number,
                    "at": time.time()}

    def _changed(self) -> None:
        event = self._state_event()
        self._view = (event["state"], event["reason"])
        self.hub.publish("state", event)

    def _poll(self) -> None:
        last: tuple[str, str] | None = None
        while not self._stop.wait(POLL_S):
            try:
                with self._lock:
                    changed = self.machine.tick(self.clock())
                view = self.view()
                if changed or view != last:
                    last = view
                    self._changed()
            except Exception:  # noqa: BLE001 - the poller must keep running
                log.exception("kiosk: state poll failed")

    # -- outcome -----------------------------------------------------------------------------
    @staticmethod
    def outcome_of(result: ScreeningResult) -> dict[str, Any]:
        top = sorted(result.probabilities.items(), key=lambda kv: -kv[1])[:3]
        return {
            "decision": result.decision,
            "condition": result.condition,
            "probability": result.probability,
            "top": [{"class": k, "p": round(v, 3)} for k, v in top],
            "reason": result.reason,
            "reason_key": retake_key(result.reason or "") if result.decision == "retake" else None,
            "session_id": result.session_id,
            "visit_id": result.visit_id,
            "decided_at": result.decided_at,
            "notice": result.notice,
        }
