"""Legacy implicit INT8 calibration for TensorRT 8.5-10.x (``facediag build --legacy-calibrator``).

Deprecated in TensorRT 10.1 and removed in 11.0; the default INT8 path is the Q/DQ model
(see tensorrt_build.py). This is an ``IInt8EntropyCalibrator2`` fed from host arrays,
with its cache on disk, and the build call that attaches it under a current CUDA context.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.atomicio import atomic_write_bytes
from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)


def calibration_batches(data: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split calibration inputs into equal batches (TensorRT's calibrator wants a fixed batch size).

    A short last batch is dropped rather than padded with made-up data; fewer inputs
    than one batch is an error.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 4:
        raise ConfigError(f"calibration data must be N x C x H x W, got shape {x.shape}")
    if batch_size < 1:
        raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
    n = (x.shape[0] // batch_size) * batch_size
    if n == 0:
        raise ConfigError(f"need at least {batch_size} calibration crops, got {x.shape[0]}")
    return [np.ascontiguousarray(x[i : i + batch_size]) for i in range(0, n, batch_size)]


def _make_entropy_calibrator(
    trt: Any, cuda: Any, batches: list[np.ndarray], cache_path: Path
) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from host arrays, with its cache on disk (legacy path only)."""
    base = trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = batches
            self._index = 0
            self._device: Any = cuda.mem_alloc(batches[0].nbytes) if batches else None

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0]) if self._batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            cuda.memcpy_htod(self._device, self._batches[self._index])
            self._index += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path.is_file():
                log.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))
            log.info("wrote INT8 calibration cache %s", cache_path)

    return _Calibrator()


def build_with_calibrator(
    trt: Any,
    cuda: Any,
    builder: Any,
    network: Any,
    config: Any,
    api: Any,
    input_name: str,
    shapes: dict[str, list[int]],
    batches: list[np.ndarray],
    cache_path: Path,
) -> Any:
    """Legacy implicit INT8: attach an entropy calibrator and build, with a CUDA context current for its buffers."""
    context = cuda.Device(0).retain_primary_context()
    context.push()
    calibrator = None
    try:
        calibrator = _make_entropy_calibrator(trt, cuda, batches, cache_path)
        config.int8_calibrator = calibrator
        if api.has_calibration_profile and shapes["min"][0] != shapes["max"][0]:
            # Dynamic batch: calibration runs at one fixed shape, the calibrator's batch size.
            cal_shape = [calibrator.get_batch_size(), *shapes["max"][1:]]
            cal_profile = builder.create_optimization_profile()
            cal_profile.set_shape(input_name, cal_shape, cal_shape, cal_shape)
            config.set_calibration_profile(cal_profile)
        return builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None and calibrator._device is not None:
            calibrator._device.free()
        context.pop()
        context.detach()
