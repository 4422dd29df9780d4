"""What the station says about itself: ``/health``, ``/status``, ``/results/latest`` and STATUS= lines.

``StationStatus`` reads the parts (liveness, capture, pipeline counters, engine plan)
and holds the few facts only the running loop knows (when READY came, frame errors).
The API calls it from its server threads; every read is of a value written by the
processing thread, so a reply may be one frame old, never torn.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facediag.edge.capture import CaptureSupervisor
from facediag.edge.config import StationConfig
from facediag.edge.engine.base import Engine
from facediag.edge.engine.select import EnginePlan
from facediag.edge.signing import SignatureCheck
from facediag.edge.station.faults import StationFaults
from facediag.edge.station.liveness import Liveness
from facediag.edge.station.pipeline import ScreeningPipeline
from facediag.edge.station.sinks import ResultRecorder, StationAddOn

log = logging.getLogger(__name__)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), for "READY n s after start"; None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class StationStatus:
    """The station's self-description, for the API and sd_notify (see the module docstring)."""

    def __init__(self, cfg: StationConfig, *, engine: Engine, plan: EnginePlan, pipeline: ScreeningPipeline,
                 supervisor: CaptureSupervisor, liveness: Liveness, recorder: ResultRecorder,
                 signature: SignatureCheck | None = None, degraded_reason: str | None = None, add_ons: tuple[StationAddOn, ...] = (), notice: str = "", started_at: float | None = None,
                 faults: StationFaults | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.plan = plan
        self.pipeline = pipeline
        self.supervisor = supervisor
        self.liveness = liveness
        self.recorder = recorder
        self.signature = signature
        self.degraded_reason = degraded_reason  # a fallback engine where TensorRT was expected (edge/fallback.py)
        self.add_ons = add_ons
        self.faults = faults if faults is not None else pipeline.faults  # runtime faults (faults.py)
        self.notice = notice
        self.started_at = time.monotonic() if started_at is None else started_at
        # facts only the running loop knows
        self.ready_after_s: float | None = None  # READY, in seconds after the build began
        self.ready_since_process_start_s: float | None = None
        self.frame_errors = 0

    def mark_ready(self, now: float) -> None:
        self.liveness.mark_ready(now)
        self.ready_after_s = now - self.started_at
        self.ready_since_process_start_s = process_age_s()

    # -- API ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        if not self.liveness.ready:
            return {"status": "starting"}
        if self.degraded_reason:
            from facediag.edge.fallback import ENGINE_FALLBACK

            return {"status": "degraded", "degraded": ENGINE_FALLBACK}
        faults = self.faults.active()
        if faults:
            return {"status": "degraded", "degraded": next(iter(faults))}  # a short code, no details
        return {"status": "ok" if self.liveness.check(time.monotonic()).alive else "degraded"}

    def status(self) -> dict[str, Any]:
        stats = self.supervisor.stats()
        now = time.monotonic()
        fresh, why = self.liveness.freshness(now)
        ready = self.liveness.ready
        counters = self.pipeline.counters
        faults = self.faults.active()
        ident = self.pipeline.identity
        doc: dict[str, Any] = {
            "ready": ready,
            "healthy": ready and fresh and not faults,
            "unhealthy_reason": why or None,
            "uptime_s": round(now - self.started_at, 1),
            "ready_after_s": None if self.ready_after_s is None else round(self.ready_after_s, 3),
            "ready_since_process_start_s": None if self.ready_since_process_start_s is None
            else round(self.ready_since_process_start_s, 3),
            "source": stats.to_dict(),
            "engine": {
                "backend": self.engine.backend,
                "precision": self.plan.precision,
                "file": self.plan.path.name,
                "reason": self.plan.reason,
                "bundle_id": ident.bundle_id,
                "model_sha256": ident.model_sha256,
            },
            "fps": round(self.liveness.fps(), 2),
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
            "station_id": self.cfg.station.id,
            "bundle_signature": self.signature.to_dict() if self.signature is not None else None,
            "degraded": bool(self.degraded_reason) or bool(faults),
            "degraded_reason": "; ".join(r for r in (self.degraded_reason, self.faults.summary()) if r) or None,
            "faults": faults,
            "engine_errors": counters.engine_errors,
            "invalid_model_outputs": counters.invalid_outputs,
            "debug_capture_errors": counters.debug_capture_errors,
        }
        if self.recorder.sink_errors:
            doc["result_sink_errors"] = self.recorder.sink_errors
        for add_on in self.add_ons:
            doc[add_on.name] = self._add_on_status(add_on)
        return doc

    @staticmethod
    def _add_on_status(add_on: StationAddOn) -> Mapping[str, object]:
        try:
            return dict(add_on.status())
        except Exception as exc:  # noqa: BLE001 - /status must answer even when an add-on cannot
            log.warning("status of add-on %s failed: %s", add_on.name, exc)
            return {"error": str(exc)}

    def latest_results(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` valid results on disk as JSON dicts, newest last (invalid lines are skipped, logged)."""
        from facediag.edge.results import latest_screening_results

        return [r.to_json() for r in latest_screening_results(self.cfg.results.path, n).results]

    # -- sd_notify ----------------------------------------------------------------------------
    def line(self) -> str:
        """The STATUS= line: source state, engine, fps, results."""
        st = self.supervisor.stats()
        extra = f", {st.reconnects} reconnects" if st.reconnects else ""
        degraded = "DEGRADED (CPU fallback, see /status); " if self.degraded_reason else ""
        if self.faults:
            degraded += f"DEGRADED ({', '.join(self.faults.active())}, see /status); "
        add_on_states = "".join(f"; {state}" for a in self.add_ons
                                if isinstance(state := self._add_on_status(a).get("state"), str))  # e.g. uplink
        return (f"{degraded}source {st.state}{extra}; {self.engine.backend} {self.plan.precision}; "
                f"{self.liveness.fps():.1f} fps; {self.pipeline.counters.results} results{add_on_states}")
