"""The station's configuration: one TOML file, validated completely at start.

A typo in a kiosk's config should stop the daemon at boot with a message that
names the key (``screening.good_frame is not a known key; did you mean
screening.good_frames?``), not make it run with a default nobody chose. So every
section is a dataclass, unknown sections and keys are errors, and every value is
type- and range-checked; the error is ``edge.errors.ConfigError`` (the daemon
exits 78, which the systemd unit does not restart on).

Relative paths are resolved against the folder of the config file. A key that
is left out takes the default shown below; optional numbers (``fps``,
``threads``) are "unset" when left out (TOML has no null). Quality gates accept
``false`` to switch a gate off.

Sections and defaults::

    [source]
    uri = "v4l2:/dev/video0"   # see edge.capture.base for every form (picamera2:0, gst:..., rtsp://, file:, folder:)
    loop = false               # replay files / folders forever
    # fps = 15                 # files: replay rate (unset = the file's own, 0 = unthrottled); cameras: requested rate
    stall_s = 5.0              # no frame for this long = stalled: reconnect
    reconnect_max_s = 30.0     # cap of the exponential reconnect backoff

    [detector]
    name = "yunet"             # yunet | mtcnn
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
    backend = "auto"           # auto | tensorrt | onnxruntime
    precision = "auto"         # auto | fp32 | fp16 | int8-cpu | int8-tensorrt
    # threads = 4              # ONNX Runtime intra-op threads (unset = ORT's default)
    providers = []             # ONNX Runtime providers in order of preference (empty = automatic)
    # verify_inputs = "/var/lib/facediag/verify"   # crops / calibration set for `facediag verify --config`

    [screening]
    good_frames = 8            # good frames of one subject needed for a decision
    window_s = 10.0            # ... within this many seconds, else "retake"
    min_confidence = 0.5       # below this top-class probability: abstain ("retake")
    face_lost_s = 1.5          # the subject is gone after this long without a face
    same_subject_iou = 0.2

    [results]
    path = "/var/lib/facediag/results.jsonl"
    debug_capture_dir = ""     # "" = off. When set, aligned crops are written there: photos of people!

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
"""

from __future__ import annotations

import difflib
import math
import sys
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6 / older Raspberry Pi OS
    import tomli as tomllib


def _meta(*, min: float | None = None, max: float | None = None, min_exclusive: bool = False,  # noqa: A002
          path: bool = False, off: bool = False) -> dict[str, Any]:
    """Field metadata: numeric range, 'is a path', 'accepts false = off'."""
    return {"min": min, "max": max, "min_exclusive": min_exclusive, "path": path, "off": off}


@dataclass(frozen=True)
class SourceConfig:
    uri: str = "v4l2:/dev/video0"
    loop: bool = False
    fps: float | None = field(default=None, metadata=_meta(min=0))
    stall_s: float = field(default=5.0, metadata=_meta(min=0, min_exclusive=True))
    reconnect_max_s: float = field(default=30.0, metadata=_meta(min=0, min_exclusive=True))


@dataclass(frozen=True)
class DetectorConfig:
    name: Literal["yunet", "mtcnn"] = "yunet"
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

    def to_gates(self):  # -> edge.face.quality.QualityGates
        """The front-end's QualityGates with these thresholds (``None`` = gate off)."""
        from edge.face.quality import QualityGates

        return QualityGates(**asdict(self))


@dataclass(frozen=True)
class EngineConfig:
    bundle: str = field(default="/var/lib/facediag/bundle", metadata=_meta(path=True))
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "int8-cpu", "int8-tensorrt"] = "auto"
    threads: int | None = field(default=None, metadata=_meta(min=1, max=256))
    providers: tuple[str, ...] = ()
    # Crops or a calibration set that `facediag verify --config` runs the engine on (engine-build unit).
    verify_inputs: str | None = field(default=None, metadata=_meta(path=True))


@dataclass(frozen=True)
class ScreeningConfig:
    good_frames: int = field(default=8, metadata=_meta(min=1, max=256))
    window_s: float = field(default=10.0, metadata=_meta(min=0, min_exclusive=True))
    min_confidence: float = field(default=0.5, metadata=_meta(min=0, max=1))
    face_lost_s: float = field(default=1.5, metadata=_meta(min=0, min_exclusive=True))
    same_subject_iou: float = field(default=0.2, metadata=_meta(min=0, max=1))

    def to_session_config(self):  # -> edge.screening.session.SessionConfig
        from edge.screening.session import SessionConfig

        return SessionConfig(**asdict(self))


@dataclass(frozen=True)
class ResultsConfig:
    path: str = field(default="/var/lib/facediag/results.jsonl", metadata=_meta(path=True))
    debug_capture_dir: str | None = field(default=None, metadata=_meta(path=True))


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
class StationConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
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


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of strings"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check_value(key: str, value: Any, tp: Any, meta: dict[str, Any], base_dir: Path | None) -> Any:
    """Validate and normalise one value; ConfigError names ``key`` and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if value is False and meta.get("off"):
            return None
        if isinstance(value, str) and value == "" and meta.get("path"):
            return None
        return _check_value(key, value, inner, meta, base_dir)
    expected = _describe(tp) + (" or false (off)" if meta.get("off") else "")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be {expected} (got {value!r})")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        return value
    if tp in (int, float):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if tp is float:
            ok = ok or isinstance(value, float)
        if not ok:
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number (got {value!r})")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            relation = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{key} must be {relation} {lo:g} (got {value!r})")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi:g} (got {value!r})")
        return float(value) if tp is float else value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        if meta.get("path"):
            if not value:
                raise ConfigError(f"{key} must be a path (got an empty string)")
            p = Path(value).expanduser()
            if not p.is_absolute() and base_dir is not None and not value.startswith("$"):
                p = base_dir / p
            return str(p)
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in this module


def _suggest(name: str, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(prefix + k for k in known)}"


def _build_section(name: str, cls: type, table: Any, base_dir: Path | None) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table (a [{name}] header with key = value lines), got {_type_name(table)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key} is not a known key{_suggest(key, known, name + '.')}")
    values = {}
    for f in fields(cls):
        if f.name in table:
            values[f.name] = _check_value(f"{name}.{f.name}", table[f.name], hints[f.name], dict(f.metadata), base_dir)
    return cls(**values)


def _cross_checks(cfg: StationConfig) -> None:
    q = cfg.quality
    if q.min_brightness is not None and q.max_brightness is not None and q.min_brightness >= q.max_brightness:
        raise ConfigError(f"quality.min_brightness ({q.min_brightness:g}) must be below quality.max_brightness "
                          f"({q.max_brightness:g})")
    if cfg.engine.backend == "onnxruntime" and cfg.engine.precision == "int8-tensorrt":
        raise ConfigError("engine.precision 'int8-tensorrt' needs engine.backend 'tensorrt' or 'auto'; "
                          "use 'int8-cpu' with onnxruntime")
    if cfg.engine.backend == "tensorrt" and cfg.engine.precision == "int8-cpu":
        raise ConfigError("engine.precision 'int8-cpu' is an ONNX Runtime model; use 'int8-tensorrt' with tensorrt")
    if cfg.api.enabled and cfg.api.unix_socket is None and cfg.api.port == 0:
        raise ConfigError("api.port must be 1..65535 when the API listens on TCP (or set api.unix_socket)")
    from edge.capture.base import parse_source_uri

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
