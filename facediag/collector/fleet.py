"""`facediag fleet`: per-station last seen, backlog, results per day and decisions, from the central store."""

from __future__ import annotations

import json
import time
from typing import Any

from facediag.collector.store import Store


def fleet_summary(store: Store, days: int = 7, now: float | None = None) -> list[dict[str, Any]]:
    """One dict per station, sorted by station id."""
    now = time.time() if now is None else now
    since = time.strftime("%Y-%m-%d", time.gmtime(now - (days - 1) * 86400))
    stations: dict[str, dict[str, Any]] = {}
    for sid, state, status, status_at, last_result_at, unsent, full, bundle in store.execute(
            "SELECT station_id, state, status, status_at, last_result_at, unsent, backlog_full, bundle_id "
            "FROM stations").fetchall():
        seen = max((t for t in (status_at, last_result_at) if t is not None), default=None)
        try:
            reason = json.loads(status).get("reason") if status else None
        except ValueError:
            reason = None
        stations[sid] = {
            "station_id": sid, "state": state or "unknown", "state_reason": reason,
            "last_seen": seen, "last_seen_age_s": None if seen is None else round(max(0.0, now - float(seen)), 1),
            "backlog": unsent, "backlog_full": bool(full), "bundle_id": bundle,
            "results_total": 0, "results_per_day": {}, "decisions": {},
        }
    for sid, day, n in store.execute(
            "SELECT station_id, substr(decided_at, 1, 10) AS day, COUNT(*) FROM results WHERE decided_at >= ? "
            "GROUP BY station_id, day ORDER BY day", (since,)).fetchall():
        _station(stations, sid)["results_per_day"][day] = int(n)
    for sid, decision, n in store.execute(
            "SELECT station_id, decision, COUNT(*) FROM results GROUP BY station_id, decision").fetchall():
        st = _station(stations, sid)
        st["decisions"][decision] = int(n)
        st["results_total"] += int(n)
    return [stations[k] for k in sorted(stations)]


def _station(stations: dict[str, dict[str, Any]], sid: str) -> dict[str, Any]:
    return stations.setdefault(sid, {
        "station_id": sid, "state": "unknown", "state_reason": None, "last_seen": None, "last_seen_age_s": None,
        "backlog": None, "backlog_full": False, "bundle_id": None, "results_total": 0, "results_per_day": {},
        "decisions": {},
    })


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no stations have reported yet"
    header = f"{'station':<24} {'state':<8} {'last seen':>10} {'backlog':>8} {'results':>8} {'today':>6}  decisions"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    lines = [header]
    for r in rows:
        age = "-" if r["last_seen_age_s"] is None else _age(r["last_seen_age_s"])
        backlog = "-" if r["backlog"] is None else str(r["backlog"]) + ("!" if r["backlog_full"] else "")
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(r["decisions"].items())) or "-"
        lines.append(f"{r['station_id']:<24} {r['state']:<8} {age:>10} {backlog:>8} {r['results_total']:>8} "
                     f"{r['results_per_day'].get(today, 0):>6}  {decisions}")
    if any(r["backlog_full"] for r in rows):
        lines.append("! = backlog full: the station keeps its results locally and sends them when it can")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
