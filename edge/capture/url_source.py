"""A network stream (RTSP, HTTP MJPEG, HLS...) read through OpenCV's FFmpeg backend.

FFmpeg would otherwise wait a long time on a dead peer; open and read timeouts
bound every call so that the supervisor notices a stall and reconnects.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from facediag.edge.capture.base import SOURCES, SourceKind, SourceOptions, SourceSpec
from facediag.edge.capture.opencv_capture import OpenCVCaptureSource

log = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(?<=://)[^/@]*@")


def redact(url: str) -> str:
    """The URL with any ``user:password@`` removed, for logs and STATUS= lines."""
    return _CREDENTIALS.sub("***@", url)


class UrlSource(OpenCVCaptureSource):
    """``rtsp://camera/stream`` or ``http://host/video.mjpg``."""

    kind = "url"

    def __init__(self, url: str, *, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 uri: str | None = None) -> None:
        super().__init__(redact(uri or url))  # .uri shows up in logs: never with a password
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s

    def _create(self, cv2: Any) -> Any:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
        ]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)

    def _open_failed_message(self) -> str:
        return (f"{redact(self.url)}: could not connect (refused, unreachable, or no decodable video within {self.open_timeout_s:g} s); "
                "check that the camera/server is up and the URL plays in `ffplay` or VLC")

    def _configure(self, cv2: Any, cap: Any) -> None:
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def describe(self) -> str:
        return f"url {redact(self.url)}"


def _make(spec: SourceSpec, options: SourceOptions) -> UrlSource:
    return UrlSource(spec.target, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="url",
        summary="a network stream through OpenCV's FFmpeg backend (RTSP, MJPEG over HTTP)",
        factory=_make,
        examples=("rtsp://...", "http://..."),
        prefixes=("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://"),
        options=(),
        parse=lambda uri, rest: (uri, {}),  # the whole URL is the target; its query belongs to the server
    )
)
