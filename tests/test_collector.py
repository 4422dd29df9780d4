"""The central collector (issue 13): one schema with versioned migrations in SQLite and a real
PostgreSQL, idempotent storage by result id, refusals that are counted and logged, a kill -9 of
`facediag collect` that loses nothing, `facediag fleet`, and bundle announcements."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install -e .[collector])")

from facediag.collector.fleet import fleet_summary  # noqa: E402
from facediag.collector.service import Collector, CollectorOptions  # noqa: E402
from facediag.collector.store import LATEST_VERSION, open_store  # noqa: E402
from facediag.edge.errors import BundleError  # noqa: E402
from facediag.edge.results import ResultsWriter  # noqa: E402
from facediag.edge.uplink import Uplink, UplinkSettings, check_bundle, parse_announcement  # noqa: E402
from facediag.edge.uplink.topics import FLEET_BUNDLE_TOPIC, bundle_topic  # noqa: E402
from tests.mqtt_helpers import Broker, Postgres, Watcher, publish_many, result_record, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e .[collector])")
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    pg = request.getfixturevalue("postgres")
    return pg.new_database("t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50])


def run_collector(url: str, db: str) -> tuple[Collector, threading.Thread]:
    col = Collector(CollectorOptions(url, client_id="test-collector"), open_store(db))
    th = threading.Thread(target=col.run, daemon=True)
    th.start()
    wait_for(col.connected.is_set, 10, what="collector connected")
    return col, th


def stop_collector(col: Collector, th: threading.Thread) -> None:
    col.stop()
    th.join(10)
    col.store.close()


# ------------------------------------------------------------------------------------------ schema
def test_migrations_are_versioned_and_applied_once(db_url):
    store = open_store(db_url, migrate=False)
    assert store.version() == 0
    assert store.migrate(target=1) == [1]
    assert store.version() == 1
    assert store.migrate() == list(range(2, LATEST_VERSION + 1))
    assert store.migrate() == []
    store.close()
    store = open_store(db_url)  # reopening migrates nothing
    assert store.version() == LATEST_VERSION
    store.close()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_messages_are_refused_counted_logged_and_nothing_crashes(db_url, broker, caplog):
    col, th = run_collector(broker.url, db_url)
    try:
        good = result_record("kiosk-1", 1)
        topic = "facediag/kiosk-1/results"
        last = result_record("kiosk-1", 6)
        publish_many(broker.url, [(t, p, False) for t, p in [
            (topic, json.dumps(good).encode()),
            (topic, json.dumps(good).encode()),  # a redelivery: a duplicate, not an error
            (topic, json.dumps({**good, "reason": "changed later"}).encode()),  # same id, other content
            (topic, b"{not json"),
            (topic, b"\xff\xfe\x00"),
            (topic, b"[1, 2, 3]"),
            (topic, json.dumps({**result_record("kiosk-1", 2), "pad": "x" * 70000}).encode()),
            (topic, json.dumps(result_record("kiosk-2", 3)).encode()),  # another station's result id
            (topic, json.dumps({**result_record("kiosk-1", 4), "result_id": "kiosk-1"}).encode()),
            ("facediag/kiosk$1/results", json.dumps(result_record("kiosk-1", 5)).encode()),
            ("facediag/kiosk-1/status", b'{"state": "sideways"}'),
            (topic, json.dumps(last).encode()),  # still working after all that
        ]])
        wait_for(lambda: col.counts["stored"] == 2, 15, what="the good results")
        wait_for(lambda: sum(v for k, v in col.counts.items() if k.startswith("refused_")) == 9, 15, what="refusals")
        assert col.counts["duplicate"] == 1
        assert col.counts["refused_conflict"] == 1
        assert col.counts["refused_oversized"] == 1
        assert col.counts["refused_wrong_station"] == 1
        assert col.counts["refused_bad_topic"] == 1
        assert col.counts["refused_malformed"] == 5
        assert th.is_alive()
    finally:
        stop_collector(col, th)
    store = open_store(db_url)
    assert store.result_ids() == sorted([good["result_id"], last["result_id"]])
    stored = json.loads(store.execute("SELECT payload FROM results WHERE result_id = ?",
                                      (good["result_id"],)).fetchone()[0])
    assert stored["reason"] == good["reason"]  # the first copy is kept, the conflicting one refused
    reasons = [r[0] for r in store.execute("SELECT reason FROM rejections").fetchall()]
    assert sorted(set(reasons)) == ["bad_topic", "conflict", "malformed", "oversized", "wrong_station"]
    store.close()
    assert "different content" in caplog.text and "refused a message" in caplog.text


# ------------------------------------------------------------------------------------------ crash safety
def _collect_proc(url: str, db: str, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facediag", "collect", "--broker", url, "--db", db,
                             "--client-id", "kill-test"], cwd=REPO, stdout=open(tmp / "collect.log", "ab"),
                            stderr=subprocess.STDOUT)


def test_kill_9_of_the_collector_loses_nothing_and_stores_nothing_twice(db_url, broker, tmp_path):
    results = tmp_path / "results.jsonl"
    sid = "kiosk-9"
    proc = _collect_proc(broker.url, db_url, tmp_path)
    up = Uplink(UplinkSettings(station_id=sid, broker=broker.url, results_path=results,
                               outbox_path=tmp_path / "outbox.sqlite3", backoff_max_s=0.5))
    written: list[str] = []
    stop = threading.Event()

    def station() -> None:  # a result every few ms, like a busy fleet
        with ResultsWriter(results) as w:
            i = 0
            while not stop.is_set() and i < 600:
                rec = result_record(sid, i)
                w.write(rec)
                written.append(rec["result_id"])
                up.notify()
                i += 1
                time.sleep(0.003)

    def stored() -> int:
        s = open_store(db_url, migrate=False)
        try:
            return s.count_results() if s.version() else 0
        finally:
            s.close()

    writer = threading.Thread(target=station)
    try:
        wait_for(lambda: stored() == 0 and (tmp_path / "collect.log").read_text().count("connected") >= 1, 20,
                 what="collector up")
        up.start()
        writer.start()
        for _ in range(3):  # bounded: three kills while results are flowing
            wait_for(lambda: stored() > 0, 20, what="rows before the kill")
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            time.sleep(0.3)
            proc = _collect_proc(broker.url, db_url, tmp_path)
        writer.join(30)
        wait_for(lambda: stored() == len(written), 60, what="every result stored")
        store = open_store(db_url)
        assert store.result_ids() == sorted(written)  # exactly once each (result_id is the primary key)
        store.close()
    finally:
        stop.set()
        up.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


# ------------------------------------------------------------------------------------------ fleet + bundles
def test_fleet_shows_each_station_with_its_backlog_and_decisions(tmp_path, broker):
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    col, th = run_collector(broker.url, db)
    try:
        msgs = [("facediag/kiosk-a/results", json.dumps(result_record("kiosk-a", i)).encode(), False)
                for i in range(6)]
        msgs.append(("facediag/kiosk-b/results", json.dumps(result_record("kiosk-b", 0)).encode(), False))
        msgs.append(("facediag/kiosk-b/status", json.dumps(
            {"station_id": "kiosk-b", "state": "offline", "reason": "connection lost", "at": time.time(),
             "unsent": 42, "backlog_full": True, "bundle_id": "d" * 64}).encode(), True))
        publish_many(broker.url, msgs)
        wait_for(lambda: col.counts["stored"] == 7 and col.counts["status"] == 1, 15, what="stored")
    finally:
        stop_collector(col, th)
    out = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--db", db, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["station_id"]: r for r in json.loads(out.stdout)["stations"]}
    assert rows["kiosk-a"]["results_total"] == 6
    assert rows["kiosk-a"]["decisions"] == {"refer": 2, "no_finding": 2, "retake": 2}
    assert rows["kiosk-a"]["results_per_day"] == {"2026-12-01": 6} or rows["kiosk-a"]["results_per_day"] == {}
    assert (rows["kiosk-b"]["state"], rows["kiosk-b"]["state_reason"]) == ("offline", "connection lost")
    assert rows["kiosk-b"]["backlog"] == 42 and rows["kiosk-b"]["backlog_full"] is True
    table = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--db", db], cwd=REPO,
                           capture_output=True, text=True, timeout=60).stdout
    assert "kiosk-a" in table and "42!" in table
    store = open_store(db)
    assert fleet_summary(store)[0]["station_id"] == "kiosk-a"
    store.close()


@pytest.fixture
def tiny_bundle(tmp_path):
    pytest.importorskip("onnx")
    from facediag.edge.bundle import create_bundle
    from tests.test_bundle import CLASSES, CONTRACT, tiny_classifier

    folder = tmp_path / "bundle-v2"
    folder.mkdir()
    tiny_classifier(folder / "model.onnx", np.random.default_rng(0).normal(size=(3, 3)) / 50)
    create_bundle(folder, classes=CLASSES, healthy_class="healthy", contract=CONTRACT,
                  thresholds={"pale_skin": 0.4, "rosy_cheeks": 0.6}, fp32_file="model.onnx",
                  fp32_gate={"reference": "pytorch", "max_abs_diff": 1e-7},
                  source_checkpoint={"path": "/x/ckpt", "sha256": "0" * 64}, creator="facediag test")
    return folder


def test_bundle_announcement_reaches_the_station_and_a_tampered_bundle_is_refused(tmp_path, broker, tiny_bundle):
    sha = json.loads((tiny_bundle / "bundle.json").read_text())["bundle_sha256"]
    results = tmp_path / "results.jsonl"
    results.touch()
    up = Uplink(UplinkSettings(station_id="kiosk-b", broker=broker.url, results_path=results,
                               outbox_path=tmp_path / "outbox.sqlite3"), identity={"bundle_id": "e" * 64})
    watcher = Watcher(broker.url, [FLEET_BUNDLE_TOPIC, bundle_topic("kiosk-b")])
    try:
        up.start()
        out = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--announce-bundle", str(tiny_bundle),
                              "--broker", broker.url, "--station", "kiosk-b", "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["bundle_sha256"] == sha
        snap = wait_for(lambda: (s := up.snapshot())["bundle_announced"] and s, 10, what="the announcement")
        assert snap["bundle_announced"]["bundle_sha256"] == sha and snap["bundle_announced"]["bundle_id"] == "bundle-v2"
        assert snap["bundle_current"] is False  # it runs another bundle, and says so
        ann = parse_announcement(watcher.last[bundle_topic("kiosk-b")])
        check_bundle(tiny_bundle, ann)  # the genuine bundle passes
        model = tiny_bundle / "model.onnx"
        model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
        with pytest.raises(BundleError):
            check_bundle(tiny_bundle, ann)
        refused = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--announce-bundle", str(tiny_bundle),
                                  "--broker", broker.url, "--all"], cwd=REPO, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode != 0 and "model.onnx" in refused.stderr
        time.sleep(0.3)
        assert FLEET_BUNDLE_TOPIC not in watcher.last  # nothing was announced for the tampered bundle
    finally:
        up.stop()
        watcher.close()
