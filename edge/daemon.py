"""The screening station: camera -> face -> quality -> crops -> engine -> decision -> result line.

Two layers, so that the daemon, the benchmark and the demo run the very same code:

``ScreeningPipeline``
    Everything that happens to one frame, with no threads and no service
    plumbing: detector -> subject choice -> alignment + quality gates ->
    ``SessionTracker`` -> (when a session has N good crops) one engine batch ->
    mean probabilities -> ``decide`` with the bundle's thresholds -> a result
    record handed to a callback. Each stage reports its duration to a callback
    (Prometheus histograms in the daemon, plain lists in ``facediag bench``).

``Station``
    The service around it: the capture supervisor and its latest-frame box, the
    engine chosen by ``edge.engine.select``, the results file, the local API,
    Prometheus metrics and the systemd protocol. ``READY=1`` is sent only after
    the engine is loaded and a warm-up inference returned probabilities *and* the
    source delivered a first frame; ``WATCHDOG=1`` (every half watchdog interval)
    only while the newest frame and the last processed frame are both fresh, so
    a dead camera or a wedged loop lets systemd restart the service; ``STATUS=``
    shows source state, backend and fps. SIGTERM/SIGINT: ``STOPPING=1``, capture
    and API stopped, results file closed, exit 0. A result line is written with a
    single write + fsync from the processing thread, and a signal handler only
    sets a flag, so a stop never leaves half a line.

Privacy: frames and crops live in memory only. A session's crops are dropped as
soon as it is decided. Nothing image-like is written unless
``results.debug_capture_dir`` is set by an operator.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import StationConfig
from edge.errors import ModelFileError
from edge.face.contract import crops_to_input
from edge.face.pipeline import FaceFrontEnd
from edge.face.quality import assess
from edge.face.subject import choose_subject
from edge.screening.decision import RETAKE, Decision, decide
from edge.screening.session import Session, SessionConfig, SessionTracker

log = logging.getLogger(__name__)

NOTICE = (
    "screening aid, not a diagnosis: 'refer' means offer a consultation with a clinician; "
    "'no_finding' does not rule out any condition"
)
RESULT_SCHEMA = 1
STAGES = ("capture", "detect", "align", "infer", "decide")


StageSink = Callable[[str, float], None]
ResultSink = Callable[[dict], None]


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bundle_identity(bundle: Any, precision: str) -> dict[str, str]:
    """Which model made a result: bundle.json's self-hash and the sha256 of the model file in use."""
    try:
        doc = json.loads((Path(bundle.path) / "bundle.json").read_text(encoding="utf-8"))
        bundle_id = str(doc.get("bundle_sha256", ""))
    except (OSError, ValueError):
        bundle_id = ""
    entry = bundle.precisions.get(precision) or bundle.precisions["fp32"]
    return {"bundle_id": bundle_id, "model_sha256": bundle.files.get(entry.file, "")}


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), for "READY n s after start"; None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def make_front_end(cfg: StationConfig, contract: Any) -> FaceFrontEnd:
    """The station's face front-end from ``[detector]`` and ``[quality]``."""
    from edge.face.detector import make_detector

    det = cfg.detector
    detector = make_detector(det.name, det.model_path, det.score_threshold)
    # Frames are detected at up to 640 px on their longer side, and smaller still where the
    # min_face_px gate allows it (FaceFrontEnd.shrink_to_gate); alignment uses full resolution.
    return FaceFrontEnd(detector, contract, cfg.quality.to_gates(), max_detect_side=640, shrink_to_gate=True)


def warm_up(engine: Any, contract: Any, batch: int, num_classes: int) -> float:
    """One inference at the batch size sessions use; ModelFileError unless it gives probabilities.

    Returns its duration in seconds (the first run of a runtime is the slow one).
    """
    x = np.full((batch, 3, contract.height, contract.width), 127.5, dtype=np.float32)
    t0 = time.perf_counter()
    probs = np.asarray(engine.infer(x))
    took = time.perf_counter() - t0
    if probs.shape != (batch, num_classes) or not np.isfinite(probs).all():
        raise ModelFileError(
            f"warm-up inference gave shape {probs.shape} (finite: {bool(np.isfinite(probs).all())}), expected "
            f"({batch}, {num_classes}) probabilities; the engine does not run this bundle's model: rebuild or re-export it"
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2):
        raise ModelFileError("warm-up inference rows do not sum to 1: the model does not output probabilities; re-export it")
    return took


