"""The screening station daemon (``facediag run``): kept as the stable entry point.

The station lives in :mod:`facediag.edge.station`:

* ``pipeline``  ``ScreeningPipeline``: one frame through detect -> align -> gates -> session ->
  engine -> decision -> ``ScreeningResult``; shared by the daemon, ``facediag bench`` and
  ``facediag demo``;
* ``builder``   ``build_station(cfg)`` -> ``StationParts`` (bundle, trust, engine, plan, pipeline,
  capture, results, API, metrics, liveness), built in one step or not at all;
* ``liveness``  the freshness / watchdog / fps rules on an injected clock;
* ``sinks``     durable write first, then metrics and extra result sinks / add-ons;
* ``status``    ``/health``, ``/status``, ``/results/latest`` and STATUS= lines;
* ``station``   ``Station(parts).run()``: the service loop and the systemd protocol.

This module re-exports the names other code used from here.
"""

from __future__ import annotations

from facediag.edge.screening.record import RESULT_SCHEMA
from facediag.edge.station.builder import StationParts, build_station
from facediag.edge.station.pipeline import (
    NOTICE,
    STAGES,
    PipelineCounters,
    ScreeningPipeline,
    bundle_identity,
    make_front_end,
    warm_up,
)
from facediag.edge.station.station import Station, StopRequest, run_station
from facediag.edge.station.status import process_age_s

__all__ = [
    "NOTICE",
    "RESULT_SCHEMA",
    "STAGES",
    "PipelineCounters",
    "ScreeningPipeline",
    "Station",
    "StationParts",
    "StopRequest",
    "build_station",
    "bundle_identity",
    "make_front_end",
    "process_age_s",
    "run_station",
    "warm_up",
]
