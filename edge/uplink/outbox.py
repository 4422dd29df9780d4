"""The station's outbox: which results the broker has not acknowledged yet, on disk.

The local results log (``results.jsonl``, fsync-ed line by line) stays the source
of truth. The outbox is a SQLite database (WAL journal) next to it that holds

- ``entries``: results read from the log and not yet acknowledged by the broker
  (PUBACK), oldest first, and for ``keep_acked_s`` those it acknowledged lately;
- ``meta``: how far into the log (byte offset, and the log's inode) every record
  has been copied into ``entries``.

Copying a batch of lines and advancing the offset happen in one transaction, so
after a kill -9 or a power cut the outbox is at some earlier consistent point and
the worst case is that results are published again (the collector stores each
result id once). Nothing is ever lost: a result that is in the log and not yet in
the outbox is copied later. When the outbox holds ``max_entries`` results it stops
copying ("backlog full"): the station keeps screening and writing its log, and the
outbox is refilled from the log as the broker acknowledges. ``resync()`` re-reads
the whole log (for example after the central store was restored from a backup).

A broker that crashes (kill -9, power cut) can lose messages it acknowledged but
had neither delivered nor saved yet. So acknowledged results stay in the outbox
for ``keep_acked_s`` and ``requeue_recent()`` (called on every new connection)
sends again those acknowledged in that time: duplicates, never gaps.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from facediag.edge.uplink.topics import result_id_station

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    queued_at REAL NOT NULL,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS entries_pending ON entries (seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS entries_acked ON entries (acked_at) WHERE acked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class OutboxStats:
    pending: int                 # results in the outbox, not acknowledged by the broker
    unqueued: int                # results in the log that are not in the outbox yet (backlog full)
    oldest_age_s: float | None   # age of the oldest unacknowledged result
    full: bool                   # the outbox is at its size limit
    acked_total: int             # acknowledged by the broker since the outbox was created
    skipped_total: int           # log lines that cannot be sent (no or foreign result id)

    @property
    def unsent(self) -> int:
        return self.pending + self.unqueued


class Outbox:
    """One outbox file; use from one thread (the uplink's publisher thread)."""

    def __init__(self, path: str | Path, results_path: str | Path, station_id: str, max_entries: int,
                 keep_acked_s: float = 60.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = Path(path)
        self.results_path = Path(results_path)
        self.station_id = station_id
        self.max_entries = max_entries
        self.keep_acked_s = keep_acked_s
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may undo the last transactions, which only makes results be sent again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._full = False

    # -- meta -----------------------------------------------------------------------------------
    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, str(value)))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries WHERE acked_at IS NULL").fetchone()[0])

    # -- filling from the log ---------------------------------------------------------------------
    def _log_position(self) -> tuple[Path, int, int] | None:
        """(file, inode, offset) to read next. When the log was rotated (a new inode), the rest of the old
        file (found by its inode among ``results.jsonl.*``) comes first; then the new file from its start."""
        try:
            st = os.stat(self.results_path)
        except FileNotFoundError:
            return None
        offset = int(self._meta("log_offset", "0"))
        ino = int(self._meta("log_ino", "-1"))
        if ino == st.st_ino:
            if offset <= st.st_size:
                return self.results_path, st.st_ino, offset
            log.warning("%s is shorter than what was already read; re-reading it from the start", self.results_path)
            return self.results_path, st.st_ino, 0
        if ino >= 0 and offset > 0:
            for old in sorted(self.results_path.parent.glob(self.results_path.name + ".*")):
                try:
                    ost = os.stat(old)
                except OSError:
                    continue
                if ost.st_ino == ino and offset < ost.st_size:
                    return old, ino, offset
        return self.results_path, st.st_ino, 0

    def feed(self) -> int:
        """Copy new complete log lines into the outbox, up to the size limit. Returns how many were queued."""
        queued = 0
        for _ in range(4):  # a rotated file's rest, then the current file
            pos = self._log_position()
            if pos is None:
                break
            added, more = self._feed_file(*pos)
            queued += added
            if not more or pos[0] == self.results_path:
                break
        self._full = self._count() >= self.max_entries
        return queued

    def _feed_file(self, path: Path, ino: int, offset: int) -> tuple[int, bool]:
        """Queue complete lines of ``path`` from ``offset``; (queued, whether there was room for everything)."""
        room = self.max_entries - self._count()
        queued = 0
        with open(path, "rb") as fh:
            while True:
                if room <= 0:
                    return queued, False
                fh.seek(offset)
                chunk = fh.read(READ_CHUNK)
                end = chunk.rfind(b"\n")
                if end < 0:
                    if path != self.results_path:  # a rotated file is complete: mark it read to the end
                        self._commit([], offset + len(chunk), ino, 0)
                        offset += len(chunk)
                        self._set_meta("log_ino", -1)
                    return queued, True
                lines = chunk[:end + 1].splitlines(keepends=True)
                consumed, added, skipped = self._queue_lines(lines, room)
                offset += consumed
                self._commit(added, offset, ino, skipped)
                queued += len(added)
                room -= len(added)

    def _commit(self, added: list[tuple[str, bytes]], offset: int, ino: int, skipped: int) -> None:
        """Insert entries and advance the log position in one transaction."""
        self._db.execute("BEGIN")
        try:
            now = time.time()
            self._db.executemany("INSERT OR IGNORE INTO entries(result_id, payload, queued_at) VALUES (?, ?, ?)",
                                 [(rid, payload, now) for rid, payload in added])
            self._set_meta("log_offset", offset)
            self._set_meta("log_ino", ino)
            if skipped:
                self._set_meta("skipped_total", int(self._meta("skipped_total", "0")) + skipped)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _queue_lines(self, lines: list[bytes], room: int) -> tuple[int, list[tuple[str, bytes]], int]:
        consumed, skipped = 0, 0
        added: list[tuple[str, bytes]] = []
        for raw in lines:
            if len(added) >= room:
                break
            consumed += len(raw)
            text = raw.strip()
            if not text:
                continue
            rid = _result_id(text)
            if rid is None or result_id_station(rid) != self.station_id:
                skipped += 1
                log.warning("results log line without a result id of station %s is not sent (%.60r)",
                            self.station_id, text)
                continue
            added.append((rid, text))
        return consumed, added, skipped

    def resync(self) -> None:
        """Re-read the whole results log into the outbox (duplicates are dropped by the collector)."""
        self._set_meta("log_offset", 0)

    # -- sending ----------------------------------------------------------------------------------
    def batch(self, after_seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` unacknowledged results after ``after_seq``, oldest first: (seq, result id, payload)."""
        rows = self._db.execute("SELECT seq, result_id, payload FROM entries WHERE seq > ? AND acked_at IS NULL "
                                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [(int(s), str(r), bytes(p)) for s, r, p in rows]

    def mark_acked(self, seqs: list[int]) -> None:
        """The broker acknowledged these entries (PUBACK); entries acknowledged long ago are removed."""
        if not seqs:
            return
        now = time.time()
        self._db.execute("BEGIN")
        try:
            self._db.executemany("UPDATE entries SET acked_at = ? WHERE seq = ?", [(now, s) for s in seqs])
            self._db.execute("DELETE FROM entries WHERE acked_at < ?", (now - self.keep_acked_s,))
            self._set_meta("acked_total", int(self._meta("acked_total", "0")) + len(seqs))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._full = self._count() >= self.max_entries

    def requeue_recent(self) -> int:
        """Mark the results acknowledged in the last ``keep_acked_s`` as unsent again (see the module docstring)."""
        cur = self._db.execute("UPDATE entries SET acked_at = NULL WHERE acked_at >= ?",
                               (time.time() - self.keep_acked_s,))
        self._full = self._count() >= self.max_entries
        return int(cur.rowcount)

    # -- state --------------------------------------------------------------------------------------
    def stats(self) -> OutboxStats:
        pending = self._count()
        oldest = self._db.execute("SELECT MIN(queued_at) FROM entries WHERE acked_at IS NULL").fetchone()[0]
        unqueued = self._unread_lines() if pending >= self.max_entries else 0
        return OutboxStats(
            pending=pending, unqueued=unqueued,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - float(oldest)),
            full=pending >= self.max_entries,
            acked_total=int(self._meta("acked_total", "0")),
            skipped_total=int(self._meta("skipped_total", "0")),
        )

    def _unread_lines(self) -> int:
        pos = self._log_position()
        if pos is None:
            return 0
        n = 0
        with open(pos[0], "rb") as fh:
            fh.seek(pos[2])
            while chunk := fh.read(READ_CHUNK):
                n += chunk.count(b"\n")
        return n

    def close(self) -> None:
        self._db.close()


def _result_id(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    rid = record.get("result_id") if isinstance(record, dict) else None
    return rid if isinstance(rid, str) else None
