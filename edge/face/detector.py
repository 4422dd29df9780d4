"""The seam every face detector implements, the registry of detectors, and the factory that picks one by name.

Each detector module registers a :class:`DetectorSpec` in :data:`DETECTORS` next to its
implementation (``facediag.edge.face.yunet``, ``facediag.edge.face.mtcnn``). The
station config (``[detector] name``), the command line (``--detector`` choices and
help) and :func:`make_detector` all read that registry, so a new detector is one
module that registers itself (listed in ``DETECTORS.builtin_modules``) and one test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from facediag.edge.errors import ConfigError
from facediag.edge.face.types import Face
from facediag.edge.registry import Factory, Registry, load_factory

__all__ = [
    "DETECTORS", "Detector", "DetectorFactory", "DetectorSpec", "auto_detector_name", "detector_provenance",
    "make_detector",
]


@runtime_checkable
class Detector(Protocol):
    """Finds faces in a BGR uint8 image (H, W, 3).

    Returns faces sorted by score (highest first), boxes clipped to the frame,
    landmarks in ``facediag.edge.face.types.LANDMARK_NAMES`` order.
    """

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]: ...


class DetectorFactory(Protocol):
    """What a spec's factory is called with: the model file (``None`` when not given) and a score threshold
    (``None`` = the detector's default)."""

    def __call__(self, model_path: Path | None, score_threshold: float | None) -> Detector: ...


@dataclass(frozen=True)
class DetectorSpec:
    """A registered face detector.

    ``factory``: a :class:`DetectorFactory` or ``"module:function"`` naming one (imported when used).
    ``min_face_px``: the smallest face (shorter side, pixels) it finds reliably; a quality gate
    ``[quality] min_face_px`` below it cannot be met in practice.
    ``needs_model_file``: whether it needs ``model_path`` (``--detector-model``); ``model_hint``
    says where to get the file.
    ``origin``: where its weights come from (package and file, or URL); ``licence``: their licence as the
    source states it. Both are recorded in checkpoints and bundles (``detector_provenance``).
    """

    name: str
    summary: str
    factory: Factory
    min_face_px: int
    needs_model_file: bool
    default_score_threshold: float
    options: tuple[str, ...] = ("score_threshold",)
    model_hint: str = ""
    origin: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if self.min_face_px < 1:
            raise ValueError(f"detector {self.name!r}: min_face_px must be >= 1")
        if not 0.0 <= self.default_score_threshold <= 1.0:
            raise ValueError(f"detector {self.name!r}: default_score_threshold must be in [0, 1]")


DETECTORS: Registry[DetectorSpec] = Registry(
    "detector", builtin_modules=("facediag.edge.face.yunet", "facediag.edge.face.mtcnn")
)


def detector_provenance(name: str) -> dict[str, str]:
    """``{"name", "origin", "licence"}`` of a registered detector ("not stated" where its spec is silent)."""
    spec = DETECTORS.get(name)
    return {"name": spec.name, "origin": spec.origin or "not stated", "licence": spec.licence or "not stated"}


def auto_detector_name(model_path: str | Path | None) -> str:
    """What ``--detector auto`` means: yunet when a model file is given, else mtcnn (no download needed)."""
    return "yunet" if model_path else "mtcnn"


def make_detector(name: str, model_path: str | Path | None = None, score_threshold: float | None = None) -> Detector:
    """Build a registered detector by name (``facediag.edge.face.detector.DETECTORS``).

    A detector that needs a model file (yunet) raises ConfigError when ``model_path`` is not given.
    """
    spec = DETECTORS.get(name)
    if spec.needs_model_file and model_path is None:
        offline = [s.name for s in DETECTORS.specs() if not s.needs_model_file]
        alternative = f", or use --detector {offline[0]}" if offline else ""
        hint = f" ({spec.model_hint})" if spec.model_hint else ""
        raise ConfigError(f"the {name} detector needs its model file: pass --detector-model PATH{hint}{alternative}")
    factory: DetectorFactory = load_factory(spec.factory)
    return factory(Path(model_path) if model_path is not None else None, score_threshold)
