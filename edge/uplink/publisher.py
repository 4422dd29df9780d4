"""The station's uplink: publishes results from the outbox to an MQTT broker, oldest first.

One thread owns the MQTT connection and the outbox (no locks around either). It
loops: copy new lines of the results log into the outbox, publish up to
``window`` unacknowledged results with QoS 1, run the MQTT network loop, and
remove the results whose PUBACK came back. A lost connection forgets what was in
flight and starts again from the oldest unacknowledged result after a capped,
jittered exponential backoff. Each connection is a fresh MQTT client with a clean
session: the outbox, not the broker or paho's memory, is what is still owed.

The station's state is published retained on ``facediag/<id>/status`` (online,
the bundle it runs, how much is unsent), with a retained last will that says
"offline" when the connection dies without a goodbye. Bundle announcements
(``facediag/<id>/bundle``, or fleet-wide ``facediag/_fleet/bundle``) are only
recorded and reported: the uplink never downloads or runs anything.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from facediag.edge.uplink.announce import BundleAnnouncement, parse_announcement
from facediag.edge.uplink.outbox import Outbox, OutboxStats
from facediag.edge.uplink.settings import UplinkSettings, read_credentials
from facediag.edge.uplink.topics import (
    FLEET_BUNDLE_TOPIC,
    FLEET_RESYNC_TOPIC,
    bundle_topic,
    results_topic,
    status_topic,
)
from facediag.edge.version import __version__

log = logging.getLogger(__name__)
LOOP_S = 0.02  # network loop slice while results are in flight
IDLE_LOOP_S = 0.05  # ... when idle: also the longest a new result waits before it is read from the log
REFRESH_S = 1.0  # look at the results log at least this often even without notify()


class UplinkError(Exception):
    """The broker could not be reached or refused the connection (retried with backoff)."""


@dataclass
class UplinkState:
    connected: bool = False
    stats: OutboxStats | None = None
    published_total: int = 0
    acked_total: int = 0
    connects: int = 0
    last_error: str = ""
    announced: dict[str, BundleAnnouncement] = field(default_factory=dict)


@dataclass
class _Flight:
    """One connection's bookkeeping: message id -> outbox seq awaiting PUBACK, and what the callbacks saw."""

    inflight: dict[int, int] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    resync: bool = False
    cursor: int = 0  # the last outbox seq published on this connection


