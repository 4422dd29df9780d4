"""The station's configuration: one TOML file, validated completely at start.

A typo in a kiosk's config should stop the daemon at boot with a message that
names the key (``screening.good_frame is not a known key; did you mean
screening.good_frames?``), not make it run with a default nobody chose. So every
section is a dataclass, unknown sections and keys are errors, and every value is
type- and range-checked; the error is ``facediag.edge.errors.ConfigError`` (the daemon
exits 78, which the systemd unit does not restart on).

Relative paths are resolved against the folder of the config file. A key that
is left out takes the default shown below; optional numbers (``fps``,
``threads``) are "unset" when left out (TOML has no null). Quality gates accept
``false`` to switch a gate off.

Sections and defaults::

    [source]
    uri = "v4l2:/dev/video0"   # see facediag.edge.capture.base for every form (picamera2:0, gst:..., rtsp://, file:, folder:)
    loop = false               # replay files / folders forever
    # fps = 15                 # files: replay rate (unset = the file's own, 0 = unthrottled); cameras: requested rate
    stall_s = 5.0              # no frame for this long = stalled: reconnect
    reconnect_max_s = 30.0     # cap of the exponential reconnect backoff

    [detector]
    name = "yunet"             # a registered detector: yunet | mtcnn (facediag.edge.face.detector.DETECTORS)
    # model_path = "/var/lib/facediag/models/face_detection_yunet.onnx"   (yunet needs it; mtcnn ships its own)
    score_threshold = 0.7

    [quality]                  # each gate: a number, or false to switch it off
    min_face_px = 64.0         # shorter side of the face box, in pixels
    min_sharpness = 20.0       # variance of the Laplacian of the aligned crop
    min_brightness = 40.0      # mean grey level of the crop
    max_brightness = 215.0
    max_clipped_fraction = 0.25
    max_yaw = 0.35             # nose offset / eye distance (~0.5 at a 45 degree turn)
    max_roll_deg = 20.0
    max_pitch = 0.35

    [engine]
    bundle = "/var/lib/facediag/bundle"
    backend = "auto"           # a registered engine backend: auto | tensorrt | onnxruntime
    precision = "auto"         # auto | fp32 | fp16 | int8-cpu | int8-tensorrt
    # threads = 4              # ONNX Runtime intra-op threads (unset = ORT's default)
    providers = []             # ONNX Runtime providers in order of preference (empty = automatic)
    # verify_inputs = "/var/lib/facediag/verify"   # crops / calibration set for `facediag verify --config`

    [screening]
    good_frames = 8            # good frames of one subject needed for a decision
    window_s = 10.0            # ... within this many seconds, else "retake"
    min_confidence = 0.5       # below this top-class probability: "retake", whatever the class (even
                               # a condition over its threshold); at or above it: refer / no finding
    face_lost_s = 1.5          # the subject is gone after this long without a face
    same_subject_iou = 0.2

    [results]
    path = "/var/lib/facediag/results.jsonl"
    debug_capture_dir = ""     # "" = off. When set, aligned crops are written there: photos of people!
    rotate_bytes = 16777216    # start a new file (results.jsonl.1, ...) past this size; 0 = never rotate
    max_age_days = 0           # delete rotated files older than this many days; 0 = keep
    max_total_bytes = 0        # delete the oldest rotated files while all together are larger; 0 = no cap
    min_free_mb = 64           # below this much free space: "disk-low" fault (degraded), before the disk is full

    [station]
    # id = "clinic-a-kiosk-1"  # in every result and in the uplink topic; unset = the host name
                               # (letters, digits, '.', '_', '-'; at most 64; no '/', '+', '#')

    [trust]                    # who may sign the model bundles this station runs (facediag keygen / sign)
    keys = []                  # public keys: "ed25519:BASE64..." lines or paths of .pub files
    allow_unsigned = false     # true = run unsigned bundles too (development only; logged loudly)

    [api]
    enabled = true
    bind = "127.0.0.1"         # loopback only unless allow_non_loopback = true
    port = 8787
    unix_socket = ""           # a path = serve on this Unix socket instead of TCP
    token_file = "/etc/facediag/api.token"
    allow_non_loopback = false

    [service]
    max_frame_age_s = 10.0     # WATCHDOG=1 only while the newest frame is younger than this
    max_processing_age_s = 30.0  # ... and the processing loop finished a frame this recently
    status_interval_s = 5.0    # how often STATUS= is refreshed

    [uplink]                   # results to a central collector over MQTT (facediag.edge.uplink); off by default
    enabled = false
    broker = "mqtt://127.0.0.1:1883"   # mqtts://HOST:8883 for TLS
    outbox_path = ""           # "" = next to the results file (results.jsonl.outbox.sqlite3)
    outbox_max_results = 100000  # above this: "uplink: backlog full" (the local log keeps everything)
    ca_file = ""               # TLS: CA of the broker's certificate
    cert_file = ""             # TLS client certificate and key (optional)
    key_file = ""
    credentials_file = ""      # two lines, user name and password (or LoadCredential=mqtt.credentials:PATH)
    status_interval_s = 30.0   # retained status refresh on facediag/<station id>/status
    backoff_max_s = 30.0       # cap of the reconnect backoff
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.config_schema import (  # noqa: F401 - re-exported: the validation machinery lived here
    MAX_STRING_CHARS,
    _build_section,
    _check_registered,
    _check_value,
    _describe,
    _meta,
    _suggest,
    _type_name,
)
from facediag.edge.errors import ConfigError
from facediag.edge.registry import Registry

if TYPE_CHECKING:
    from facediag.edge.face.quality import QualityGates
    from facediag.edge.screening.session import SessionConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6 / older Raspberry Pi OS
    import tomli as tomllib


def _detectors() -> Registry[Any]:
    from facediag.edge.face.detector import DETECTORS

    return DETECTORS


def _engine_backends() -> Registry[Any]:
    from facediag.edge.engine.backends import ENGINE_BACKENDS

    return ENGINE_BACKENDS


def _precisions() -> Registry[Any]:
    from facediag.edge.precision import config_registry

    return config_registry()


def registry_help() -> str:
    """The names the registries accept for ``[detector] name``, ``[engine] backend`` and ``[source] uri``
    (for ``--help`` text and docs; the module docstring shows the built-in ones)."""
    from facediag.edge.capture.base import SOURCES

    return (f"[detector] name:\n{_detectors().help_text()}\n[engine] backend:\n{_engine_backends().help_text()}\n"
            f"[source] uri kinds:\n{SOURCES.help_text()}")


@dataclass(frozen=True)
class SourceConfig:
    uri: str = "v4l2:/dev/video0"
    loop: bool = False
    fps: float | None = field(default=None, metadata=_meta(min=0, min_if_set=0.01))
    stall_s: float = field(default=5.0, metadata=_meta(min=0, min_exclusive=True))
    reconnect_max_s: float = field(default=30.0, metadata=_meta(min=0, min_exclusive=True))


@dataclass(frozen=True)
class DetectorConfig:
    name: str = field(default="yunet", metadata=_meta(registry=_detectors))  # facediag.edge.face.detector.DETECTORS
    model_path: str | None = field(default=None, metadata=_meta(path=True))
    score_threshold: float = field(default=0.7, metadata=_meta(min=0, max=1))


@dataclass(frozen=True)
class QualityConfig:
    min_face_px: float | None = field(default=64.0, metadata=_meta(min=0, off=True))
    min_sharpness: float | None = field(default=20.0, metadata=_meta(min=0, off=True))
    min_brightness: float | None = field(default=40.0, metadata=_meta(min=0, max=255, off=True))
    max_brightness: float | None = field(default=215.0, metadata=_meta(min=0, max=255, off=True))
    max_clipped_fraction: float | None = field(default=0.25, metadata=_meta(min=0, max=1, off=True))
    max_yaw: float | None = field(default=0.35, metadata=_meta(min=0, off=True))
    max_roll_deg: float | None = field(default=20.0, metadata=_meta(min=0, max=180, off=True))
    max_pitch: float | None = field(default=0.35, metadata=_meta(min=0, off=True))

    def to_gates(self) -> QualityGates:
        """The front-end's QualityGates with these thresholds (``None`` = gate off)."""
        from facediag.edge.face.quality import QualityGates

        return QualityGates(**asdict(self))


