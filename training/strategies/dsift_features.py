"""Dense-SIFT features: descriptors on a fixed grid, visual words, spatial-pyramid Hellinger histograms.

The feature half of ``facediag.training.strategies.dsift`` (see its docstring for the
pipeline); numpy + OpenCV only, no pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SIFT_DIM = 128


@dataclass(frozen=True)
class GridParams:
    """Where descriptors are taken: working image size, grid step, patch sizes, pyramid grid sizes."""

    image_size: tuple[int, int] = (64, 64)  # (height, width) every crop is resized to
    step: int = 4
    patch_sizes: tuple[int, ...] = (8, 16)
    pyramid: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        h, w = self.image_size
        if min(h, w) < 16 or self.step < 1 or not self.patch_sizes or not self.pyramid:
            raise ValueError(f"bad dense-SIFT grid: {self}")
        if max(self.patch_sizes) >= min(h, w):
            raise ValueError(f"patch sizes {self.patch_sizes} must be smaller than the image {self.image_size}")

    def keypoints_xy(self) -> np.ndarray:
        """(K, 3) float32 rows of (x, y, patch size): the fixed keypoints, each patch fully inside the image."""
        h, w = self.image_size
        rows = []
        for size in self.patch_sizes:
            half = size / 2.0
            xs = np.arange(half, w - half + 1e-6, self.step)
            ys = np.arange(half, h - half + 1e-6, self.step)
            gx, gy = np.meshgrid(xs, ys)
            rows.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, float(size))], axis=1))
        return np.concatenate(rows).astype(np.float32)

    def cell_index(self) -> np.ndarray:
        """(L, K) int: for each pyramid level, the cell (row-major in a g x g grid) that each keypoint falls in."""
        h, w = self.image_size
        kp = self.keypoints_xy()
        out = []
        for g in self.pyramid:
            cx = np.minimum((kp[:, 0] * g / w).astype(np.int64), g - 1)
            cy = np.minimum((kp[:, 1] * g / h).astype(np.int64), g - 1)
            out.append(cy * g + cx)
        return np.stack(out)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "grid_image_size": np.asarray(self.image_size, dtype=np.int64),
            "grid_step": np.asarray(self.step, dtype=np.int64),
            "grid_patch_sizes": np.asarray(self.patch_sizes, dtype=np.int64),
            "grid_pyramid": np.asarray(self.pyramid, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, data: Any) -> GridParams:
        return cls(
            image_size=tuple(int(v) for v in data["grid_image_size"]),  # type: ignore[arg-type]
            step=int(data["grid_step"]),
            patch_sizes=tuple(int(v) for v in data["grid_patch_sizes"]),
            pyramid=tuple(int(v) for v in data["grid_pyramid"]),
        )


def _to_grey(crops: np.ndarray | list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    out = []
    for i, img in enumerate(crops):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"crop {i} is {img.dtype}: dense SIFT needs uint8 crops")
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.ndim != 2:
            raise ValueError(f"crop {i} has shape {img.shape}: expected (H, W, 3) BGR or (H, W) grey")
        h, w = size
        if img.shape != (h, w):
            interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
        out.append(img)
    return out


def dense_descriptors(crops: np.ndarray | list[np.ndarray], grid: GridParams) -> np.ndarray:
    """(N, K, 128) float32 RootSIFT descriptors at the grid's fixed keypoints."""
    import cv2

    kp_arr = grid.keypoints_xy()
    keypoints = [cv2.KeyPoint(float(x), float(y), float(s)) for x, y, s in kp_arr]
    sift = cv2.SIFT_create()  # type: ignore[attr-defined]
    greys = _to_grey(crops, grid.image_size)
    out = np.empty((len(greys), len(keypoints), SIFT_DIM), dtype=np.float32)
    for i, img in enumerate(greys):
        kps, desc = sift.compute(img, keypoints)
        if desc is None or len(kps) != len(keypoints):
            # compute() drops keypoints it cannot describe; the grid keeps every patch inside, so this is a bug.
            raise RuntimeError(f"SIFT returned {0 if desc is None else len(kps)} of {len(keypoints)} descriptors")
        out[i] = desc
    # RootSIFT: Hellinger kernel on descriptors becomes Euclidean distance.
    out /= np.maximum(out.sum(axis=2, keepdims=True), 1e-7)
    np.sqrt(out, out=out)
    return out


def nearest_word(desc: np.ndarray, vocabulary: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest vocabulary row (Euclidean) for each descriptor row."""
    voc = vocabulary.astype(np.float32)
    voc_sq = (voc**2).sum(axis=1)
    out = np.empty(desc.shape[0], dtype=np.int64)
    for start in range(0, desc.shape[0], chunk):
        d = desc[start:start + chunk].astype(np.float32)
        # ||d||^2 is the same for every word, so it does not change the argmin.
        dist = voc_sq[None, :] - 2.0 * d @ voc.T
        out[start:start + chunk] = dist.argmin(axis=1)
    return out


def encode(desc: np.ndarray, vocabulary: np.ndarray, grid: GridParams) -> np.ndarray:
    """(N, K, 128) descriptors -> (N, sum(g*g) * V) pyramid Hellinger histograms, L2-normalised."""
    n, k, _ = desc.shape
    v = vocabulary.shape[0]
    words = nearest_word(desc.reshape(n * k, -1), vocabulary).reshape(n, k)
    cells = grid.cell_index()
    parts = []
    for level, g in enumerate(grid.pyramid):
        idx = cells[level][None, :] * v + words  # (N, K) bin index within this level
        flat = idx + (np.arange(n)[:, None] * g * g * v)
        hist = np.bincount(flat.ravel(), minlength=n * g * g * v).reshape(n, g * g * v).astype(np.float64)
        parts.append(hist / float(k))  # every level sums to 1 per image
    feats = np.sqrt(np.concatenate(parts, axis=1))
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats


def bow_features(
    crops: np.ndarray | list[np.ndarray], vocabulary: np.ndarray, grid: GridParams, chunk: int = 256
) -> np.ndarray:
    """Crops -> pyramid histograms, ``chunk`` crops at a time (descriptors of a whole set would not fit in memory)."""
    n_cells = sum(g * g for g in grid.pyramid)
    parts = [encode(dense_descriptors(crops[s : s + chunk], grid), vocabulary, grid) for s in range(0, len(crops), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, n_cells * vocabulary.shape[0]))
