"""Every image in a folder, one per frame, in name order (demos and tests without a camera)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.capture.base import IMAGE_EXTENSIONS, EndOfStream, Pacer, SourceError, as_bgr_uint8

log = logging.getLogger(__name__)


def _default_loader() -> Callable[[Path], np.ndarray]:
    """edge.face.imageio.load_image (EXIF rotation, grey/RGBA/16-bit, size limits) when present, else cv2.imread."""
    try:
        from edge.face.imageio import load_image

        return load_image
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
                 _clock=None, _sleep=None) -> None:
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

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.uri}: {self.folder} is not a folder; check [source] uri")
        files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
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
                return as_bgr_uint8(self._loader(path), self.uri)
            except Exception as exc:  # noqa: BLE001 - one bad photo must not stop a replay
                log.warning("%s: skipping %s: %s", self.uri, path.name, exc)
                self.skipped.append(path)
        if self._index >= len(self._files) and not self.loop:
            raise EndOfStream(f"{self.uri}: all {len(self._files)} images read")
        raise SourceError(f"{self.uri}: none of the {len(self._files)} images in {self.folder} could be read")

    def close(self) -> None:
        self._opened = False

    def describe(self) -> str:
        pace = f"{self.fps:g} fps" if self.fps else "unthrottled"
        return f"folder {self.folder} ({len(self._files) or '?'} images, {pace}{', loop' if self.loop else ''})"
