"""Frame capture: sources behind one Protocol, a latest-frame hand-off, and a reconnecting supervisor.

Typical use (the daemon)::

    from edge.capture import CaptureSupervisor, LatestFrame, make_source

    box = LatestFrame()
    sup = CaptureSupervisor(make_source(cfg.source.uri, loop=cfg.source.loop, fps=cfg.source.fps), box).start()
    frame = box.get(timeout=1.0)      # Frame(image, seq, captured_at, wall_time) or None
    sup.stats().state                 # connecting | streaming | stalled | backoff | ended | stopped
    sup.stop()

Source implementations are imported only when their URI kind is used.
"""

from edge.capture.base import (
    EndOfStream,
    FrameSource,
    SourceError,
    SourceSpec,
    make_source,
    open_source,
    parse_source_uri,
)
from edge.capture.latest_frame import Frame, LatestFrame
from edge.capture.supervisor import BackoffPolicy, CaptureStats, CaptureSupervisor

__all__ = [
    "BackoffPolicy",
    "CaptureStats",
    "CaptureSupervisor",
    "EndOfStream",
    "Frame",
    "FrameSource",
    "LatestFrame",
    "SourceError",
    "SourceSpec",
    "make_source",
    "open_source",
    "parse_source_uri",
]
