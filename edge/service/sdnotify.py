"""The sd_notify protocol, spoken directly: one datagram per message to ``$NOTIFY_SOCKET``.

systemd's ``Type=notify`` waits for ``READY=1`` before it calls the service
started, and ``WatchdogSec=`` kills and restarts it when ``WATCHDOG=1`` stops
arriving. The protocol is a newline-separated ``KEY=value`` text in a single
AF_UNIX datagram, so no libsystemd binding is needed. When the daemon is not
run by systemd (``NOTIFY_SOCKET`` unset) every call is a no-op that returns False.

A socket path starting with ``@`` is in Linux's abstract namespace (the ``@``
stands for a leading NUL byte).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds; None when there is none.

    Reads ``WATCHDOG_USEC``; when ``WATCHDOG_PID`` is set and is not this process
    (a child that inherited the environment), the watchdog is not ours: None.
    Send ``WATCHDOG=1`` at least every half of this (see ``Notifier.watchdog_period``).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        return None
    return value / 1_000_000 if value > 0 else None


class Notifier:
    """Sends notifications to the socket named by ``NOTIFY_SOCKET`` (read once, at construction)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self._watchdog_s = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if self.socket_path and not (self.socket_path.startswith("/") or self.socket_path.startswith("@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; notifications disabled",
                        self.socket_path)
            self.socket_path = None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def watchdog_s(self) -> float | None:
        """The watchdog timeout (None when systemd set none)."""
        return self._watchdog_s

    @property
    def watchdog_period(self) -> float | None:
        """How often to send WATCHDOG=1: half the timeout, as systemd recommends."""
        return None if self._watchdog_s is None else self._watchdog_s / 2

    def notify(self, *lines: str, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram. True when sent, False when disabled or it failed.

        A failure is logged, never raised: losing a status line must not stop screening.
        """
        if not self.enabled:
            return False
        parts = list(lines) + [f"{k}={v}" for k, v in fields.items()]
        for part in parts:
            if "\n" in part.partition("=")[2] and not part.startswith("STATUS="):
                raise ValueError(f"notification value contains a newline: {part!r}")
        message = "\n".join(p.replace("\n", " ") if p.startswith("STATUS=") else p for p in parts).encode()
        target = self.socket_path
        if target is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, _socket_address(target))
                return True
            except OSError as exc:
                log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished (source delivered a frame, engine loaded and warmed up)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """WATCHDOG=1: still alive and doing useful work (send only while frames and inferences are fresh)."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutting down cleanly."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """One-shot ``sd_notify``: ``notify("READY=1", "STATUS=streaming")``."""
    n = Notifier(env)
    try:
        return n.notify(*lines)
    finally:
        n.close()
