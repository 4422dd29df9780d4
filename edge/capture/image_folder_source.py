"""Every image in a folder, one per frame, in name order (demos and tests without a camera)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facediag.edge.capture.base import (
    IMAGE_EXTENSIONS,
    SOURCES,
    EndOfStream,
    Pacer,
    SourceError,
    SourceKind,
    SourceOptions,
    SourceSpec,
    as_bgr_uint8,
)
from facediag.edge.photos import list_images

log = logging.getLogger(__name__)


def _default_loader() -> Callable[[Path], np.ndarray]:
    """facediag.edge.face.imageio.load_image (EXIF rotation, grey/RGBA/16-bit, size limits) when present, else cv2.imread."""
    try:
        from functools import partial

        from facediag.edge.face.imageio import STATION_MAX_PIXELS, load_image

        return partial(load_image, max_pixels=STATION_MAX_PIXELS)  # a station-sized pixel limit (issue 11)
    except ImportError:  # pragma: no cover - imageio ships with edge
        import cv2

        def _imread(path: Path) -> np.ndarray:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{path}: OpenCV could not decode this image")
            return image

        return _imread


class ImageFolderSource:
    """``folder:/dir?loop=1&fps=2``. Unreadable images are skipped with a warning; a folder
    with no image at all is a SourceError. ``fps``: None/0 = unthrottled."""

    kind = "folder"

    def __init__(self, folder: str | Path, *, loop: bool = False, fps: float | None = None,
                 uri: str | None = None, loader: Callable[[Path], np.ndarray] | None = None,
                 _clock: Callable[[], float] | None = None, _sleep: Callable[[float], None] | None = None) -> None:
        self.uri = uri or f"folder:{folder}"
        self.folder = Path(folder)
        self.loop = loop
        self.fps = fps or None
        self._loader = loader
        self._files: list[Path] = []
        self._index = 0
        self._pacer = Pacer(self.fps, clock=_clock, sleep=_sleep)
        self._opened = False
        self.skipped: list[Path] = []
        self._bad: set[Path] = set()

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.uri}: {self.folder} is not a folder; check [source] uri")
        # the photo-collection policy: image suffixes in any case, no hidden files, no symlink leading out (issue 11)
        files = list_images(self.folder, contained=True)
        if not files:
            raise SourceError(f"{self.uri}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {self.folder}")
        if self._loader is None:
            self._loader = _default_loader()
        self._files = files
        self._index = 0
        self._pacer.reset()
        self._opened = True
        log.info("opened %s (%d images)", self.describe(), len(files))

    def read(self) -> np.ndarray | None:
        if not self._opened:
            raise SourceError(f"{self.uri}: read() before open()")
        self._pacer.wait()
        attempts = 0
        while attempts < len(self._files):
            if self._index >= len(self._files):
                if not self.loop:
                    raise EndOfStream(f"{self.uri}: all {len(self._files)} images read")
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            attempts += 1
            try:
                loader = self._loader
                assert loader is not None  # set by open()
                return as_bgr_uint8(loader(path), self.uri)
            except Exception as exc:  # noqa: BLE001 - one bad photo must not stop a replay
                if path not in self._bad:  # one warning per bad file, not one per loop (issue 11)
                    self._bad.add(path)
                    self.skipped.append(path)
                    log.warning("%s: skipping %s (and on later loops, silently): %s", self.uri, path.name, exc)
        if self._index >= len(self._files) and not self.loop:
            raise EndOfStream(f"{self.uri}: all {len(self._files)} images read")
        raise SourceError(f"{self.uri}: none of the {len(self._files)} images in {self.folder} could be read")

    def close(self) -> None:
        self._opened = False

    def describe(self) -> str:
        pace = f"{self.fps:g} fps" if self.fps else "unthrottled"
        return f"folder {self.folder} ({len(self._files) or '?'} images, {pace}{', loop' if self.loop else ''})"


def _make(spec: SourceSpec, options: SourceOptions) -> ImageFolderSource:
    return ImageFolderSource(spec.target, loop=options.loop, fps=options.fps, uri=options.uri)


SOURCES.register(
    SourceKind(
        name="folder",
        summary="every image in a folder, sorted by name",
        factory=_make,
        examples=("folder:/path/to/images",),
        prefixes=("folder:",),
        options=("loop", "fps"),
        claims_bare=lambda target: Path(target).is_dir(),
        bare_priority=20,
    )
)
