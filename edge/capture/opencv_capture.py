"""Shared plumbing for the sources that read through ``cv2.VideoCapture`` (V4L2, GStreamer, URL, file).

Each subclass only says how to construct the capture and how to describe a
failure to open; reading, format normalisation and release live here once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from facediag.edge.capture.base import SourceError, as_bgr_uint8

log = logging.getLogger(__name__)


def import_cv2() -> Any:
    """Import OpenCV or raise SourceError saying which package to install."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the station extra installs it
        raise SourceError(
            f"OpenCV is not importable ({exc}); install the station extra: pip install 'facediag[station]' "
            "(on a Jetson use JetPack's python3-opencv in a venv made with --system-site-packages)"
        ) from exc
    return cv2


class OpenCVCaptureSource:
    """Base class: a ``cv2.VideoCapture`` opened by ``_create()`` and read frame by frame."""

    kind = "opencv"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._cap: Any = None
        self._lock = threading.Lock()

    # -- to override -------------------------------------------------------------------------
    def _create(self, cv2: Any) -> Any:  # -> cv2.VideoCapture
        raise NotImplementedError

    def _open_failed_message(self) -> str:
        return f"{self.uri}: OpenCV could not open this source"

    def _configure(self, cv2: Any, cap: Any) -> None:
        """Hook for properties set after opening (size, fps, buffer size)."""

    # -- FrameSource ---------------------------------------------------------------------------
    def open(self) -> None:
        cv2 = import_cv2()
        self.close()
        cap = self._create(cv2)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise SourceError(self._open_failed_message())
        self._configure(cv2, cap)
        with self._lock:
            self._cap = cap
        log.info("opened %s", self.describe())

    def read(self) -> np.ndarray | None:
        cap = self._cap
        if cap is None:
            raise SourceError(f"{self.uri}: read() before open(); the supervisor opens sources, or call open_source()")
        ok, frame = cap.read()
        if not ok or frame is None or frame.size == 0:
            return self._on_read_failure()
        return as_bgr_uint8(frame, self.uri)

    def _on_read_failure(self) -> np.ndarray | None:
        return None

    def close(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def describe(self) -> str:
        return f"{self.kind} {self.uri}"

    @property
    def is_open(self) -> bool:
        return self._cap is not None
