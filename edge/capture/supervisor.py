"""Keeps one frame source alive: a capture thread that reads, hands frames on, and reconnects.

Cameras get unplugged, RTSP servers restart, USB hubs brown out. The daemon must
not die or hang on any of that; it should say what is happening (``state``) and
come back by itself. So each source gets a thread that:

* opens the source (state ``connecting``), retrying with capped exponential
  backoff plus jitter on failure (state ``backoff``);
* reads frames into a ``LatestFrame`` box (state ``streaming``);
* treats "no frame for ``stall_s`` seconds" as a stall (state ``stalled``):
  closes the source and reopens it through the same backoff;
* stops at the end of a finite source (state ``ended``) or on ``stop()``
  (state ``stopped``).

The backoff schedule is a pure function of the attempt number and a
``random.Random``, so it is testable with a seed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from facediag.edge.capture.base import EndOfStream, FrameSource, SourceError
from facediag.edge.capture.latest_frame import LatestFrame

log = logging.getLogger(__name__)

CONNECTING = "connecting"
STREAMING = "streaming"
STALLED = "stalled"
BACKOFF = "backoff"
ENDED = "ended"
STOPPED = "stopped"
STATES = (CONNECTING, STREAMING, STALLED, BACKOFF, ENDED, STOPPED)


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before reconnect attempt n (n = 1, 2, ...): min(cap, initial * factor**(n-1)), then
    multiplied by a uniform factor in [1 - jitter, 1 + jitter] so that many stations that lost
    the same server do not hammer it in step."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        if self.jitter <= 0:
            return base
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


@dataclass(frozen=True)
class CaptureStats:
    """A consistent snapshot of a supervisor, for /status, STATUS= and metrics."""

    uri: str
    description: str
    state: str
    frames_captured: int
    frames_dropped: int
    reconnects: int
    open_failures: int
    stalls: int
    last_frame_at: float | None  # time.monotonic() of the newest frame
    last_frame_age_s: float | None
    last_error: str | None
    next_attempt_in_s: float | None  # while in backoff

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CaptureSupervisor:
    """Runs ``source`` in a daemon thread and publishes its frames into ``box``.

    ``reconnects`` counts successful reopenings after the first successful open;
    ``open_failures`` counts failed open attempts; ``frames_dropped`` comes from the box.
    """

    def __init__(
        self,
        source: FrameSource,
        box: LatestFrame | None = None,
        *,
        stall_s: float = 5.0,
        backoff: BackoffPolicy | None = None,
        rng: random.Random | None = None,
        idle_sleep_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if stall_s <= 0:
            raise ValueError("stall_s must be > 0")
        self.source = source
        self.box = box if box is not None else LatestFrame()
        self.stall_s = stall_s
        self.backoff = backoff or BackoffPolicy()
        self._rng = rng or random.Random()
        self._idle_sleep_s = idle_sleep_s
        self._clock = clock
        self._name = name or f"capture[{source.uri}]"
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._state = STOPPED
        self._frames = 0
        self._reconnects = 0
        self._open_failures = 0
        self._stalls = 0
        self._last_frame_at: float | None = None
        self._last_error: str | None = None
        self._next_attempt_at: float | None = None
        self._ever_opened = False
        self._opened_at: float | None = None

    # -- control ------------------------------------------------------------------------------
    def start(self) -> CaptureSupervisor:
        """Start the capture thread (returns self, so ``sup = CaptureSupervisor(...).start()``)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self._name} is already running")
        self._stop.clear()
        self._set_state(CONNECTING)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish, wait up to ``timeout`` s, close the source. True if it finished.

        A read blocked inside a backend returns within that source's read timeout;
        the thread is a daemon thread, so a wedged driver cannot keep the process alive.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        finished = thread is None or not thread.is_alive()
        if finished:
            self._close_source()
            if self._state != ENDED:
                self._set_state(STOPPED)
        else:
            log.warning("%s did not stop within %.1f s (blocked in the source's read)", self._name, timeout)
        return finished

    def wait_for(self, states: str | tuple[str, ...], timeout: float) -> bool:
        """Block until the state is one of ``states`` (as reported by ``state``); False on timeout."""
        wanted = (states,) if isinstance(states, str) else tuple(states)
        deadline = self._clock() + timeout
        with self._cond:
            while self.state not in wanted:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                # Stalls are detected by time passing, not by an event: poll at a modest rate.
                self._cond.wait(min(remaining, 0.05))
            return True

    # -- observation --------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Current state. ``streaming`` turns into ``stalled`` as soon as the newest frame is older
        than ``stall_s``, even while the thread is still blocked inside a read."""
        with self._cond:
            return self._reported_state()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> CaptureStats:
        with self._cond:
            age = self._frame_age()
            next_in = None
            if self._state == BACKOFF and self._next_attempt_at is not None:
                next_in = max(0.0, self._next_attempt_at - self._clock())
            state = self._reported_state()
            return CaptureStats(
                uri=self.source.uri,
                description=self.source.describe(),
                state=state,
                frames_captured=self._frames,
                frames_dropped=self.box.dropped,
                reconnects=self._reconnects,
                open_failures=self._open_failures,
                stalls=self._stalls,
                last_frame_at=self._last_frame_at,
                last_frame_age_s=age,
                last_error=self._last_error,
                next_attempt_in_s=next_in,
            )

    # -- the thread ---------------------------------------------------------------------------
    def _frame_age(self) -> float | None:
        return None if self._last_frame_at is None else self._clock() - self._last_frame_at

    def _silence(self) -> float | None:
        """Seconds since the newest frame or since the source was (re)opened, whichever is later."""
        marks = [t for t in (self._last_frame_at, self._opened_at) if t is not None]
        return self._clock() - max(marks) if marks else None

    def _reported_state(self) -> str:
        silence = self._silence()
        if self._state == STREAMING and silence is not None and silence > self.stall_s:
            return STALLED
        return self._state

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._cond:
            if state != self._state:
                log.info("%s: %s -> %s%s", self._name, self._state, state, f" ({error})" if error else "")
            self._state = state
            if error is not None:
                self._last_error = error
            self._cond.notify_all()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # noqa: BLE001 - a failing close must not kill the capture thread
            log.warning("%s: close failed: %s", self._name, exc)

    def _sleep_backoff(self, attempt: int) -> None:
        delay = self.backoff.delay(attempt, self._rng)
        with self._cond:
            self._next_attempt_at = self._clock() + delay
        self._set_state(BACKOFF)
        log.info("%s: retrying in %.2f s (attempt %d)", self._name, delay, attempt)
        self._stop.wait(delay)
        with self._cond:
            self._next_attempt_at = None

    def _open_with_backoff(self, attempt: int = 0) -> bool:
        """Open the source, retrying until it works or stop() is called. True when open.

        ``attempt`` > 0 waits that attempt's backoff first (used after a stall).
        """
        while not self._stop.is_set():
            if attempt:
                self._sleep_backoff(attempt)
                if self._stop.is_set():
                    return False
            self._set_state(CONNECTING)
            try:
                self.source.open()
            except SourceError as exc:
                attempt += 1
                with self._cond:
                    self._open_failures += 1
                self._set_state(CONNECTING, str(exc))
                log.warning("%s: open failed: %s", self._name, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected backend error is retried like any other
                attempt += 1
                with self._cond:
                    self._open_failures += 1
                self._set_state(CONNECTING, f"{type(exc).__name__}: {exc}")
                log.exception("%s: unexpected error opening the source", self._name)
                continue
            with self._cond:
                if self._ever_opened:
                    self._reconnects += 1
                self._ever_opened = True
                # A fresh connection gets a full stall window before it counts as stalled.
                self._opened_at = self._clock()
            return True
        return False

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                if not self._open_with_backoff(attempt):
                    break
                outcome = self._stream()
                self._close_source()
                if outcome == ENDED:
                    self._set_state(ENDED)
                    self.box.close()
                    return
                if self._stop.is_set():
                    break
                # STALLED or a read error: reopen through the backoff (first retry after initial_s).
                attempt = 1
        finally:
            if self._state != ENDED:
                self._set_state(STOPPED)

    def _stream(self) -> str:
        """Read until stop, end of stream, or a stall. Returns ENDED, STALLED or STOPPED."""
        self._set_state(STREAMING)
        while not self._stop.is_set():
            try:
                image = self.source.read()
            except EndOfStream as exc:
                log.info("%s: %s", self._name, exc)
                return ENDED
            except Exception as exc:  # noqa: BLE001 - a read error means reconnect, never a dead thread
                with self._cond:
                    self._stalls += 1
                self._set_state(STALLED, f"{type(exc).__name__}: {exc}")
                log.warning("%s: read failed: %s", self._name, exc)
                return STALLED
            now = self._clock()
            if image is not None:
                self.box.put(image, captured_at=now)
                with self._cond:
                    self._frames += 1
                    self._last_frame_at = now
                    if self._state != STREAMING:
                        self._state = STREAMING
                    self._cond.notify_all()
                continue
            with self._cond:
                since = self._silence() or 0.0
            if since > self.stall_s:
                with self._cond:
                    self._stalls += 1
                self._set_state(STALLED, f"no frame for {since:.1f} s")
                return STALLED
            self._stop.wait(self._idle_sleep_s)
        return STOPPED
