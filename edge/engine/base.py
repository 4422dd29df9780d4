"""The seam between the station and whatever runs the network (ONNX Runtime, TensorRT)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """Runs a classifier on a batch of ``crops_to_input`` output.

    ``backend`` names the runtime ("onnxruntime", "tensorrt"); ``precision`` the
    bundle precision it runs ("fp32", "fp16", "int8-cpu", "int8-tensorrt").
    ``infer`` takes float32 NCHW 0..255 in the contract's colour order and
    returns float32 class probabilities (N, C); ``close`` frees the runtime.
    """

    backend: str
    precision: str

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
