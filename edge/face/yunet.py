"""YuNet face detector through OpenCV's ``cv2.FaceDetectorYN`` (model file given by path)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facediag.edge.errors import ModelFileError
from facediag.edge.face.detector import DETECTORS, DetectorSpec
from facediag.edge.face.types import Face, clip_box

log = logging.getLogger(__name__)


class YuNetDetector:
    """YuNet: box + 5 landmarks + score in one pass, ~230 KB ONNX model.

    YuNet's landmark rows are: right eye, left eye, nose tip, right mouth corner,
    left mouth corner, where "right" is the subject's right, i.e. image-left on an
    upright face. That is already facediag's order (image-left first), so rows are
    taken as they come.
    """

    name = "yunet"

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 50,
    ) -> None:
        import cv2

        path = Path(model_path)
        if not path.is_file():
            raise ModelFileError(
                f"YuNet model file {path} not found; download it once with `facediag models fetch yunet` "
                "or pass the path to face_detection_yunet_*.onnx"
            )
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ModelFileError("this OpenCV build has no cv2.FaceDetectorYN; install opencv-python-headless >= 4.8")
        try:
            self._det = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise ModelFileError(f"{path} is not a YuNet ONNX model OpenCV can load: {exc}") from None
        self._size: tuple[int, int] = (320, 320)
        self.model_path = path

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected a BGR image (H, W, 3), got shape {image_bgr.shape}")
        h, w = image_bgr.shape[:2]
        if (w, h) != self._size:
            self._det.setInputSize((w, h))
            self._size = (w, h)
        _, rows = self._det.detect(image_bgr)
        if rows is None:
            return []
        faces = []
        for row in rows:
            x, y, bw, bh = (float(v) for v in row[:4])
            landmarks = np.asarray(row[4:14], dtype=np.float32).reshape(5, 2)
            faces.append(Face(box=clip_box((x, y, x + bw, y + bh), w, h), landmarks=landmarks, score=float(row[14])))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


def _make_yunet(model_path: Path | None, score_threshold: float | None) -> YuNetDetector:
    if model_path is None:  # make_detector checks first; a direct caller gets the same advice
        raise ModelFileError("the yunet detector needs its model file (`facediag models fetch yunet`)")
    if score_threshold is None:
        return YuNetDetector(model_path)
    return YuNetDetector(model_path, score_threshold=score_threshold)


DETECTORS.register(
    DetectorSpec(
        name="yunet",
        summary="YuNet through OpenCV: box, 5 landmarks and score in one pass (~230 KB ONNX file, "
        "needs --detector-model)",
        factory=_make_yunet,
        # opencv_zoo's YuNet notes: faces of about 10x10 to 300x300 px (larger frames are fine, faces scale)
        min_face_px=10,
        needs_model_file=True,
        default_score_threshold=0.7,
        model_hint="download it once with `facediag models fetch yunet`",
        origin="OpenCV Zoo, models/face_detection_yunet/face_detection_yunet_2026may.onnx "
        "(github.com/opencv/opencv_zoo; fetched by `facediag models fetch yunet`, sha256 pinned)",
        licence="MIT (OpenCV Zoo)",
    )
)
