"""The collector: subscribes to every station's results and status and stores them.

Crash safety comes from the order of things: messages are taken from the broker
with manual acknowledgement (paho ``manual_ack=True``), written to the store in a
batch, committed, and only then acknowledged (PUBACK). The MQTT session is
persistent (``clean_start=False`` with a session expiry), so what the broker
holds for the collector while it is down or restarting is delivered when it comes
back; anything received but not committed before a crash is redelivered, and the
unique result id makes the second copy a counted duplicate.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from facediag.collector.store import ResultRow, Store, content_sha256
from facediag.collector.validate import Refused, parse_result, parse_status
from facediag.edge.compat import zip_strict
from facediag.edge.uplink.settings import read_credentials
from facediag.edge.uplink.topics import (
    FLEET_RESYNC_TOPIC,
    RESULTS_WILDCARD,
    STATUS_WILDCARD,
    parse_broker_url,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectorOptions:
    broker: str
    client_id: str = "facediag-collector"
    session_expiry_s: int = 7 * 24 * 3600
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    credentials_file: str | None = None
    batch_max: int = 500
    receive_maximum: int = 1000
    backoff_max_s: float = 10.0


class Collector:
    """``run()`` until ``stop()``; counts what it stored and refused in ``counts``."""

    def __init__(self, options: CollectorOptions, store: Store) -> None:
        self.options = options
        self.store = store
        self.counts: Counter[str] = Counter()
        self.connected = threading.Event()
        self.connected_since: float | None = None  # time.monotonic() of the current connection
        self._stop = threading.Event()
        self._pending: list[Any] = []

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_seconds: float | None = None) -> None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        failures = 0
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                client = self._connect()
            except (OSError, RuntimeError) as exc:
                failures += 1
                delay = min(self.options.backoff_max_s, 0.25 * 2 ** min(failures, 10)) * random.uniform(0.8, 1.0)
                (log.warning if failures == 1 else log.debug)("collector: cannot connect to %s: %s (retrying)",
                                                              self.options.broker, exc)
                self._stop.wait(delay)
                continue
            failures = 0
            try:
                self._serve(client, deadline)
            finally:
                self.connected.clear()
                self.connected_since = None
                self._pending.clear()  # not acknowledged: the broker redelivers them
                try:
                    client.disconnect()
                except Exception:  # noqa: BLE001
                    pass

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        o = self.options
        addr = parse_broker_url(o.broker)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        if addr.tls:
            client.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file)
        if o.credentials_file:
            client.username_pw_set(*read_credentials(o.credentials_file))
        elif addr.username:
            client.username_pw_set(addr.username, addr.password)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = o.session_expiry_s
        props.ReceiveMaximum = o.receive_maximum
        result: dict[str, Any] = {}
        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
            result["reason"] = reason
            result["session_present"] = bool(getattr(flags, "session_present", False))

        client.on_connect = on_connect
        client.on_message = lambda _c, _u, msg: self._pending.append(msg)
        client.connect(addr.host, addr.port, keepalive=30, clean_start=False, properties=props)
        end = time.monotonic() + 10
        while "reason" not in result:
            rc = client.loop(timeout=0.1)
            if "reason" not in result and (time.monotonic() > end or rc != mqtt.MQTT_ERR_SUCCESS):
                raise RuntimeError(f"no CONNACK ({mqtt.error_string(rc)})")
        if result["reason"].is_failure:
            raise RuntimeError(f"refused: {result['reason']}")
        client.subscribe([(RESULTS_WILDCARD, 1), (STATUS_WILDCARD, 1)])
        log.info("collector: connected to %s, storing into %s", addr.display(), self.store.where)
        if not result.get("session_present"):
            self._session_lost(client)
        self.connected_since = time.monotonic()
        self.connected.set()
        return client

    def _session_lost(self, client: Any) -> None:
        """The broker holds no session for us (first start, or it lost it): results published meanwhile were
        not kept for us. Ask every station to send its results log again; the duplicates are dropped."""
        self.counts["session_new"] += 1
        log.warning("collector: the broker had no session for %r (first start, or the broker lost it); asking "
                    "the stations to resend their results (duplicates are dropped)", self.options.client_id)
        payload = json.dumps({"reason": "collector session lost", "client_id": self.options.client_id,
                              "at": time.time()}, separators=(",", ":")).encode()
        client.publish(FLEET_RESYNC_TOPIC, payload, qos=1)

    def _serve(self, client: Any, deadline: float | None) -> None:
        import paho.mqtt.client as mqtt

        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            rc = client.loop(timeout=0.05)
            while rc == mqtt.MQTT_ERR_SUCCESS and 0 < len(self._pending) < self.options.batch_max:
                before = len(self._pending)  # paho reads one packet per loop(): drain what is there into one batch
                rc = client.loop_read()
                if len(self._pending) == before:
                    break
            while self._pending:
                batch = self._pending[:self.options.batch_max]
                del self._pending[:len(batch)]
                self._store_batch(batch)
                for msg in batch:  # only after the commit
                    if msg.qos > 0:
                        client.ack(msg.mid, msg.qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("collector: connection lost (%s); reconnecting", mqtt.error_string(rc))
                return

    def _store_batch(self, batch: list[Any]) -> None:
        """Validate and write a batch in one transaction; the caller acknowledges after this returns."""
        now = time.time()
        outcomes: Counter[str] = Counter()
        results: list[tuple[str, ResultRow, str]] = []
        try:
            for msg in batch:
                outcome = self._store_other(msg, now, results)
                if outcome:
                    outcomes[outcome] += 1
            stored = self.store.add_results([(row, digest) for _, row, digest in results], now)
            for (topic, row, _), outcome in zip_strict(results, stored):
                if outcome == "conflict":
                    log.error("collector: result %s arrived again with different content; the stored copy is kept",
                              row.result_id)
                    self.store.add_rejection(topic, "conflict", row.result_id, "same result id, different content",
                                             now)
                    outcome = "refused_conflict"
                outcomes[outcome] += 1
            self.store.commit()
        except Exception:
            self.store.rollback()
            raise
        self.counts.update(outcomes)

    def _store_other(self, msg: Any, now: float, results: list[tuple[str, ResultRow, str]]) -> str | None:
        """Status and refusals are written here; a valid result is appended to ``results`` (None returned)."""
        topic = str(msg.topic)
        try:
            if topic.endswith("/status"):
                if not msg.payload:
                    return "status_cleared"
                station, status = parse_status(topic, bytes(msg.payload))
                self.store.add_status(station, status, now)
                return "status"
            row, doc = parse_result(topic, bytes(msg.payload))
        except Refused as exc:
            log.warning("collector: refused a message on %s: %s", topic[:120], exc)
            self.store.add_rejection(topic, exc.reason, exc.result_id, exc.detail, now)
            return f"refused_{exc.reason}"
        results.append((topic, row, content_sha256(doc)))
        return None