@dataclass(frozen=True)
class EngineConfig:
    bundle: str = field(default="/var/lib/facediag/bundle", metadata=_meta(path=True))
    backend: str = field(default="auto", metadata=_meta(registry=_engine_backends))  # edge.engine.backends
    precision: str = field(default="auto", metadata=_meta(registry=_precisions))  # edge.precision (the table)
    threads: int | None = field(default=None, metadata=_meta(min=1, max=256))
    providers: tuple[str, ...] = ()
    # Crops or a calibration set that `facediag verify --config` runs the engine on (engine-build unit).
    verify_inputs: str | None = field(default=None, metadata=_meta(path=True))


@dataclass(frozen=True)
class ScreeningConfig:
    good_frames: int = field(default=8, metadata=_meta(min=1, max=256))
    window_s: float = field(default=10.0, metadata=_meta(min=0, min_exclusive=True))
    # Below this top-class probability the decision is "retake", whatever the class (see screening.decision).
    min_confidence: float = field(default=0.5, metadata=_meta(min=0, max=1))
    face_lost_s: float = field(default=1.5, metadata=_meta(min=0, min_exclusive=True))
    same_subject_iou: float = field(default=0.2, metadata=_meta(min=0, max=1))
    # "button": a session starts only after Start on the kiosk page (consent); "auto": whoever faces the camera.
    # Without the API (no page, no Start control) the station screens as with "auto".
    trigger: str = "button"
    result_hold_s: float = field(default=12.0, metadata=_meta(min=0, min_exclusive=True))  # outcome shown, then idle

    def to_session_config(self) -> SessionConfig:
        from facediag.edge.screening.session import SessionConfig

        fields_ = asdict(self)
        for kiosk_only in ("trigger", "result_hold_s"):
            fields_.pop(kiosk_only)
        return SessionConfig(**fields_)


