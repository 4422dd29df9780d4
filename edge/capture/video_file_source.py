"""A video file replayed as if it were a camera (demos, benchmarks, regression runs)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.capture.base import (
    SOURCES,
    VIDEO_EXTENSIONS,
    EndOfStream,
    Pacer,
    SourceError,
    SourceKind,
    SourceOptions,
    SourceSpec,
    split_query,
)
from facediag.edge.capture.opencv_capture import OpenCVCaptureSource, import_cv2

log = logging.getLogger(__name__)


class VideoFileSource(OpenCVCaptureSource):
    """``file:/path/clip.mp4?loop=1&fps=15``.

    ``loop``: start again at the first frame after the last one (otherwise ``read()``
    raises EndOfStream). ``fps``: ``None`` = pace at the file's own frame rate (like a
    live camera), ``0`` = unthrottled (benchmarks), ``> 0`` = that rate.
    """

    kind = "file"

    def __init__(self, path: str | Path, *, loop: bool = False, fps: float | None = None,
                 uri: str | None = None, _clock: Callable[[], float] | None = None,
                 _sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(uri or f"file:{path}")
        self.path = Path(path)
        self.loop = loop
        self.requested_fps = fps
        self.file_fps: float | None = None
        self._pacer = Pacer(None)
        self._clock, self._sleep = _clock, _sleep
        self._since_rewind = 0
        self.loops_completed = 0

    def _create(self, cv2: Any) -> Any:
        if not self.path.is_file():
            raise SourceError(f"{self.uri}: {self.path} does not exist or is not a file; check [source] uri")
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    def _open_failed_message(self) -> str:
        return (f"{self.uri}: OpenCV could not decode {self.path} (unsupported codec or corrupt file); "
                "re-encode it, e.g. `ffmpeg -i in -c:v mjpeg out.avi`")

    def _configure(self, cv2: Any, cap: Any) -> None:
        rate = cap.get(cv2.CAP_PROP_FPS)
        self.file_fps = rate if rate and math.isfinite(rate) and 0 < rate <= 1000 else None
        self._pacer = Pacer(self.effective_fps, clock=self._clock, sleep=self._sleep)
        self._since_rewind = 0

    @property
    def effective_fps(self) -> float | None:
        """The replay rate in use (None = unthrottled)."""
        if self.requested_fps is None:
            return self.file_fps
        return self.requested_fps or None

    def read(self) -> np.ndarray | None:
        self._pacer.wait()
        frame = super().read()
        if frame is not None:
            self._since_rewind += 1
            return frame
        if self._since_rewind == 0:
            raise SourceError(f"{self.uri}: no frame could be decoded from {self.path}")
        if not self.loop:
            raise EndOfStream(f"{self.uri}: end of file after {self._since_rewind} frames")
        self.loops_completed += 1
        cv2 = import_cv2()
        cap = self._cap
        if cap is None or not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            self.open()  # some containers cannot seek: reopen instead
        self._since_rewind = 0
        frame = super().read()
        if frame is None:
            raise SourceError(f"{self.uri}: could not rewind {self.path} to loop it")
        self._since_rewind = 1
        return frame

    def describe(self) -> str:
        rate = self.effective_fps
        pace = f"{rate:g} fps" if rate else "unthrottled"
        return f"file {self.path} ({pace}{', loop' if self.loop else ''})"


def _parse(uri: str, rest: str) -> tuple[str, dict[str, str]]:
    return split_query(rest[2:] if rest.startswith("//") else rest)


def _make(spec: SourceSpec, options: SourceOptions) -> VideoFileSource:
    return VideoFileSource(spec.target, loop=options.loop, fps=options.fps, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="file",
        summary="a video file, replayed at its own rate (fps=0: as fast as possible; loop=1: forever)",
        factory=_make,
        examples=("file:/path/clip.mp4?loop=1",),
        prefixes=("file:",),
        options=("loop", "fps"),
        parse=_parse,
        claims_bare=lambda target: Path(target).suffix.lower() in VIDEO_EXTENSIONS,
        bare_priority=30,
    )
)
