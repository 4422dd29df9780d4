"""A Raspberry Pi CSI camera through picamera2 (libcamera).

picamera2 comes from apt on Raspberry Pi OS (``sudo apt install python3-picamera2``);
a venv made with ``--system-site-packages`` sees it. It cannot be installed on the
development and CI machines, so this module is imported only when a ``picamera2:``
source is configured, and its decisions are tested with a stand-in module.

Format note: picamera2 names formats after libcamera/DRM, so ``"RGB888"`` gives a
numpy array whose pixels are ordered B, G, R: exactly OpenCV's BGR. ``"XRGB8888"``
likewise gives B, G, R, A (the 4th channel is dropped here).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from typing import Any

import numpy as np

from facediag.edge.capture.base import (
    SOURCES,
    SourceError,
    SourceKind,
    SourceOptions,
    SourceSpec,
    as_bgr_uint8,
    split_query,
)
from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 720)
# picamera2 >= 0.3.20 takes a number for capture_array's ``wait`` as a timeout in seconds and then raises
# concurrent.futures.TimeoutError (the builtin TimeoutError from Python 3.11); without it a camera that
# stops delivering frames blocks the capture thread for good. Older picamera2 treats the number as "wait".
CAPTURE_TIMEOUT_S = 2.0


def _import_picamera2() -> Any:
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SourceError(
            f"picamera2 is not importable ({exc}). On Raspberry Pi OS: `sudo apt install python3-picamera2` and "
            "make the venv with `python3 -m venv --system-site-packages` (picamera2 is not pip-installable "
            "with a matching libcamera)"
        ) from exc
    return Picamera2


class Picamera2Source:
    """``picamera2:0`` (camera number). ``fps`` sets the FrameRate control; size defaults to 1280x720."""

    kind = "picamera2"

    def __init__(self, camera_num: int = 0, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, uri: str | None = None) -> None:
        self.uri = uri or f"picamera2:{camera_num}"
        self.camera_num = camera_num
        self.size = (width, height) if width and height else DEFAULT_SIZE
        self.fps = fps or None
        self.capture_timeout_s = CAPTURE_TIMEOUT_S
        self._camera = None

    def open(self) -> None:
        self.close()
        Picamera2 = _import_picamera2()  # noqa: N806 - the library's class name
        try:
            camera = Picamera2(self.camera_num)
        except IndexError:
            # picamera2 indexes its list of detected cameras: an empty list means no camera at all.
            raise SourceError(
                f"{self.uri}: no camera number {self.camera_num} detected by libcamera. Check the ribbon cable "
                "(contacts facing the right way), run `rpicam-hello --list-cameras` (or `libcamera-hello "
                "--list-cameras`), and reboot after connecting a camera"
            ) from None
        except RuntimeError as exc:
            raise SourceError(f"{self.uri}: libcamera could not acquire the camera ({exc}); "
                              "is another program (rpicam-*, a second daemon) using it?") from exc
        try:
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            config = camera.create_video_configuration(
                main={"size": tuple(self.size), "format": "RGB888"}, controls=controls
            )
            camera.configure(config)
            camera.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                camera.close()
            raise SourceError(f"{self.uri}: could not configure/start the camera at "
                              f"{self.size[0]}x{self.size[1]}: {exc}") from exc
        self._camera = camera
        log.info("opened %s", self.describe())

    def read(self) -> np.ndarray | None:
        camera = self._camera
        if camera is None:
            raise SourceError(f"{self.uri}: read() before open()")
        try:
            frame = camera.capture_array("main", wait=self.capture_timeout_s)
        except (TimeoutError, concurrent.futures.TimeoutError) as exc:
            # A stalled camera: the supervisor closes and reopens the source.
            raise SourceError(f"{self.uri}: no frame within {self.capture_timeout_s:g} s (camera stalled)") from exc
        except Exception as exc:  # noqa: BLE001 - libcamera errors are RuntimeErrors of many kinds
            log.warning("%s: capture failed: %s", self.uri, exc)
            return None
        if frame is None:
            return None
        return as_bgr_uint8(np.asarray(frame), self.uri)

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not fail
            log.debug("%s: stop: %s", self.uri, exc)
        try:
            camera.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("%s: close: %s", self.uri, exc)

    def describe(self) -> str:
        rate = f" @{self.fps:g}fps" if self.fps else ""
        return f"picamera2 camera {self.camera_num} {self.size[0]}x{self.size[1]}{rate}"


def _parse(uri: str, rest: str) -> tuple[str, dict[str, str]]:
    target, opts = split_query(rest or "0")
    return target or "0", opts


def _make(spec: SourceSpec, options: SourceOptions) -> Picamera2Source:
    try:
        camera_num = int(spec.target)
    except ValueError:
        raise ConfigError(
            f"source.uri {options.uri!r}: the camera number after 'picamera2:' must be an integer"
        ) from None
    return Picamera2Source(camera_num, width=options.width, height=options.height, fps=options.fps, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="picamera2",
        summary="Raspberry Pi CSI camera by number (picamera2:0)",
        factory=_make,
        examples=("picamera2:0",),
        prefixes=("picamera2:",),
        aliases=("picamera2",),
        options=("fps", "width", "height"),
        parse=_parse,
        requires="apt's python3-picamera2 in a venv made with --system-site-packages",
    )
)
