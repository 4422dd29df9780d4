"""Issue 13 targets: results through MQTT into the central store, on this machine.

    python benchmarks/uplink.py [--quick] [--skip-postgres]

Starts its own Mosquitto (loopback, free port) and, unless --skip-postgres, a throwaway
PostgreSQL cluster (Debian packages; see tests/mqtt_helpers.py), runs `facediag collect` as a
separate process (as in production) and measures:

- results/s from one station (a 5,000-result backlog) into SQLite and into PostgreSQL;
- end-to-end latency (durable local write -> row in the store), p50/p99, at 20 results/s;
- catch-up time for 10,000 results backlogged during a broker outage;
- simulated fleets of 10 and 100 stations (station processes, each running its uplinks as
  threads, publishing real result records from their own results logs and outboxes) against one
  broker and one collector: time to drain a backlog and the fleet's results/s.

A kiosk produces about one result every 10 s: a 100-station fleet needs 10 results/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facediag.collector.store import open_store  # noqa: E402
from facediag.edge.results import ResultsWriter  # noqa: E402
from facediag.edge.uplink import Uplink, UplinkSettings  # noqa: E402
from tests.mqtt_helpers import Broker, Postgres, result_record, wait_for  # noqa: E402


def stored(db: str) -> int:
    s = open_store(db, migrate=False)
    try:
        return s.count_results() if s.version() else 0
    finally:
        s.close()


class CollectorProc:
    def __init__(self, url: str, db: str, tmp: Path) -> None:
        self.log = tmp / f"collect-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "facediag", "collect", "--broker", url, "--db", db,
                                      "--client-id", f"bench-{self.log.stem}"], cwd=REPO,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: "connected to" in self.log.read_text(), 60, what="collector")
        time.sleep(1.2)  # let the broker save the persistent session (autosave_interval 1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def write_backlog(path: Path, station: str, n: int) -> None:
    with ResultsWriter(path, fsync=False) as w:
        for i in range(n):
            w.write(result_record(station, i))


def station_settings(folder: Path, station: str, url: str) -> UplinkSettings:
    return UplinkSettings(station_id=station, broker=url, results_path=folder / f"{station}.jsonl",
                          outbox_path=folder / f"{station}.outbox.sqlite3", backoff_max_s=1.0)


def _station_worker(folder: str, stations: list[str], url: str, go: mp.Event, stop: mp.Event) -> None:
    ups = [Uplink(station_settings(Path(folder), s, url)) for s in stations]
    go.wait()
    for u in ups:
        u.start()
    stop.wait()
    for u in ups:
        u.stop(timeout=5)


def drain(db: str, url: str, tmp: Path, stations: int, per_station: int, processes: int) -> tuple[float, int]:
    """Each station has ``per_station`` results in its log; seconds until all are in the store."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    names = [f"kiosk-{i:03d}" for i in range(stations)]
    for name in names:
        write_backlog(folder / f"{name}.jsonl", name, per_station)
    before = stored(db)
    ctx = mp.get_context("fork")
    go, stop = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_station_worker, args=(str(folder), names[i::processes], url, go, stop))
             for i in range(min(processes, stations))]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    go.set()
    total = stations * per_station
    wait_for(lambda: stored(db) - before >= total, 900, interval=0.1, what=f"{total} results stored")
    elapsed = time.monotonic() - t0
    stop.set()
    for p in procs:
        p.join(30)
    return elapsed, total


def latency(db: str, url: str, tmp: Path, rate: float, seconds: float) -> list[float]:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    name = "kiosk-latency"
    up = Uplink(station_settings(folder, name, url))
    (folder / f"{name}.jsonl").touch()
    up.start()
    wait_for(lambda: up.snapshot()["connected"], 20, what="uplink connected")
    n = int(rate * seconds)
    with ResultsWriter(folder / f"{name}.jsonl") as w:  # fsync per result, as on a station
        for i in range(n):
            w.write(result_record(name, i, reason=f"bench {time.time():.6f}"))
            up.notify()
            time.sleep(1.0 / rate)
    wait_for(lambda: _count_station(db, name) >= n, 60, what="latency results stored")
    up.stop()
    s = open_store(db, migrate=False)
    rows = s.execute("SELECT payload, received_at FROM results WHERE station_id = ?", (name,)).fetchall()
    s.close()
    return sorted(float(r[1]) - float(json.loads(r[0])["reason"].split()[1]) for r in rows)


def _count_station(db: str, station: str) -> int:
    s = open_store(db, migrate=False)
    try:
        return len(s.result_ids(station))
    finally:
        s.close()


def catch_up(db: str, broker: Broker, tmp: Path, n: int) -> float:
    """Broker down, ``n`` results pile up in the station's log and outbox; seconds from broker start to all stored."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    name = "kiosk-outage"
    broker.stop()
    up = Uplink(station_settings(folder, name, broker.url))
    write_backlog(folder / f"{name}.jsonl", name, n)
    up.start()
    wait_for(lambda: (up.snapshot()["unsent"] or 0) >= n, 60, what="backlog in the outbox")
    before = stored(db)
    t0 = time.monotonic()
    broker.start()
    wait_for(lambda: stored(db) - before >= n, 600, interval=0.1, what="catch-up")
    elapsed = time.monotonic() - t0
    up.stop()
    return elapsed


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench_store(kind: str, db: str, tmp: Path, quick: bool) -> None:
    broker = Broker(tmp / f"broker-{kind}").start()
    col = CollectorProc(broker.url, db, tmp)
    try:
        n = 2000 if quick else 5000
        elapsed, total = drain(db, broker.url, tmp, 1, n, 1)
        print(f"[{kind}] one station, {total} backlogged results: {total / elapsed:,.0f} results/s "
              f"({elapsed:.1f} s)", flush=True)
        lat = latency(db, broker.url, tmp, rate=20.0, seconds=5 if quick else 15)
        print(f"[{kind}] end-to-end latency at 20 results/s (fsync'd local write -> row in the store), "
              f"{len(lat)} results: p50 {1000 * statistics.median(lat):.1f} ms, p99 {1000 * pct(lat, 0.99):.1f} ms",
              flush=True)
        if kind == "sqlite" or not quick:
            m = 2000 if quick else 10000
            t = catch_up(db, broker, tmp, m)
            print(f"[{kind}] catch-up after a broker outage: {m} backlogged results in {t:.1f} s "
                  f"({m / t:,.0f} results/s)", flush=True)
        for stations, per in ((10, 100 if quick else 300), (100, 20 if quick else 60)):
            elapsed, total = drain(db, broker.url, tmp, stations, per, processes=4)
            need = stations / 10.0
            print(f"[{kind}] fleet of {stations} stations ({per} backlogged results each, 4 station processes): "
                  f"{total} results in {elapsed:.1f} s = {total / elapsed:,.0f} results/s; a real fleet of "
                  f"{stations} kiosks needs {need:g}/s -> headroom {total / elapsed / need:,.0f}x", flush=True)
    finally:
        col.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmark)")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="facediag-uplink-bench-"))
    bench_store("sqlite", f"sqlite:///{tmp / 'fleet.db'}", tmp, args.quick)
    if not args.skip_postgres:
        pg = Postgres().start()
        try:
            bench_store("postgresql", pg.new_database("fleet_bench"), tmp, args.quick)
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
