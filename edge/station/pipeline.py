"""One frame through the screening path, with no threads and no service plumbing.

detector -> subject choice -> alignment + quality gates -> ``SessionTracker`` ->
(when a session has N good crops) one engine batch -> mean probabilities ->
``decide`` with the bundle's thresholds -> a ``ScreeningResult`` handed to a
callback. Each stage reports its duration to a callback (Prometheus histograms in
the daemon, plain lists in ``facediag bench``). The daemon, ``facediag bench`` and
``facediag demo`` run this very code.

Privacy: frames and crops live in memory only. A session's crops are dropped as
soon as it is decided. Nothing image-like is written unless
``results.debug_capture_dir`` is set by an operator.
"""

from __future__ import annotations

import json
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from facediag.edge.bundle import Bundle
from facediag.edge.config import StationConfig
from facediag.edge.engine.base import Engine
from facediag.edge.errors import ModelFileError
from facediag.edge.face.contract import PreprocessContract, crops_to_input
from facediag.edge.face.pipeline import FaceFrontEnd
from facediag.edge.face.quality import assess
from facediag.edge.face.subject import choose_subject
from facediag.edge.face.types import Face
from facediag.edge.results import encode_record
from facediag.edge.screening.decision import RETAKE, Decision, decide
from facediag.edge.screening.record import ScreeningResult
from facediag.edge.screening.session import Session, SessionConfig, SessionTracker
from facediag.edge.station.faults import StationFaults
from facediag.edge.uplink.topics import new_result_id

log = logging.getLogger(__name__)

NOTICE = (
    "screening aid, not a diagnosis: 'refer' means offer a consultation with a clinician; "
    "'no_finding' does not rule out any condition"
)
STAGES = ("capture", "detect", "align", "infer", "decide")
ENGINE_ERRORS_DEGRADED = 3  # sessions in a row whose inference raised: the station is degraded

StageSink = typing.Callable[[str, float], None]  # typing.Callable: evaluated at run time (3.8)


class FrameGate(Protocol):
    """Consulted by ``process`` on the processing thread: ``admit`` before a frame is looked at (False:
    skip it), ``observe`` after it went through (subject face or None, failing-gate reasons)."""

    def admit(self, pipeline: ScreeningPipeline, image: np.ndarray, now: float) -> bool: ...

    def observe(self, pipeline: ScreeningPipeline, subject: Face | None, reasons: list[str], now: float) -> None: ...
ResultSink = typing.Callable[[ScreeningResult], None]


def iso_utc(wall: float) -> str:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds and a "Z"."""
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a result: bundle.json's self-hash and the sha256 of the model file in use."""

    bundle_id: str
    model_sha256: str


def bundle_identity(bundle: Bundle, precision: str) -> ModelIdentity:
    try:
        doc = json.loads((Path(bundle.path) / "bundle.json").read_text(encoding="utf-8"))
        bundle_id = str(doc.get("bundle_sha256", ""))
    except (OSError, ValueError):
        bundle_id = ""
    entry = bundle.precisions.get(precision) or bundle.precisions["fp32"]
    return ModelIdentity(bundle_id, bundle.files.get(entry.file, ""))


def make_front_end(cfg: StationConfig, contract: PreprocessContract) -> FaceFrontEnd:
    """The station's face front-end from ``[detector]`` and ``[quality]``."""
    from facediag.edge.face.detector import make_detector

    det = cfg.detector
    detector = make_detector(det.name, det.model_path, det.score_threshold)
    # Frames are detected at up to 640 px on their longer side, and smaller still where the
    # min_face_px gate allows it (FaceFrontEnd.shrink_to_gate); alignment uses full resolution.
    return FaceFrontEnd(detector, contract, cfg.quality.to_gates(), max_detect_side=640, shrink_to_gate=True)


def check_detector(front_end: FaceFrontEnd, detector_name: str, model_path: str | None) -> None:
    """Run the detector once on a blank frame before READY: a model path pointing at the wrong model
    fails here as a ConfigError (exit 78), not on the first person after READY."""
    from facediag.edge.errors import ConfigError

    try:
        front_end.detect(np.zeros((480, 640, 3), np.uint8))
    except Exception as exc:  # noqa: BLE001 - cv2.error and friends, whatever the wrong model makes of it
        raise ConfigError(f"detector.model_path {model_path or '(built in)'} does not work as the {detector_name} "
                          f"detector: {type(exc).__name__}: {str(exc)[:300]}; point it at the right model") from None


