"""The central store: one schema, versioned migrations, for SQLite and PostgreSQL.

``open_store(url)`` takes ``sqlite:///path/to/fleet.db`` (or a plain path) or a
``postgresql://`` URL. The schema is created and upgraded by numbered migrations
recorded in ``schema_migrations``; each migration runs in its own transaction, so
a store is always at one known version. Results are stored idempotently by
``result_id`` (the primary key): the same id with the same content is a duplicate
(at-least-once delivery, expected), the same id with different content is a
conflict (refused, counted, logged). Nothing is committed per message: callers
add a batch and ``commit()``, and acknowledge the messages only after that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# (version, statements). Use ``{serial}`` / ``{real}`` for the two spellings that differ.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE results (
            result_id TEXT PRIMARY KEY,
            station_id TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            decision TEXT NOT NULL,
            condition TEXT,
            bundle_id TEXT,
            payload TEXT NOT NULL,
            content_sha256 TEXT NOT NULL,
            received_at {real} NOT NULL
        )""",
        "CREATE INDEX results_station_decided ON results (station_id, decided_at)",
        """CREATE TABLE stations (
            station_id TEXT PRIMARY KEY,
            state TEXT,
            status TEXT,
            status_at {real},
            last_result_at {real},
            unsent INTEGER,
            backlog_full INTEGER,
            bundle_id TEXT
        )""",
    ]),
    (2, [
        """CREATE TABLE rejections (
            id {serial} PRIMARY KEY,
            received_at {real} NOT NULL,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL,
            result_id TEXT,
            detail TEXT
        )""",
        "CREATE INDEX rejections_received ON rejections (received_at)",
    ]),
]
LATEST_VERSION = MIGRATIONS[-1][0]
_DIALECT = {
    "sqlite": {"serial": "INTEGER", "real": "REAL"},
    "postgresql": {"serial": "BIGSERIAL", "real": "DOUBLE PRECISION"},
}


@dataclass(frozen=True)
class ResultRow:
    result_id: str
    station_id: str
    decided_at: str
    decision: str
    condition: str | None
    bundle_id: str | None
    payload: str


