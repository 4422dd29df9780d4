"""The frame-source seam: one Protocol, a registry of source kinds, and one function that picks one from a URI.

Every camera, stream, file or folder the station can read from looks the same to
the rest of the daemon: ``open()``, then ``read()`` until it returns a frame or
``None``, then ``close()``. The supervisor (``facediag.edge.capture.supervisor``) owns the
retry policy, so sources stay simple: they report failure, they never retry.

Each kind of source registers a :class:`SourceKind` in :data:`SOURCES` next to its
implementation (``*_source.py`` in this package): its URI prefixes, how it claims a
bare path, and a factory. ``parse_source_uri``, ``make_source``, the station config's
``[source] uri`` check and the help text all read that registry. The built-in kinds::

    picamera2:0                     Raspberry Pi CSI camera number 0 (needs apt's python3-picamera2)
    v4l2:/dev/video0  /dev/video0   a V4L2 device through OpenCV (``v4l2:0`` means /dev/video0)
    gst:<pipeline>                  a GStreamer pipeline ending in appsink (needs OpenCV built with GStreamer)
    rtsp://...  http(s)://...       a network stream through OpenCV's FFmpeg backend (MJPEG over HTTP works)
    file:/path/clip.mp4?loop=1      a video file; options loop=0|1, fps=<rate> (0 = as fast as possible)
    /path/clip.mp4                  the same, for a path with a video extension
    folder:/dir?loop=1&fps=2        every image in a folder, sorted by name
    /dir                            the same, for an existing directory

Query options (after ``?``) are ``loop``, ``fps``, ``width`` and ``height`` for every kind
(each kind uses those that apply to it); keyword arguments given to ``make_source``
override them (the station config passes ``[source] loop`` and ``fps`` that way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl

import numpy as np

from facediag.edge.errors import ConfigError, FacediagError
from facediag.edge.photos import IMAGE_SUFFIXES
from facediag.edge.registry import Factory, Registry, load_factory

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".mpg", ".mpeg", ".ts"})
IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the photo-collection layer's policy (facediag.edge.photos)
QUERY_OPTIONS = ("loop", "fps", "width", "height")


class SourceError(FacediagError):
    """A frame source could not be opened or failed while reading.

    The message names the source and says what to check. The supervisor catches it
    and retries with backoff; ``facediag run`` shows it when the first open fails.
    """


class EndOfStream(Exception):  # noqa: N818 - a signal, not an error
    """A finite source (a video file or image folder without ``loop``) has no more frames.

    Raised by ``read()`` so that the supervisor can tell "finished" from "failed"
    (a failed read returns ``None`` and is retried; the end of a file is final).
    """


@runtime_checkable
class FrameSource(Protocol):
    """Anything the capture thread can read frames from.

    ``uri``: the value it was made from (for logs, status and metrics).
    ``open()``: acquire the device/stream; raises SourceError with a clear message.
        Calling it on an open source reopens it.
    ``read()``: the next frame as BGR uint8 (H, W, 3), or ``None`` when no frame
        came (timeout, dropped connection); raises EndOfStream when a finite source
        is exhausted. May block for up to the source's read timeout.
    ``close()``: release everything; safe to call twice or before ``open()``.
    ``describe()``: a short human-readable line (kind, target, options) for STATUS=.
    """

    uri: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source URI: which implementation (a registered kind), what it points at, and its options."""

    kind: str  # a name in SOURCES: picamera2 | v4l2 | gst | url | file | folder | ...
    target: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceOptions:
    """The checked options a source factory receives (query options, overridden by keyword arguments)."""

    uri: str
    loop: bool
    fps: float | None
    width: int | None
    height: int | None


class SourceFactory(Protocol):
    def __call__(self, spec: SourceSpec, options: SourceOptions) -> FrameSource: ...


def split_query(value: str) -> tuple[str, dict[str, str]]:
    """'path?loop=1&fps=5' -> ('path', {'loop': '1', 'fps': '5'}). A '?' inside a path is rare; allow it
    only when what follows looks like key=value pairs."""
    if "?" not in value:
        return value, {}
    head, _, query = value.rpartition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or any(not k for k, _ in pairs):
        return value, {}
    return head, dict(pairs)


@dataclass(frozen=True)
class SourceKind:
    """A registered kind of frame source.

    ``prefixes``: lower-case URI prefixes that select it (``"v4l2:"``, ``"rtsp://"``); ``aliases``:
    whole URIs that mean it (``"picamera2"``). ``parse(uri, rest)`` turns the text after the prefix
    into ``(target, options)`` (default: :func:`split_query`) and raises ConfigError for a malformed
    one. ``claims_bare(target)`` says whether a URI without a prefix is of this kind (an existing
    folder, a video file name); kinds are asked in ``bare_priority`` order. ``factory`` builds the
    unopened source from ``(SourceSpec, SourceOptions)``. ``examples`` appear in help and errors.
    """

    name: str
    summary: str
    factory: Factory
    examples: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = QUERY_OPTIONS
    parse: Callable[[str, str], tuple[str, dict[str, str]]] | None = None
    claims_bare: Callable[[str], bool] | None = None
    bare_priority: int = 100
    requires: str = ""  # what the host needs beyond the station extra, if anything

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError(f"source kind {self.name!r} needs at least one example URI")
        if not self.prefixes and not self.aliases and self.claims_bare is None:
            raise ValueError(f"source kind {self.name!r} can never be selected: give prefixes, aliases or claims_bare")
        if any(p != p.lower() for p in self.prefixes):
            raise ValueError(f"source kind {self.name!r}: prefixes must be lower case")
        unknown = set(self.options) - set(QUERY_OPTIONS)
        if unknown:
            raise ValueError(f"source kind {self.name!r}: unknown options {sorted(unknown)}")


