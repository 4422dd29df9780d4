"""Photo or frame -> subject face -> quality -> aligned crop: the front-end every stage calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facediag.edge.face.align import align_face
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.face.detector import Detector
from facediag.edge.face.quality import QualityGates, QualityReport, assess
from facediag.edge.face.subject import choose_subject
from facediag.edge.face.types import Face, clip_box

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


# Smallest face each detector finds reliably, in the pixels it is given. The quality gate
# ``min_face_px`` rejects smaller faces anyway, so frames can be detected at the scale where a face
# of exactly ``min_face_px`` shrinks to this size: 640x480 with the default 64 px gate is detected
# at 320x240 by YuNet, a quarter of the cost, and no face that the gate would pass is lost.
DETECTOR_MIN_FACE_PX = {"yunet": 32.0, "mtcnn": 40.0}
MIN_DETECT_SIDE = 160


def detect_scale(
    frame_shape: tuple[int, ...], detector_name: str, min_face_px: float | None, max_side: int | None
) -> float:
    """Factor (<= 1) by which a frame of this shape is shrunk before detection."""
    longest = float(max(frame_shape[0], frame_shape[1]))
    scale = min(1.0, max_side / longest) if max_side else 1.0
    smallest = DETECTOR_MIN_FACE_PX.get(detector_name)
    if smallest is not None and min_face_px:
        scale = min(scale, smallest / float(min_face_px))
    scale = max(scale, min(1.0, MIN_DETECT_SIDE / longest))
    return 1.0 if scale > 0.97 else scale


class FaceFrontEnd:
    """Detector + subject choice + alignment + quality gates, for one preprocessing contract.

    Detection runs on a shrunken copy of large frames (``max_detect_side``): detectors miss faces
    far larger than those they were trained on (YuNet misses 1000+ px faces in 4000 px photos), and
    it is faster. With ``shrink_to_gate`` the copy is shrunk further, as far as the quality gate's
    ``min_face_px`` allows without losing a face that could pass (see ``detect_scale``): what a
    station wants, and wrong for photo folders where small faces are cropped with a warning. The
    resize buffer is reused while frames keep their shape. Alignment samples the full-resolution image.
    """

    def __init__(
        self,
        detector: Detector,
        contract: PreprocessContract,
        gates: QualityGates | None = None,
        pad_fraction: float = 0.0,
        max_detect_side: int | None = 640,
        shrink_to_gate: bool = False,
    ) -> None:
        self.detector = detector
        self.contract = contract
        self.gates = gates if gates is not None else QualityGates.off()
        self.pad_fraction = pad_fraction
        self.max_detect_side = max_detect_side
        self.shrink_to_gate = shrink_to_gate
        self._shape: tuple[int, ...] | None = None
        self._scale = 1.0
        self._small: np.ndarray | None = None

    @property
    def detect_size(self) -> tuple[int, int] | None:
        """(width, height) that the last frame shape is detected at, or None when at full size."""
        return None if self._small is None else (self._small.shape[1], self._small.shape[0])

    def _configure(self, shape: tuple[int, ...]) -> None:
        self._shape = shape
        min_face = self.gates.min_face_px if self.shrink_to_gate else None
        self._scale = detect_scale(shape, getattr(self.detector, "name", ""), min_face, self.max_detect_side)
        if self._scale < 1.0:
            h, w = shape[:2]
            self._small = np.empty((max(1, round(h * self._scale)), max(1, round(w * self._scale)), 3), np.uint8)
        else:
            self._small = None

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """All faces, in the coordinates of ``image_bgr``."""
        import cv2

        padded, dx, dy = pad_image(image_bgr, self.pad_fraction)
        if padded.shape != self._shape:
            self._configure(padded.shape)
        small = self._small
        if small is None:
            faces = self.detector.detect(padded)
            scale = 1.0
        else:
            cv2.resize(padded, (small.shape[1], small.shape[0]), dst=small, interpolation=cv2.INTER_AREA)
            faces = self.detector.detect(small)
            scale = small.shape[1] / padded.shape[1]
        if faces and (dx or dy or scale != 1.0):
            h, w = image_bgr.shape[:2]
            faces = [_to_frame(f, scale, dx, dy, w, h) for f in faces]
        return faces

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The contract's aligned crop of ``face`` (from the padded image, so faces at the border keep context)."""
        if self.pad_fraction <= 0:
            return align_face(image_bgr, face.landmarks, self.contract)
        padded, dx, dy = pad_image(image_bgr, self.pad_fraction)
        return align_face(padded, face.landmarks + np.array([dx, dy], dtype=np.float32), self.contract)

    def process(self, image_bgr: np.ndarray) -> FrontEndResult:
        faces = self.detect(image_bgr)
        subject = choose_subject(faces, image_bgr.shape)
        if subject is None:
            return FrontEndResult(face=None, crop=None, quality=QualityReport(reasons=[NO_FACE]), faces=faces)
        crop = self.align(image_bgr, subject)
        return FrontEndResult(face=subject, crop=crop, quality=assess(subject, crop, self.gates), faces=faces)


