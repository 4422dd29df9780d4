"""Writes the tiny ONNX models that tests/test_trt_contract.py feeds to TensorRT (run with the `train` extra).

They are checked in so that the contract file runs on a station that has TensorRT and
pycuda but not the ``onnx`` package. ``python tests/data/contract/make_models.py``
rewrites them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for tests.colour_model when run as a script


def main() -> None:
    import onnx
    from onnx import TensorProto, helper

    from tests.colour_model import write_colour_classifier

    write_colour_classifier(HERE / "classifier.onnx")  # the contract test's reference: tests.colour_model.reference_probs
    for name, elem in (("half_identity.onnx", TensorProto.FLOAT16), ("double_identity.onnx", TensorProto.DOUBLE)):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "one_op",
            [helper.make_tensor_value_info("x", elem, [1, 4])], [helper.make_tensor_value_info("y", elem, [1, 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(HERE / name))


if __name__ == "__main__":
    main()
