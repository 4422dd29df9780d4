"""Results rotation and retention (issue 12): by size, by day, by age, by total size; no line torn or lost."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from facediag.edge.results_rotation import (
    RotatingResultsWriter,
    RotationPolicy,
    apply_retention,
    open_results_writer,
    rotated_files,
)

DAY = 86400.0
T0 = 1_780_000_000.0  # a fixed UTC instant (2026-05-28), mid-day


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _all_lines(path: Path) -> list[bytes]:
    out: list[bytes] = []
    for p in [*rotated_files(path), path]:
        data = p.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{p.name} ends in a torn line"
        out += data.splitlines()
    return out


def _record(i: int, pad: int = 40) -> dict:
    return {"record": "screening_result", "n": i, "station_id": "kiosk-1", "reason": "x" * pad}


def test_rotates_by_size_between_whole_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    clock = Clock(T0)
    with RotatingResultsWriter(path, RotationPolicy(rotate_bytes=400), clock=clock) as w:
        for i in range(40):
            clock.t += 1
            w.write(_record(i))
    files = rotated_files(path)
    assert len(files) >= 5 and w.rotations == len(files)
    for p in [*files, path]:
        assert 0 < p.stat().st_size <= 400
        assert (p.stat().st_mode & 0o777) == 0o600
    lines = _all_lines(path)
    assert [json.loads(line)["n"] for line in lines] == list(range(40))  # in order, none lost, none twice
    assert [p.name for p in files] == sorted(p.name for p in files)  # names sort by rotation time


def test_daily_rotation_and_age_retention(tmp_path):
    path = tmp_path / "results.jsonl"
    clock = Clock(T0)
    policy = RotationPolicy(max_age_days=2)
    w = RotatingResultsWriter(path, policy, clock=clock)
    for day in range(5):
        clock.t = T0 + day * DAY
        w.write(_record(day))
        w.write(_record(day))
    w.close()
    # one file per UTC day: 4 rotated + the current one (their real mtimes are now: nothing expired yet)
    files = rotated_files(path)
    assert len(files) == 4
    assert [[json.loads(line)["n"] for line in p.read_bytes().splitlines()] for p in files] == [[d, d] for d in range(4)]
    # age the rotated files as if written on their days, then expire everything older than 2 days
    for i, p in enumerate(rotated_files(path)):
        t = T0 + i * DAY
        os.utime(p, (t, t))
    removed = apply_retention(path, policy, now=T0 + 4 * DAY + 60)
    kept = [json.loads(line)["n"] for line in _all_lines(path)]
    assert len(removed) == 3 and kept == [3, 3, 4, 4]  # day 2 was last written 2 days + 60 s ago


def test_total_size_cap_drops_oldest_rotated_files_never_the_current(tmp_path):
    path = tmp_path / "results.jsonl"
    clock = Clock(T0)
    with RotatingResultsWriter(path, RotationPolicy(rotate_bytes=300, max_total_bytes=1000), clock=clock) as w:
        for i in range(60):
            clock.t += 1
            w.write(_record(i))
    total = sum(p.stat().st_size for p in [*rotated_files(path), path])
    assert total <= 1000
    kept = [json.loads(line)["n"] for line in _all_lines(path)]
    assert kept == list(range(60 - len(kept), 60)) and kept[-1] == 59  # the newest, contiguous


def test_concurrent_writers_lose_and_tear_nothing_across_rotations(tmp_path):
    path = tmp_path / "results.jsonl"
    w = RotatingResultsWriter(path, RotationPolicy(rotate_bytes=1500), fsync=False)
    threads = [threading.Thread(target=lambda k=k: [w.write(_record(k * 1000 + i)) for i in range(150)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    seen = [json.loads(line)["n"] for line in _all_lines(path)]
    assert sorted(seen) == sorted(k * 1000 + i for k in range(4) for i in range(150))
    assert w.rotations > 10


def test_config_keys_choose_the_writer(tmp_path):
    from facediag.edge.config import parse_config
    from facediag.edge.results import ResultsWriter

    cfg = parse_config({"results": {"path": str(tmp_path / "r.jsonl"), "rotate_bytes": 1000, "max_age_days": 30,
                                    "max_total_bytes": 10_000}})
    w = open_results_writer(cfg.results)
    assert isinstance(w, RotatingResultsWriter) and w.policy == RotationPolicy(1000, 30.0, 10_000)
    w.close()
    off = parse_config({"results": {"path": str(tmp_path / "s.jsonl"), "rotate_bytes": 0}}).results
    w = open_results_writer(off)
    assert type(w) is ResultsWriter
    w.close()
