"""Writes the tiny ONNX models that tests/test_trt_contract.py feeds to TensorRT (run with the `train` extra).

They are checked in so that the contract file runs on a station that has TensorRT and
pycuda but not the ``onnx`` package. ``python tests/data/contract/make_models.py``
rewrites them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
H, W = 112, 96


def weights() -> tuple[np.ndarray, np.ndarray]:
    """A 3-class colour classifier on the mean of each channel (same as the contract test's reference)."""
    w = np.array([[30, -15, -15], [-15, 30, -15], [-15, -15, 30]], np.float32)
    b = (-np.array([0.52, 0.445, 0.397], np.float32) @ w).astype(np.float32)
    return w, b


def main() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights()
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_colour_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale"),
                     numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    models = {"classifier.onnx": graph}
    for name, elem in (("half_identity.onnx", TensorProto.FLOAT16), ("double_identity.onnx", TensorProto.DOUBLE)):
        models[name] = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "one_op",
            [helper.make_tensor_value_info("x", elem, [1, 4])], [helper.make_tensor_value_info("y", elem, [1, 4])],
        )
    for name, g in models.items():
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(HERE / name))


if __name__ == "__main__":
    main()
