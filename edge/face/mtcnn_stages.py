"""Geometry of the MTCNN cascade: NMS, box regression, the image pyramid and net input scaling.

Part of ``facediag.edge.face.mtcnn`` (which re-exports these names). Boxes are
(N, 4) arrays of x1, y1, x2, y2 in continuous pixel coordinates; the pyramid
holds the image transposed into the nets' layout (rows = image x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from facediag.edge.compat import zip_strict

# P-Net looks at 12x12 windows with an output stride of 2 pixels.
_PNET_CELL = 12
_PNET_STRIDE = 2


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
    overlap: np.ndarray = inter / np.maximum(denom, 1e-12)
    return overlap


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
    moved: np.ndarray = boxes + offsets * scale
    return moved


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
        for k, ((x1, y1, x2, y2), lv) in enumerate(zip_strict(boxes.tolist(), choice.tolist())):
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
