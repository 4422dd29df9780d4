"""Screening results on disk: append-only JSON lines, durable line by line, never a photo.

Why this shape: a station can lose power at any moment. Each result is one line,
written with a single ``write()`` on a file opened ``O_APPEND`` and then
``fsync``-ed, so after a crash the file holds every result that was reported as
written, plus at most one torn (incomplete) last line. The reader skips such a
torn tail; the writer cuts it off when it reopens the file, so the next record
starts on a clean line. Records are refused if they carry image data (arrays,
bytes): results are numbers and words, photos stay off the disk unless an
operator turns on the separate debug capture.

Two layers: ``ResultsWriter`` / ``iter_results`` / ``latest_results`` move plain JSON
objects (one per line); ``read_screening_results`` / ``latest_screening_results``
read them back as typed ``ScreeningResult`` records, validating each line
(``facediag.edge.screening.record``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from facediag.edge.atomicio import fsync_directory
from facediag.edge.errors import FacediagError
from facediag.edge.screening.record import ResultRecordError, ScreeningResult

log = logging.getLogger(__name__)

# A result line is small (ids, probabilities, reasons); anything this big is a bug or an image.
MAX_LINE_BYTES = 64 * 1024


class ResultsError(FacediagError):
    """A results file cannot be written or read (permissions, disk full, corruption in the middle)."""


def _jsonable(value: Any, key: str) -> Any:
    """Plain-JSON copy of ``value``; numpy scalars become Python numbers; images and bytes are refused."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"result field {key!r} is {value}; JSON results hold finite numbers only")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"result field {key!r} holds raw bytes; results never contain images or binary data")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    # numpy without importing it: scalars have .item(), arrays have .ndim > 0
    ndim = getattr(value, "ndim", None)
    if ndim is not None and ndim > 0:
        raise ValueError(
            f"result field {key!r} is an array of shape {getattr(value, 'shape', '?')}; results never contain "
            "images or tensors: write the numbers you need (e.g. probabilities as a list)"
        )
    if hasattr(value, "item"):
        return _jsonable(value.item(), key)
    raise ValueError(f"result field {key!r} has type {type(value).__name__}, which is not JSON")


