"""Results that could not be written yet (a full disk): held in memory and in a small reserved file.

When the results file refuses a line with ``ENOSPC``/``EDQUOT``, the station must not
lose the person's result, stop, or restart-loop (each restart on a full disk used to
lose one more result and end in a failed unit). Instead the result is *held*:

* in memory, in order, and retried on every new result and every few seconds;
* in ``<results>.pending``, a file of ``RESERVE_BYTES`` allocated up front while the
  disk still had room (``posix_fallocate``), so that overwriting it needs no new
  blocks: JSON lines, then NUL padding. It survives a restart or a power cut;
  ``recover()`` appends what it holds to the results file at the next start (skipping
  records already there) before anything new is written.

While anything is held the station reports the ``results-disk`` fault (degraded); below
``[results] min_free_mb`` of free space it reports ``disk-low`` before the disk is full.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESERVE_BYTES = 512 * 1024  # room for several hundred held results


class PendingFile:
    """The reserved ``<results>.pending`` file (see the module docstring)."""

    def __init__(self, results_path: str | Path, reserve: int = RESERVE_BYTES) -> None:
        self.path = Path(str(results_path) + ".pending")
        self.reserve = reserve
        self._used = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            size = os.fstat(self._fd).st_size
            if size < reserve:
                os.posix_fallocate(self._fd, 0, reserve)
                os.fsync(self._fd)
        except (OSError, AttributeError) as exc:  # no room even for the reserve: memory only, said loudly
            log.warning("cannot reserve %d bytes for held results in %s: %s", reserve, self.path, exc)

    def records(self) -> list[dict[str, Any]]:
        """The records held by a previous run (complete JSON lines before the NUL padding)."""
        data = os.pread(self._fd, max(self.reserve, os.fstat(self._fd).st_size), 0).split(b"\0", 1)[0]
        self._used = len(data)
        out: list[dict[str, Any]] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                log.warning("%s: skipping a torn held record", self.path)
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def save(self, lines: list[bytes]) -> bool:
        """Hold exactly ``lines`` (replacing what was held); False when they do not fit or the write fails."""
        data = b"".join(lines)
        if len(data) > self.reserve:
            return False
        try:
            os.pwrite(self._fd, data + b"\0" * max(0, self._used - len(data)), 0)
            os.fsync(self._fd)
        except OSError as exc:
            log.error("cannot hold results in %s: %s", self.path, exc)
            return False
        self._used = len(data)
        return True

    def clear(self) -> None:
        if self._used:
            self.save([])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def free_bytes(folder: str | Path) -> int | None:
    """Bytes available to this user on the file system holding ``folder`` (None when unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
