"""What the uplink needs to know, independent of how the station's TOML spells it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facediag.edge.errors import ConfigError
from facediag.edge.uplink.topics import BrokerAddress, parse_broker_url, validate_station_id

if TYPE_CHECKING:
    from facediag.edge.config import StationConfig


@dataclass(frozen=True)
class UplinkSettings:
    station_id: str
    broker: str                          # mqtt://HOST:PORT or mqtts://HOST:PORT
    results_path: Path                   # the station's results log (source of truth)
    outbox_path: Path                    # SQLite outbox next to it
    max_entries: int = 100_000           # outbox size limit ("backlog full" above it)
    ca_file: str | None = None           # TLS: CA bundle that signed the broker's certificate
    cert_file: str | None = None         # TLS client certificate (with key_file)
    key_file: str | None = None
    credentials_file: str | None = None  # two lines: user name, password (systemd LoadCredential=)
    keepalive_s: int = 30
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0          # cap of the reconnect backoff
    window: int = 64                     # publishes awaiting PUBACK at once
    status_interval_s: float = 30.0      # retained status refresh
    connect_timeout_s: float = 10.0
    drain_s: float = 3.0                 # on a clean stop, keep sending what is left for this long
    resend_recent_s: float = 60.0        # after a reconnect, results acknowledged this recently are sent again

    def __post_init__(self) -> None:
        validate_station_id(self.station_id)
        address = self.address()
        if address.username or address.password:
            raise ConfigError("the uplink broker URL must not carry a user name or password; "
                              "put them in uplink.credentials_file (systemd LoadCredential=)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("uplink.cert_file and uplink.key_file go together (TLS client certificate)")
        if (self.ca_file or self.cert_file) and not address.tls:
            raise ConfigError("uplink.ca_file / cert_file need an mqtts:// broker URL")
        if self.max_entries < 1 or self.window < 1:
            raise ConfigError("uplink.outbox_max_results and the publish window must be >= 1")

    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)


CREDENTIAL_NAME = "mqtt.credentials"  # LoadCredential=mqtt.credentials:/etc/facediag/mqtt.credentials


def read_credentials(path: str) -> tuple[str, str]:
    """(user, password) from a file of two lines; ConfigError naming the file otherwise.

    Under systemd with ``LoadCredential=mqtt.credentials:...``, ``$CREDENTIALS_DIRECTORY/mqtt.credentials``
    is read instead of ``path`` (the service then needs no read access to /etc/facediag)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / CREDENTIAL_NAME).is_file():
        path = str(Path(directory) / CREDENTIAL_NAME)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"uplink credentials file {path} cannot be read: {exc.strerror}") from None
    if len(lines) < 2 or not lines[0].strip():
        raise ConfigError(f"uplink credentials file {path} must hold two lines: the user name, then the password")
    return lines[0].strip(), lines[1].rstrip("\r\n")


def settings_from_config(cfg: StationConfig) -> UplinkSettings:
    """The uplink settings of a station config (whose ``[uplink] enabled`` is true)."""
    up = cfg.uplink
    results = Path(cfg.results.path)
    outbox = Path(up.outbox_path) if up.outbox_path else results.with_name(results.name + ".outbox.sqlite3")
    return UplinkSettings(
        station_id=cfg.station.id, broker=up.broker, results_path=results, outbox_path=outbox,
        max_entries=up.outbox_max_results, ca_file=up.ca_file, cert_file=up.cert_file, key_file=up.key_file,
        credentials_file=up.credentials_file, status_interval_s=up.status_interval_s, backoff_max_s=up.backoff_max_s,
    )
