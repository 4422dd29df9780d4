"""ONNX Runtime engine: the CPU fallback on every station and the reference the gates compare with.

ONNX Runtime silently falls back to the CPU when a requested execution provider
cannot be used (library missing, wrong CUDA), which would make a station report
GPU figures it does not have. ``OrtEngine`` therefore checks the provider the
session actually uses and refuses to start on a mismatch.
"""

from __future__ import annotations

import logging
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.compat import zip_strict
from facediag.edge.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

ProviderSpec = typing.Union[str, typing.Tuple[str, typing.Dict[str, Any]]]  # typing.*: run time (3.8)


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


class OrtEngine:
    """An ``Engine`` backed by an ``onnxruntime.InferenceSession`` on one ONNX file.

    ``providers``: execution providers in priority order (names, or (name, options)
    pairs); the first one must be the one the session ends up using.
    ``threads``: intra-op threads (None: ONNX Runtime's default, all cores).
    ``precision``: the bundle precision this file is ("fp32", "fp16", ...), for reports.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        providers: Sequence[ProviderSpec] = ("CPUExecutionProvider",),
        threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        from facediag.edge.privacy import silence_onnxruntime

        silence_onnxruntime(ort)  # ORT_DISABLE_TELEMETRY=1 was set on import of facediag.edge
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelFileError(f"ONNX model {path} does not exist: check the bundle path or re-export the bundle")
        if not providers:
            raise ConfigError("no ONNX Runtime execution provider configured: use e.g. CPUExecutionProvider")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1 (or unset for the default), got {threads}")
        self.precision = precision
        self.path = path
        wanted = _provider_name(providers[0])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own fallback warning is replaced by the error below
        try:
            with warnings.catch_warnings():  # ORT warns about an unavailable provider; the check below says more
                warnings.simplefilter("ignore", UserWarning)
                self._session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
            raise ModelFileError(f"ONNX Runtime cannot load {path}: {exc}. Re-export the bundle or check the file") from exc
        in_use = self._session.get_providers()
        if not in_use or in_use[0] != wanted:
            available = ", ".join(ort.get_available_providers())
            self._session = None
            raise ConfigError(
                f"ONNX Runtime was asked for {wanted} but is running {in_use[0] if in_use else 'nothing'} "
                f"(it falls back silently). Providers available in this onnxruntime build: {available}. "
                f"Install the matching onnxruntime package (e.g. onnxruntime-gpu for CUDA) or configure "
                f"CPUExecutionProvider."
            )
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelFileError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)
        if inputs[0].type != "tensor(float)":
            raise ModelFileError(f"{path}: input {self.input_name!r} is {inputs[0].type}, expected tensor(float)")
        self.provider = in_use[0]
        log.debug("OrtEngine %s on %s (%s)", path.name, self.provider, precision)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) float32 for a float32 NCHW batch of ``crops_to_input`` output."""
        if self._session is None:
            raise RuntimeError("engine is closed")
        x = np.asarray(batch)
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {x.shape}")
        for axis, (want, got) in enumerate(zip_strict(self.input_shape[1:], x.shape[1:]), start=1):
            if isinstance(want, int) and want != got:
                raise ValueError(f"input axis {axis} must be {want} for this model, got batch shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> OrtEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
