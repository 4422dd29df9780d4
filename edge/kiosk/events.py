"""Events for the pages (server-sent events): a small in-memory hub, and the stream that writes them.

The hub keeps the last ``keep`` events with increasing sequence numbers; each stream
waits on a condition for newer ones (no polling), sends a comment line every
``HEARTBEAT_S`` so a dead client is found, and ends when the hub closes (the
daemon stops: a last ``state: stopping`` event is sent first).
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

HEARTBEAT_S = 15.0
RETRY_MS = 1000  # how soon a browser reconnects after the stream ends


class EventHub:
    def __init__(self, keep: int = 128) -> None:
        self._cond = threading.Condition()
        self._events: deque[tuple[int, str, str]] = deque(maxlen=keep)
        self.seq = 0
        self.closed = False
        self.listeners = 0

    def publish(self, name: str, data: dict[str, Any]) -> int:
        text = json.dumps(data, separators=(",", ":"), default=str)
        with self._cond:
            self.seq += 1
            self._events.append((self.seq, name, text))
            self._cond.notify_all()
            return self.seq

    def after(self, seq: int, timeout: float) -> list[tuple[int, str, str]]:
        """Events newer than ``seq``, waiting up to ``timeout`` for one; [] on timeout or when closed."""
        with self._cond:
            if self.seq <= seq and not self.closed:
                self._cond.wait(timeout)
            return [e for e in self._events if e[0] > seq]

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def sse_frame(seq: int, name: str, text: str) -> bytes:
    return f"id: {seq}\nevent: {name}\ndata: {text}\n\n".encode()


def sse_stream(hub: EventHub, snapshot: Callable[[], list[tuple[str, dict[str, Any]]]],
               stopping: Callable[[], bool]) -> Callable[[socket.socket], None]:
    """The stream function for ``Response(stream=...)``: the current snapshot, then every new event."""

    def run(sock: socket.socket) -> None:
        with hub._cond:
            hub.listeners += 1
            start = hub.seq
        try:
            first = f"retry: {RETRY_MS}\n\n".encode()
            first += b"".join(sse_frame(start, name, json.dumps(data, separators=(",", ":"), default=str))
                              for name, data in snapshot())
            sock.sendall(first)
            seq = start
            while not stopping():
                events = hub.after(seq, HEARTBEAT_S)
                if events:
                    seq = events[-1][0]
                    sock.sendall(b"".join(sse_frame(*e) for e in events))
                elif hub.closed:
                    return
                else:
                    sock.sendall(b": ping\n\n")
        finally:
            with hub._cond:
                hub.listeners -= 1

    return run
