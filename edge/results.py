"""Screening results on disk: append-only JSON lines, durable line by line, never a photo.

Why this shape: a station can lose power at any moment. Each result is one line,
written with a single ``write()`` on a file opened ``O_APPEND`` and then
``fsync``-ed, so after a crash the file holds every result that was reported as
written, plus at most one torn (incomplete) last line. The reader skips such a
torn tail; the writer cuts it off when it reopens the file, so the next record
starts on a clean line. Records are refused if they carry image data (arrays,
bytes): results are numbers and words, photos stay off the disk unless an
operator turns on the separate debug capture.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edge.errors import FacediagError

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


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One result as one UTF-8 line ending in ``\\n`` (compact JSON, keys in insertion order)."""
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise ResultsError(f"cannot open results file {self.path}: {exc.strerror}; check [results] path "
                               "and that the service user may write there (StateDirectory=facediag)") from exc
        self.repaired_bytes = self._repair_torn_tail()
        if created:
            self._fsync_dir()

    def _repair_torn_tail(self) -> int:
        """Cut off an incomplete last line left by a crash. Returns how many bytes were removed."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - MAX_LINE_BYTES - 1))
            tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        last = tail[cut + 1:]
        try:
            if isinstance(json.loads(last), dict):  # a whole record that only missed its newline
                os.write(self._fd, b"\n")
                os.fsync(self._fd)
                return 0
        except ValueError:
            pass
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= MAX_LINE_BYTES else size)
        if keep == size:
            return 0
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        log.warning("%s: removed a torn last line of %d bytes (left by an interrupted write)", self.path, size - keep)
        return size - keep

    def _fsync_dir(self) -> None:
        if not self._fsync:
            return
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line, in one write(), then fsync. Raises ValueError for a record
        that is not plain JSON (or carries image data), ResultsError when the disk refuses."""
        data = encode_record(record)
        with self._lock:
            if self._fd < 0:
                raise ResultsError(f"results file {self.path} is closed")
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


def iter_results(path: str | Path, *, strict: bool = True) -> Iterator[dict]:
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


def read_results(path: str | Path, *, strict: bool = True) -> list[dict]:
    """All records in ``path`` (see ``iter_results``)."""
    return list(iter_results(path, strict=strict))


def latest_results(path: str | Path, n: int = 10) -> list[dict]:
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
        pos = end
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be a partial line
    out: deque[dict] = deque(maxlen=n)
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
