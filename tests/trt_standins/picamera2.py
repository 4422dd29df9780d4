"""A stand-in shaped like the ``picamera2`` package (the calls facediag makes). Not picamera2.

From picamera2's own source (picamera2/picamera2.py, job.py): ``Picamera2(n)`` indexes
the list of detected cameras (IndexError when there is none); ``capture_array(name="main",
wait=None, signal_function=None)`` blocks until a frame arrives; since 0.3.20 a number for
``wait`` is a timeout in seconds, after which the job's future raises
``concurrent.futures.TimeoutError`` (the builtin TimeoutError from Python 3.11); before
0.3.20 a number meant "wait as long as necessary". A camera that stops delivering frames
(``stall()``) therefore blocks a call without a timeout for good; here such a call blocks
until the test calls ``release_blocked()``.
"""

from __future__ import annotations

import concurrent.futures
import threading
import types
from typing import Any

import numpy as np


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def make_picamera2_standin(version: str = "0.3.20", cameras: tuple[str, ...] = ("imx219",)) -> types.ModuleType:
    """A module with a ``Picamera2`` class; ``module.instances`` lists the cameras opened."""
    mod = types.ModuleType("picamera2")
    mod.__version__ = version
    mod.cameras = list(cameras)
    mod.instances = []
    timeouts = _version_tuple(version) >= (0, 3, 20)
    released = threading.Event()
    mod.release_blocked = released.set

    class Picamera2:
        def __init__(self, camera_num: int = 0) -> None:
            self.model = mod.cameras[camera_num]  # IndexError with no camera attached, as the real class
            self.calls: list[tuple[Any, ...]] = []
            self._config: dict[str, Any] | None = None
            self._started = False
            self._closed = False
            self._stalled = False
            self.frames = 0
            mod.instances.append(self)

        def create_video_configuration(self, main: Any = None, controls: Any = None, **kw: Any) -> dict[str, Any]:
            self.calls.append(("create_video_configuration", main, controls))
            return {"main": dict(main or {"size": (640, 480), "format": "XBGR8888"}), "controls": controls or {}}

        def configure(self, camera_config: Any) -> None:
            if self._started:
                raise RuntimeError("Camera must be stopped before configuring")
            self.calls.append(("configure", camera_config))
            self._config = camera_config

        def start(self) -> None:
            if self._config is None:
                raise RuntimeError("Camera has not been configured")
            self.calls.append(("start",))
            self._started = True

        def stall(self) -> None:
            """Test hook: the camera stops delivering frames (a loose ribbon cable, a wedged ISP)."""
            self._stalled = True

        def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> np.ndarray:
            if self._closed:
                raise RuntimeError("Camera is closed")
            self.calls.append(("capture_array", name, wait))
            timeout = None if wait is None or wait is True or not timeouts else float(wait)
            if self._stalled or not self._started:
                if timeout is None:
                    released.wait()  # the real call would never return
                    raise RuntimeError("stand-in picamera2: blocked call released by the test")
                released.wait(timeout)
                raise concurrent.futures.TimeoutError()
            assert self._config is not None
            w, h = self._config["main"]["size"]
            frame = np.zeros((h, w, 3), np.uint8)
            frame[..., 0] = 255  # RGB888 in picamera2 = B, G, R byte order: channel 0 is blue
            self.frames += 1
            return frame

        def stop(self) -> None:
            self.calls.append(("stop",))
            self._started = False

        def close(self) -> None:
            self.calls.append(("close",))
            self._closed = True

    mod.Picamera2 = Picamera2
    return mod
