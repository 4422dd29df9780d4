"""The seam every face detector implements, and the factory that picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge.errors import ConfigError
from edge.face.types import Face


@runtime_checkable
class Detector(Protocol):
    """Finds faces in a BGR uint8 image (H, W, 3).

    Returns faces sorted by score (highest first), boxes clipped to the frame,
    landmarks in ``edge.face.types.LANDMARK_NAMES`` order.
    """

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]: ...


DETECTOR_NAMES = ("mtcnn", "yunet")


def make_detector(name: str, model_path: str | Path | None = None, score_threshold: float | None = None) -> Detector:
    """Build a detector by name. ``yunet`` needs ``model_path`` (see ``facediag models fetch``)."""
    if name == "yunet":
        from edge.face.yunet import YuNetDetector

        if model_path is None:
            raise ConfigError(
                "the yunet detector needs its model file: pass --detector-model PATH "
                "(download it once with `facediag models fetch yunet`), or use --detector mtcnn"
            )
        kwargs = {} if score_threshold is None else {"score_threshold": score_threshold}
        return YuNetDetector(model_path, **kwargs)
    if name == "mtcnn":
        from edge.face.mtcnn import MTCNNDetector

        kwargs = {} if score_threshold is None else {"score_threshold": score_threshold}
        return MTCNNDetector(**kwargs)
    raise ConfigError(f"unknown detector {name!r}: choose one of {', '.join(DETECTOR_NAMES)}")