@dataclass(frozen=True)
class ResultsConfig:
    path: str = field(default="/var/lib/facediag/results.jsonl", metadata=_meta(path=True))
    debug_capture_dir: str | None = field(default=None, metadata=_meta(path=True))
    rotate_bytes: int = field(default=16 * 1024 * 1024, metadata=_meta(min=0))
    max_age_days: float = field(default=0.0, metadata=_meta(min=0))
    max_total_bytes: int = field(default=0, metadata=_meta(min=0))
    min_free_mb: float = field(default=64.0, metadata=_meta(min=0))  # below: "disk-low" fault (0 = off)


STATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _default_station_id() -> str:
    """The host name, made fit for a station id (MQTT topic level, file name)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-._")[:64]
    return name or "station"


@dataclass(frozen=True)
class StationIdConfig:
    id: str = field(default_factory=_default_station_id)


@dataclass(frozen=True)
class TrustConfig:
    keys: tuple[str, ...] = ()
    allow_unsigned: bool = False


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = field(default=8787, metadata=_meta(min=0, max=65535))
    unix_socket: str | None = field(default=None, metadata=_meta(path=True))
    token_file: str = field(default="/etc/facediag/api.token", metadata=_meta(path=True))
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class ServiceConfig:
    max_frame_age_s: float = field(default=10.0, metadata=_meta(min=0, min_exclusive=True))
    max_processing_age_s: float = field(default=30.0, metadata=_meta(min=0, min_exclusive=True))
    status_interval_s: float = field(default=5.0, metadata=_meta(min=0, min_exclusive=True))


@dataclass(frozen=True)
class UplinkConfig:
    enabled: bool = False
    broker: str = "mqtt://127.0.0.1:1883"
    outbox_path: str | None = field(default=None, metadata=_meta(path=True))
    outbox_max_results: int = field(default=100_000, metadata=_meta(min=1))
    ca_file: str | None = field(default=None, metadata=_meta(path=True))
    cert_file: str | None = field(default=None, metadata=_meta(path=True))
    key_file: str | None = field(default=None, metadata=_meta(path=True))
    credentials_file: str | None = field(default=None, metadata=_meta(path=True))
    status_interval_s: float = field(default=30.0, metadata=_meta(min=0, min_exclusive=True))
    backoff_max_s: float = field(default=30.0, metadata=_meta(min=0, min_exclusive=True))


@dataclass(frozen=True)
class StationConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    station: StationIdConfig = field(default_factory=StationIdConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    config_path: str | None = None  # where it was read from (not a TOML key)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for /status and `facediag run --print-config`)."""
        out = asdict(self)
        for section in out.values():
            if isinstance(section, dict):
                for k, v in section.items():
                    if isinstance(v, tuple):
                        section[k] = list(v)
        return out


SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in fields(StationConfig) if f.default_factory is not MISSING  # type: ignore[misc]
}


def _cross_checks(cfg: StationConfig) -> None:
    if cfg.uplink.enabled:
        from facediag.edge.uplink.topics import parse_broker_url

        try:
            parse_broker_url(cfg.uplink.broker)
        except ConfigError as exc:
            raise ConfigError(f"uplink.broker: {exc}") from None
    if not STATION_ID_PATTERN.match(cfg.station.id):
        raise ConfigError(f"station.id {cfg.station.id!r} is not a valid station id: 1-64 letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit (no '/', '+', '#' or spaces)")
    if cfg.screening.trigger not in ("button", "auto"):
        raise ConfigError(f"screening.trigger must be \"button\" (Start on the kiosk page) or \"auto\", "
                          f"not {cfg.screening.trigger!r}")
    q = cfg.quality
    if q.min_brightness is not None and q.max_brightness is not None and q.min_brightness >= q.max_brightness:
        raise ConfigError(f"quality.min_brightness ({q.min_brightness:g}) must be below quality.max_brightness "
                          f"({q.max_brightness:g})")
    from facediag.edge.engine.backends import check_engine_choice

    try:  # the engine-backend registry and the precision table say which pairs can run
        check_engine_choice(cfg.engine.backend, cfg.engine.precision)
    except ConfigError as exc:
        raise ConfigError(f"engine.precision {cfg.engine.precision!r} with engine.backend {cfg.engine.backend!r}: {exc}") from exc
    if cfg.api.enabled and cfg.api.unix_socket is None and cfg.api.port == 0:
        raise ConfigError("api.port must be 1..65535 when the API listens on TCP (or set api.unix_socket)")
    from facediag.edge.capture.base import parse_source_uri

    parse_source_uri(cfg.source.uri)  # raises ConfigError for a URI of no known kind


def parse_config(data: dict[str, Any], base_dir: str | Path | None = None, config_path: str | None = None) -> StationConfig:
    """Validate a parsed TOML document. ``base_dir`` anchors relative paths (the config file's folder)."""
    base = Path(base_dir) if base_dir is not None else None
    for section in data:
        if section not in SECTIONS:
            raise ConfigError(f"[{section}] is not a known section{_suggest(section, list(SECTIONS), '')}")
    built = {name: _build_section(name, cls, data.get(name, {}), base) for name, cls in SECTIONS.items()}
    cfg = StationConfig(**built, config_path=config_path)
    _cross_checks(cfg)
    return cfg


def parse_config_text(text: str, base_dir: str | Path | None = None, config_path: str | None = None) -> StationConfig:
    """Parse and validate TOML text (a syntax error becomes a ConfigError with the line)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = config_path or "the configuration"
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:  # deeply nested arrays/tables (issue 11)
        raise ConfigError(f"{config_path or 'the configuration'} is nested too deeply to be a station config") from None
    return parse_config(data, base_dir, config_path)


def load_config(path: str | Path) -> StationConfig:
    """Read and validate a station TOML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; copy systemd/station.toml there and edit it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    return parse_config_text(text, base_dir=p.resolve().parent, config_path=str(p))
