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


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calib_reader: Any, settings: QuantSettings) -> None:
    """Static QDQ quantisation of ``fp32_path`` into ``out_path`` with ranges from ``calib_reader``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib_reader is None:
        raise ConfigError(
            "INT8 quantisation needs real calibration data: make a set with "
            "`facediag calibrate BUNDLE PHOTOS SET` and pass --calib SET (random data is never used)"
        )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    if settings.target == "tensorrt":
        act, wt = QuantType.QInt8, QuantType.QInt8
        extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    else:
        act, wt = QuantType.QUInt8, QuantType.QInt8
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    extra["CalibMaxIntermediateOutputs"] = 8  # fold ranges every 8 batches: bounded memory on big sets
    with tempfile.TemporaryDirectory(prefix="facediag-quant-") as tmp:
        src = _pre_process(fp32_path, Path(tmp) / "pre.onnx") if settings.preprocess else fp32_path
        quantize_static(
            str(src),
            str(out_path),
            calib_reader,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=act,
            weight_type=wt,
            nodes_to_exclude=float_tail_and_head(src),
            calibrate_method=method,
            extra_options=extra,
            calibration_providers=["CPUExecutionProvider"],
        )