def encode_record(record: Mapping[str, Any] | ScreeningResult) -> bytes:
    """One result as one UTF-8 line ending in ``\\n`` (compact JSON, keys in insertion order)."""
    if isinstance(record, ScreeningResult):
        record = record.to_json()
    if not isinstance(record, Mapping):
        raise ValueError(f"a result must be a mapping, got {type(record).__name__}")
    line = json.dumps(_jsonable(record, "result"), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = (line + "\n").encode("utf-8")
    if len(data) > MAX_LINE_BYTES:
        raise ValueError(f"a result line of {len(data)} bytes exceeds {MAX_LINE_BYTES}; results are small records")
    return data


class ResultsWriter:
    """Appends result records to ``path`` (created 0600, parent folders created 0700).

    Thread-safe; ``write()`` returns after the line is on disk (fsync). Use as a context
    manager or call ``close()``.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self.lines_written = 0
        self.reopens = 0
        self._fd = self._open_fd()
        self.repaired_bytes = self._repair_torn_tail()

    def _open_fd(self) -> int:
        """Open (creating 0600, parents 0700) the results file for appending; ResultsError when it cannot be."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ResultsError(f"cannot open results file {self.path}: {why}; check [results] path "
                               "and that the service user may write there (StateDirectory=facediag)") from exc
        if created:
            self._fsync_dir()
        return fd

    def _replaced(self) -> str | None:
        """Why the open file is no longer the one at ``path`` (deleted, renamed away, replaced), or None."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # cannot tell: keep writing where we are
        mine = os.fstat(self._fd)
        if (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            return "renamed or replaced (rotated?)"
        return None

    def reopen(self, why: str = "requested (SIGHUP)") -> None:
        """Close and reopen ``path`` (logrotate-friendly: after a rename or delete, or on SIGHUP)."""
        with self._lock:
            self._reopen_locked(why)

    def _reopen_locked(self, why: str) -> None:
        old = self._fd
        self._fd = self._open_fd()
        if old >= 0:
            os.close(old)
        self.reopens += 1
        self._repair_torn_tail()
        log.warning("results file %s was %s; reopened it: new results go to %s", self.path, why, self.path)

    def _repair_torn_tail(self) -> int:
        """Cut off an incomplete last line left by a crash. Returns how many bytes were removed."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        with open(self.path, "rb") as fh:
            keep = _after_last_newline(fh, size)  # a torn tail of any length (issue 11: > 64 KiB too)
            if keep == size:
                return 0
            if size - keep <= MAX_LINE_BYTES:
                fh.seek(keep)
                try:
                    if isinstance(json.loads(fh.read()), dict):  # a whole record that only missed its newline
                        os.write(self._fd, b"\n")
                        os.fsync(self._fd)
                        return 0
                except ValueError:
                    pass
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        log.warning("%s: removed a torn last line of %d bytes (left by an interrupted write)", self.path, size - keep)
        return size - keep

    def _fsync_dir(self) -> None:
        if self._fsync:
            fsync_directory(self.path.parent)  # the new file's name survives a power cut

    def write(self, record: Mapping[str, Any] | ScreeningResult) -> None:
        """Append one record as one line, in one write(), then fsync. Raises ValueError for a record
        that is not plain JSON (or carries image data), ResultsError when the disk refuses."""
        data = encode_record(record)
        with self._lock:
            if self._fd < 0:
                raise ResultsError(f"results file {self.path} is closed")
            replaced = self._replaced()
            if replaced is not None:  # deleted or rotated under us: never write into an unlinked file
                self._reopen_locked(replaced)
            try:
                written = os.write(self._fd, data)
                while written < len(data):  # only on a nearly full disk or a signal; keep the line whole
                    written += os.write(self._fd, data[written:])
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise ResultsError(f"cannot write to results file {self.path}: {exc.strerror}") from exc
            self.lines_written += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_last_newline(fh: BinaryIO, size: int, block: int = 64 * 1024) -> int:
    """Offset just after the last ``\\n`` in the first ``size`` bytes of ``fh`` (0 when there is none);
    reads backwards block by block, so a long torn tail costs one linear pass."""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        chunk = fh.read(step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return pos + cut + 1
    return 0


def iter_results(path: str | Path, *, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Yield the records in ``path`` in order.

    A torn last line (no newline, does not parse) is skipped with a debug log: it is a
    write in progress or a crash. A bad line in the middle raises ResultsError naming the
    line number (``strict=False`` skips it with a warning instead).
    """
    p = Path(path)
    if not p.exists():
        return
    with open(p, "rb") as fh:
        lineno = 0
        for raw in fh:
            lineno += 1
            complete = raw.endswith(b"\n")
            text = raw.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                if not complete:
                    log.debug("%s: ignoring torn last line %d", p, lineno)
                    return
                if strict:
                    raise ResultsError(f"{p}: line {lineno} is not a JSON result ({exc}); the file is damaged. "
                                       "Move it aside or read it with strict=False") from exc
                log.warning("%s: skipping damaged line %d: %s", p, lineno, exc)
                continue
            yield record


def read_results(path: str | Path, *, strict: bool = True) -> list[dict[str, Any]]:
    """All records in ``path`` (see ``iter_results``)."""
    return list(iter_results(path, strict=strict))


def latest_results(path: str | Path, n: int = 10) -> list[dict[str, Any]]:
    """The last ``n`` records, newest last, reading only the end of the file (for /results/latest)."""
    if n <= 0:
        return []
    p = Path(path)
    if not p.exists():
        return []
    block = 64 * 1024
    with open(p, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        end = _after_last_newline(fh, end) or end  # a torn tail (of any length) is not read again
        tail_len = fh.seek(0, os.SEEK_END) - end
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= n:  # linear: chunks are joined once
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            newlines += chunk.count(b"\n")
            chunks.append(chunk)
        if 0 < tail_len <= MAX_LINE_BYTES:
            fh.seek(end)
            chunks.insert(0, fh.read(tail_len))  # a last record that only missed its newline
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be a partial line
    out: deque[dict[str, Any]] = deque(maxlen=n)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            if i == len(lines) - 1:
                continue  # torn last line
            log.warning("%s: skipping a damaged line near the end", p)
            continue
        if isinstance(record, dict):
            out.append(record)
    return list(out)


# ------------------------------------------------------------------ typed screening results
@dataclass
class ResultsPage:
    """Screening results read back, validated; ``skipped`` counts lines that were not valid results."""

    results: list[ScreeningResult] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # the first few reasons, for a log line

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < 5:
            self.problems.append(why)


def read_screening_results(path: str | Path, *, strict: bool = True) -> ResultsPage:
    """Every screening result in ``path``, each line validated (``ScreeningResult.from_json``).

    ``strict``: a line that is not a valid result of a known schema raises ResultsError naming the
    line; otherwise it is skipped and counted in ``ResultsPage.skipped``. A torn last line is
    ignored either way (see ``iter_results``).
    """
    page = ResultsPage()
    for lineno, doc in enumerate(iter_results(path, strict=strict), start=1):
        try:
            page.results.append(ScreeningResult.from_json(doc))
        except ResultRecordError as exc:
            if strict:
                raise ResultsError(f"{path}: record {lineno} is not a valid screening result: {exc}") from exc
            page.skip(str(exc))
    if page.skipped:
        log.warning("%s: skipped %d record(s) that are not valid screening results (%s)", path, page.skipped,
                    "; ".join(page.problems))
    return page


def latest_screening_results(path: str | Path, n: int = 10) -> ResultsPage:
    """The last ``n`` lines of ``path`` as validated results, newest last; invalid ones are skipped and
    counted (a reader of the end of the file, for /results/latest: one bad line must not hide the rest)."""
    page = ResultsPage()
    for doc in latest_results(path, n):
        try:
            page.results.append(ScreeningResult.from_json(doc))
        except ResultRecordError as exc:
            page.skip(str(exc))
    if page.skipped:
        log.warning("%s: %d of the last %d record(s) are not valid screening results, not shown (%s)", path,
                    page.skipped, n, "; ".join(page.problems))
    return page
