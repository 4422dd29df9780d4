"""The station's service loop: built parts in, frames processed until told to stop.

``Station(parts)`` receives everything from ``build_station`` and owns only the
loop and the systemd protocol. ``READY=1`` is sent after the engine is loaded and a
warm-up inference returned probabilities (the build) *and* the source delivered a
first frame or failed to open (a station booted without its camera is READY and shows
"camera missing" while capture retries with backoff); ``WATCHDOG=1`` (every half watchdog interval) only while the liveness
rule passes (``facediag.edge.station.liveness``), so a dead camera or a wedged loop
lets systemd restart the service; ``STATUS=`` shows source state, backend and fps.
SIGTERM/SIGINT: ``STOPPING=1``, capture and API stopped, results file closed, exit
0. A result line is written with a single write + fsync from the processing thread,
and a signal handler only sets a flag, so a stop never leaves half a line.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from facediag.edge.capture.supervisor import BACKOFF, ENDED, STALLED
from facediag.edge.results import ResultsError
from facediag.edge.service.sdnotify import Notifier
from facediag.edge.station.builder import StationParts, build_station
from facediag.edge.station.liveness import WatchdogFeeder

log = logging.getLogger(__name__)

STATE_POLL_S = 0.25  # how often the source state is looked at for STATUS= refreshes
FRAME_ERRORS_DEGRADED = 10  # frames in a row that failed: a "frame-errors" fault (degraded, see faults.py)


class StopRequest:
    """A stop flag set by SIGTERM/SIGINT (the handler only sets it) or by ``request()``."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def request(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            self.reason = signal.Signals(signum).name
        self.event.set()

    def install(self) -> bool:
        """Handle SIGTERM and SIGINT (main thread only); False where handlers cannot be installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)
        return True

    def is_set(self) -> bool:
        return self.event.is_set()


class Station:
    """The daemon's loop around built parts (see the module docstring).

    ``notifier`` speaks sd_notify (default: from ``env``, else ``os.environ``); ``stop`` is the
    stop flag (default: a new one, with signal handlers installed by ``run`` when
    ``install_signal_handlers``).
    """

    def __init__(self, parts: StationParts, *, notifier: Notifier | None = None, stop: StopRequest | None = None,
                 env: Mapping[str, str] | None = None, install_signal_handlers: bool = True) -> None:
        self.parts = parts
        self.notifier = notifier if notifier is not None else Notifier(env)
        self.stop = stop if stop is not None else StopRequest()
        self._install_signals = install_signal_handlers and stop is None
        self.watchdog = WatchdogFeeder(parts.liveness, self.notifier.watchdog, self.notifier.watchdog_period)
        self.exit_reason = ""
        self._last_status = ""
        self._last_state = ""
        self._next_status = 0.0
        self._next_state = 0.0
        self._shut_down = False
        self._frame_errors_in_a_row = 0
        self._hangup = threading.Event()

    # -- convenient views ---------------------------------------------------------------------
    @property
    def ready_after_s(self) -> float | None:
        ready_after: float | None = self.parts.status.ready_after_s
        return ready_after

    @property
    def frame_errors(self) -> int:
        errors: int = self.parts.status.frame_errors
        return errors

    # -- the loop -----------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: only sets a flag (the loop finishes its frame, then stops)."""
        self.stop.request(signum, _frame)

    def run(self) -> int:
        """Start API, add-ons and capture, announce READY on the first frame, process frames until
        SIGTERM/SIGINT or the end of a finite source; then shut down."""
        if self._install_signals:
            self.stop.install()
        self._install_hangup()
        try:
            self._start()
            return self._loop()
        finally:
            self.shutdown()

    def _install_hangup(self) -> None:
        """SIGHUP (logrotate's ``postrotate``): reopen the results file at its path (the handler only sets a flag)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda _s, _f: self._hangup.set())

    def _start(self) -> None:
        p = self.parts
        if p.api is not None:
            p.api.start()
        for add_on in p.add_ons:
            add_on.start()
        p.capture.supervisor.start()

    def _loop(self) -> int:
        p = self.parts
        pipeline, box, supervisor, liveness = p.pipeline, p.capture.frames, p.capture.supervisor, p.liveness
        stage = pipeline.on_stage
        self.notifier.status(f"waiting for the first frame from {supervisor.source.describe()}")
        monotonic = time.monotonic
        while not self.stop.is_set():
            frame = box.get(timeout=0.1)
            now = monotonic()
            liveness.loop_tick(now)
            if frame is None:
                if box.closed and supervisor.state == ENDED:
                    pipeline.finish(now)
                    self.exit_reason = self.exit_reason or "the source ended"
                    log.info("source ended: %d frames processed, %d results", pipeline.counters.frames,
                             pipeline.counters.results)
                    break
                if not liveness.ready and supervisor.state in (BACKOFF, STALLED):
                    # The model is loaded but the camera is missing: READY anyway (the kiosk shows "camera
                    # missing" while capture retries), so systemd does not restart-loop a station without camera.
                    log.warning("READY without a camera: %s is %s; capture keeps retrying",
                                supervisor.source.describe(), supervisor.state)
                    self._announce_ready(now)
                self._housekeeping(now)
                continue
            if not liveness.ready:
                self._announce_ready(now)
            stage("capture", max(0.0, now - frame.captured_at))
            try:
                pipeline.process(frame.image, now)
            except ResultsError:
                raise  # results cannot be stored: stop with the message rather than screen for nobody
            except Exception:  # noqa: BLE001 - one bad frame must not kill the station
                p.status.frame_errors += 1
                errors = p.status.frame_errors
                if errors == 1 or errors % 100 == 0:
                    log.exception("processing a frame failed (%d so far); skipping it", errors)
                self._frame_errors_in_a_row += 1
                if self._frame_errors_in_a_row == FRAME_ERRORS_DEGRADED:
                    p.status.faults.report("frame-errors", f"{self._frame_errors_in_a_row} frames in a row failed "
                                                           "to process (see the journal for the traceback)")
                # Not marked as processed (health says "processing stalled"); the watchdog stays fed while the
                # loop turns and the fault is reported, so systemd does not restart-loop on a deterministic error.
                self._housekeeping(now)
                continue
            if self._frame_errors_in_a_row:
                self._frame_errors_in_a_row = 0
                p.status.faults.clear("frame-errors", "a frame was processed")
            liveness.frame_processed(frame.captured_at, monotonic())
            p.metrics.frames_processed.inc()
            self._housekeeping(now)
        return 0

    def _housekeeping(self, now: float) -> None:
        self.watchdog.tick(now)
        if self._hangup.is_set():
            self._hangup.clear()
            self.parts.results.reopen("asked to reopen (SIGHUP)")
        self.parts.recorder.housekeeping(now)
        if now >= self._next_state:
            self._next_state = now + STATE_POLL_S
            state = self.parts.capture.supervisor.state
            if state != self._last_state:
                self._last_state = state
                self._next_status = now  # refresh STATUS= on every source state change
        if now >= self._next_status:
            self._next_status = now + self.parts.config.service.status_interval_s
            self.parts.metrics.fps.set(self.parts.liveness.fps())
            line = self.parts.status.line()
            if line != self._last_status:
                self._last_status = line
                self.notifier.status(line)

    def _announce_ready(self, now: float) -> None:
        p = self.parts
        p.status.mark_ready(now)
        p.metrics.ready.set(1)
        self.notifier.ready(status=p.status.line())
        since_start = p.status.ready_since_process_start_s
        log.info("READY %.2f s after the process started (%.2f s after setup began; engine %s %s, warm-up %.0f ms)",
                 since_start if since_start is not None else float("nan"), p.status.ready_after_s or 0.0,
                 p.engine.backend, p.plan.precision, 1000 * p.warmup_s)

    def shutdown(self) -> None:
        """STOPPING=1, then capture, API, add-ons, results and engine are closed (once)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.exit_reason = self.stop.reason or self.exit_reason
        self.notifier.stopping(status=f"stopping ({self.exit_reason or 'requested'})")
        self.parts.close()
        self.notifier.close()


def run_station(config_path: str | Path) -> int:
    """``facediag run``: load and validate the config (ConfigError -> exit 78), build the station
    (STATUS= while loading), then run it until SIGTERM/SIGINT."""
    from facediag.edge.config import load_config

    cfg = load_config(config_path)
    notifier = Notifier()
    stop = StopRequest()
    stop.install()  # before the (slow) build: a stop while loading ends the run cleanly after it
    try:
        from facediag.edge.uplink.addon import uplink_add_ons

        parts = build_station(cfg, on_progress=notifier.status, add_ons=uplink_add_ons(cfg))
    except BaseException:
        notifier.close()
        raise
    return Station(parts, notifier=notifier, stop=stop).run()