class Uplink:
    """Start with :meth:`start`, call :meth:`notify` after each durable result write, :meth:`stop` at the end."""

    def __init__(self, settings: UplinkSettings, identity: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.identity = dict(identity or {})
        self.state = UplinkState()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards self.state for readers in other threads

    # -- public, any thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="facediag-uplink", daemon=True)
            self._thread.start()

    def notify(self, _record: object = None) -> None:
        """A result was appended to the log: read it soon. Usable as a result sink."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is left (up to ``drain_s``), say goodbye (retained "offline, stopped"), join the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def snapshot(self) -> dict[str, Any]:
        """For /status: connection, backlog and the bundle announced for this station."""
        with self._lock:
            s = self.state
            stats = s.stats
            ann = self._current_announcement()
            return {
                "broker": self.settings.address().display(),
                "station_id": self.settings.station_id,
                "connected": s.connected,
                "state": self.status_word(),
                "unsent": stats.unsent if stats else None,
                "oldest_unsent_age_s": None if stats is None or stats.oldest_age_s is None else round(stats.oldest_age_s, 3),
                "backlog_full": bool(stats and stats.full),
                "outbox_limit": self.settings.max_entries,
                "published_total": s.published_total,
                "acked_total": s.acked_total,
                "last_error": s.last_error,
                "bundle_announced": ann.to_dict() if ann else None,
                "bundle_current": None if ann is None else ann.bundle_sha256 == self.identity.get("bundle_id"),
            }

    def status_word(self) -> str:
        """'uplink: backlog full' | 'uplink: connected' | 'uplink: offline' (for STATUS= and the staff page)."""
        stats = self.state.stats
        if stats is not None and stats.full:
            return "uplink: backlog full"
        return "uplink: connected" if self.state.connected else "uplink: offline"

    def _current_announcement(self) -> BundleAnnouncement | None:
        own = self.state.announced.get("station")
        return own if own is not None else self.state.announced.get("fleet")

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        outbox = Outbox(s.outbox_path, s.results_path, s.station_id, s.max_entries, keep_acked_s=s.resend_recent_s)
        failures = 0
        try:
            while not self._stop.is_set():
                self._refresh(outbox)
                try:
                    client = self._connect()
                except (UplinkError, OSError) as exc:
                    failures += 1
                    self._note_error(f"cannot connect to {s.address().display()}: {exc}", failures)
                    self._backoff(outbox, failures)
                    continue
                failures = 0
                try:
                    self._session(client, outbox)
                except (UplinkError, OSError) as exc:
                    self._note_error(str(exc), 1)
                finally:
                    with self._lock:
                        self.state.connected = False
                    try:
                        client.disconnect()
                    except Exception:  # noqa: BLE001 - the socket may already be gone
                        pass
                if not self._stop.is_set():
                    failures += 1
                    self._backoff(outbox, failures)
        except Exception:
            log.exception("uplink thread failed; results stay in the local log and the outbox")
        finally:
            outbox.close()

    def _note_error(self, message: str, failures: int) -> None:
        with self._lock:
            self.state.last_error = message
        (log.warning if failures <= 1 else log.debug)("uplink: %s", message)

    def _backoff(self, outbox: Outbox, failures: int) -> None:
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(failures - 1, 20))
        deadline = time.monotonic() + delay * random.uniform(0.8, 1.0)
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._wake.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
            self._refresh(outbox)

    def _refresh(self, outbox: Outbox) -> None:
        outbox.feed()
        stats = outbox.stats()
        with self._lock:
            was_full = self.state.stats is not None and self.state.stats.full
            self.state.stats = stats
        if stats.full and not was_full:
            log.warning("uplink: backlog full (%d results waiting); results stay in the local log", stats.unsent)

    def _status_payload(self, state: str, reason: str) -> bytes:
        stats = self.state.stats
        doc: dict[str, Any] = {
            "station_id": self.settings.station_id, "state": state, "reason": reason, "at": time.time(),
            "version": __version__, "bundle_id": self.identity.get("bundle_id", ""),
            "model_sha256": self.identity.get("model_sha256", ""),
        }
        if stats is not None:
            doc.update(unsent=stats.unsent, backlog_full=stats.full,
                       oldest_unsent_age_s=None if stats.oldest_age_s is None else round(stats.oldest_age_s, 3))
        return json.dumps(doc, separators=(",", ":")).encode()

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        s = self.settings
        addr = s.address()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"facediag-station-{s.station_id}",
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(s.window)
        client.will_set(status_topic(s.station_id), self._status_payload("offline", "connection lost"), qos=1, retain=True)
        if addr.tls:
            client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        if s.credentials_file:
            client.username_pw_set(*read_credentials(s.credentials_file))
        result: dict[str, Any] = {}

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            result["reason"] = reason

        client.on_connect = on_connect
        client.connect(addr.host, addr.port, keepalive=s.keepalive_s, clean_start=True)
        deadline = time.monotonic() + s.connect_timeout_s
        while "reason" not in result:
            if self._stop.is_set() or time.monotonic() > deadline:
                client.disconnect()
                raise UplinkError("no CONNACK from the broker")
            rc = client.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS and "reason" not in result:
                raise UplinkError(f"connection failed ({mqtt.error_string(rc)})")
        if result["reason"].is_failure:
            raise UplinkError(f"the broker refused the connection: {result['reason']}")
        return client

    def _wire(self, client: Any, outbox: Outbox, flight: _Flight) -> None:
        """Callbacks, subscriptions, 'online' status, and the recently acknowledged results queued again."""
        s = self.settings

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
            seq = flight.inflight.pop(mid, None)
            if seq is None:
                return  # the status message
            if reason is not None and getattr(reason, "is_failure", False):
                flight.refused.append(str(reason))
            else:
                flight.acked.append(seq)

        def on_message(c: Any, u: Any, message: Any) -> None:
            if message.topic == FLEET_RESYNC_TOPIC:
                flight.resync = True
            else:
                self._on_announcement(c, u, message)

        client.on_publish = on_publish
        client.on_message = on_message
        client.subscribe([(bundle_topic(s.station_id), 1), (FLEET_BUNDLE_TOPIC, 1), (FLEET_RESYNC_TOPIC, 1)])
        with self._lock:
            self.state.connected = True
            self.state.connects += 1
            self.state.last_error = ""
        log.info("uplink: connected to %s as %s", s.address().display(), s.station_id)
        client.publish(status_topic(s.station_id), self._status_payload("online", "connected"), qos=1, retain=True)
        requeued = outbox.requeue_recent()
        if requeued:
            log.info("uplink: sending %d recently acknowledged results again (a broker crash may have lost them)",
                     requeued)

    def _publish_batch(self, client: Any, outbox: Outbox, flight: _Flight, room: int) -> bool:
        """Publish up to ``room`` entries after ``flight.cursor``; True when there may be more."""
        import paho.mqtt.client as mqtt

        topic = results_topic(self.settings.station_id)
        batch = outbox.batch(flight.cursor, room)
        for seq, _rid, payload in batch:
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise UplinkError(f"publish failed ({mqtt.error_string(info.rc)})")
            flight.inflight[info.mid] = seq
            flight.cursor = seq
            with self._lock:
                self.state.published_total += 1
        return len(batch) == room

    def _session(self, client: Any, outbox: Outbox) -> None:
        import paho.mqtt.client as mqtt

        s = self.settings
        flight = _Flight()
        inflight, acked = flight.inflight, flight.acked
        self._wire(client, outbox, flight)
        next_status = time.monotonic() + s.status_interval_s
        next_refresh = 0.0
        more = True  # the outbox may hold entries after ``cursor``
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if self._stop.is_set():  # clean stop: send what is left for up to drain_s, then say goodbye
                if drain_until is None:
                    drain_until = now + s.drain_s
                    next_refresh = 0.0
                stats = self.state.stats
                if (not inflight and not more and stats is not None and stats.pending == 0) or now > drain_until:
                    break
            if self._wake.is_set() or now >= next_refresh:  # new lines in the log (notify), or a periodic look
                self._wake.clear()
                self._refresh(outbox)
                next_refresh = now + REFRESH_S
                more = True
            room = s.window - len(inflight)
            if room > 0 and more:
                more = self._publish_batch(client, outbox, flight, room)
            rc = client.loop(timeout=LOOP_S if inflight or more else IDLE_LOOP_S)
            if acked:
                outbox.mark_acked(acked)
                with self._lock:
                    self.state.acked_total += len(acked)
                acked.clear()
                if not inflight:  # a window completed: refill from the log and update the gauges
                    next_refresh = 0.0
            if flight.resync:
                flight.resync = False
                log.warning("uplink: the collector asked for the results again; resending the results log")
                outbox.resync()
                outbox.requeue_recent()
                flight.cursor, more, next_refresh = 0, True, 0.0
            if flight.refused:
                raise UplinkError(f"the broker refused a result: {flight.refused[0]}")
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise UplinkError(f"connection lost ({mqtt.error_string(rc)})")
            if now >= next_status:
                next_status = now + s.status_interval_s
                client.publish(status_topic(s.station_id), self._status_payload("online", "connected"), qos=1, retain=True)
        self._goodbye(client, inflight, acked, outbox)

    def _goodbye(self, client: Any, inflight: dict[int, int], acked: list[int], outbox: Outbox) -> None:
        """Clean stop, after the drain: publish 'offline, stopped' (retained) and wait briefly for it."""
        outbox.mark_acked(acked)
        self._refresh(outbox)
        info = client.publish(status_topic(self.settings.station_id), self._status_payload("offline", "stopped"),
                              qos=1, retain=True)
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline and client.loop(timeout=LOOP_S) == 0:
            pass

    def _on_announcement(self, _c: Any, _u: Any, message: Any) -> None:
        scope = "fleet" if message.topic == FLEET_BUNDLE_TOPIC else "station"
        if not message.payload:
            with self._lock:
                self.state.announced.pop(scope, None)
            return
        try:
            ann = parse_announcement(message.payload)
        except ValueError as exc:
            log.warning("uplink: ignoring a bad bundle announcement on %s: %s", message.topic, exc)
            return
        with self._lock:
            self.state.announced[scope] = ann
        current = ann.bundle_sha256 == self.identity.get("bundle_id")
        log.info("uplink: bundle %s (%s...) announced for %s%s", ann.bundle_id, ann.bundle_sha256[:12], scope,
                 "" if current else "; this station runs another bundle")