@dataclass
class PipelineCounters:
    frames: int = 0
    faces: int = 0
    good_frames: int = 0
    inferences: int = 0
    results: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)


class ScreeningPipeline:
    """One frame at a time through the whole screening path (see the module docstring).

    ``on_result(record)`` receives each finished session as a plain-JSON dict;
    ``on_stage(stage, seconds)`` each stage duration; ``on_rejection(reason_key)``
    each failing quality gate. ``wall_of`` converts the monotonic clock used for
    sessions into wall-clock seconds for the record's timestamps.
    """

    def __init__(
        self,
        front_end: FaceFrontEnd,
        engine: Any,
        bundle: Any,
        session_config: SessionConfig,
        *,
        precision: str,
        on_result: ResultSink,
        on_stage: StageSink | None = None,
        on_rejection: Callable[[str], None] | None = None,
        debug_capture_dir: str | Path | None = None,
        wall_of: Callable[[float], float] | None = None,
        notice: str = NOTICE,
    ) -> None:
        self.notice = notice
        self.front_end = front_end
        self.engine = engine
        self.bundle = bundle
        self.contract = bundle.contract
        self.classes = list(bundle.classes)
        self.session_config = session_config
        self.tracker = SessionTracker(session_config)
        self.precision = precision
        self.on_result = on_result
        self.on_stage = on_stage or (lambda stage, seconds: None)
        self.on_rejection = on_rejection
        self.debug_dir = Path(debug_capture_dir) if debug_capture_dir else None
        offset = time.time() - time.monotonic()
        self.wall_of = wall_of or (lambda mono: mono + offset)
        self.identity = bundle_identity(bundle, precision)
        self.counters = PipelineCounters()
        self.last_result: dict | None = None
        self._frame_shape: tuple[int, ...] | None = None

    # -- one frame ----------------------------------------------------------------------------
    def process(self, image: np.ndarray, now: float) -> None:
        """Run one BGR frame through the pipeline; ``now`` is time.monotonic() of processing."""
        perf = time.perf_counter
        fe = self.front_end
        t0 = perf()
        faces = fe.detect(image)
        if image.shape != self._frame_shape:
            self._frame_shape = image.shape
            size = fe.detect_size
            log.info("frames %dx%d: detecting at %s", image.shape[1], image.shape[0],
                     "full size" if size is None else f"{size[0]}x{size[1]}")
        subject = choose_subject(faces, image.shape) if faces else None
        t1 = perf()
        self.on_stage("detect", t1 - t0)
        crop = None
        reasons: list[str] = []
        if subject is not None:
            crop = fe.align(image, subject)
            reasons = assess(subject, crop, fe.gates).reasons
            self.on_stage("align", perf() - t1)
            self.counters.faces += 1
            if reasons:
                for r in reasons:
                    key = r.split(":", 1)[0]
                    self.counters.rejections[key] = self.counters.rejections.get(key, 0) + 1
                    if self.on_rejection is not None:
                        self.on_rejection(key)
            else:
                self.counters.good_frames += 1
        self.counters.frames += 1
        outcome = self.tracker.step(now, subject, crop, reasons)
        for ended in outcome.ended:
            self._emit(ended)
        if outcome.ready is not None:
            self._decide(outcome.ready, now)

    def _decide(self, session: Session, now: float) -> None:
        perf = time.perf_counter
        crops = session.crops[-self.session_config.good_frames:]
        t0 = perf()
        batch = crops_to_input(crops, self.contract)
        probs = np.asarray(self.engine.infer(batch), dtype=np.float64)
        t1 = perf()
        self.on_stage("infer", t1 - t0)
        self.counters.inferences += 1
        mean = probs.mean(axis=0)
        decision = decide(mean, self.classes, self.bundle.healthy_class, self.bundle.thresholds,
                          min_confidence=self.session_config.min_confidence)
        if self.debug_dir is not None:
            self._write_debug(session, crops)
        self.tracker.conclude(session, decision, now)
        self.on_stage("decide", perf() - t1)
        self._emit(session, frames_used=len(crops))

    def _write_debug(self, session: Session, crops: list[np.ndarray]) -> None:
        import cv2

        try:
            self.debug_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # type: ignore[union-attr]
            for i, crop in enumerate(crops):
                cv2.imwrite(str(self.debug_dir / f"{session.id}_{i:02d}.png"), crop)  # type: ignore[operator]
        except OSError as exc:
            log.warning("debug capture to %s failed: %s", self.debug_dir, exc)

    def finish(self, now: float, why: str = "the source ended") -> None:
        """End an undecided session (the source ended): it is reported as a retake."""
        s = self.tracker.current
        if s is not None and s.decision is None and s.frames > 0:
            s.decision = Decision(RETAKE, reason=f"{why} before enough good frames: {s.good}/{self.session_config.good_frames}")
            s.decided_at = now
            s.crops = s.crops[:0]
            self._emit(s)
        self.tracker.current = None

    def _emit(self, session: Session, frames_used: int = 0) -> None:
        d = session.decision
        assert d is not None
        record: dict[str, Any] = {
            "record": "screening_result",
            "schema": RESULT_SCHEMA,
            "session_id": session.id,
            "started_at": _iso(self.wall_of(session.started_at)),
            "decided_at": _iso(self.wall_of(session.decided_at if session.decided_at is not None else session.last_seen)),
            "decision": d.kind,
            "condition": d.condition,
            "probability": None if d.probability is None else round(float(d.probability), 6),
            "probabilities": {k: round(float(v), 6) for k, v in d.probabilities.items()},
            "reason": d.reason,
            "frames_used": int(frames_used),
            "quality": session.quality_summary(),
            "bundle_id": self.identity["bundle_id"],
            "model_sha256": self.identity["model_sha256"],
            "precision": self.precision,
            "backend": getattr(self.engine, "backend", "?"),
            "notice": self.notice,
        }
        self.counters.results += 1
        self.counters.decisions[d.kind] = self.counters.decisions.get(d.kind, 0) + 1
        self.last_result = record
        self.on_result(record)