# Photos smaller than this on their short side are taken as tight face crops (CelebA's 89x109
# aligned faces, GENKI's 64x64): they give a detector no context and too few pixels, so they are
# upscaled to TIGHT_CROP_UPSCALE_TO on their short side and padded by TIGHT_CROP_PAD on each side.
TIGHT_CROP_SIDE = 256
TIGHT_CROP_UPSCALE_TO = 192
TIGHT_CROP_PAD = 0.3
# After a miss, and only then, the photo is tried again as a tight crop at each of these
# (upscale short side to, pad fraction): photos of any size can be cropped to the face (issue 10),
# and a 300-450 px crop filling the frame with a face was missed by MTCNN on the plain path while
# the padded retry finds it. Photos found on the first attempt keep exactly their first crop.
TIGHT_CROP_RETRIES: tuple[tuple[int, float], ...] = ((256, 0.3), (320, 0.6))


def _upscaled(image_bgr: np.ndarray, short_side: int) -> np.ndarray:
    """The image upscaled (bicubic) so its short side is ``short_side``; unchanged when already that large."""
    import cv2

    h, w = image_bgr.shape[:2]
    scale = short_side / float(min(h, w))
    if scale <= 1.0:
        return image_bgr
    return cv2.resize(image_bgr, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_CUBIC)


class PhotoFrontEnd:
    """The front-end for photo collections (training, evaluation, calibration, export parity).

    The same detector, alignment and contract as a station's ``FaceFrontEnd``, plus the policy for
    tight face crops above: small photos are upscaled and padded; a photo in which no face is found
    is tried again, upscaled and padded, at each of ``TIGHT_CROP_RETRIES``. Face coordinates in its
    results refer to the image the face was found in (upscaled or not); the crop is the contract's
    crop either way.
    """

    def __init__(self, detector: Detector, contract: PreprocessContract, gates: QualityGates | None = None) -> None:
        self.detector = detector
        self.contract = contract
        self._plain = FaceFrontEnd(detector, contract, gates)
        self._padded = FaceFrontEnd(detector, contract, gates, pad_fraction=TIGHT_CROP_PAD)
        self._retries = [
            (side, FaceFrontEnd(detector, contract, gates, pad_fraction=pad)) for side, pad in TIGHT_CROP_RETRIES
        ]

    @staticmethod
    def policy() -> dict[str, float]:
        """The tight-crop policy's numbers, for cache keys and manifests."""
        policy: dict[str, float] = {
            "tight_crop_side": TIGHT_CROP_SIDE,
            "upscale_to": TIGHT_CROP_UPSCALE_TO,
            "pad": TIGHT_CROP_PAD,
        }
        for i, (side, pad) in enumerate(TIGHT_CROP_RETRIES, 1):
            policy[f"retry{i}_upscale_to"], policy[f"retry{i}_pad"] = side, pad
        return policy

    def process(self, image_bgr: np.ndarray) -> FrontEndResult:
        if min(image_bgr.shape[:2]) >= TIGHT_CROP_SIDE:
            result = self._plain.process(image_bgr)
        else:
            result = self._padded.process(_upscaled(image_bgr, TIGHT_CROP_UPSCALE_TO))
        for side, front_end in self._retries:
            if result.face is not None:
                break
            result = front_end.process(_upscaled(image_bgr, side))
        return result