def warm_up(engine: Engine, contract: PreprocessContract, batch: int, num_classes: int) -> float:
    """One inference at the batch size sessions use; ModelFileError unless it gives probabilities.

    Returns its duration in seconds (the first run of a runtime is the slow one).
    """
    x = np.full((batch, 3, contract.height, contract.width), 127.5, dtype=np.float32)
    t0 = time.perf_counter()
    try:
        probs = np.asarray(engine.infer(x))
    except Exception as exc:  # noqa: BLE001 - e.g. ONNX Runtime's INVALID_ARGUMENT on a wrong input shape
        raise ModelFileError(
            f"warm-up inference failed on input {tuple(x.shape)} (the bundle's preprocessing contract): "
            f"{type(exc).__name__}: {str(exc)[:400]}; the model does not match its bundle: re-export it"
        ) from None
    took = time.perf_counter() - t0
    if probs.shape != (batch, num_classes) or not np.isfinite(probs).all():
        raise ModelFileError(
            f"warm-up inference gave shape {probs.shape} (finite: {bool(np.isfinite(probs).all())}), expected "
            f"({batch}, {num_classes}) probabilities; the engine does not run this bundle's model: rebuild or re-export it"
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2):
        raise ModelFileError("warm-up inference rows do not sum to 1: the model does not output probabilities; re-export it")
    return took


def probability_problem(probs: np.ndarray, rows: int, num_classes: int) -> str | None:
    """Why ``probs`` is not a (rows, num_classes) matrix of probabilities, or None when it is.

    Finite, within [0, 1], each row summing to 1 (as the warm-up checks): what an FP16
    overflow (NaN/inf) or a wrong model would break.
    """
    if probs.shape != (rows, num_classes):
        return f"output shape {probs.shape}, expected ({rows}, {num_classes})"
    finite = np.isfinite(probs)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite value(s) (NaN/inf: e.g. an FP16 overflow)"
    if (probs < -1e-6).any() or (probs > 1 + 1e-6).any():
        return f"values outside [0, 1] (min {probs.min():.3g}, max {probs.max():.3g})"
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2):
        return "rows do not sum to 1 (not probabilities)"
    return None


@dataclass
class PipelineCounters:
    frames: int = 0
    faces: int = 0
    good_frames: int = 0
    inferences: int = 0
    engine_errors: int = 0
    invalid_outputs: int = 0
    debug_capture_errors: int = 0
    results: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)


def _ignore_stage(stage: str, seconds: float) -> None:
    return None


