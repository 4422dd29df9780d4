"""The tiny real ONNX model that several tests share: a 3-class colour classifier on a crop's channel means.

probabilities = softmax(W . mean_rgb(x / 255) + b), input ``[N, 3, 112, 96]`` float32 (the smallest contract
template, sphereface_112x96), output ``probabilities [N, 3]``. ``shift`` moves class 0 up and class 2 down
(a "perturbed" second backend or precision variant); ``reference_probs`` is the same model in numpy, so a
runtime's answer is checked against arithmetic, not against itself. Only numpy is needed at import: the
TensorRT contract file uses ``reference_probs`` on stations without the ``onnx`` package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

H, W = 112, 96
CENTRES = (0.52, 0.445, 0.397)  # the channel means where the classes meet
_W = np.array([[30, -15, -15], [-15, 30, -15], [-15, -15, 30]], np.float32)


def colour_weights(shift: float = 0.0, *, centres: tuple[float, float, float] = CENTRES,
                   extra_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(W (3, 3), b (3,)) of the classifier; ``shift`` adds (+shift, 0, -shift) to b."""
    b = -np.asarray(centres, np.float32) @ _W + np.array([shift, 0.0, -shift], np.float32)
    return _W.copy(), (b + np.asarray(extra_bias, np.float32)).astype(np.float32)


def reference_probs(x: np.ndarray, shift: float = 0.0, **kwargs: tuple[float, float, float]) -> np.ndarray:
    """The model in float64 numpy, independent of any runtime."""
    w, b = colour_weights(shift, **kwargs)
    z = (x.astype(np.float64) / 255.0).mean(axis=(2, 3)) @ w.astype(np.float64) + b.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_colour_classifier(path: Path, shift: float = 0.0, *, batch: int | str = "N",
                            name: str = "tiny_colour_classifier", **kwargs: tuple[float, float, float]) -> Path:
    """Write the classifier as a checked ONNX file (opset 17, IR 8) and return ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = colour_weights(shift, **kwargs)
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, H, W])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])],
        initializer=[numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale"),
                     numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def celeba_inputs(n: int, offset: int = 0) -> np.ndarray:
    """Model inputs (n, 3, 112, 96) from real CelebA photos resized to the template (skips without fixtures)."""
    import cv2

    from facediag.edge.face.contract import PreprocessContract, crops_to_input
    from tests.conftest import fixture_path

    files = sorted(fixture_path("faces/celeba").glob("*.jpg"))[offset : offset + n]
    crops = np.stack([cv2.resize(cv2.imread(str(f)), (W, H), interpolation=cv2.INTER_AREA) for f in files])
    return crops_to_input(crops, PreprocessContract(template="sphereface_112x96"))


def make_colour_bundle(tmp_path: Path, write_model: Callable[[Path], object] = write_colour_classifier) -> Path:
    """A real bundle folder (``tmp_path``/bundle) around ``write_model``'s model.onnx: 3 classes, thresholds 0.5."""
    from facediag.edge.bundle import create_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.hashing import sha256_file

    folder = tmp_path / "bundle"
    folder.mkdir()
    write_model(folder / "model.onnx")
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(b"checkpoint stand-in")
    create_bundle(
        folder, classes=["healthy", "pale_skin", "round_face"], healthy_class="healthy",
        contract=PreprocessContract(template="sphereface_112x96"), thresholds={"pale_skin": 0.5, "round_face": 0.5},
        fp32_file="model.onnx", fp32_gate={"passed": True}, source_checkpoint={"path": str(ckpt), "sha256": sha256_file(ckpt)},
        creator="facediag test",
    )
    return folder
