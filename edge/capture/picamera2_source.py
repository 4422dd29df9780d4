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

import contextlib
import logging

import numpy as np

from edge.capture.base import SourceError, as_bgr_uint8

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 720)


def _import_picamera2():
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
            frame = camera.capture_array("main")
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
