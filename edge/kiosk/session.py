"""The kiosk's session and consent rules, as a small state machine on an injected clock.

States of the person's flow (the station-wide states, loading, camera missing, degraded,
stopping, are laid over these by ``facediag.edge.kiosk.controller``):

* ``idle``: nobody is screened. With ``trigger = "button"`` the pipeline does not
  look at faces at all until Start (consent); with ``"auto"`` it is armed all the time.
* ``screening``: after Start (or, with ``"auto"``, when a face appears). A session
  with no result within ``start_timeout_s`` of Start goes back to idle.
* ``result``: the outcome is shown for ``result_hold_s``, then idle. With
  ``"button"`` the station is disarmed here: one Start, one screening.

A visit id entered by staff waits (``pending_visit``) until the next Start (or, with
``"auto"``, the next result) and is then attached to that one result only.
Every method is called under the controller's lock; none blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

IDLE = "idle"
SCREENING = "screening"
RESULT = "result"
BUTTON = "button"
AUTO = "auto"
VISIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


class SessionRuleError(ValueError):
    """A request the current state does not allow (answered 409 by the API)."""


@dataclass
class ConsentMachine:
    trigger: str = BUTTON
    result_hold_s: float = 12.0
    start_timeout_s: float = 60.0
    state: str = IDLE
    since: float = 0.0
    number: int = 0  # sessions started so far (kiosk sessions, not tracker sessions)
    pending_visit: str | None = None
    visit_id: str | None = None  # the visit of the session in progress
    outcome: dict[str, Any] | None = None
    reset_tracker: bool = False  # the pipeline must forget its current face session (read and cleared by it)
    last_event: str = ""
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.trigger not in (BUTTON, AUTO):
            raise ValueError(f"trigger must be {BUTTON!r} or {AUTO!r}, not {self.trigger!r}")

    # -- what the pipeline asks ---------------------------------------------------------------
    @property
    def armed(self) -> bool:
        """May the pipeline look for a face and screen now?"""
        return self.trigger == AUTO or self.state == SCREENING

    def _go(self, state: str, now: float, event: str) -> None:
        self.state = state
        self.since = now
        self.last_event = event
        self.history.append(f"{event}->{state}")
        del self.history[:-20]

    # -- events -------------------------------------------------------------------------------
    def set_visit(self, visit_id: str | None) -> None:
        """Staff entered (or cleared, with None / "") the visit id for the next person."""
        if visit_id:
            visit_id = visit_id.strip()
            if not VISIT_ID.match(visit_id):
                raise SessionRuleError("a visit id is 1-64 letters, digits or . _ : / - (starting with a letter or digit)")
        self.pending_visit = visit_id or None

    def start(self, now: float) -> None:
        """Start pressed: consent given for one screening."""
        if self.state == SCREENING:
            raise SessionRuleError("a screening is already in progress")
        self.number += 1
        self.visit_id, self.pending_visit = self.pending_visit, None
        self.outcome = None
        self.reset_tracker = True
        self._go(SCREENING, now, "start")

    def cancel(self, now: float) -> None:
        """Cancel pressed (or staff cancelled): no result is recorded for the session in progress."""
        if self.state != SCREENING:
            raise SessionRuleError("no screening in progress")
        self.reset_tracker = True
        if self.visit_id and self.pending_visit is None:
            self.pending_visit = self.visit_id  # the visit still waits for its screening
        self.visit_id = None
        self._go(IDLE, now, "cancel")

    def face_appeared(self, now: float) -> None:
        """With ``auto``: a face session began, so the person is being screened."""
        if self.trigger == AUTO and self.state == IDLE:
            self.number += 1
            self.visit_id, self.pending_visit = self.pending_visit, None
            self._go(SCREENING, now, "face")

    def finished(self, outcome: dict[str, Any], now: float) -> bool:
        """A result was recorded. False (and no change) when nobody was being screened."""
        if self.state != SCREENING and self.trigger == BUTTON:
            return False
        if self.trigger == AUTO and self.state != SCREENING:
            self.number += 1
        self.outcome = dict(outcome)
        self.visit_id = None
        self._go(RESULT, now, "result")
        return True

    def tick(self, now: float) -> bool:
        """Timeouts: the outcome was shown long enough; a started screening found nobody. True if changed."""
        if self.state == RESULT and now - self.since >= self.result_hold_s:
            self.outcome = None
            self._go(IDLE, now, "shown")
            return True
        if self.state == SCREENING and now - self.since >= self.start_timeout_s:
            self.reset_tracker = True
            self.visit_id = None
            self._go(IDLE, now, "timeout")
            return True
        return False

    def take_visit_for_result(self) -> str | None:
        """The visit id a result being written now belongs to (auto mode may use the pending one)."""
        if self.state == SCREENING:
            return self.visit_id
        if self.trigger == AUTO:
            visit, self.pending_visit = self.pending_visit, None
            return visit
        return None

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "session_state": self.state,  # not "state": StationStatus.line() puts add-ons' "state" in STATUS=
            "trigger": self.trigger,
            "armed": self.armed,
            "number": self.number,
            "for_s": round(max(0.0, now - self.since), 1),
            "visit_id": self.visit_id,
            "pending_visit": self.pending_visit,
            "outcome": self.outcome,
        }
