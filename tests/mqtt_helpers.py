"""A real Mosquitto broker and a real throwaway PostgreSQL cluster for the uplink/collector tests.

Both are started by the tests on loopback (a free TCP port) from Debian's packages
(``apt-get install mosquitto postgresql``) and stopped in teardown; without the
binaries the tests skip with the reason. PostgreSQL refuses to run as root, so
under root the cluster belongs to the ``postgres`` user that Debian's package
creates and is started with ``runuser -u postgres --``.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    from tests.daemon_helpers import wait_until

    value = wait_until(predicate, timeout, interval)
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


class Broker:
    """Mosquitto on 127.0.0.1:port with persistence in its own folder; restartable on the same port."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        user = pwd.getpwuid(os.getuid()).pw_name
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"user {user}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"       # no cap on what is queued for an offline collector
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            f"{extra}"
        )
        self.proc: subprocess.Popen | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port) or self.proc.poll() is not None, 10, what="mosquitto to listen")
        assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()[-2000:]
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Postgres:
    """A throwaway cluster (initdb in a temp dir), listening on 127.0.0.1:port only, trust auth."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="facediag-pg-"))
        if os.getuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> Postgres:
        data = self.root / "data"
        subprocess.run(self.as_user + [str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                       "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        log = open(self.root / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            self.as_user + [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-F"],
            stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            import psycopg
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                assert self.proc.poll() is None, (self.root / "postgres.log").read_text()[-2000:]
                return False

        wait_for(ready, 60, interval=0.2, what="PostgreSQL to accept connections")
        return self

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:  # runuser does not pass SIGINT on: signal the postmaster itself (fast shutdown)
                pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


class Watcher:
    """Subscribes to topics and keeps the last payload per topic (retained included)."""

    def __init__(self, url: str, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from facediag.edge.uplink.topics import parse_broker_url

        addr = parse_broker_url(url)
        self.last: dict[str, bytes] = {}
        self.all: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.last[msg.topic] = bytes(msg.payload)
            self.all.append((msg.topic, bytes(msg.payload)))

    def json(self, topic: str) -> dict | None:
        with self._lock:
            raw = self.last.get(topic)
        return json.loads(raw) if raw else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(url: str, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
    """One message, waited for (PUBACK)."""
    publish_many(url, [(topic, payload, retain)], qos=qos)


def publish_many(url: str, messages: list[tuple[str, bytes, bool]], *, qos: int = 1) -> None:
    """(topic, payload, retain) messages in order over one connection, each waited for (PUBACK)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from facediag.edge.uplink.topics import parse_broker_url

    addr = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(addr.host, addr.port)
    try:
        for topic, payload, retain in messages:
            info = client.publish(topic, payload, qos=qos, retain=retain)
            deadline = time.monotonic() + 10
            while not info.is_published() and time.monotonic() < deadline:
                client.loop(timeout=0.01)
            assert info.is_published(), topic
    finally:
        client.disconnect()


def result_record(station_id: str, i: int, **over) -> dict:
    """A screening result as the daemon writes it (schema 1), with a fleet-unique result id."""
    from facediag.edge.uplink.topics import new_result_id

    rec = {
        "record": "screening_result", "schema": 1, "session_id": f"{i:08d}-session",
        "station_id": station_id, "result_id": new_result_id(station_id),
        "started_at": "2026-12-01T00:00:00.000Z", "decided_at": f"2026-12-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "decision": ("refer", "no_finding", "retake")[i % 3], "condition": "beard" if i % 3 == 0 else None,
        "probability": 0.8 if i % 3 == 0 else None, "probabilities": {"beard": 0.8, "healthy": 0.2},
        "reason": "test", "frames_used": 5, "quality": {"frames_seen": 9, "good_frames": 5, "rejected_frames": 4,
                                                        "rejections": {"sharpness": 4}},
        "bundle_id": "b" * 64, "model_sha256": "c" * 64, "precision": "fp32", "backend": "onnxruntime",
        "notice": "screening aid",
    }
    rec.update(over)
    return rec


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (cryptography), PEM files in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("facediag test CA")).issuer_name(name("facediag test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def tls_password_broker(folder: Path, users: dict[str, str]) -> Broker:
    """Mosquitto with TLS only (a test CA) and a password file; anonymous clients refused."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/sbin/mosquitto_passwd"
    if not os.path.exists(passwd):
        pytest.skip("mosquitto_passwd is not installed")
    tls = make_tls_files(folder / "tls")
    pwfile = folder / "passwords"
    for i, (user, password) in enumerate(users.items()):
        subprocess.run([passwd, "-b"] + (["-c"] if i == 0 else []) + [str(pwfile), user, password], check=True,
                       capture_output=True, timeout=30)
    broker = Broker(folder, extra=f"password_file {pwfile}\ncafile {tls['ca']}\ncertfile {tls['cert']}\n"
                                  f"keyfile {tls['key']}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.url = f"mqtts://127.0.0.1:{broker.port}"
    broker.ca_file = tls["ca"]
    return broker
