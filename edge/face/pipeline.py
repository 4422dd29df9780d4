"""Photo or frame -> subject face -> quality -> aligned crop: the front-end every stage calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.face.align import align_face
from edge.face.contract import PreprocessContract
from edge.face.detector import Detector
from edge.face.quality import QualityGates, QualityReport, assess
from edge.face.subject import choose_subject
from edge.face.types import Face, clip_box

NO_FACE = "no face found"


@dataclass
class FrontEndResult:
    """What the front-end made of one image. ``crop`` is None when no face was found."""

    face: Face | None
    crop: np.ndarray | None
    quality: QualityReport = field(default_factory=QualityReport)
    faces: list[Face] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return self.quality.reasons

    @property
    def passed(self) -> bool:
        return self.crop is not None and self.quality.passed


def pad_image(image_bgr: np.ndarray, fraction: float) -> tuple[np.ndarray, int, int]:
    """Pad each side by ``fraction`` of the image size (replicated edge pixels).

    Tightly cropped face photos (CelebA, GENKI) leave detectors no context; padding gives it back.
    Returns the padded image and the (x, y) offset to subtract from coordinates found in it.
    """
    import cv2

    if fraction <= 0:
        return image_bgr, 0, 0
    h, w = image_bgr.shape[:2]
    px, py = int(round(w * fraction)), int(round(h * fraction))
    padded = cv2.copyMakeBorder(image_bgr, py, py, px, px, cv2.BORDER_REPLICATE)
    return padded, px, py


def _to_frame(face: Face, scale: float, dx: int, dy: int, w: int, h: int) -> Face:
    """Map a face found in a scaled, padded image back to the original frame."""
    x1, y1, x2, y2 = (v / scale for v in face.box)
    lm = face.landmarks / np.float32(scale) - np.array([dx, dy], dtype=np.float32)
    return Face(box=clip_box((x1 - dx, y1 - dy, x2 - dx, y2 - dy), w, h), landmarks=lm, score=face.score)


class FaceFrontEnd:
    """Detector + subject choice + alignment + quality gates, for one preprocessing contract."""

    def __init__(
        self,
        detector: Detector,
        contract: PreprocessContract,
        gates: QualityGates | None = None,
        pad_fraction: float = 0.0,
        max_detect_side: int | None = 640,
    ) -> None:
        self.detector = detector
        self.contract = contract
        self.gates = gates if gates is not None else QualityGates.off()
        self.pad_fraction = pad_fraction
        self.max_detect_side = max_detect_side

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """All faces, in the coordinates of ``image_bgr``.

        Large photos are downscaled so that their longer side is ``max_detect_side`` before
        detection: detectors miss faces that are far larger than the faces they were trained
        on (YuNet misses 1000+ px faces in 4000 px photos), and it is faster. Alignment still
        samples the full-resolution image.
        """
        import cv2

        padded, dx, dy = pad_image(image_bgr, self.pad_fraction)
        scale = 1.0
        longest = max(padded.shape[:2])
        if self.max_detect_side and longest > self.max_detect_side:
            scale = self.max_detect_side / longest
            padded = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = self.detector.detect(padded)
        if dx or dy or scale != 1.0:
            h, w = image_bgr.shape[:2]
            faces = [_to_frame(f, scale, dx, dy, w, h) for f in faces]
        return faces

    def process(self, image_bgr: np.ndarray) -> FrontEndResult:
        faces = self.detect(image_bgr)
        subject = choose_subject(faces, image_bgr.shape)
        if subject is None:
            return FrontEndResult(face=None, crop=None, quality=QualityReport(reasons=[NO_FACE]), faces=faces)
        # Align from the padded image so that faces touching the border keep their context.
        padded, dx, dy = pad_image(image_bgr, self.pad_fraction)
        crop = align_face(padded, subject.landmarks + np.array([dx, dy], dtype=np.float32), self.contract)
        quality = assess(subject, crop, self.gates)
        return FrontEndResult(face=subject, crop=crop, quality=quality, faces=faces)
