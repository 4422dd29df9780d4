"""The demo's input: a short clip rendered from scikit-image's public-domain astronaut photo.

Two "visits" of one person, the way a kiosk camera would see them: the face
appears and the camera slowly zooms in (someone stepping closer), the face
leaves (empty background frames, so the session ends), then a mirrored, shifted
view comes back. Written as MJPG .avi, which every OpenCV build can read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FACE_CENTRE = (221.0, 116.0)  # (x, y) of the astronaut's face in the 512x512 photo


def astronaut_bgr() -> np.ndarray:
    """NASA's portrait of Eileen Collins as shipped with scikit-image (public domain), BGR uint8."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # type: ignore[no-untyped-call]


def _view(image: np.ndarray, centre: tuple[float, float], height: float, size: tuple[int, int]) -> np.ndarray:
    """A window of ``height`` source pixels (aspect of ``size``) around ``centre``, resized to ``size``."""
    import cv2

    w, h = size
    ih, iw = image.shape[:2]
    win_h = min(float(ih), height)
    win_w = min(float(iw), win_h * w / h)
    win_h = win_w * h / w
    x0 = min(max(0.0, centre[0] - win_w / 2), iw - win_w)
    y0 = min(max(0.0, centre[1] - win_h / 2), ih - win_h)
    scale = w / win_w
    m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _background(size: tuple[int, int]) -> np.ndarray:
    """An empty room: a soft vertical gradient, nobody in it."""
    w, h = size
    ramp = np.linspace(150, 95, h, dtype=np.float32)[:, None, None]
    tint = np.array([1.0, 0.97, 0.92], np.float32)[None, None, :]
    return np.ascontiguousarray(np.broadcast_to(ramp * tint, (h, w, 3)).astype(np.uint8))


def render_frames(size: tuple[int, int] = (480, 360), fps: float = 15.0, visit_s: float = 3.0,
                  gap_s: float = 1.4) -> list[np.ndarray]:
    """The clip's frames: visit (zoom in), empty, visit (mirrored, shifted), empty."""
    import cv2

    photo = astronaut_bgr()
    mirrored = cv2.flip(photo, 1)
    mirrored_centre = (photo.shape[1] - 1 - FACE_CENTRE[0], FACE_CENTRE[1])
    n_visit = max(1, int(round(visit_s * fps)))
    n_gap = max(1, int(round(gap_s * fps)))
    empty = _background(size)
    frames: list[np.ndarray] = []
    for i in range(n_visit):  # slow zoom: from the whole upper body to head and shoulders
        t = i / max(1, n_visit - 1)
        frames.append(_view(photo, (FACE_CENTRE[0], FACE_CENTRE[1] + 40 * (1 - t)), 380 - 130 * t, size))
    frames += [empty] * n_gap
    for i in range(n_visit):  # second visit: mirrored, off centre, drifting sideways
        t = i / max(1, n_visit - 1)
        centre = (mirrored_centre[0] + 20 - 40 * t, mirrored_centre[1] + 20)
        frames.append(_view(mirrored, centre, 260, size))
    frames += [empty] * n_gap
    return frames


def write_clip(path: str | Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    """Write ``frames`` as an MJPG .avi at ``fps``."""
    import cv2

    from facediag.edge.errors import FacediagError

    path = Path(path)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise FacediagError(f"OpenCV cannot write an MJPG video to {path}; check the folder is writable")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()
    return path
