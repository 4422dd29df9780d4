"""The station built in one step: ``build_station(cfg)`` returns its typed parts, or fails cleanly.

Order (each step fails before anything heavier is touched):

1. the API token (a config error must not wait for a model to load);
2. the frame source object (parsing its URI; nothing is opened yet);
3. the bundle (files re-hashed), then its trust check (signature, ``[trust]``);
4. the face front-end (detector) and the engine chosen by ``select_engine``;
5. one warm-up inference at the session batch size (ModelFileError unless it gives
   probabilities);
6. the results file (opened for appending), the pipeline with its result and stage
   recorders, the API server (bound, not yet serving), the capture supervisor (not
   yet started).

Nothing is started: ``Station.run`` starts the API, the add-ons and the capture
thread. When a step fails, whatever was opened before it is closed again and the
error propagates (ConfigError -> exit 78 under ``facediag run``).

The daemon, ``facediag bench`` and ``facediag demo`` all build their station here.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from facediag.edge.bundle import Bundle, load_bundle
from facediag.edge.capture import CaptureSupervisor, FrameSource, LatestFrame, make_source
from facediag.edge.capture.supervisor import BackoffPolicy
from facediag.edge.config import StationConfig
from facediag.edge.engine.base import Engine
from facediag.edge.engine.select import EnginePlan, select_engine
from facediag.edge.fallback import fallback_reason
from facediag.edge.kiosk import KioskController, make_kiosk
from facediag.edge.results import ResultsWriter
from facediag.edge.results_rotation import open_results_writer
from facediag.edge.service.api import ApiHandlers, ApiServer
from facediag.edge.service.metrics import StationMetrics
from facediag.edge.signing import SignatureCheck, check_bundle_trust
from facediag.edge.station.faults import StationFaults
from facediag.edge.station.holding import PendingFile
from facediag.edge.station.liveness import Liveness, LivenessLimits
from facediag.edge.station.pipeline import (
    NOTICE,
    ResultSink,
    ScreeningPipeline,
    StageSink,
    check_detector,
    make_front_end,
    warm_up,
)
from facediag.edge.station.sinks import ResultRecorder, StageRecorder, StationAddOn
from facediag.edge.station.status import StationStatus

log = logging.getLogger(__name__)

Progress = typing.Callable[[str], object]  # typing.Callable: evaluated at run time (3.8)


@dataclass(frozen=True)
class CaptureParts:
    """The frame source, the latest-frame box it fills, and the supervisor thread (not started)."""

    source: FrameSource
    frames: LatestFrame
    supervisor: CaptureSupervisor


@dataclass(frozen=True)
class StationParts:
    """Everything a running station is made of, built and checked; nothing started yet."""

    config: StationConfig
    bundle: Bundle
    signature: SignatureCheck  # who signed the bundle, or that unsigned bundles are allowed here
    engine: Engine
    plan: EnginePlan
    warmup_s: float
    pipeline: ScreeningPipeline
    capture: CaptureParts
    results: ResultsWriter
    recorder: ResultRecorder
    metrics: StationMetrics
    liveness: Liveness
    status: StationStatus
    api: ApiServer | None
    add_ons: tuple[StationAddOn, ...] = ()
    notice: str = NOTICE
    build_started_at: float = field(default_factory=time.monotonic)  # time.monotonic() when the build began

    def close(self) -> None:
        """Stop capture, API and add-ons; close the results file and the engine (each step guarded)."""
        steps: list[tuple[str, Callable[[], object]]] = [("capture", lambda: self.capture.supervisor.stop(timeout=3.0))]
        if self.api is not None:
            steps.append(("api", self.api.stop))
        steps += [(f"add-on {a.name}", a.stop) for a in self.add_ons]
        steps += [("held results", self.recorder.close), ("results", self.results.close),
                  ("engine", self.engine.close)]
        for what, step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - closing the rest matters more than one failure
                log.exception("closing the station's %s failed", what)


def _trust_check(cfg: StationConfig) -> SignatureCheck:
    base_dir = Path(cfg.config_path).resolve().parent if cfg.config_path else None
    return check_bundle_trust(cfg.engine.bundle, cfg.trust, base_dir)  # BundleTrustError: exit 78


def _api(cfg: StationConfig, token: str | None, status: StationStatus, metrics: StationMetrics,
         kiosk: KioskController | None = None, bundle: Bundle | None = None) -> ApiServer | None:
    """The API server, bound (a port in use is a ConfigError now, not after READY) but not serving; with the
    kiosk and staff pages when ``kiosk`` is given (facediag.edge.kiosk)."""
    if not cfg.api.enabled:
        return None
    handlers = ApiHandlers(health=status.health, status=status.status, latest_results=status.latest_results,
                           metrics=metrics.render)
    extension = None
    if kiosk is not None and bundle is not None:
        from facediag.edge.kiosk.web import KioskWeb

        extension = KioskWeb(kiosk, lambda: handlers, token or "", str(bundle.path), list(bundle.classes),
                             station_id=cfg.station.id)
    return ApiServer(handlers, token or "", bind=cfg.api.bind, port=cfg.api.port, unix_socket=cfg.api.unix_socket,
                     allow_non_loopback=cfg.api.allow_non_loopback, extension=extension)


def _metrics(cfg: StationConfig, engine: Engine, plan: EnginePlan,
             add_ons: Sequence[StationAddOn]) -> tuple[StationMetrics, str | None]:
    """The station's metrics (with add-ons' gauges and the engine in use), and why it runs degraded, if it does."""
    metrics = StationMetrics()
    for add_on in add_ons:  # an add-on may bring gauges of its own (the uplink's backlog)
        bind_metrics = getattr(add_on, "bind_metrics", None)
        if bind_metrics is not None:
            bind_metrics(metrics.registry)
    metrics.set_engine(engine.backend, plan.precision)
    degraded_reason = fallback_reason(cfg.engine.backend, cfg.engine.precision, plan)
    metrics.set_degraded(degraded_reason)
    if degraded_reason:
        log.error("DEGRADED: %s", degraded_reason)  # priority err in the journal: `journalctl -p err`
    return metrics, degraded_reason


def check_debug_capture_dir(folder: str) -> None:
    """``[results] debug_capture_dir`` must be (or become) a folder this user can write: ConfigError otherwise."""
    import os

    from facediag.edge.errors import ConfigError

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"results.debug_capture_dir = {folder!r} cannot be created: {exc}; "
                          "fix the path or remove the key (debug capture is off by default)") from exc
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"results.debug_capture_dir = {folder!r} is not a folder this user can write; "
                          "fix the path or remove the key (debug capture is off by default)")


def watchdog_excuse(supervisor: CaptureSupervisor, faults: StationFaults) -> Callable[[], str | None]:
    """Why the watchdog may be fed although frames are not fresh: the capture supervisor is working
    through its reconnect/backoff (an unplugged camera), or a reported fault already makes the station
    degraded. The main loop must still be turning (``Liveness.watchdog_check``). A read that hangs
    inside a camera driver is *not* excused (the supervisor reports ``stalled``, not ``backoff``):
    systemd restarts the daemon then."""
    from facediag.edge.capture.supervisor import BACKOFF, CONNECTING

    def excuse() -> str | None:
        state = supervisor.state
        if state in (BACKOFF, CONNECTING):
            return f"the capture supervisor is reconnecting (source {state})"
        summary = faults.summary()
        return f"degraded: {summary}" if summary else None

    return excuse


def _results(
    cfg: StationConfig, metrics: StationMetrics, degraded_reason: str | None, sinks: list[ResultSink],
    undo: ExitStack,
) -> tuple[ResultsWriter, StationFaults, ResultRecorder]:
    """The results file (rotating), the fault board and the recorder that writes each result durably first."""
    if cfg.results.debug_capture_dir:
        check_debug_capture_dir(cfg.results.debug_capture_dir)
        log.warning("results.debug_capture_dir is set: aligned face crops (photos of people) will be written "
                    "to %s; switch it off when the debugging is done", cfg.results.debug_capture_dir)
    writer = open_results_writer(cfg.results)  # rotation and retention by [results] (results_rotation.py)
    undo.callback(writer.close)
    faults = StationFaults(metrics.registry,
                           on_change=lambda any_fault: metrics.degraded.set(1 if any_fault or degraded_reason else 0))
    pending_file: PendingFile | None = None
    try:
        pending_file = PendingFile(writer.path)  # results held on a full disk (holding.py)
        undo.callback(pending_file.close)
    except OSError as exc:
        log.error("cannot create %s.pending (%s): on a full disk results would be held in memory only",
                  writer.path, exc)
    recorder = ResultRecorder(writer, sinks, metrics, faults=faults, pending_file=pending_file,
                              min_free_bytes=int(cfg.results.min_free_mb * 2**20))
    recorder.recover()  # what a previous run held goes into the file before anything new
    return writer, faults, recorder


def build_station(
    cfg: StationConfig,
    *,
    result_sinks: Sequence[ResultSink] = (),
    stage_sinks: Sequence[StageSink] = (),
    add_ons: Sequence[StationAddOn] = (),
    notice: str = NOTICE,
    on_progress: Progress | None = None,
    wall_of: Callable[[float], float] | None = None,
) -> StationParts:
    """Build every part of the station from ``cfg`` (see the module docstring for the order).

    ``result_sinks`` receive each result after it is on disk, then each add-on's ``on_result``;
    ``stage_sinks`` each stage timing after the metrics; ``on_progress`` a line for sd_notify
    STATUS= while loading; ``wall_of`` maps the pipeline's clock to wall-clock seconds
    (``facediag bench`` replays files on their own clock).
    """
    started = time.monotonic()
    token = None
    if cfg.api.enabled:
        from facediag.edge.service.api import load_token

        token = load_token(cfg.api.token_file)  # a config error: fail before anything heavy
    source = make_source(cfg.source.uri, loop=cfg.source.loop, fps=cfg.source.fps)
    if on_progress is not None:
        on_progress("loading the model bundle")
    bundle = load_bundle(cfg.engine.bundle)
    signature = _trust_check(cfg)
    front_end = make_front_end(cfg, bundle.contract)
    check_detector(front_end, cfg.detector.name, cfg.detector.model_path)  # the wrong model: exit 78 before READY
    with ExitStack() as undo:
        engine, plan = select_engine(bundle, cfg.engine.backend, cfg.engine.precision, threads=cfg.engine.threads,
                                     providers=cfg.engine.providers)
        undo.callback(engine.close)
        warmup_s = warm_up(engine, bundle.contract, cfg.screening.good_frames, bundle.num_classes)
        kiosk = make_kiosk(cfg)  # the pages' controller: consent gate, progress, outcome (None without the API)
        if kiosk is not None:
            add_ons = (*add_ons, kiosk)
        metrics, degraded_reason = _metrics(cfg, engine, plan, add_ons)
        writer, faults, recorder = _results(cfg, metrics, degraded_reason,
                                            [*result_sinks, *(a.on_result for a in add_ons)], undo)
        pipeline = ScreeningPipeline(
            front_end, engine, bundle, cfg.screening.to_session_config(), precision=plan.precision,
            on_result=recorder, on_stage=StageRecorder(metrics, stage_sinks),
            on_rejection=lambda key: metrics.quality_rejections.labels(reason=key).inc(),
            debug_capture_dir=cfg.results.debug_capture_dir, wall_of=wall_of, notice=notice,
            station_id=cfg.station.id, faults=faults,
        )
        frames = LatestFrame()
        supervisor = CaptureSupervisor(source, frames, stall_s=cfg.source.stall_s,
                                       backoff=BackoffPolicy(max_s=cfg.source.reconnect_max_s))
        metrics.bind_capture(supervisor.stats)
        liveness = Liveness(LivenessLimits(cfg.service.max_frame_age_s, cfg.service.max_processing_age_s),
                            source_excuse=watchdog_excuse(supervisor, faults))
        status = StationStatus(cfg, engine=engine, plan=plan, pipeline=pipeline, supervisor=supervisor,
                               liveness=liveness, recorder=recorder, signature=signature,
                               degraded_reason=degraded_reason, add_ons=tuple(add_ons), notice=notice,
                               started_at=started, faults=faults)
        if kiosk is not None:
            kiosk.bind(pipeline, status)
        api = _api(cfg, token, status, metrics, kiosk, bundle)
        parts = StationParts(
            config=cfg, bundle=bundle, signature=signature, engine=engine, plan=plan, warmup_s=warmup_s,
            pipeline=pipeline, capture=CaptureParts(source, frames, supervisor), results=writer, recorder=recorder,
            metrics=metrics, liveness=liveness, status=status, api=api, add_ons=tuple(add_ons), notice=notice,
            build_started_at=started,
        )
        undo.pop_all()
    return parts