class ScreeningPipeline:
    """One frame at a time through the whole screening path (see the module docstring).

    ``on_result(result)`` receives each finished session; ``on_stage(stage, seconds)`` each
    stage duration; ``on_rejection(reason_key)`` each failing quality gate. ``wall_of``
    converts the monotonic clock used for sessions into wall-clock seconds for the
    record's timestamps. ``station_id`` is written into every result when given, with a fleet-unique ``result_id``.
    """

    def __init__(
        self,
        front_end: FaceFrontEnd,
        engine: Engine,
        bundle: Bundle,
        session_config: SessionConfig,
        *,
        precision: str,
        on_result: ResultSink,
        on_stage: StageSink | None = None,
        on_rejection: Callable[[str], None] | None = None,
        debug_capture_dir: str | Path | None = None,
        wall_of: Callable[[float], float] | None = None,
        notice: str = NOTICE,
        station_id: str | None = None,
        faults: StationFaults | None = None,
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
        self.station_id = station_id
        self.on_result = on_result
        self.on_stage: StageSink = on_stage or _ignore_stage
        self.on_rejection = on_rejection
        self.debug_dir = Path(debug_capture_dir) if debug_capture_dir else None
        offset = time.time() - time.monotonic()
        self.wall_of: Callable[[float], float] = wall_of or (lambda mono: mono + offset)
        self.identity = bundle_identity(bundle, precision)
        self.counters = PipelineCounters()
        self.faults = faults if faults is not None else StationFaults()
        # The kiosk (facediag.edge.kiosk): admits frames only after Start, follows progress; sets visit_id.
        self.gate: FrameGate | None = None
        self.visit_id: str | None = None  # written into each result while set (staff entered a visit id)
        self._engine_errors_in_a_row = 0
        self.last_result: ScreeningResult | None = None
        self._frame_shape: tuple[int, ...] | None = None

    # -- one frame ----------------------------------------------------------------------------
    def process(self, image: np.ndarray, now: float) -> None:
        """Run one BGR frame through the pipeline; ``now`` is time.monotonic() of processing."""
        gate = self.gate
        if gate is not None and not gate.admit(self, image, now):
            self.counters.frames += 1  # not armed (the kiosk waits for Start): no face is looked for
            return
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
        if gate is not None:
            gate.observe(self, subject, reasons, now)

    def _decide(self, session: Session, now: float) -> None:
        """Infer, decide, make the result durable (``on_result``), and only then conclude the session.

        An engine that raises or gives no valid probabilities ends the session as a retake whose
        reason says so (never a made-up decision), and reports a fault (see ``faults``).
        """
        perf = time.perf_counter
        crops = session.crops[-self.session_config.good_frames:]
        t0 = perf()
        batch = crops_to_input(crops, self.contract)
        try:
            probs = np.asarray(self.engine.infer(batch), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - reported as a fault and a truthful retake
            decision = self._engine_failed(exc)
        else:
            self.counters.inferences += 1
            decision = self._judge(probs, len(crops))
        t1 = perf()
        self.on_stage("infer", t1 - t0)
        session.decision, session.decided_at = decision, now
        try:
            self._emit(session, frames_used=len(crops))  # durable first ...
        except BaseException:
            session.decision = session.decided_at = None  # ... not concluded when it could not be stored
            raise
        self.tracker.conclude(session, decision, now)  # ... then concluded (crops dropped)
        self.on_stage("decide", perf() - t1)
        if self.debug_dir is not None:
            self._write_debug(self.debug_dir, session.id, crops)

    def _judge(self, probs: np.ndarray, rows: int) -> Decision:
        problem = probability_problem(probs, rows, len(self.classes))
        if problem is not None:
            self.counters.invalid_outputs += 1
            self.faults.report("engine-output", f"the model gave invalid probabilities: {problem}; "
                               f"{self.counters.invalid_outputs} session(s) could not be decided")
            return Decision(RETAKE, reason=f"no decision: the model gave invalid probabilities ({problem}); "
                                           "the station is degraded, see /status")
        self._engine_errors_in_a_row = 0
        self.faults.clear("engine-output", "the model gave valid probabilities")
        self.faults.clear("engine-error", "an inference succeeded")
        mean = probs.mean(axis=0)
        return decide(mean, self.classes, self.bundle.healthy_class, self.bundle.thresholds,
                      min_confidence=self.session_config.min_confidence)

    def _engine_failed(self, exc: Exception) -> Decision:
        self.counters.engine_errors += 1
        self._engine_errors_in_a_row += 1
        what = f"{type(exc).__name__}: {exc}"[:300]
        if self._engine_errors_in_a_row == 1:
            log.exception("inference failed (%d in a row)", self._engine_errors_in_a_row)
        if self._engine_errors_in_a_row >= ENGINE_ERRORS_DEGRADED:
            self.faults.report("engine-error", f"inference failed on {self._engine_errors_in_a_row} sessions in a "
                                               f"row; last: {what}")
        return Decision(RETAKE, reason=f"no decision: inference failed ({what})")

    def _write_debug(self, folder: Path, session_id: str, crops: list[np.ndarray]) -> None:
        """Operator debugging only; a failure is logged and counted, never touches the result."""
        import cv2

        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for i, crop in enumerate(crops):
                target = folder / f"{session_id}_{i:02d}.png"
                if not cv2.imwrite(str(target), crop):
                    raise OSError(f"cv2.imwrite could not write {target}")
        except Exception as exc:  # noqa: BLE001 - cv2.error, OSError: debugging must not cost a result
            self.counters.debug_capture_errors += 1
            n = self.counters.debug_capture_errors
            if n == 1 or n % 100 == 0:
                log.warning("debug capture to %s failed (%d so far): %s", folder, n, exc)

    def finish(self, now: float, why: str = "the source ended") -> None:
        """End an undecided session (the source ended): it is reported as a retake."""
        s = self.tracker.current
        if s is not None and s.decision is None and s.frames > 0:
            s.decision = Decision(RETAKE, reason=f"{why} before enough good frames: {s.good}/{self.session_config.good_frames}")
            s.decided_at = now
            s.crops = s.crops[:0]
            self._emit(s)
        self.tracker.current = None

    def result_of(self, session: Session, frames_used: int = 0) -> ScreeningResult:
        """The record of a decided session (probabilities rounded to 6 decimals, times in UTC)."""
        d = session.decision
        if d is None:
            raise ValueError(f"session {session.id} has no decision yet")
        decided = session.decided_at if session.decided_at is not None else session.last_seen
        return ScreeningResult(
            session_id=session.id,
            started_at=iso_utc(self.wall_of(session.started_at)),
            decided_at=iso_utc(self.wall_of(decided)),
            decision=d.kind,
            condition=d.condition,
            probability=None if d.probability is None else round(float(d.probability), 6),
            probabilities={k: round(float(v), 6) for k, v in d.probabilities.items()},
            reason=d.reason,
            frames_used=int(frames_used),
            quality=session.quality_summary(),
            bundle_id=self.identity.bundle_id,
            model_sha256=self.identity.model_sha256,
            precision=self.precision,
            backend=getattr(self.engine, "backend", "?"),
            notice=self.notice,
            station_id=self.station_id,
            visit_id=self.visit_id,
            result_id=new_result_id(self.station_id) if self.station_id else None,
        )

    def _emit(self, session: Session, frames_used: int = 0) -> None:
        result = self.result_of(session, frames_used)
        try:
            encode_record(result)
        except ValueError as exc:  # a record that cannot be stored: store a truthful retake instead
            self.faults.report("result-record", f"a result could not be encoded: {exc}")
            session.decision = Decision(RETAKE, reason=f"no decision: the result could not be recorded ({exc})")
            result = self.result_of(session, frames_used)
        self.on_result(result)  # durable (or held on a full disk) before it counts; raises when it cannot be
        self.counters.results += 1
        self.counters.decisions[result.decision] = self.counters.decisions.get(result.decision, 0) + 1
        self.last_result = result
