"""The station's uplink (issue 13): outbox on disk, MQTT publisher, status + last will, backpressure,
bundle announcements. Real Mosquitto broker on loopback (tests/mqtt_helpers.py), real results files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install -e .[station])")

from facediag.collector.service import Collector, CollectorOptions  # noqa: E402
from facediag.collector.store import open_store  # noqa: E402
from facediag.edge.config import parse_config_text  # noqa: E402
from facediag.edge.errors import ConfigError  # noqa: E402
from facediag.edge.results import ResultsWriter, read_results  # noqa: E402
from facediag.edge.uplink import Outbox, Uplink, UplinkSettings, new_result_id, validate_station_id  # noqa: E402
from facediag.edge.uplink.topics import parse_broker_url, station_of_topic, status_topic  # noqa: E402
from tests.mqtt_helpers import Broker, Watcher, result_record, tls_password_broker, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SID = "kiosk-7"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def write_results(path: Path, n: int, start: int = 0, station: str = SID) -> list[dict]:
    records = [result_record(station, start + i) for i in range(n)]
    with ResultsWriter(path, fsync=False) as w:
        for r in records:
            w.write(r)
    return records


def settings(tmp: Path, url: str, **over) -> UplinkSettings:
    kw = dict(station_id=SID, broker=url, results_path=tmp / "results.jsonl", outbox_path=tmp / "outbox.sqlite3",
              backoff_initial_s=0.1, backoff_max_s=0.5, status_interval_s=0.5)
    kw.update(over)
    return UplinkSettings(**kw)


class RunningCollector:
    def __init__(self, url: str, db: str, client_id: str = "test-collector") -> None:
        self.store = open_store(db)
        self.collector = Collector(CollectorOptions(url, client_id=client_id), self.store)
        self.thread = threading.Thread(target=self.collector.run, daemon=True)
        self.thread.start()

    def ids(self) -> list[str]:
        return open_store(self.store.where).result_ids()

    def stop(self) -> None:
        self.collector.stop()
        self.thread.join(10)
        self.store.close()


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("bad", ["a/b", "+", "kiosk#1", "kiosk+", "", "-lead", "x" * 65, "tab\tid", "sp ace"])
def test_station_ids_with_topic_wildcards_or_separators_are_refused(bad):
    with pytest.raises(ConfigError):
        validate_station_id(bad)
    with pytest.raises(ConfigError):
        new_result_id(bad)


def test_result_ids_are_unique_and_name_their_station():
    ids = {new_result_id(SID) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(i.startswith(SID + ":") for i in ids)
    assert station_of_topic(f"facediag/{SID}/results", "results") == SID
    assert station_of_topic("facediag/a/b/results", "results") is None


def test_broker_urls():
    a = parse_broker_url("mqtts://broker.example:8884")
    assert (a.host, a.port, a.tls) == ("broker.example", 8884, True)
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    for bad in ("http://x", "mqtt://", "mqtt://h:99999", "mqtt://h/path"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)
    with pytest.raises(ConfigError, match="credentials_file"):
        UplinkSettings(station_id=SID, broker="mqtt://u:p@h", results_path=Path("r"), outbox_path=Path("o"))


def test_uplink_config_section_is_off_by_default_and_validated(tmp_path):
    cfg = parse_config_text("", base_dir=tmp_path)
    assert cfg.uplink.enabled is False
    cfg = parse_config_text('[station]\nid = "k1"\n[uplink]\nenabled = true\nbroker = "mqtt://127.0.0.1:1884"\n'
                            "outbox_max_results = 10\n", base_dir=tmp_path)
    assert cfg.uplink.enabled and cfg.uplink.outbox_max_results == 10
    with pytest.raises(ConfigError, match="uplink.broker"):
        parse_config_text('[uplink]\nenabled = true\nbroker = "http://x"\n', base_dir=tmp_path)
    with pytest.raises(ConfigError, match="station"):
        parse_config_text('[station]\nid = "a/+"\n', base_dir=tmp_path)


# ------------------------------------------------------------------------------------------ outbox
def test_outbox_copies_the_log_up_to_its_limit_and_refills_after_acks(tmp_path):
    records = write_results(tmp_path / "results.jsonl", 12)
    box = Outbox(tmp_path / "outbox.sqlite3", tmp_path / "results.jsonl", SID, max_entries=5)
    assert box.feed() == 5
    st = box.stats()
    assert st.full and st.pending == 5 and st.unqueued == 7 and st.unsent == 12
    batch = box.batch(0, 100)
    assert [rid for _, rid, _ in batch] == [r["result_id"] for r in records[:5]]  # oldest first
    assert json.loads(batch[0][2]) == records[0]  # the log line itself
    box.mark_acked([seq for seq, _, _ in batch[:3]])
    box.close()
    box = Outbox(tmp_path / "outbox.sqlite3", tmp_path / "results.jsonl", SID, max_entries=5)  # reopened
    assert box.stats().pending == 2
    assert box.feed() == 3
    assert [rid for _, rid, _ in box.batch(0, 100)] == [r["result_id"] for r in records[3:8]]
    assert box.stats().acked_total == 3


def test_outbox_reads_the_rest_of_a_rotated_log_first_and_skips_foreign_lines(tmp_path):
    log = tmp_path / "results.jsonl"
    first = write_results(log, 4)
    box = Outbox(tmp_path / "outbox.sqlite3", log, SID, max_entries=100)
    box.feed()
    more = write_results(log, 3, start=4)
    os.rename(log, tmp_path / "results.jsonl.1")  # rotation after 3 more lines that were not read yet
    with ResultsWriter(log, fsync=False) as w:
        w.write(result_record("other-station", 99))  # not this station's: never sent
        w.write({k: v for k, v in result_record(SID, 98).items() if k != "result_id"})  # no id
    newest = write_results(log, 2, start=7)
    box.feed()
    assert [rid for _, rid, _ in box.batch(0, 100)] == [r["result_id"] for r in first + more + newest]
    assert box.stats().skipped_total == 2


def test_outbox_survives_kill_9_while_copying(tmp_path):
    records = write_results(tmp_path / "results.jsonl", 3000)
    code = (
        "import sys, time\n"
        "from facediag.edge.uplink import Outbox\n"
        "from facediag.edge.uplink import outbox as ob\n"
        "ob.READ_CHUNK = 4096\n"
        f"b = Outbox(sys.argv[1], sys.argv[2], {SID!r}, 100000)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    b.feed(); time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "outbox.sqlite3"),
                             str(tmp_path / "results.jsonl")], stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    box = Outbox(tmp_path / "outbox.sqlite3", tmp_path / "results.jsonl", SID, max_entries=100000)
    box.feed()
    got = [rid for _, rid, _ in box.batch(0, 10000)]
    assert got == [r["result_id"] for r in records]  # all, once, in log order


# ------------------------------------------------------------------------------------------ with a broker
def test_results_reach_the_collector_exactly_once_and_status_is_retained(tmp_path, broker):
    records = write_results(tmp_path / "results.jsonl", 50)
    col = RunningCollector(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    watcher = Watcher(broker.url, [status_topic(SID)])
    up = Uplink(settings(tmp_path, broker.url), identity={"bundle_id": "b" * 64, "model_sha256": "c" * 64})
    try:
        wait_for(col.collector.connected.is_set, 10, what="collector connected")
        up.start()
        wait_for(lambda: col.collector.counts["stored"] == 50, 30, what="50 results stored")
        more = write_results(tmp_path / "results.jsonl", 10, start=50)
        up.notify()
        wait_for(lambda: col.collector.counts["stored"] == 60, 30, what="60 results stored")
        assert col.ids() == sorted(r["result_id"] for r in records + more)
        row = open_store(col.store.where).execute("SELECT payload FROM results WHERE result_id = ?",
                                                  (records[7]["result_id"],)).fetchone()
        assert json.loads(row[0]) == records[7]
        status = wait_for(lambda: watcher.json(status_topic(SID)), 10, what="status")
        assert status["state"] == "online" and status["bundle_id"] == "b" * 64
        wait_for(lambda: up.snapshot()["unsent"] == 0, 10, what="outbox empty")
    finally:
        up.stop()
        watcher.close()
    late = Watcher(broker.url, [status_topic(SID)])  # a new subscriber sees the retained goodbye
    try:
        status = wait_for(lambda: late.json(status_topic(SID)), 10, what="retained status")
        assert (status["state"], status["reason"]) == ("offline", "stopped")
    finally:
        late.close()
        col.stop()
    assert col.collector.counts["stored"] == 60 and col.collector.counts["duplicate"] == 0


def test_backlog_full_keeps_the_log_and_catches_up_when_the_broker_returns(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    col = RunningCollector(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")  # its persistent session exists...
    up = None
    try:
        wait_for(col.collector.connected.is_set, 10, what="collector connected")
        broker.stop()  # ... and survives the broker's restart (persistence)
        records = write_results(tmp_path / "results.jsonl", 12)
        up = Uplink(settings(tmp_path, broker.url, max_entries=5))
        up.start()
        snap = wait_for(lambda: (s := up.snapshot())["backlog_full"] and s, 10, what="backlog full")
        assert snap["state"] == "uplink: backlog full" and snap["unsent"] == 12 and not snap["connected"]
        assert len(read_results(tmp_path / "results.jsonl")) == 12  # nothing dropped locally
        broker.start()
        wait_for(lambda: col.collector.counts["stored"] == 12, 30, what="catch-up")
        assert col.ids() == sorted(r["result_id"] for r in records)
        wait_for(lambda: up.snapshot()["state"] == "uplink: connected", 10, what="backlog drained")
    finally:
        if up is not None:
            up.stop()
        col.stop()
        broker.stop()


def test_last_will_says_offline_when_the_station_dies(tmp_path, broker):
    write_results(tmp_path / "results.jsonl", 3)
    code = (
        "import sys, time, logging\n"
        "from pathlib import Path\n"
        "from facediag.edge.uplink import Uplink, UplinkSettings\n"
        f"u = Uplink(UplinkSettings(station_id={SID!r}, broker=sys.argv[1], results_path=Path(sys.argv[2]),"
        " outbox_path=Path(sys.argv[3])))\n"
        "u.start()\n"
        "while not u.snapshot()['connected']: time.sleep(0.02)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    watcher = Watcher(broker.url, [status_topic(SID)])
    proc = subprocess.Popen([sys.executable, "-c", code, broker.url, str(tmp_path / "results.jsonl"),
                             str(tmp_path / "outbox.sqlite3")], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"up"
        wait_for(lambda: (watcher.json(status_topic(SID)) or {}).get("state") == "online", 10, what="online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        status = wait_for(lambda: (s := watcher.json(status_topic(SID))) and s["state"] == "offline" and s, 10,
                          what="the last will")
        assert status["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.close()


def test_kill_9_of_the_broker_mid_stream_loses_nothing(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    col = RunningCollector(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    up = Uplink(settings(tmp_path, broker.url))
    written: list[str] = []
    done = threading.Event()

    def station() -> None:
        with ResultsWriter(tmp_path / "results.jsonl") as w:
            for i in range(400):
                rec = result_record(SID, i)
                w.write(rec)
                written.append(rec["result_id"])
                up.notify()
                time.sleep(0.004)
        done.set()

    writer = threading.Thread(target=station)
    try:
        wait_for(col.collector.connected.is_set, 10, what="collector connected")
        up.start()
        writer.start()
        for _ in range(2):  # bounded: two broker crashes while results flow
            # Mosquitto saves its sessions every second (autosave_interval 1): a crash sooner than that after
            # the collector subscribed would lose the subscription itself, which no station can repair.
            wait_for(lambda: (t := col.collector.connected_since) is not None and time.monotonic() - t > 1.3
                     and up.snapshot()["connected"], 20, what="flowing")
            time.sleep(0.1)
            broker.kill(signal.SIGKILL)
            time.sleep(0.4)
            broker.start()
        writer.join(30)
        assert done.is_set()
        try:
            wait_for(lambda: col.collector.counts["stored"] == len(written), 60, what="every result stored")
        except AssertionError:
            have = set(col.ids())
            missing = [i for i, rid in enumerate(written) if rid not in have]
            raise AssertionError(f"missing {len(missing)} results (indices {missing[:3]}...{missing[-3:]}); "
                                 f"collector {dict(col.collector.counts)}; uplink {up.snapshot()}") from None
        assert col.ids() == sorted(written)
    finally:
        up.stop()
        col.stop()
        broker.stop()


def test_a_collector_without_a_session_gets_every_station_log_again(tmp_path, broker):
    """A new central store (or a broker that lost the collector's session) asks the stations to resend
    their results logs; a connected station does, and the new store ends up with every result once."""
    records = write_results(tmp_path / "results.jsonl", 30)
    first = RunningCollector(broker.url, f"sqlite:///{tmp_path / 'first.db'}", client_id="collector-a")
    up = Uplink(settings(tmp_path, broker.url))
    try:
        wait_for(first.collector.connected.is_set, 10, what="first collector")
        up.start()
        wait_for(lambda: first.collector.counts["stored"] == 30 and up.snapshot()["unsent"] == 0, 30, what="sent")
        first.stop()
        second = RunningCollector(broker.url, f"sqlite:///{tmp_path / 'second.db'}", client_id="collector-b")
        try:
            wait_for(lambda: second.collector.counts["stored"] == 30, 30, what="the resent log")
            assert second.collector.counts["session_new"] == 1
            assert second.ids() == sorted(r["result_id"] for r in records)
        finally:
            second.stop()
    finally:
        up.stop()


def test_tls_and_credentials_from_a_file(tmp_path):
    broker = tls_password_broker(tmp_path / "broker", {"kiosk": "s3cret-k", "collector": "s3cret-c"}).start()
    station_creds = tmp_path / "station.credentials"
    station_creds.write_text("kiosk\ns3cret-k\n")
    collector_creds = tmp_path / "collector.credentials"
    collector_creds.write_text("collector\ns3cret-c\n")
    records = write_results(tmp_path / "results.jsonl", 5)
    store = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    col = Collector(CollectorOptions(broker.url, client_id="tls-collector", ca_file=str(broker.ca_file),
                                     credentials_file=str(collector_creds)), store)
    th = threading.Thread(target=col.run, daemon=True)
    th.start()
    bad_creds = tmp_path / "bad.credentials"
    bad_creds.write_text("kiosk\nwrong\n")
    bad = Uplink(settings(tmp_path / "bad", broker.url, ca_file=str(broker.ca_file),
                          credentials_file=str(bad_creds), results_path=tmp_path / "results.jsonl"))
    no_ca = Uplink(settings(tmp_path / "noca", broker.url, credentials_file=str(station_creds),
                            results_path=tmp_path / "results.jsonl"))
    good = Uplink(settings(tmp_path, broker.url, ca_file=str(broker.ca_file), credentials_file=str(station_creds)))
    try:
        wait_for(col.connected.is_set, 15, what="the collector over TLS with its password")
        for u in (bad, no_ca, good):
            u.start()
        wait_for(lambda: col.counts["stored"] == 5, 30, what="results over TLS")
        assert open_store(store.where).result_ids() == sorted(r["result_id"] for r in records)
        assert "refused" in wait_for(lambda: bad.snapshot()["last_error"], 10, what="a refused password")
        assert "CERTIFICATE_VERIFY_FAILED" in wait_for(lambda: no_ca.snapshot()["last_error"], 10,
                                                       what="an unverified broker certificate")
        assert not bad.snapshot()["connected"] and not no_ca.snapshot()["connected"]
    finally:
        for u in (bad, no_ca, good):
            u.stop()
        col.stop()
        th.join(10)
        store.close()
        broker.stop()
