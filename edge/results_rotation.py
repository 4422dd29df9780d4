"""Results rotation and retention: by size, by day, by age and by total size; nothing torn.

The results file (:mod:`facediag.edge.results`) is append-only. Here it is rotated:

* when the next line would take it past ``[results] rotate_bytes``, and
* when ``[results] max_age_days`` is set, at the first write of a new UTC day (so that
  whole days can expire);

by renaming it to ``results.jsonl.YYYYmmddTHHMMSS.ffffffZ`` (the rotation time, so names
sort by age) and opening a fresh file. Rotation happens under the writer's lock,
*between* two complete, fsync-ed lines, so no line is ever split across files; the
rename and the new file are made durable by an fsync of the folder.

Retention then deletes rotated files (never the current one) whose last write is older
than ``max_age_days``, and the oldest rotated files while all of them together with
the current file exceed ``max_total_bytes``. 0 switches each rule off.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import fsync_directory
from facediag.edge.results import ResultsError, ResultsWriter, encode_record

log = logging.getLogger(__name__)

_STAMP = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
DAY_S = 86400.0


@dataclass(frozen=True)
class RotationPolicy:
    rotate_bytes: int = 0      # 0: never rotate by size
    max_age_days: float = 0.0  # 0: keep rotated files for ever; else also rotate daily
    max_total_bytes: int = 0   # 0: no cap on all results files together

    @property
    def active(self) -> bool:
        return bool(self.rotate_bytes or self.max_age_days or self.max_total_bytes)


def rotated_files(path: Path) -> list[Path]:
    """The rotated siblings of ``path`` (``path.name`` + ``.`` + stamp), oldest first."""
    prefix = path.name + "."
    try:
        names = [p for p in path.parent.iterdir() if p.name.startswith(prefix)
                 and _STAMP.match(p.name[len(prefix):]) and p.is_file()]
    except OSError:
        return []
    return sorted(names, key=lambda p: p.name)


def _utc_day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def apply_retention(path: Path, policy: RotationPolicy, now: float | None = None) -> list[Path]:
    """Delete rotated files past the age or total-size limit (oldest first); returns what was deleted."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    files = rotated_files(path)
    if policy.max_age_days > 0:
        limit = now - policy.max_age_days * DAY_S
        for p in list(files):
            try:
                if p.stat().st_mtime < limit:
                    p.unlink()
                    removed.append(p)
                    files.remove(p)
            except FileNotFoundError:
                files.remove(p)
    if policy.max_total_bytes > 0:
        sizes = {p: p.stat().st_size for p in files if p.exists()}
        total = sum(sizes.values()) + (path.stat().st_size if path.exists() else 0)
        for p in sorted(sizes, key=lambda q: q.name):
            if total <= policy.max_total_bytes:
                break
            p.unlink(missing_ok=True)
            total -= sizes[p]
            removed.append(p)
    if removed:
        fsync_directory(path.parent)
        log.info("results retention: removed %d old file(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


class RotatingResultsWriter(ResultsWriter):
    """A :class:`ResultsWriter` that rotates and expires its files by ``policy`` (see the module docstring)."""

    def __init__(self, path: str | Path, policy: RotationPolicy, *, fsync: bool = True,
                 clock: Any = time.time) -> None:
        super().__init__(path, fsync=fsync)
        self.policy = policy
        self._clock = clock
        self.rotations = 0
        size = os.fstat(self._fd).st_size
        self._day = _utc_day(self.path.stat().st_mtime) if size else None
        apply_retention(self.path, policy, self._clock())

    def _needs_rotation(self, incoming: int, now: float) -> bool:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        if self.policy.rotate_bytes and size + incoming > self.policy.rotate_bytes:
            return True
        return bool(self.policy.max_age_days) and self._day is not None and self._day != _utc_day(now)

    def _rotate(self, now: float) -> None:
        """Rename the current file to its stamped name and open a fresh one (caller holds the lock)."""
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        try:
            os.close(self._fd)
            self._fd = -1
            os.replace(self.path, target)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise ResultsError(f"cannot rotate results file {self.path}: {exc.strerror}") from exc
        fsync_directory(self.path.parent)
        self.rotations += 1
        log.info("results: rotated %s to %s", self.path.name, target.name)

    def write(self, record: Mapping[str, Any] | Any) -> None:
        data = encode_record(record)  # refuse a bad record before rotating anything
        now = self._clock()
        rotated = False
        with self._lock:
            replaced = self._replaced() if self._fd >= 0 else None
            if replaced is not None:  # deleted or renamed by someone else (logrotate): reopen, then judge the size
                self._reopen_locked(replaced)
            if self._fd >= 0 and self._needs_rotation(len(data), now):
                self._rotate(now)
                rotated = True
        super().write(record)
        self._day = _utc_day(now)
        if rotated:
            apply_retention(self.path, self.policy, now)


def open_results_writer(results_cfg: Any) -> ResultsWriter:
    """The writer for a config's ``[results]`` section: rotating when any rotation/retention key is set."""
    policy = RotationPolicy(int(getattr(results_cfg, "rotate_bytes", 0) or 0),
                            float(getattr(results_cfg, "max_age_days", 0) or 0),
                            int(getattr(results_cfg, "max_total_bytes", 0) or 0))
    if not policy.active:
        return ResultsWriter(results_cfg.path)
    return RotatingResultsWriter(results_cfg.path, policy)
