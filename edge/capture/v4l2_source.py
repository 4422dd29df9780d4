"""A USB/CSI camera exposed as a V4L2 device (``/dev/videoN``), read through OpenCV's V4L2 backend."""

from __future__ import annotations

import logging
import os
from typing import Any

from facediag.edge.capture.base import SOURCES, SourceKind, SourceOptions, SourceSpec, split_query
from facediag.edge.capture.opencv_capture import OpenCVCaptureSource

log = logging.getLogger(__name__)


class V4L2Source(OpenCVCaptureSource):
    """``v4l2:/dev/video0``. Requests MJPG when a size is given (most USB cameras only reach
    their full rate compressed) and a one-frame driver queue so frames are fresh, not stale."""

    kind = "v4l2"

    def __init__(self, device: str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, uri: str | None = None) -> None:
        super().__init__(uri or f"v4l2:{device}")
        self.device = device
        self.width = width
        self.height = height
        self.fps = fps

    def _create(self, cv2: Any) -> Any:
        return cv2.VideoCapture(self.device, cv2.CAP_V4L2)

    def _open_failed_message(self) -> str:
        if not os.path.exists(self.device):
            return (f"{self.uri}: {self.device} does not exist; is the camera plugged in? "
                    "List cameras with `ls /dev/video*` or `v4l2-ctl --list-devices`")
        if not os.access(self.device, os.R_OK | os.W_OK):
            return (f"{self.uri}: no permission to open {self.device}; add the service user to the 'video' "
                    "group (the systemd unit sets SupplementaryGroups=video)")
        return (f"{self.uri}: OpenCV's V4L2 backend could not open {self.device} (busy in another program, "
                "or not a capture node: try the next /dev/videoN)")

    def _configure(self, cv2: Any, cap: Any) -> None:
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def describe(self) -> str:
        size = f" {self.width}x{self.height}" if self.width and self.height else ""
        rate = f" @{self.fps:g}fps" if self.fps else ""
        return f"v4l2 {self.device}{size}{rate}"


def _parse(uri: str, rest: str) -> tuple[str, dict[str, str]]:
    target, opts = split_query(rest)
    return (f"/dev/video{target}" if target.isdigit() else target), opts


def _make(spec: SourceSpec, options: SourceOptions) -> V4L2Source:
    return V4L2Source(spec.target, width=options.width, height=options.height, fps=options.fps, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="v4l2",
        summary="a V4L2 device (USB camera) through OpenCV; v4l2:0 means /dev/video0",
        factory=_make,
        examples=("v4l2:/dev/video0",),
        prefixes=("v4l2:",),
        options=("fps", "width", "height"),
        parse=_parse,
        claims_bare=lambda target: target.startswith("/dev/video"),
        bare_priority=10,
    )
)
