"""FP32 ONNX -> FP16 ONNX whose input and output stay float32.

Why keep float32 IO: every runtime (ONNX Runtime, TensorRT, the gate) then
hands over the same ``crops_to_input`` array and gets float32 probabilities
back; the casts sit inside the graph. The converter is ONNX Runtime's own
(``onnxruntime.transformers.float16``), already installed with onnxruntime,
so no extra package is needed.

What stays FP32 (``KEEP_FP32_OPS``): the reductions of the in-graph scaling
(FaceNet's per-image standardisation sums ~77k values up to 255, which
overflows FP16's 65504), the L2 normalisation of the embedding, and the final
softmax (probabilities near 0 or 1 lose their meaning in FP16's 11-bit mantissa).
These are a handful of cheap ops; convolutions and GEMMs, where the time goes,
run in FP16.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_FP32_OPS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Softmax",
    "LogSoftmax",
)


def convert_to_fp16(fp32_path: str | Path, out_path: str | Path, keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS) -> None:
    """Write an FP16 version of ``fp32_path`` to ``out_path`` (float32 IO, checked with onnx.checker)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(fp32_path))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # The converter appends its IO casts at the end of the node list; the checker needs topological order.
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapper = OnnxModel(converted)
    wrapper.topological_sort()
    converted = wrapper.model
    onnx.checker.check_model(converted, full_check=True)
    onnx.save_model(converted, str(out_path), save_as_external_data=False)
    log.info("FP16 model written to %s", out_path)
