"""Frame capture: sources behind one Protocol, a latest-frame hand-off, and a reconnecting supervisor.

Typical use (the daemon)::

    from facediag.edge.capture import CaptureSupervisor, LatestFrame, make_source

    box = LatestFrame()
    sup = CaptureSupervisor(make_source(cfg.source.uri, loop=cfg.source.loop, fps=cfg.source.fps), box).start()
    frame = box.get(timeout=1.0)      # Frame(image, seq, captured_at, wall_time) or None
    sup.stats().state                 # connecting | streaming | stalled | backoff | ended | stopped
    sup.stop()

Each kind of source registers itself in ``SOURCES`` (``facediag.edge.capture.base``) from its own
``*_source.py`` module; the modules are light, and a kind's heavy dependency (picamera2, GStreamer)
is imported only when a source of that kind is opened.
"""

from facediag.edge.capture.base import (
    SOURCES,
    EndOfStream,
    FrameSource,
    SourceError,
    SourceKind,
    SourceOptions,
    SourceSpec,
    make_source,
    open_source,
    parse_source_uri,
)
from facediag.edge.capture.latest_frame import Frame, LatestFrame
from facediag.edge.capture.supervisor import BackoffPolicy, CaptureStats, CaptureSupervisor

__all__ = [
    "SOURCES",
    "BackoffPolicy",
    "CaptureStats",
    "CaptureSupervisor",
    "EndOfStream",
    "Frame",
    "FrameSource",
    "LatestFrame",
    "SourceError",
    "SourceKind",
    "SourceOptions",
    "SourceSpec",
    "make_source",
    "open_source",
    "parse_source_uri",
]
