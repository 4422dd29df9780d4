"""FP32 ONNX -> INT8 Q/DQ ONNX with ONNX Runtime's static quantisation, for one target.

Why two targets (see DESIGN.md, "Precision path"):

- ``tensorrt``: TensorRT only takes symmetric signed INT8, so activations and
  weights are QInt8 with ``ActivationSymmetric`` / ``WeightSymmetric``. A
  TensorRT >= 10 build of this file with ``STRONGLY_TYPED`` runs exactly these
  scales; no calibrator on the device.
- ``cpu``: ONNX Runtime's x86/ARM integer kernels are fast with unsigned
  activations (QUInt8) and signed weights (QInt8), asymmetric.

Both use QDQ format and per-channel weight scales. Ranges come from real
aligned crops (a calibration set's calibration rows); quantising without them
is refused, never done on random data.

Left in float on purpose (``nodes_to_exclude``): the graph's tail after the
last Gemm/MatMul (softmax over temperature-scaled logits, where an 8-bit grid
on probabilities would make thresholds meaningless) and the in-graph input
scaling before the first Conv.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facediag.edge import precision as precision_table
from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

TARGETS = precision_table.quantize_targets()  # ("cpu", "tensorrt"): the rows `quantize --target` makes
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantSettings:
    """Everything that decides the INT8 file (recorded in bundle.json with the gate)."""

    target: str
    per_channel: bool = True
    method: str = "minmax"
    preprocess: bool = True
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        act, wt = ("QInt8", "QInt8") if self.target == "tensorrt" else ("QUInt8", "QInt8")
        return {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "activations": act,
            "weights": wt,
            "symmetric": self.target == "tensorrt",
            "per_channel": self.per_channel,
            "calibration_method": self.method,
            "pre_process": self.preprocess,
            "reduce_range": self.reduce_range,
        }


def float_tail_and_head(model_path: str | Path) -> list[str]:
    """Names of nodes to keep in float: everything before the first Conv and after the last Gemm/MatMul."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    nodes = list(graph.node)
    exclude: list[str] = []
    first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    if first_conv is not None:
        exclude += [n.name for n in nodes[:first_conv] if n.name]
    last_fc = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=None)
    if last_fc is not None:
        exclude += [n.name for n in nodes[last_fc + 1 :] if n.name]
    return exclude


def _pre_process(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-quantisation pass (shape inference + graph optimisation); src on failure."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception as exc:  # the pass is an optimisation: quantising without it is still correct
        log.warning("quant_pre_process failed (%s); quantising the model as exported", exc)
        return src


# quantize_static's extra_options that reach the calibrator, under the calibrator's names (ORT's own mapping).
_CALIBRATOR_OPTIONS = (
    ("CalibTensorRangeSymmetric", "symmetric"),
    ("CalibMovingAverage", "moving_average"),
    ("CalibMovingAverageConstant", "averaging_constant"),
    ("CalibMaxIntermediateOutputs", "max_intermediate_outputs"),
    ("CalibPercentile", "percentile"),
)


def can_stream_histograms() -> bool:
    """Whether this ONNX Runtime's ``quantize_static`` takes precomputed ranges (``calibration_cache_path``)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _quantize_options(settings: QuantSettings) -> tuple[Any, Any, dict[str, Any]]:
    from onnxruntime.quantization import QuantType

    if settings.target == "tensorrt":
        extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
        return QuantType.QInt8, QuantType.QInt8, extra
    return QuantType.QUInt8, QuantType.QInt8, {"ActivationSymmetric": False, "WeightSymmetric": True}


def quantize_onnx(
    fp32_path: str | Path, out_path: str | Path, calib_reader: Any, settings: QuantSettings, *, stream: bool = True
) -> dict[str, Any]:
    """Static QDQ quantisation of ``fp32_path`` into ``out_path`` with ranges from ``calib_reader``.

    Entropy and percentile ranges are computed by :mod:`facediag.calibration.streaming` (two streamed
    passes, one batch of activations in memory; ``calib_reader`` must be rewindable) unless ``stream``
    is False or this ONNX Runtime cannot take precomputed ranges, when ORT collects every batch's
    activations at once (the old, memory-hungry way). Returns how the ranges were collected.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calib_reader is None:
        raise ConfigError(
            "INT8 quantisation needs real calibration data: make a set with "
            "`facediag calibrate BUNDLE PHOTOS SET` and pass --calib SET (random data is never used)"
        )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    act, wt, extra = _quantize_options(settings)
    extra["CalibMaxIntermediateOutputs"] = 8  # minmax: fold ranges every 8 batches, bounded memory on big sets
    streamed = stream and settings.method != "minmax" and can_stream_histograms()
    if stream and settings.method != "minmax" and not streamed:
        log.warning("this onnxruntime cannot take precomputed ranges: %s calibration keeps every batch's "
                    "activations in memory (onnxruntime >= 1.32 streams them)", settings.method)
    with tempfile.TemporaryDirectory(prefix="facediag-quant-") as tmp:
        src = _pre_process(fp32_path, Path(tmp) / "pre.onnx") if settings.preprocess else fp32_path
        reader, cache = calib_reader, None
        if streamed:
            from onnxruntime.quantization.calibrate import save_tensors_data

            from facediag.calibration.streaming import streamed_histogram_ranges

            calib_options = {name: extra[key] for key, name in _CALIBRATOR_OPTIONS if key in extra}
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(streamed_histogram_ranges(src, calib_reader, method, calib_options), cache)
            reader = None  # the ranges come from the cache file
        quantize_static(
            str(src),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=act,
            weight_type=wt,
            nodes_to_exclude=float_tail_and_head(src),
            calibrate_method=method,
            extra_options=extra,
            calibration_providers=["CPUExecutionProvider"],
            **({} if cache is None else {"calibration_cache_path": str(cache)}),
        )
    how = "streamed two-pass histograms" if streamed else ("minmax, folded every 8 batches"
                                                            if settings.method == "minmax" else "all batches at once")
    return {"range_collection": how}