# ============================================================================ the service


class Station:
    """The daemon: wires capture, pipeline, results, API, metrics and sd_notify (see module docstring).

    ``on_result`` is called after each record is on disk (the demo prints them);
    ``on_stage`` receives stage timings in addition to the Prometheus histograms.
    ``env`` replaces os.environ for the systemd variables (tests).
    """

    def __init__(
        self,
        cfg: StationConfig,
        *,
        on_result: ResultSink | None = None,
        on_stage: StageSink | None = None,
        env: dict[str, str] | None = None,
        install_signal_handlers: bool = True,
        notice: str = NOTICE,
    ) -> None:
        from edge.service.metrics import StationMetrics
        from edge.service.sdnotify import Notifier

        self.cfg = cfg
        self.notice = notice
        self.created = time.monotonic()
        self.notifier = Notifier(env)
        self.metrics = StationMetrics()
        # one labelled child per stage, looked up once (not per frame)
        self._stage_histograms = {st: self.metrics.stage_latency.labels(stage=st) for st in STAGES}
        self._extra_result_sink = on_result
        self._extra_stage_sink = on_stage
        self._install_signals = install_signal_handlers
        self._stop = threading.Event()
        self.ready_after_s: float | None = None
        self.ready_since_process_start_s: float | None = None
        self.exit_reason = ""
        self.bundle: Any = None
        self.engine: Any = None
        self.plan: Any = None
        self.pipeline: ScreeningPipeline | None = None
        self.supervisor: Any = None
        self.box: Any = None
        self.results: Any = None
        self.api: Any = None
        self._ready = False
        self._fps = 0.0
        self._last_frame_at: float | None = None
        self._last_processed_at: float | None = None
        self._prev_processed_at: float | None = None
        self._watchdog_paused_logged = False
        self._last_status = ""
        self._last_state = ""
        self.warmup_s: float | None = None
        self._shut_down = False
        self.frame_errors = 0

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first frame: API token, bundle, detector, engine + warm-up, results, API, capture.

        Raises ConfigError for configuration problems (exit 78) and other FacediagErrors
        for broken bundles or model files.
        """
        cfg = self.cfg
        from edge.bundle import load_bundle
        from edge.capture import CaptureSupervisor, LatestFrame, make_source
        from edge.capture.supervisor import BackoffPolicy
        from edge.engine.select import select_engine
        from edge.results import ResultsWriter

        token = None
        if cfg.api.enabled:
            from edge.service.api import load_token

            token = load_token(cfg.api.token_file)  # a config error: fail before anything heavy
        source = make_source(cfg.source.uri, loop=cfg.source.loop, fps=cfg.source.fps)
        self.notifier.status("loading the model bundle")
        self.bundle = load_bundle(cfg.engine.bundle)
        front_end = make_front_end(cfg, self.bundle.contract)
        self.engine, self.plan = select_engine(
            self.bundle, cfg.engine.backend, cfg.engine.precision, threads=cfg.engine.threads,
            providers=cfg.engine.providers,
        )
        self.warmup_s = warm_up(self.engine, self.bundle.contract, cfg.screening.good_frames, self.bundle.num_classes)
        self.metrics.set_engine(self.engine.backend, self.plan.precision)
        if cfg.results.debug_capture_dir:
            log.warning("results.debug_capture_dir is set: aligned face crops (photos of people) will be written "
                        "to %s; switch it off when the debugging is done", cfg.results.debug_capture_dir)
        self.results = ResultsWriter(cfg.results.path)
        self.pipeline = ScreeningPipeline(
            front_end, self.engine, self.bundle, cfg.screening.to_session_config(),
            precision=self.plan.precision, on_result=self._on_result, on_stage=self._on_stage,
            on_rejection=lambda key: self.metrics.quality_rejections.labels(reason=key).inc(),
            debug_capture_dir=cfg.results.debug_capture_dir, notice=self.notice,
        )
        if cfg.api.enabled:
            from edge.service.api import ApiHandlers, ApiServer

            handlers = ApiHandlers(health=self.health, status=self.status, latest_results=self.latest_results,
                                   metrics=self.metrics.render)
            self.api = ApiServer(handlers, token or "", bind=cfg.api.bind, port=cfg.api.port,
                                 unix_socket=cfg.api.unix_socket, allow_non_loopback=cfg.api.allow_non_loopback).start()
        self.box = LatestFrame()
        self.supervisor = CaptureSupervisor(
            source, self.box, stall_s=cfg.source.stall_s, backoff=BackoffPolicy(max_s=cfg.source.reconnect_max_s),
        )
        self.metrics.bind_capture(self.supervisor.stats)
        self.supervisor.start()

    # -- callbacks -----------------------------------------------------------------------------
    def _on_stage(self, stage: str, seconds: float) -> None:
        self._stage_histograms[stage].observe(seconds)
        if stage == "infer":
            self.metrics.inferences.inc()
        if self._extra_stage_sink is not None:
            self._extra_stage_sink(stage, seconds)

    def _on_result(self, record: dict) -> None:
        self.results.write(record)
        kind = record["decision"]
        self.metrics.decisions.labels(kind=kind).inc()
        self.metrics.sessions.labels(outcome=kind).inc()
        log.info("result: %s%s (session %s)", kind, f" {record['condition']}" if record.get("condition") else "",
                 record["session_id"][:8])
        if self._extra_result_sink is not None:
            self._extra_result_sink(record)

    # -- API data ------------------------------------------------------------------------------
    def _fresh(self, now: float) -> tuple[bool, str]:
        svc = self.cfg.service
        if self._last_frame_at is None or now - self._last_frame_at > svc.max_frame_age_s:
            age = "none yet" if self._last_frame_at is None else f"{now - self._last_frame_at:.1f} s old"
            return False, f"no fresh frame (newest {age}, limit {svc.max_frame_age_s:g} s)"
        if self._last_processed_at is None or now - self._last_processed_at > svc.max_processing_age_s:
            return False, f"processing stalled (limit {svc.max_processing_age_s:g} s)"
        return True, ""

    def health(self) -> dict:
        if not self._ready:
            return {"status": "starting"}
        fresh, _ = self._fresh(time.monotonic())
        return {"status": "ok" if fresh else "degraded"}

    def status(self) -> dict:
        stats = self.supervisor.stats() if self.supervisor is not None else None
        now = time.monotonic()
        fresh, why = self._fresh(now)
        counters = self.pipeline.counters if self.pipeline is not None else PipelineCounters()
        ident = self.pipeline.identity if self.pipeline is not None else {}
        return {
            "ready": self._ready,
            "healthy": self._ready and fresh,
            "unhealthy_reason": why or None,
            "uptime_s": round(now - self.created, 1),
            "ready_after_s": None if self.ready_after_s is None else round(self.ready_after_s, 3),
            "ready_since_process_start_s": None if self.ready_since_process_start_s is None
            else round(self.ready_since_process_start_s, 3),
            "source": stats.to_dict() if stats is not None else None,
            "engine": {
                "backend": getattr(self.engine, "backend", None),
                "precision": getattr(self.plan, "precision", None),
                "file": getattr(getattr(self.plan, "path", None), "name", None),
                "reason": getattr(self.plan, "reason", None),
                **ident,
            },
            "fps": round(self._fps, 2),
            "frames_processed": counters.frames,
            "faces": counters.faces,
            "good_frames": counters.good_frames,
            "inferences": counters.inferences,
            "results": counters.results,
            "decisions": dict(counters.decisions),
            "quality_rejections": dict(counters.rejections),
            "frame_errors": self.frame_errors,
            "results_path": self.cfg.results.path,
            "config_path": self.cfg.config_path,
            "notice": self.notice,
        }

    def latest_results(self, n: int) -> list:
        from edge.results import latest_results

        return latest_results(self.cfg.results.path, n)

    # -- service loop --------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        """Signal handler: only sets a flag (the loop finishes its frame, then stops)."""
        if signum is not None:
            self.exit_reason = signal.Signals(signum).name
        self._stop.set()

    def _status_line(self) -> str:
        st = self.supervisor.stats() if self.supervisor is not None else None
        state = st.state if st is not None else "?"
        backend = f"{getattr(self.engine, 'backend', '?')} {getattr(self.plan, 'precision', '?')}"
        counters = self.pipeline.counters if self.pipeline is not None else PipelineCounters()
        extra = f", {st.reconnects} reconnects" if st is not None and st.reconnects else ""
        return f"source {state}{extra}; {backend}; {self._fps:.1f} fps; {counters.results} results"

    def _housekeeping(self, now: float, next_due: dict[str, float]) -> None:
        n = self.notifier
        period = n.watchdog_period
        if self._ready and period and now >= next_due["watchdog"]:
            fresh, why = self._fresh(now)
            if fresh:
                n.watchdog()
                if self._watchdog_paused_logged:
                    log.info("watchdog resumed: frames and processing are fresh again")
                    self._watchdog_paused_logged = False
                next_due["watchdog"] = now + period
            else:
                if not self._watchdog_paused_logged:
                    log.warning("watchdog paused: %s", why)
                    self._watchdog_paused_logged = True
                next_due["watchdog"] = now + min(period, 0.1)
        if now >= next_due["state"]:
            next_due["state"] = now + 0.25
            state = self.supervisor.state
            if state != self._last_state:
                self._last_state = state
                next_due["status"] = now  # refresh STATUS= on every source state change
        if now >= next_due["status"]:
            next_due["status"] = now + self.cfg.service.status_interval_s
            self.metrics.fps.set(self._fps)
            line = self._status_line()
            if line != self._last_status:
                self._last_status = line
                n.status(line)

    def _mark_processed(self, captured_at: float, now: float) -> None:
        self._last_frame_at = captured_at
        prev = self._last_processed_at
        self._last_processed_at = now
        if prev is not None:
            dt = now - prev
            if dt > 0:
                inst = 1.0 / dt
                self._fps = inst if self._fps == 0.0 else 0.9 * self._fps + 0.1 * inst
        self.metrics.frames_processed.inc()

    def run(self) -> int:
        """Set up, announce READY, process frames until SIGTERM/SIGINT or the end of a finite source."""
        if self._install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.setup()
            return self._loop()
        finally:
            self.shutdown()

    def _loop(self) -> int:
        from edge.capture.supervisor import ENDED
        from edge.results import ResultsError

        assert self.pipeline is not None and self.box is not None
        pipeline, box = self.pipeline, self.box
        self.notifier.status(f"waiting for the first frame from {self.supervisor.source.describe()}")
        next_due = {"watchdog": 0.0, "status": 0.0, "state": 0.0}
        monotonic = time.monotonic
        while not self._stop.is_set():
            frame = box.get(timeout=0.1)
            now = monotonic()
            if frame is None:
                if box.closed and self.supervisor.state == ENDED:
                    pipeline.finish(now)
                    self.exit_reason = self.exit_reason or "the source ended"
                    log.info("source ended: %d frames processed, %d results", pipeline.counters.frames,
                             pipeline.counters.results)
                    break
                self._housekeeping(now, next_due)
                continue
            if not self._ready:
                self._announce_ready(now)
            self._on_stage("capture", max(0.0, now - frame.captured_at))
            try:
                pipeline.process(frame.image, now)
            except ResultsError:
                raise  # results cannot be stored: stop with the message rather than screen for nobody
            except Exception:  # noqa: BLE001 - one bad frame must not kill the station
                self.frame_errors += 1
                if self.frame_errors == 1 or self.frame_errors % 100 == 0:
                    log.exception("processing a frame failed (%d so far); skipping it", self.frame_errors)
                # Not marked as processed: if every frame fails, the watchdog stops and systemd restarts us.
                self._housekeeping(now, next_due)
                continue
            self._mark_processed(frame.captured_at, monotonic())
            self._housekeeping(now, next_due)
        return 0

    def _announce_ready(self, now: float) -> None:
        self._ready = True
        self.ready_after_s = now - self.created
        self.ready_since_process_start_s = process_age_s()
        self.metrics.ready.set(1)
        self._last_frame_at = self._last_processed_at = now
        line = self._status_line()
        self.notifier.ready(status=line)
        since_start = self.ready_since_process_start_s
        log.info("READY %.2f s after the process started (%.2f s after setup began; engine %s %s, warm-up %.0f ms)",
                 since_start if since_start is not None else float("nan"), self.ready_after_s, self.engine.backend,
                 self.plan.precision, 1000 * (self.warmup_s or 0.0))

    def shutdown(self) -> None:
        """STOPPING=1, then capture, API, results and engine are closed (each at most once)."""
        if self._shut_down:
            return
        self._shut_down = True
        if self._ready or self.supervisor is not None:
            self.notifier.stopping(status=f"stopping ({self.exit_reason or 'requested'})")
        if self.supervisor is not None:
            self.supervisor.stop(timeout=3.0)
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.results is not None:
            self.results.close()
        if self.engine is not None:
            self.engine.close()
        self.notifier.close()


def run_station(config_path: str | Path) -> int:
    """``facediag run``: load and validate the config (ConfigError -> exit 78), then run the station."""
    from edge.config import load_config

    cfg = load_config(config_path)
    station = Station(cfg)
    return station.run()
