"""Prometheus metrics for one station, in a registry of their own.

A dedicated ``CollectorRegistry`` (not the process-global default) keeps tests
and several daemons in one process apart, and means /metrics shows exactly the
station's numbers. Counters that the capture supervisor already keeps
(frames, drops, reconnects) are read from it at scrape time by a collector,
so there is a single source of truth and nothing to keep in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

STAGES = ("capture", "detect", "align", "infer", "decide")
DECISIONS = ("refer", "no_finding", "retake", "abstain")
# Seconds: from sub-millisecond (align) to slow CPU inference on a Pi.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _CaptureCollector:
    """Exposes a CaptureStats-returning callable as counters/gauges at scrape time."""

    def __init__(self, stats: Callable[[], object], states: tuple[str, ...]) -> None:
        self._stats = stats
        self._states = states

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        labels = ["source"]
        uri = getattr(s, "uri", "")
        for name, doc, attr in (
            ("facediag_frames_captured", "Frames read from the source.", "frames_captured"),
            ("facediag_frames_dropped", "Frames replaced before processing (latest-frame hand-off).", "frames_dropped"),
            ("facediag_source_reconnects", "Successful reopenings of the source after a failure.", "reconnects"),
            ("facediag_source_open_failures", "Failed attempts to open the source.", "open_failures"),
        ):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric([uri], float(getattr(s, attr, 0)))
            yield c
        g = GaugeMetricFamily("facediag_source_state", "1 for the source's current state.", labels=["source", "state"])
        for state in self._states:
            g.add_metric([uri, state], 1.0 if getattr(s, "state", None) == state else 0.0)
        yield g
        age = getattr(s, "last_frame_age_s", None)
        if age is not None:
            yield GaugeMetricFamily("facediag_last_frame_age_seconds", "Age of the newest frame.", value=float(age))


class StationMetrics:
    """All the station's metrics. ``render()`` gives the body and content type for /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fps = Gauge("facediag_fps", "Frames processed per second (moving average).", registry=r)
        self.stage_latency = Histogram(
            "facediag_stage_latency_seconds", "Time spent per pipeline stage.", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.frames_processed = Counter("facediag_frames_processed", "Frames that went through detection.", registry=r)
        self.inferences = Counter("facediag_inferences", "Engine inferences run.", registry=r)
        self.sessions = Counter("facediag_sessions", "Screening sessions finished, by outcome.", ["outcome"], registry=r)
        self.decisions = Counter("facediag_decisions", "Screening decisions, by kind.", ["kind"], registry=r)
        self.quality_rejections = Counter(
            "facediag_quality_rejections", "Frames rejected by a quality gate, by reason.", ["reason"], registry=r
        )
        self.ready = Gauge("facediag_ready", "1 once the daemon sent READY=1.", registry=r)
        self.degraded = Gauge("facediag_degraded", "1 while the station runs degraded: a CPU fallback instead of "
                              "the TensorRT engine this host is set up for (see /status degraded_reason).", registry=r)
        self.engine_info = Gauge(
            "facediag_engine_info", "The engine in use (value 1).", ["backend", "precision"], registry=r
        )
        for stage in STAGES:  # so every series exists from the first scrape
            self.stage_latency.labels(stage=stage)
        for kind in DECISIONS:
            self.decisions.labels(kind=kind)
        self._capture_collector: _CaptureCollector | None = None

    def bind_capture(self, stats: Callable[[], object], states: tuple[str, ...] | None = None) -> None:
        """Export a CaptureSupervisor's counters: ``metrics.bind_capture(supervisor.stats)``."""
        if states is None:
            from facediag.edge.capture.supervisor import STATES

            states = STATES
        if self._capture_collector is not None:
            self.registry.unregister(self._capture_collector)
        self._capture_collector = _CaptureCollector(stats, states)
        self.registry.register(self._capture_collector)

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
        self.stage_latency.labels(stage=stage).observe(seconds)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """``with metrics.time_stage("detect"): faces = detector.detect(img)``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - start)

    def record_decision(self, kind: str) -> None:
        if kind not in DECISIONS:
            raise ValueError(f"unknown decision {kind!r}; one of {DECISIONS}")
        self.decisions.labels(kind=kind).inc()

    def set_degraded(self, reason: str | None) -> None:
        """``facediag_degraded{reason=...}`` = 1 while the station runs degraded (e.g. a CPU fallback), else 0."""
        self.degraded.set(1 if reason else 0)

    def set_engine(self, backend: str, precision: str) -> None:
        self.engine_info.clear()
        self.engine_info.labels(backend=backend, precision=precision).set(1)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
