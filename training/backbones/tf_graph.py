"""Read a frozen TensorFlow GraphDef without TensorFlow.

Why: several public face-recognition models exist only as frozen ``.pb``
graphs. TensorFlow is a ~500 MB dependency we do not want on a training
workstation just to read weights; the ``tensorboard`` package ships the same
protobuf classes (``GraphDef``, ``TensorProto``), which is all that is needed to
list the nodes and pull the constant tensors out as numpy arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import ModelFileError

log = logging.getLogger(__name__)

# TensorFlow's DataType enum (types.proto) -> numpy dtype, for the types a weight file can hold.
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}

# Which repeated field of TensorProto holds the values when tensor_content is empty.
_VALUE_FIELDS: dict[int, str] = {
    1: "float_val",
    2: "double_val",
    3: "int_val",
    4: "int_val",
    5: "int_val",
    6: "int_val",
    9: "int64_val",
    10: "bool_val",
    17: "int_val",
    19: "half_val",
    22: "uint32_val",
    23: "uint64_val",
}


def _graph_def_class() -> Any:
    try:
        from tensorboard.compat.proto import graph_pb2  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelFileError(
            "reading a TensorFlow graph needs the 'tensorboard' package (for its GraphDef protobuf classes): "
            "pip install tensorboard"
        ) from exc
    return graph_pb2.GraphDef


def tensor_to_numpy(tensor: Any, name: str = "<tensor>") -> np.ndarray:
    """A ``TensorProto`` as a numpy array (a copy you may modify).

    Handles both encodings TensorFlow uses: raw little-endian bytes in
    ``tensor_content``, or a typed repeated field (``float_val``, ``int_val``,
    ...). In the typed form TensorFlow may store fewer values than the shape
    holds; the last value then fills the rest (that is how ``tf.ones([512])``
    is frozen: one ``1.0``).
    """
    dtype_enum = int(tensor.dtype)
    if dtype_enum not in _NUMPY_DTYPES:
        raise ModelFileError(
            f"constant {name!r} has TensorFlow dtype enum {dtype_enum}, which this reader does not support"
        )
    dtype = _NUMPY_DTYPES[dtype_enum]
    if tensor.tensor_shape.unknown_rank:
        raise ModelFileError(f"constant {name!r} has an unknown rank")
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise ModelFileError(f"constant {name!r} has an unknown dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1

    if tensor.tensor_content:
        raw = tensor.tensor_content
        if len(raw) != count * dtype.itemsize:
            raise ModelFileError(
                f"constant {name!r}: {len(raw)} bytes of content for shape {shape} of {dtype} "
                f"(expected {count * dtype.itemsize}); the graph file is corrupt"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    values = list(getattr(tensor, _VALUE_FIELDS[dtype_enum]))
    if dtype_enum == 19:  # half_val holds the float16 bit patterns as ints
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size > count:
        raise ModelFileError(f"constant {name!r} holds {flat.size} values for shape {shape}")
    if flat.size == 0:
        flat = np.zeros(count, dtype=dtype)
    elif flat.size < count:
        flat = np.concatenate([flat, np.full(count - flat.size, flat[-1], dtype=flat.dtype)])
    return flat.astype(dtype, copy=False).reshape(shape)


@dataclass(frozen=True)
class NodeInfo:
    """One node of the graph: enough to check a model's structure against it."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def _attr_value(value: Any) -> Any:
    """A plain-python view of an ``AttrValue`` (strings, ints, floats, bools, int lists; tensors left out)."""
    kind = value.WhichOneof("value")
    if kind == "s":
        return value.s.decode("utf-8", errors="replace")
    if kind in ("i", "f", "b"):
        return getattr(value, kind)
    if kind == "type":
        return int(value.type)
    if kind == "list":
        if value.list.i:
            return tuple(int(v) for v in value.list.i)
        if value.list.f:
            return tuple(float(v) for v in value.list.f)
        if value.list.s:
            return tuple(v.decode("utf-8", errors="replace") for v in value.list.s)
        return ()
    if kind == "shape":
        return tuple(int(d.size) for d in value.shape.dim)
    return None  # tensors (Const values) are read with constants()


class TFGraph:
    """A parsed frozen GraphDef: nodes by name and the constant tensors as numpy."""

    def __init__(self, graph_def: Any, source: str = "<graph>") -> None:
        self._graph_def = graph_def
        self.source = source
        self._nodes = {node.name: node for node in graph_def.node}

    @classmethod
    def load(cls, path: str | Path) -> TFGraph:
        """Parse a binary ``.pb`` file; raises ModelFileError if it is missing or not a GraphDef."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"cannot read TensorFlow graph {path}: {exc}") from exc
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> TFGraph:
        graph_def = _graph_def_class()()
        try:
            graph_def.ParseFromString(data)
        except Exception as exc:  # protobuf raises DecodeError (module differs by implementation)
            raise ModelFileError(
                f"{source} is not a binary TensorFlow GraphDef ({exc}); pass a frozen .pb file"
            ) from exc
        if not len(graph_def.node):
            raise ModelFileError(f"{source} holds no graph nodes; pass a frozen TensorFlow .pb file")
        return cls(graph_def, source=source)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def node(self, name: str) -> NodeInfo:
        """The node called ``name`` (inputs without ``:0`` output suffixes and ``^`` control markers)."""
        try:
            node = self._nodes[name]
        except KeyError:
            raise ModelFileError(f"graph {self.source} has no node {name!r}") from None
        attrs = {key: _attr_value(val) for key, val in node.attr.items() if key != "value"}
        inputs = tuple(_strip_input(i) for i in node.input)
        return NodeInfo(name=node.name, op=node.op, inputs=inputs, attrs=attrs)

    def nodes(self, op: str | None = None) -> list[NodeInfo]:
        """All nodes (in graph order), or only those of one op type."""
        return [self.node(n.name) for n in self._graph_def.node if op is None or n.op == op]

    def constant(self, name: str) -> np.ndarray:
        """The value of the Const node ``name`` as a numpy array."""
        node = self._nodes.get(name)
        if node is None:
            raise ModelFileError(f"graph {self.source} has no constant {name!r}")
        if node.op != "Const":
            raise ModelFileError(f"node {name!r} in {self.source} is a {node.op}, not a Const")
        return tensor_to_numpy(node.attr["value"].tensor, name=name)

    def constant_names(self) -> list[str]:
        return [n.name for n in self._graph_def.node if n.op == "Const"]

    def constants(self) -> dict[str, np.ndarray]:
        """Every Const node's value, by node name."""
        return {name: self.constant(name) for name in self.constant_names()}


def _strip_input(name: str) -> str:
    name = name.lstrip("^")
    base, sep, index = name.rpartition(":")
    return base if sep and index.isdigit() else name

