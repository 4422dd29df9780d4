"""Faults found while the station runs: each one makes it ``degraded``, loudly, until it clears.

A fault is a named condition with a reason, e.g. ``engine-output`` ("the model gave
non-finite probabilities"), ``engine-error`` (the engine raised on several sessions in a
row), ``results-disk`` (the results file cannot be written; results are held), ``disk-low``
(free space below the floor), ``frame-errors``. While any fault is active:

* ``/health`` answers 503 ``{"status": "degraded", "degraded": "<first fault>"}``;
* ``/status`` lists them under ``faults`` with ``degraded: true`` (the kiosk shows that);
* the ``facediag_fault{kind}`` gauge is 1 and ``facediag_faults_total{kind}`` counts each
  report; ``facediag_degraded`` is 1;
* the journal gets one ``error`` line when a fault appears (``journalctl -p err``) and an
  ``info`` line when it clears.

A fault does **not** stop the systemd watchdog: the loop is alive and says what is wrong;
restarting would not fix a model that gives NaN or a full disk, and a restart loop ends
in a failed unit. The watchdog stops only when the main loop itself is stuck
(``facediag.edge.station.liveness``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

KINDS = ("engine-output", "engine-error", "result-record", "results-disk", "disk-low", "frame-errors")


class StationFaults:
    """The set of active faults (thread-safe: set by the loop, read by the API threads)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 on_change: Callable[[bool], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self.reports: dict[str, int] = {}
        self._on_change = on_change
        self._gauge: Gauge | None = None
        self._counter: Counter | None = None
        if registry is not None:
            self._gauge = Gauge("facediag_fault", "1 while a fault of this kind makes the station degraded "
                                "(see /status faults).", ["kind"], registry=registry)
            self._counter = Counter("facediag_faults", "Faults reported, by kind.", ["kind"], registry=registry)
            for kind in KINDS:
                self._gauge.labels(kind=kind).set(0)
                self._counter.labels(kind=kind)

    def report(self, kind: str, reason: str) -> None:
        """``kind`` is wrong now, because ``reason``; an error line when it appears or its reason changes."""
        with self._lock:
            before = self._active.get(kind)
            self._active[kind] = reason
            self.reports[kind] = self.reports.get(kind, 0) + 1
            count = self.reports[kind]
        if self._counter is not None:
            self._counter.labels(kind=kind).inc()
            assert self._gauge is not None
            self._gauge.labels(kind=kind).set(1)
        if before is None:
            log.error("DEGRADED (%s): %s", kind, reason)
            self._changed()
        elif before != reason and (count <= 10 or count % 100 == 0):
            log.error("DEGRADED (%s, report %d): %s", kind, count, reason)

    def clear(self, kind: str, why: str = "") -> None:
        """``kind`` is fine again (an info line when it was active)."""
        with self._lock:
            was = self._active.pop(kind, None)
        if was is None:
            return
        if self._gauge is not None:
            self._gauge.labels(kind=kind).set(0)
        log.info("recovered (%s)%s; it was: %s", kind, f": {why}" if why else "", was)
        self._changed()

    def active(self) -> dict[str, str]:
        with self._lock:
            return dict(self._active)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._active)

    def summary(self) -> str:
        """One line: 'kind: reason; kind: reason' (empty when healthy)."""
        return "; ".join(f"{k}: {v}" for k, v in self.active().items())

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(bool(self))
