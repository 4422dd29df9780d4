"""Where a finished screening result and each stage timing go.

A result is made durable first (one line, one ``write()``, ``fsync``: see
``facediag.edge.results``); only then is it counted in the metrics, logged, and
handed to every extra *result sink* in order. A sink is any callable taking a
``ScreeningResult`` (the demo prints it; an uplink queues it for a broker). A sink
that raises is logged and counted (``ResultRecorder.sink_errors``) and never stops
the station or the sinks after it: the result is on disk already.

A ``StationAddOn`` is a sink with a life cycle and a status: the builder wires its
``on_result`` as a sink, the station starts it before the first frame, puts its
``status()`` under its ``name`` in ``/status``, and stops it at shutdown.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from facediag.edge.results import ResultsError, ResultsWriter, encode_record, latest_results
from facediag.edge.screening.record import ScreeningResult
from facediag.edge.service.metrics import StationMetrics
from facediag.edge.station.faults import StationFaults
from facediag.edge.station.holding import PendingFile, free_bytes
from facediag.edge.station.pipeline import STAGES, ResultSink, StageSink

log = logging.getLogger(__name__)


@runtime_checkable
class StationAddOn(Protocol):
    """Something that runs beside the station and receives every durable result (e.g. an uplink)."""

    name: str

    def start(self) -> None: ...

    def on_result(self, result: ScreeningResult) -> None: ...

    def status(self) -> Mapping[str, object]: ...

    def stop(self) -> None: ...


RETRY_S = 2.0          # held results are retried this often (and before every new result)
FREE_SPACE_CHECK_S = 30.0


def _disk_full(exc: ResultsError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


class ResultRecorder:
    """The pipeline's ``on_result``: durable write, then metrics, a log line, then each sink.

    On a full disk (ENOSPC/EDQUOT) a result is *held* (memory + ``<results>.pending``, see
    ``facediag.edge.station.holding``), the ``results-disk`` fault is reported and the write is
    retried; any other ResultsError propagates (the station stops rather than screen for nobody).
    """

    def __init__(self, writer: ResultsWriter, sinks: Sequence[ResultSink] = (),
                 metrics: StationMetrics | None = None, *, faults: StationFaults | None = None,
                 pending_file: PendingFile | None = None, min_free_bytes: int = 0) -> None:
        self.writer = writer
        self.sinks: tuple[ResultSink, ...] = tuple(sinks)
        self.metrics = metrics
        self.sink_errors = 0
        self.faults = faults if faults is not None else StationFaults()
        self.pending: deque[ScreeningResult | Mapping[str, Any]] = deque()
        self.pending_file = pending_file
        self.min_free_bytes = min_free_bytes
        self._next_retry = 0.0
        self._next_space_check = 0.0
        self._last_disk_error = "disk full"

    # -- held results -------------------------------------------------------------------------
    def recover(self) -> int:
        """At start: append what a previous run held in ``<results>.pending`` (skipping records already in
        the results file), then empty it. Returns how many were appended (or are held again)."""
        if self.pending_file is None:
            return 0
        held = self.pending_file.records()
        if not held:
            return 0

        def key(r: Mapping[str, Any]) -> tuple[object, object]:
            return r.get("session_id"), r.get("decided_at")

        on_disk = {key(r) for r in latest_results(self.writer.path, len(held) + 100)}
        todo = [r for r in held if key(r) not in on_disk]
        self.pending.extend(todo)
        if self.flush():
            log.warning("recovered %d held result(s) from %s into %s", len(todo), self.pending_file.path,
                        self.writer.path)
        return len(todo)

    def flush(self) -> bool:
        """Write held results in order; True when none is left (the fault clears)."""
        while self.pending:
            try:
                self.writer.write(self.pending[0])
            except ResultsError as exc:
                if not _disk_full(exc):
                    raise
                self._report_held(exc)
                return False
            self.pending.popleft()
        if self.pending_file is not None:
            self.pending_file.clear()
        self.faults.clear("results-disk", "held results were written")
        return True

    def _hold(self, result: ScreeningResult, exc: ResultsError | None) -> None:
        self.pending.append(result)
        self._report_held(exc)

    def _report_held(self, exc: ResultsError | None) -> None:
        saved = self.pending_file is not None and self.pending_file.save([encode_record(r) for r in self.pending])
        where = f"memory and {self.pending_file.path}" if saved and self.pending_file is not None else \
            "memory only (the reserved file is full or missing: a restart would lose them)"
        if exc is not None:
            self._last_disk_error = str(exc.__cause__ or exc)
        why = self._last_disk_error
        self.faults.report("results-disk", f"the results file cannot be written ({why}); {len(self.pending)} "
                                           f"result(s) held in {where}; retrying every {RETRY_S:g} s")

    def close(self) -> None:
        """At shutdown: one last try; what is still held stays in the pending file for the next start."""
        if self.pending and not self.flush():
            log.error("stopping with %d result(s) not yet in %s; they are kept in %s for the next start",
                      len(self.pending), self.writer.path,
                      self.pending_file.path if self.pending_file is not None else "memory only (LOST)")
        if self.pending_file is not None:
            self.pending_file.close()

    def housekeeping(self, now: float) -> None:
        """From the station loop: retry held results; warn below the free-space floor."""
        if self.pending and now >= self._next_retry:
            self._next_retry = now + RETRY_S
            self.flush()
        if self.min_free_bytes and now >= self._next_space_check:
            self._next_space_check = now + FREE_SPACE_CHECK_S
            free = free_bytes(self.writer.path.parent)
            if free is not None and free < self.min_free_bytes:
                self.faults.report("disk-low", f"{free / 2**20:.0f} MiB free for {self.writer.path.parent}, below "
                                               f"[results] min_free_mb = {self.min_free_bytes / 2**20:g}")
            elif free is not None:
                self.faults.clear("disk-low", f"{free / 2**20:.0f} MiB free")

    def __call__(self, result: ScreeningResult) -> None:
        if self.pending:
            self.flush()
        if self.pending:
            self._hold(result, None)  # keep the order: behind what is already held
        else:
            try:
                self.writer.write(result)
            except ResultsError as exc:
                if not _disk_full(exc):
                    raise  # the station stops rather than screen for nobody
                self._hold(result, exc)
        kind = result.decision
        if self.metrics is not None:
            self.metrics.decisions.labels(kind=kind).inc()
            self.metrics.sessions.labels(outcome=kind).inc()
        log.info("result: %s%s (session %s)", kind, f" {result.condition}" if result.condition else "",
                 result.session_id[:8])
        for sink in self.sinks:
            try:
                sink(result)
            except Exception:  # noqa: BLE001 - the result is on disk; a sink must not stop screening
                self.sink_errors += 1
                log.exception("result sink %s failed on session %s (%d sink error(s) so far)",
                              getattr(sink, "__qualname__", repr(sink)), result.session_id[:8], self.sink_errors)


class StageRecorder:
    """The pipeline's ``on_stage``: Prometheus histograms (one labelled child per stage, looked up
    once), the inference counter, then each extra stage sink."""

    def __init__(self, metrics: StationMetrics, sinks: Sequence[StageSink] = ()) -> None:
        self._histograms = {stage: metrics.stage_latency.labels(stage=stage) for stage in STAGES}
        self._inferences = metrics.inferences
        self.sinks: tuple[StageSink, ...] = tuple(sinks)

    def __call__(self, stage: str, seconds: float) -> None:
        self._histograms[stage].observe(seconds)
        if stage == "infer":
            self._inferences.inc()
        for sink in self.sinks:
            sink(stage, seconds)
