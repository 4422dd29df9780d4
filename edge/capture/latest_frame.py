"""The one-slot hand-off between the capture thread and the processing loop.

A camera produces frames at its own pace; detection and inference may be slower.
Queueing would make the station answer for a face that left seconds ago, so the
box holds only the newest frame: ``put()`` replaces an unread frame (counted as
dropped), ``get()`` waits for a frame newer than the last one it returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A captured image with where it sits in the stream.

    seq: 1, 2, 3... per box, in capture order (gaps between two get() results = dropped frames).
    captured_at: time.monotonic() when the capture thread got it (for latency and freshness).
    wall_time: time.time() at capture (for results and logs).
    """

    image: np.ndarray
    seq: int
    captured_at: float
    wall_time: float


class LatestFrame:
    """Thread-safe single slot. One producer (the capture thread), normally one consumer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._frame: Frame | None = None
        self._seq = 0
        self._last_taken = 0
        self._closed = False
        self.put_count = 0
        self.dropped = 0
        self.taken = 0

    def put(self, image: np.ndarray, captured_at: float | None = None) -> Frame:
        """Store ``image`` as the newest frame; an unread previous frame is dropped and counted."""
        with self._cond:
            self._seq += 1
            frame = Frame(image, self._seq, self._clock() if captured_at is None else captured_at, time.time())
            if self._frame is not None and self._frame.seq > self._last_taken:
                self.dropped += 1
            self._frame = frame
            self.put_count += 1
            self._cond.notify_all()
            return frame

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned by get(); waits up to ``timeout`` s (None = forever).

        Returns None on timeout, or when the box is closed and nothing new is left.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                frame = self._frame
                if frame is not None and frame.seq > self._last_taken:
                    self._last_taken = frame.seq
                    self.taken += 1
                    return frame
                if self._closed:
                    return None
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)

    def peek(self) -> Frame | None:
        """The newest frame, read or not, without marking it taken (for a preview or /status)."""
        with self._cond:
            return self._frame

    def close(self) -> None:
        """Wake every waiter; get() then returns what is unread and afterwards None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
