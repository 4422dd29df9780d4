"""Alignment: least-squares similarity transform of 5 landmarks onto a template."""

from __future__ import annotations

import numpy as np

from facediag.edge.face.contract import PreprocessContract


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    src, dst: (K, 2) point sets, K >= 2. Returns a 2x3 float64 matrix M with
    dst ~= src @ M[:, :2].T + M[:, 2] (Umeyama 1991, without reflection).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite numbers")
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("landmarks are all at one point: cannot align")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    m = np.zeros((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - scale * rot @ src_mean
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (K, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    moved: np.ndarray = pts @ matrix[:, :2].T + matrix[:, 2]
    return moved


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    a = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def alignment_matrix(landmarks: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """The 2x3 matrix taking image coordinates to the contract's crop."""
    return similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), contract.landmarks)


def align_face(image_bgr: np.ndarray, landmarks: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Warp the face with these landmarks onto the contract's template: uint8 (H, W, 3) BGR crop."""
    import cv2  # the station extra; imported here so contract/geometry work without it

    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {image_bgr.dtype} {image_bgr.shape}")
    m = alignment_matrix(landmarks, contract)
    return cv2.warpAffine(
        image_bgr,
        m,
        (contract.width, contract.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
