"""A GStreamer pipeline read through OpenCV's GStreamer backend (the Jetson CSI camera path).

pip's ``opencv-python(-headless)`` wheels are built WITHOUT GStreamer; JetPack's
``python3-opencv`` (apt) has it. On a Jetson, make the venv with
``--system-site-packages`` and do not pip-install OpenCV into it, or this source
cannot open. ``opencv_has_gstreamer()`` checks this from ``cv2.getBuildInformation()``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from facediag.edge.capture.base import SOURCES, SourceError, SourceKind, SourceOptions, SourceSpec
from facediag.edge.capture.opencv_capture import OpenCVCaptureSource, import_cv2
from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

_GST_LINE = re.compile(r"^\s*GStreamer\s*:\s*(\S+)", re.MULTILINE)


def build_info_has_gstreamer(build_information: str) -> bool:
    """True when an OpenCV build-information text says ``GStreamer: YES (...)``."""
    match = _GST_LINE.search(build_information)
    return match is not None and match.group(1).upper().startswith("YES")


def opencv_has_gstreamer() -> bool:
    """Whether the imported cv2 can open GStreamer pipelines."""
    return build_info_has_gstreamer(import_cv2().getBuildInformation())


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                        flip_method: int = 0) -> str:
    """A pipeline for a Jetson CSI camera (nvarguscamerasrc) that hands BGR frames to OpenCV.

    The camera delivers NV12 in NVMM (GPU) memory; nvvidconv converts to BGRx in system
    memory, videoconvert drops the x, and ``appsink drop=1 max-buffers=1`` keeps only the
    newest frame, so a slow consumer never reads stale ones.
    """
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )


class GStreamerSource(OpenCVCaptureSource):
    """``gst:<pipeline>``; the pipeline must end in ``appsink`` (``drop=1 max-buffers=1`` recommended)."""

    kind = "gst"

    def __init__(self, pipeline: str, *, uri: str | None = None) -> None:
        super().__init__(uri or f"gst:{pipeline}")
        self.pipeline = pipeline.strip()

    def open(self) -> None:
        cv2 = import_cv2()
        if not build_info_has_gstreamer(cv2.getBuildInformation()):
            raise SourceError(
                f"{self.uri}: this OpenCV ({cv2.__version__}) was built without GStreamer, so it cannot open "
                "a pipeline. pip's opencv-python wheels never include GStreamer. On a Jetson, use JetPack's "
                "OpenCV: `pip uninstall opencv-python opencv-python-headless` in a venv made with "
                "`python3 -m venv --system-site-packages`. Elsewhere use a v4l2: or rtsp:// source instead."
            )
        if "appsink" not in self.pipeline:
            raise SourceError(f"{self.uri}: the pipeline must end in 'appsink' (e.g. '... ! appsink drop=1 max-buffers=1')")
        super().open()

    def _create(self, cv2: Any) -> Any:
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)

    def _open_failed_message(self) -> str:
        return (f"{self.uri}: GStreamer could not start the pipeline; run it with "
                f"`gst-launch-1.0 {self.pipeline.replace('appsink', 'fakesink')}` to see why "
                "(on a Jetson: is nvargus-daemon running and the camera connected?)")

    def describe(self) -> str:
        return f"gst {self.pipeline}"


def _parse(uri: str, rest: str) -> tuple[str, dict[str, str]]:
    pipeline = rest.strip()
    if not pipeline:
        raise ConfigError("source.uri 'gst:' has no pipeline after it; see systemd/station.toml for a Jetson example")
    return pipeline, {}


def _make(spec: SourceSpec, options: SourceOptions) -> GStreamerSource:
    return GStreamerSource(spec.target, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="gst",
        summary="a GStreamer pipeline ending in appsink (Jetson CSI cameras)",
        factory=_make,
        examples=("gst:<pipeline> ! appsink",),
        prefixes=("gst:",),
        options=(),
        parse=_parse,
        requires="OpenCV built with GStreamer (JetPack's python3-opencv)",
    )
)
