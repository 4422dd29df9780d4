"""Feeding a calibration set to the tools that compute INT8 ranges.

Two consumers, one source of batches: ONNX Runtime's ``quantize_static`` pulls
input dicts through a ``CalibrationDataReader``; a TensorRT calibrator (or
Polygraphy's) takes any iterable of ``{input_name: array}`` dicts. Both are
built on ``iter_batches`` so they see the same rows in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

try:  # a TensorRT host may have no onnxruntime: iter_batches must work without it
    from onnxruntime.quantization import CalibrationDataReader
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    CalibrationDataReader = object  # type: ignore[misc,assignment,unused-ignore]

INPUT_NAME = "input"


def _rows_of(source: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(array, calibration row indices or None for all rows), checked; the set's array is not copied."""
    if hasattr(source, "calib_rows") and hasattr(source, "inputs"):
        arr, rows = np.asarray(source.inputs), np.asarray(source.calib_rows, dtype=np.int64)
    else:
        arr, rows = np.asarray(source.calib_inputs if hasattr(source, "calib_inputs") else source), None
    if arr.ndim != 4 or arr.dtype != np.float32:
        raise ValueError(f"calibration inputs must be float32 NCHW, got {arr.dtype} {arr.shape}")
    if (len(arr) if rows is None else len(rows)) == 0:
        raise ValueError("the calibration set has no calibration rows")
    return arr, rows


def iter_batches(
    source: Any, batch_size: int = 8, input_name: str = INPUT_NAME, drop_last: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """``{input_name: float32 (B, 3, H, W)}`` dicts over the calibration rows.

    The last batch is short unless ``drop_last`` (TensorRT calibrators and ORT's histogram
    calibrators need every batch the same size). Only one batch is copied out of the set at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arr, rows = _rows_of(source)
    count = len(arr) if rows is None else len(rows)
    stop = count - count % batch_size if drop_last else count
    if stop == 0:
        raise ValueError(f"fewer calibration rows ({count}) than one batch of {batch_size}")
    for start in range(0, stop, batch_size):
        part = arr[start : start + batch_size] if rows is None else arr[rows[start : start + batch_size]]
        yield {input_name: np.ascontiguousarray(part)}


class OrtCalibrationReader(CalibrationDataReader):  # type: ignore[misc,unused-ignore]
    """ONNX Runtime ``CalibrationDataReader`` over a calibration set's calibration rows (rewindable)."""

    def __init__(self, source: Any, batch_size: int = 8, input_name: str = INPUT_NAME, drop_last: bool = False) -> None:
        arr, rows = _rows_of(source)
        self._source = arr if rows is None else source  # a set is sliced batch by batch, never copied whole
        self._count = len(arr) if rows is None else len(rows)
        self._batch_size = batch_size
        self._input_name = input_name
        self._drop_last = drop_last
        self._it: Iterator[dict[str, np.ndarray]] = self._fresh()

    def _fresh(self) -> Iterator[dict[str, np.ndarray]]:
        return iter_batches(self._source, self._batch_size, self._input_name, self._drop_last)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._fresh()

    def __len__(self) -> int:
        n = self._count // self._batch_size
        return n if self._drop_last or self._count % self._batch_size == 0 else n + 1
