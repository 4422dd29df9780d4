"""Names on the wire: station ids, MQTT topics, fleet-unique result ids and broker URLs.

A station id becomes one level of an MQTT topic (``facediag/<station_id>/results``),
so it must not contain the topic separator ``/`` or the wildcards ``+`` and ``#``
(a station called ``+`` would publish on every station's topic). The id is
deliberately narrow: letters, digits, ``.``, ``_`` and ``-``, starting with a
letter or digit, at most 64 characters. Names that start with ``_`` are kept for
fleet-wide topics such as ``facediag/_fleet/bundle``.

A result id is ``<station_id>:<12 hex digits of milliseconds since the epoch>-<20
random hex digits>``: unique across the fleet without coordination, and ordered
by time within a station.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from facediag.edge.errors import ConfigError

TOPIC_ROOT = "facediag"
FLEET_BUNDLE_TOPIC = f"{TOPIC_ROOT}/_fleet/bundle"
FLEET_RESYNC_TOPIC = f"{TOPIC_ROOT}/_fleet/resync"  # the collector asks every station to resend its log
RESULTS_WILDCARD = f"{TOPIC_ROOT}/+/results"
STATUS_WILDCARD = f"{TOPIC_ROOT}/+/status"
_STATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESULT_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63}):[0-9a-f]{12}-[0-9a-f]{20}$")


def station_id_problem(station_id: object) -> str | None:
    """Why ``station_id`` cannot be used (``None`` when it can)."""
    if not isinstance(station_id, str):
        return f"a station id must be a string, got {type(station_id).__name__}"
    if not station_id:
        return "the station id is empty"
    bad = sorted({c for c in station_id if c in "/+#" or ord(c) < 32})
    if bad:
        return (f"station id {station_id!r} contains {', '.join(repr(c) for c in bad)}: MQTT topic separators and "
                "wildcards cannot be part of a station id")
    if not _STATION_ID.match(station_id):
        return (f"station id {station_id!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    return None


def validate_station_id(station_id: object) -> str:
    """``station_id`` itself, or ConfigError saying what is wrong with it."""
    problem = station_id_problem(station_id)
    if problem is not None:
        raise ConfigError(problem)
    assert isinstance(station_id, str)
    return station_id


def results_topic(station_id: str) -> str:
    return f"{TOPIC_ROOT}/{validate_station_id(station_id)}/results"


def status_topic(station_id: str) -> str:
    return f"{TOPIC_ROOT}/{validate_station_id(station_id)}/status"


def bundle_topic(station_id: str) -> str:
    """Where the collector side announces the bundle one station should run (retained)."""
    return f"{TOPIC_ROOT}/{validate_station_id(station_id)}/bundle"


def station_of_topic(topic: str, kind: str) -> str | None:
    """The station id in ``facediag/<id>/<kind>``, or ``None`` when the topic is not of that shape."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or parts[2] != kind:
        return None
    return parts[1] if station_id_problem(parts[1]) is None else None


def new_result_id(station_id: str, now: float | None = None) -> str:
    """A fresh fleet-unique result id for ``station_id`` (see the module docstring)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{validate_station_id(station_id)}:{ms:012x}-{secrets.token_hex(10)}"


def result_id_station(result_id: object) -> str | None:
    """The station part of a well-formed result id, else ``None``."""
    if not isinstance(result_id, str):
        return None
    m = _RESULT_ID.match(result_id)
    return m.group(1) if m else None


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def display(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (TLS, 8883); user:password@ is accepted
    for tools, but a station reads its credentials from a file."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} is not valid: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker URL {url!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"broker URL {url!r} must not have a path or query")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