SOURCES: Registry[SourceKind] = Registry(
    "source kind",
    builtin_modules=tuple(
        f"facediag.edge.capture.{m}"
        for m in ("picamera2_source", "v4l2_source", "gstreamer_source", "url_source", "video_file_source",
                  "image_folder_source")
    ),
)


def source_examples() -> list[str]:
    """Example URIs of every registered kind (for help text and error messages)."""
    return [e for kind in SOURCES.specs() for e in kind.examples]


def parse_source_uri(uri: str) -> SourceSpec:
    """Classify a source URI without touching any device (pure, but for a bare path's existence check).

    Raises ConfigError naming the URI and listing the accepted forms when it matches no registered kind.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("source.uri is empty; set it to e.g. 'v4l2:/dev/video0' or 'file:/path/clip.mp4'")
    uri = uri.strip()
    lower = uri.lower()
    kinds = SOURCES.specs()
    for kind in kinds:
        rest = uri[len(kind.aliases[0]) :] if lower in kind.aliases else None
        for prefix in kind.prefixes:
            if rest is None and lower.startswith(prefix):
                rest = uri[len(prefix) :]
        if rest is not None:
            target, opts = kind.parse(uri, rest) if kind.parse is not None else split_query(rest)
            return SourceSpec(kind.name, target, opts)
    target, opts = split_query(uri)
    for kind in sorted((k for k in kinds if k.claims_bare is not None), key=lambda k: k.bare_priority):
        if kind.claims_bare is not None and kind.claims_bare(target):
            return SourceSpec(kind.name, target, opts)
    forms = ", ".join(repr(e) for e in source_examples())
    raise ConfigError(
        f"source.uri {uri!r} is not a source this station knows. Use one of: {forms} "
        "(or an existing folder / video path)"
    )


def _parse_bool(key: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"source option {key}={value!r} must be a boolean (1/0, true/false)")


def _parse_fps(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        fps = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"source option fps={value!r} must be a number (frames per second; 0 = unthrottled)") from None
    if fps < 0 or fps != fps:
        raise ConfigError(f"source option fps={value!r} must be >= 0 (0 = unthrottled)")
    return fps


def make_source(uri: str, *, loop: bool | None = None, fps: float | None = None) -> FrameSource:
    """Build the source for ``uri`` without opening it (the supervisor opens and reopens it).

    ``loop``/``fps`` override the URI's query options. ``fps`` means: for files and folders
    the replay rate (``None`` = the file's own rate, or unthrottled for a folder; ``0`` =
    as fast as possible); for cameras the rate requested from the device (``None``/0 =
    the device default). Implementations are imported only when chosen, so a station
    without picamera2 or GStreamer never imports them.
    """
    spec = parse_source_uri(uri)
    opt_loop = _parse_bool("loop", spec.options.get("loop", "0")) if loop is None else bool(loop)
    opt_fps = _parse_fps(spec.options.get("fps")) if fps is None else _parse_fps(fps)
    unknown = set(spec.options) - set(QUERY_OPTIONS)
    if unknown:
        raise ConfigError(
            f"source.uri {uri!r}: unknown option(s) {sorted(unknown)}; accepted: {', '.join(QUERY_OPTIONS)}"
        )
    try:
        width = int(spec.options["width"]) if "width" in spec.options else None
        height = int(spec.options["height"]) if "height" in spec.options else None
    except ValueError:
        raise ConfigError(f"source.uri {uri!r}: width and height must be whole numbers of pixels") from None
    factory: SourceFactory = load_factory(SOURCES.get(spec.kind).factory)
    return factory(spec, SourceOptions(uri=uri, loop=opt_loop, fps=opt_fps, width=width, height=height))


def open_source(uri: str, *, loop: bool | None = None, fps: float | None = None) -> FrameSource:
    """``make_source(uri, ...)`` and ``open()`` it: for one-shot use (``facediag bench``, scripts).

    The daemon hands ``make_source(...)`` to a CaptureSupervisor instead, which opens it itself.
    """
    source = make_source(uri, loop=loop, fps=fps)
    source.open()
    return source


def as_bgr_uint8(frame: np.ndarray, uri: str) -> np.ndarray:
    """Normalise what a backend returned to BGR uint8 (H, W, 3): grey is expanded, a 4th channel dropped."""
    if frame.dtype != np.uint8:
        raise SourceError(f"{uri}: the source delivered {frame.dtype} pixels; expected 8-bit frames")
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.ascontiguousarray(frame[:, :, :3])
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise SourceError(f"{uri}: the source delivered frames of shape {frame.shape}; expected (H, W, 3)")


class Pacer:
    """Spaces out frames of a replayed source (file, folder) at ``fps`` frames per second.

    ``fps`` of ``None`` or 0 means unthrottled. Deadlines are kept on a fixed grid
    (not "now + period"), so a slow consumer does not make the replay drift slower;
    after a long pause the grid restarts instead of bursting to catch up.
    """

    def __init__(self, fps: float | None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        import time

        self.period = 1.0 / fps if fps else 0.0
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        self._next: float | None = None

    def wait(self) -> None:
        """Block until the next frame is due."""
        if self.period <= 0:
            return
        now = self._clock()
        if self._next is None or now - self._next > 1.0:
            self._next = now
        delay = self._next - now
        if delay > 0:
            self._sleep(delay)
        self._next += self.period

    def reset(self) -> None:
        self._next = None
