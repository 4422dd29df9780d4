"""Reading a small configuration file (a token, a key) safely: bounded, never blocking, clean errors.

``/dev/zero`` would be read for ever, a FIFO would block the daemon (and SIGTERM with it), a
file that is not UTF-8 used to end in a traceback (issue 11). Here: only a regular file,
opened non-blocking, at most ``limit`` bytes, UTF-8, or a ConfigError naming the key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from facediag.edge.errors import ConfigError


def read_small_text(path: str | Path, key: str, limit: int = 64 * 1024) -> str:
    """The text of the regular file ``path`` (``key`` names the setting in messages)."""
    p = str(path)
    if "\x00" in p:
        raise ConfigError(f"{key} contains a NUL byte")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{key} {p} cannot be opened: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{key} {p} is not a regular file (a device, FIFO or folder); point it at a file")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise ConfigError(f"{key} {p} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{key} {p} is larger than {limit} bytes; it should hold one short value")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{key} {p} is not UTF-8 text") from None


def unix_socket_in_use(path: str | Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path`` (a stale file refuses them)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
