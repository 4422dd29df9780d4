"""Issue 13 end to end: the real daemon (`facediag run`) screens the fixture video with the uplink on,
a real Mosquitto broker carries the results, the real `facediag collect` stores them in a real
PostgreSQL. Then, in bounded loops, the broker, the daemon and the collector are each killed with
SIGKILL and restarted; afterwards every result in the station's log is in the central store exactly
once, and the status topic showed the station's last will after its kill. A second run fills the
outbox to its limit with the broker down: `uplink: backlog full` on /status, STATUS= and /metrics,
nothing dropped, and everything sent once the broker is back."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install -e .[station,collector])")

from facediag.collector.store import open_store  # noqa: E402
from facediag.edge.uplink.topics import status_topic  # noqa: E402
from tests.daemon_helpers import (  # noqa: E402
    TOKEN,
    NotifyListener,
    api_get,
    api_json,
    free_port,
    read_lines,
    start_daemon,
    stop_daemon,
    visits_video,
    write_station_config,
    yale_photo,
)
from tests.mqtt_helpers import Broker, Postgres, Watcher, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SID = "clinic-a.kiosk-3"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    photos = [yale_photo("subject01.normal"), yale_photo("subject02.glasses"), yale_photo("subject03.happy")]
    return visits_video(tmp_path_factory.mktemp("uplink_video") / "visits.avi", photos)


def _config(tmp: Path, broker: Broker, bundle: Path, detector: Path, video: Path, port: int, extra: str = "") -> Path:
    return write_station_config(
        tmp, uri=f"file:{video}", bundle=bundle, yunet=detector, port=port, loop=True,
        source_extra="fps = 60", service="status_interval_s = 0.2",
        extra=f'\n[station]\nid = "{SID}"\n\n[uplink]\nenabled = true\nbroker = "{broker.url}"\n'
              f"status_interval_s = 1.0\nbackoff_max_s = 1.0\n{extra}")


def _collect(url: str, db: str, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facediag", "collect", "--broker", url, "--db", db],
                            cwd=REPO, stdout=open(tmp / "collect.log", "ab"), stderr=subprocess.STDOUT)


def _stored(db: str) -> list[str]:
    store = open_store(db, migrate=False)
    try:
        return store.result_ids(SID) if store.version() else []
    finally:
        store.close()


def _log_ids(results: Path) -> list[str]:
    return sorted(r["result_id"] for r in read_lines(results))


def _metric(text: str, name: str) -> float:
    m = re.search(r"^" + re.escape(name) + r" ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_daemon_uplink_survives_kills_of_broker_daemon_and_collector(tmp_path, bundle_dir, yunet, face_video):
    pg = Postgres().start()
    broker = Broker(tmp_path / "broker").start()
    db = pg.new_database("fleet_e2e")
    results = tmp_path / "state" / "results.jsonl"
    port = free_port()
    config = _config(tmp_path, broker, bundle_dir, yunet, face_video, port)
    watcher = Watcher(broker.url, [status_topic(SID)])
    collector = _collect(broker.url, db, tmp_path)
    daemon = None
    try:
        wait_for(lambda: "connected to" in (tmp_path / "collect.log").read_text(), 30, what="collector up")
        time.sleep(1.3)  # the broker saves the collector's persistent session (autosave_interval 1)
        daemon = start_daemon(config, tmp_path / "cwd", None, log_path=tmp_path / "daemon.log")
        log = lambda: (tmp_path / "daemon.log").read_text()  # noqa: E731
        wait_for(lambda: len(_stored(db)) >= 2, 120, what=f"results in PostgreSQL; daemon log:\n{log()}")
        status = api_json(port, "/status")
        assert status["station_id"] == SID and status["uplink"]["connected"] is True
        assert all(r["station_id"] == SID and r["result_id"].startswith(SID + ":") for r in read_lines(results))
        code, body = api_get(port, "/metrics", TOKEN)
        assert code == 200 and _metric(body.decode(), "facediag_uplink_connected") == 1
        assert (watcher.json(status_topic(SID)) or {}).get("state") == "online"

        # 1. the broker dies mid-run (SIGKILL) and comes back
        n = len(_stored(db))
        broker.kill(signal.SIGKILL)
        time.sleep(0.5)
        broker.start()
        wait_for(lambda: len(_stored(db)) >= n + 2, 60, what="results after the broker restart")

        # 2. the daemon is killed while results are in flight; its last will says so; it restarts
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        will = wait_for(lambda: (s := watcher.json(status_topic(SID))) and s["state"] == "offline" and s, 15,
                        what="the last will")
        assert will["reason"] == "connection lost"
        n = len(_stored(db))
        daemon = start_daemon(config, tmp_path / "cwd", None, log_path=tmp_path / "daemon2.log")
        wait_for(lambda: len(_stored(db)) >= n + 2, 120, what="results after the daemon restart")
        assert (watcher.json(status_topic(SID)) or {}).get("state") == "online"

        # 3. the collector is killed (SIGKILL) and restarted: its session keeps what came meanwhile
        collector.send_signal(signal.SIGKILL)
        collector.wait(10)
        time.sleep(1.0)  # results keep coming while nobody stores them
        collector = _collect(broker.url, db, tmp_path)
        n = len(_stored(db))
        wait_for(lambda: len(_stored(db)) >= n + 2, 60, what="results after the collector restart")

        code = stop_daemon(daemon)
        daemon = None
        assert code == 0
        # every result in the station's log is in the central store exactly once (result_id is the key)
        wait_for(lambda: _stored(db) == _log_ids(results), 60,
                 what=f"the store to equal the log ({len(_log_ids(results))} results)")
        goodbye = wait_for(lambda: (s := watcher.json(status_topic(SID))) and s["reason"] == "stopped" and s, 10,
                           what="the retained goodbye")
        assert goodbye["state"] == "offline" and goodbye["unsent"] == 0
        fleet = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--db", db, "--json"], cwd=REPO,
                               capture_output=True, text=True, timeout=60)
        import json

        row = {r["station_id"]: r for r in json.loads(fleet.stdout)["stations"]}[SID]
        assert row["results_total"] == len(_log_ids(results)) and row["state"] == "offline"
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait(10)
        collector.send_signal(signal.SIGTERM)
        collector.wait(15)
        watcher.close()
        broker.stop()
        pg.stop()


def test_daemon_with_a_full_outbox_keeps_screening_and_catches_up(tmp_path, bundle_dir, yunet, face_video):
    broker = Broker(tmp_path / "broker").start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    collector = _collect(broker.url, db, tmp_path)
    results = tmp_path / "state" / "results.jsonl"
    port = free_port()
    config = _config(tmp_path, broker, bundle_dir, yunet, face_video, port, extra="outbox_max_results = 2\n")
    notify = NotifyListener()
    daemon = None
    try:
        wait_for(lambda: "connected to" in (tmp_path / "collect.log").read_text(), 30, what="collector up")
        time.sleep(1.3)  # the collector's persistent session is saved by the broker ...
        broker.stop()  # ... which then goes away: the clinic's network is down
        daemon = start_daemon(config, tmp_path / "cwd", notify, log_path=tmp_path / "daemon.log")
        wait_for(lambda: len(read_lines(results)) >= 4, 120, what="4 results in the local log")
        status = wait_for(lambda: (s := api_json(port, "/status"))["uplink"]["backlog_full"] and s, 20,
                          what="backlog full on /status")
        assert status["uplink"]["state"] == "uplink: backlog full" and status["uplink"]["unsent"] >= 4
        assert wait_for(lambda: any("uplink: backlog full" in line for _, line in notify.lines()), 5,
                        what="STATUS= saying so")
        text = api_get(port, "/metrics", TOKEN)[1].decode()
        assert _metric(text, "facediag_uplink_backlog_full") == 1
        assert _metric(text, "facediag_uplink_unsent_results") >= 4
        assert _metric(text, "facediag_uplink_oldest_unsent_age_seconds") > 0
        assert api_json(port, "/status")["healthy"]  # still screening
        broker.start()
        wait_for(lambda: api_json(port, "/status")["uplink"]["state"] == "uplink: connected", 60, what="drained")
        code = stop_daemon(daemon)
        daemon = None
        assert code == 0
        wait_for(lambda: _stored(db) == _log_ids(results), 60, what="every local result in the store, once")
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        notify.close()
        collector.send_signal(signal.SIGTERM)
        collector.wait(15)
        broker.stop()
