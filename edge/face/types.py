"""Plain data types shared by every detector and by alignment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Landmark order used everywhere in facediag (detectors convert to it):
LANDMARK_NAMES: tuple[str, ...] = (
    "eye_image_left",  # the eye with the smaller x in the image (the subject's right eye)
    "eye_image_right",
    "nose_tip",
    "mouth_image_left",
    "mouth_image_right",
)


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    box: (x1, y1, x2, y2), clipped to the frame.
    landmarks: float32 array (5, 2) of (x, y), in LANDMARK_NAMES order.
    score: detector confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """Clip (x1, y1, x2, y2) to a width x height frame; x1 <= x2 and y1 <= y2 afterwards."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    x1 = min(max(x1, 0.0), float(width))
    x2 = min(max(x2, 0.0), float(width))
    y1 = min(max(y1, 0.0), float(height))
    y2 = min(max(y2, 0.0), float(height))
    return (x1, y1, x2, y2)