def content_sha256(record: dict[str, Any]) -> str:
    """Hash of a record's content, independent of key order and whitespace."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Store:
    """A connection to the central store (use from one thread)."""

    def __init__(self, conn: Any, dialect: str, where: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.where = where

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self._q(sql), params)
        return cur

    # -- schema -------------------------------------------------------------------------------------
    def version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at "
                     f"{_DIALECT[self.dialect]['real']} NOT NULL)")
        self.conn.commit()
        row = self.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self, target: int = LATEST_VERSION) -> list[int]:
        """Apply the missing migrations up to ``target``; returns the versions applied."""
        current = self.version()
        if current > LATEST_VERSION:
            raise RuntimeError(f"{self.where} has schema version {current}, newer than this facediag knows "
                               f"({LATEST_VERSION}): upgrade facediag")
        applied = []
        for version, statements in MIGRATIONS:
            if version <= current or version > target:
                continue
            try:
                for sql in statements:
                    self.execute(sql.format(**_DIALECT[self.dialect]))
                self.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))
                self.conn.commit()
            except Exception:
                self.conn.rollback()
                raise
            log.info("%s: applied schema migration %d", self.where, version)
            applied.append(version)
        return applied

    # -- writes (the caller commits) -------------------------------------------------------------------
    def add_result(self, row: ResultRow, digest: str, received_at: float) -> str:
        """'stored' | 'duplicate' (same id, same content) | 'conflict' (same id, other content)."""
        return self.add_results([(row, digest)], received_at)[0]

    def add_results(self, items: list[tuple[ResultRow, str]], received_at: float) -> list[str]:
        """Many results in one statement (one round trip to PostgreSQL); an outcome per item, in order."""
        if not items:
            return []
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(items))
        params: list[Any] = []
        for row, digest in items:
            params += [row.result_id, row.station_id, row.decided_at, row.decision, row.condition, row.bundle_id,
                       row.payload, digest, received_at]
        inserted = {str(r[0]) for r in self.execute(
            "INSERT INTO results (result_id, station_id, decided_at, decision, condition, bundle_id, payload, "
            f"content_sha256, received_at) VALUES {values} ON CONFLICT (result_id) DO NOTHING RETURNING result_id",
            tuple(params)).fetchall()}
        others = sorted({row.result_id for row, _ in items} - inserted)
        known: dict[str, str] = {}
        if others:
            marks = ", ".join(["?"] * len(others))
            known = {str(r[0]): str(r[1]) for r in self.execute(
                f"SELECT result_id, content_sha256 FROM results WHERE result_id IN ({marks})", tuple(others)).fetchall()}
        outcomes: list[str] = []
        stations: set[str] = set()
        for row, digest in items:
            if row.result_id in inserted and row.result_id not in known:
                known[row.result_id] = digest  # the first copy in this batch is the stored one
                stations.add(row.station_id)
                outcomes.append("stored")
            else:
                outcomes.append("duplicate" if known.get(row.result_id) == digest else "conflict")
        for station in sorted(stations):
            self.execute(
                "INSERT INTO stations (station_id, last_result_at) VALUES (?, ?) ON CONFLICT (station_id) DO UPDATE "
                "SET last_result_at = excluded.last_result_at", (station, received_at))
        return outcomes

    def add_status(self, station_id: str, status: dict[str, Any], received_at: float) -> None:
        unsent = status.get("unsent")
        self.execute(
            "INSERT INTO stations (station_id, state, status, status_at, unsent, backlog_full, bundle_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (station_id) DO UPDATE SET state = excluded.state, "
            "status = excluded.status, status_at = excluded.status_at, unsent = excluded.unsent, "
            "backlog_full = excluded.backlog_full, bundle_id = excluded.bundle_id",
            (station_id, str(status.get("state", "")), json.dumps(status, separators=(",", ":")), received_at,
             unsent if isinstance(unsent, int) and not isinstance(unsent, bool) else None,
             1 if status.get("backlog_full") is True else 0, str(status.get("bundle_id", "")) or None),
        )

    def add_rejection(self, topic: str, reason: str, result_id: str | None, detail: str, received_at: float) -> None:
        self.execute("INSERT INTO rejections (received_at, topic, reason, result_id, detail) VALUES (?, ?, ?, ?, ?)",
                     (received_at, topic[:256], reason, result_id, detail[:500]))

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    # -- reads ------------------------------------------------------------------------------------------
    def result_ids(self, station_id: str | None = None) -> list[str]:
        if station_id is None:
            rows = self.execute("SELECT result_id FROM results ORDER BY result_id").fetchall()
        else:
            rows = self.execute("SELECT result_id FROM results WHERE station_id = ? ORDER BY result_id",
                                (station_id,)).fetchall()
        return [str(r[0]) for r in rows]

    def count_results(self) -> int:
        return int(self.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def open_store(url: str, *, migrate: bool = True) -> Store:
    """``sqlite:///PATH``, a plain path, or ``postgresql://...``; migrated to the latest schema by default."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        import psycopg

        conn: Any = psycopg.connect(url, autocommit=False)
        store = Store(conn, "postgresql", _redact(url))
    elif scheme in ("sqlite", ""):
        path = url[len("sqlite://"):] if scheme == "sqlite" else url
        if path.startswith("/") and scheme == "sqlite" and path.startswith("//"):
            path = path[1:]
        if not path or path == "/":
            raise ValueError(f"store URL {url!r} names no file: use sqlite:///path/to/fleet.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # an acknowledged message must survive a power cut
        store = Store(conn, "sqlite", path)
    else:
        raise ValueError(f"store URL {url!r}: use sqlite:///PATH or postgresql://...")
    if migrate:
        store.migrate()
    return store


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
