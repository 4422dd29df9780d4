"""When is the station alive? The freshness, watchdog and fps rules, on an injected clock.

The rule today (what ``/health``, ``/status`` and ``WATCHDOG=1`` follow):

* before READY the station is *starting*;
* after READY it is *healthy* while the last processed frame was captured at most
  ``max_frame_age_s`` ago **and** processing finished at most
  ``max_processing_age_s`` ago; otherwise *degraded*, with the reason;
* ``WATCHDOG=1`` is sent (every half watchdog interval) only while healthy, so a
  dead camera or a wedged loop lets systemd restart the service.

Two seams, both used by the daemon (issue 11; the builder wires ``source_excuse`` to
``builder.watchdog_excuse``: supervisor in ``backoff``/``connecting``, or a reported fault):

* ``loop_tick(now)``: the main loop calls it on every turn, frames or not, so a
  rule can tell "the loop is alive" from "frames are flowing";
* ``source_excuse``: a callable returning a reason while a missing source is
  expected and being handled (e.g. the capture supervisor working through its
  backoff, or a station booted without its camera). When it returns a reason and
  the loop ticked within ``max_processing_age_s``, ``watchdog_check`` passes while
  ``check`` (health) still reports degraded.

Every method takes ``now`` (the loop's ``time.monotonic()``) or reads the injected
clock, so the rules are unit-tested in milliseconds with a fake clock.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

Clock = typing.Callable[[], float]  # typing.Callable: evaluated at run time (3.8)
SourceExcuse = typing.Callable[[], "str | None"]


class Verdict(NamedTuple):
    """``alive`` and, when it is not (or is only excused), why."""

    alive: bool
    reason: str = ""


@dataclass(frozen=True)
class LivenessLimits:
    max_frame_age_s: float = 10.0
    max_processing_age_s: float = 30.0


class Liveness:
    """The station's freshness state: ready, newest processed frame, last processing, loop turns, fps."""

    def __init__(self, limits: LivenessLimits | None = None, *, clock: Clock = time.monotonic,
                 source_excuse: SourceExcuse | None = None) -> None:
        self.limits = limits or LivenessLimits()
        self._clock = clock
        self._source_excuse = source_excuse
        self.ready = False
        self.ready_at: float | None = None
        self.last_frame_at: float | None = None  # capture time of the newest processed frame
        self.last_processed_at: float | None = None
        self.last_loop_at: float | None = None
        self._fps = 0.0

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- events -------------------------------------------------------------------------------
    def mark_ready(self, now: float | None = None) -> None:
        """READY: from here on the freshness limits apply (counted from this moment)."""
        t = self._now(now)
        self.ready = True
        self.ready_at = t
        self.last_frame_at = self.last_processed_at = self.last_loop_at = t

    def frame_processed(self, captured_at: float, now: float | None = None) -> None:
        """A frame captured at ``captured_at`` went through the pipeline; updates the fps average."""
        t = self._now(now)
        self.last_frame_at = captured_at
        prev = self.last_processed_at
        self.last_processed_at = t
        self.last_loop_at = t
        if prev is not None:
            dt = t - prev
            if dt > 0:
                inst = 1.0 / dt
                self._fps = inst if self._fps == 0.0 else 0.9 * self._fps + 0.1 * inst

    def loop_tick(self, now: float | None = None) -> None:
        """The main loop went round (with or without a frame)."""
        self.last_loop_at = self._now(now)

    # -- verdicts -----------------------------------------------------------------------------
    def fps(self) -> float:
        """Processed frames per second (exponential moving average, 0.0 before two frames)."""
        return self._fps

    def check(self, now: float | None = None) -> Verdict:
        """Healthy: ready, with a fresh frame and fresh processing (``/health`` and ``/status``)."""
        if not self.ready:
            return Verdict(False, "starting")
        return self.freshness(now)

    def freshness(self, now: float | None = None) -> Verdict:
        """The frame and processing ages against their limits, whether READY was reached or not."""
        t = self._now(now)
        lim = self.limits
        if self.last_frame_at is None or t - self.last_frame_at > lim.max_frame_age_s:
            age = "none yet" if self.last_frame_at is None else f"{t - self.last_frame_at:.1f} s old"
            return Verdict(False, f"no fresh frame (newest {age}, limit {lim.max_frame_age_s:g} s)")
        if self.last_processed_at is None or t - self.last_processed_at > lim.max_processing_age_s:
            return Verdict(False, f"processing stalled (limit {lim.max_processing_age_s:g} s)")
        return Verdict(True)

    def is_alive(self, now: float | None = None) -> tuple[bool, str]:
        """``check`` as a plain (alive, reason) pair."""
        verdict = self.check(now)
        return verdict.alive, verdict.reason

    def watchdog_check(self, now: float | None = None) -> Verdict:
        """May ``WATCHDOG=1`` be sent? Healthy, or (with a ``source_excuse``) the loop is alive and the
        missing source is being handled. Without an excuse this is exactly ``check``."""
        t = self._now(now)
        verdict = self.check(t)
        if verdict.alive or not self.ready or self._source_excuse is None:
            return verdict
        excuse = self._source_excuse()
        loop_fresh = self.last_loop_at is not None and t - self.last_loop_at <= self.limits.max_processing_age_s
        if excuse and loop_fresh:
            return Verdict(True, excuse)
        return verdict


class WatchdogFeeder:
    """Sends ``WATCHDOG=1`` every ``period`` seconds while ``liveness.watchdog_check`` passes.

    While it does not pass, nothing is sent (systemd restarts the service after its
    ``WatchdogSec``); the verdict is re-checked every 0.1 s so the watchdog resumes at once.
    A pause and a resume are each logged once.
    """

    RECHECK_S = 0.1

    def __init__(self, liveness: Liveness, send: Callable[[], object], period: float | None) -> None:
        self.liveness = liveness
        self._send = send
        self.period = period
        self.next_due = 0.0
        self.paused = False
        self.sent = 0

    def tick(self, now: float) -> bool:
        """Call from the main loop; returns True when WATCHDOG=1 was sent now."""
        if not self.liveness.ready or not self.period or now < self.next_due:
            return False
        verdict = self.liveness.watchdog_check(now)
        if verdict.alive:
            self._send()
            self.sent += 1
            if self.paused:
                log.info("watchdog resumed: frames and processing are fresh again")
                self.paused = False
            self.next_due = now + self.period
            return True
        if not self.paused:
            log.warning("watchdog paused: %s", verdict.reason)
            self.paused = True
        self.next_due = now + min(self.period, self.RECHECK_S)
        return False
