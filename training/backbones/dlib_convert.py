"""Reading dlib's serialised DNN (``dlib_face_recognition_resnet_model_v1.dat``) into :class:`DlibResNet` weights.

Written from dlib's serialisation code (``dlib/serialize.h``, ``dlib/cuda/tensor.h``,
``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h``), without dlib:

- integers: one control byte (low 4 bits: the number of bytes that follow, bit 7:
  negative) then the magnitude, little-endian; floats and doubles: an int64
  mantissa and an int16 exponent (value = mantissa * 2**exponent; exponents
  32000/32001/32002 mean +inf/-inf/NaN); bools: the ASCII byte '0' or '1';
  strings: a length (integer) then the bytes;
- tensors: int version 2, four int64 sizes (n, k, rows, cols), then n*k*rows*cols
  little-endian float32; an ``alias_tensor`` (a view's shape): version 1 and the
  four sizes;
- the network, nested: the loss layer (version 1, its details, then the net); each
  ``add_layer`` writes its version, then the whole sub-network, then its own
  details and some training state (bools and tensors); tag and skip layers write a
  version and the sub-network only. So the layer versions come first, outermost to
  innermost, then the input layer, then the layers' details innermost first. Each
  layer's details begin with a string naming its type and version (``con_4``,
  ``affine_``, ...), so every layer found is checked against the one expected.

The file carries no type information for the tag and skip layers and no record of
which tag an ``add_prev`` refers to; everything else (layer kinds and order,
kernel sizes, strides, paddings, filter counts, tensor shapes, the affine mode, the
fc layer's bias mode and sizes, the input size and means) is compared with
:class:`DlibResNet`, and the file must end exactly where the network does.
"""

from __future__ import annotations

import bz2
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facediag.edge.errors import ModelFileError
from facediag.training.backbones.dlib_resnet import CONTRACT, DlibResNet, ResBlock

log = logging.getLogger("facediag.training.backbones.dlib_resnet")

__all__ = ["DlibFormatError", "DlibReader", "Layer", "convert_dat", "expected_layers", "read_network"]

_MAX_STRING = 256  # type/version strings are short: anything longer is corruption
_INPUT_SIZE = 150


class DlibFormatError(ModelFileError):
    """The file is truncated, corrupt, or not the network this port implements."""


class DlibReader:
    """Sequential decoder of dlib's serialisation primitives over an in-memory file."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def _take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFormatError(
                f"{self.name}: truncated: {what} needs {n} byte(s) at offset {self.pos}, "
                f"the file has {len(self.data) - self.pos} left (an incomplete download?)"
            )
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str = "an integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DlibFormatError(f"{self.name}: corrupt {what} at offset {self.pos - 1} (control byte {control:#04x})")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def real(self, what: str = "a number") -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise DlibFormatError(f"{self.name}: {what} at offset {self.pos} uses dlib's old text float format")
        mantissa = self.integer(what)
        exponent = self.integer(what)
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(float(mantissa), exponent)

    def boolean(self, what: str = "a bool") -> bool:
        ch = self._take(1, what)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"{self.name}: corrupt {what} at offset {self.pos - 1} ({ch!r} is not '0'/'1')")
        return ch == b"1"

    def string(self, what: str = "a type name") -> str:
        n = self.integer(what)
        if not 0 <= n <= _MAX_STRING:
            raise DlibFormatError(f"{self.name}: corrupt {what} at offset {self.pos}: length {n}")
        raw = self._take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DlibFormatError(f"{self.name}: corrupt {what} at offset {self.pos - n}: {raw[:32]!r}") from None

    def shape(self, what: str, version: int) -> tuple[int, int, int, int]:
        got = self.integer(what)
        if got != version:
            raise DlibFormatError(f"{self.name}: {what} has version {got} at offset {self.pos}, expected {version}")
        dims = tuple(self.integer(what) for _ in range(4))
        if any(d < 0 for d in dims):
            raise DlibFormatError(f"{self.name}: {what} has negative size {dims}")
        return dims  # type: ignore[return-value]

    def alias(self, what: str) -> tuple[int, int, int, int]:
        return self.shape(f"{what} (alias shape)", 1)

    def tensor(self, what: str) -> np.ndarray:
        dims = self.shape(f"{what} (tensor)", 2)
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count, f"{what} ({count} floats)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass
class Layer:
    """One layer of the file (``kind`` = its type string) or of the expected network (``module`` it fills)."""

    kind: str
    module: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- expected structure


def _block_layers(prefix: str, block: ResBlock) -> list[Layer]:
    """A residual block, outermost layer first, as dlib nests it (relu<add_prev<[avg_pool<skip<tag<]block<tag>>>>)."""
    top = [Layer("relu"), Layer("add_prev")]
    if block.down:
        top += [Layer("avg_pool", fields={"nr": 2, "nc": 2, "stride": (2, 2), "padding": (0, 0)}),
                Layer("skip"), Layer("tag")]
    return top + [
        Layer("affine", f"{prefix}.affine2"), Layer("con", f"{prefix}.conv2"),
        Layer("relu"), Layer("affine", f"{prefix}.affine1"), Layer("con", f"{prefix}.conv1"),
        Layer("tag"),
    ]


def expected_layers(model: DlibResNet) -> list[Layer]:
    """The network below the loss layer, outermost first, ending with the input layer."""
    layers = [
        Layer("fc", "fc"),
        Layer("avg_pool", fields={"nr": 0, "nc": 0, "stride": (1, 1), "padding": (0, 0)}),  # avg_pool_everything
    ]
    stages = model.stages()
    for i in range(len(stages), 0, -1):
        blocks = list(stages[i - 1])
        for j in range(len(blocks) - 1, -1, -1):
            layers += _block_layers(f"stage{i}.{j}", blocks[j])  # type: ignore[arg-type]
    layers += [
        Layer("max_pool", fields={"nr": 3, "nc": 3, "stride": (2, 2), "padding": (0, 0)}),
        Layer("relu"), Layer("affine", "stem.affine"), Layer("con", "stem.conv"), Layer("input"),
    ]
    return layers


# --------------------------------------------------------------------------- parsing


def _pool(r: DlibReader, version: str) -> Layer:
    if version != "max_pool_2" and version != "avg_pool_2":
        raise DlibFormatError(f"{r.name}: unsupported pooling layer version {version!r}")
    nr, nc, sy, sx, py, px = (r.integer(f"{version} geometry") for _ in range(6))
    return Layer(version[:-2], fields={"nr": nr, "nc": nc, "stride": (sy, sx), "padding": (py, px)})


def _con(r: DlibReader, version: str) -> Layer:
    if version not in ("con_4", "con_5", "con_6"):
        raise DlibFormatError(f"{r.name}: unsupported conv layer version {version!r}")
    params = r.tensor("con_ params")
    f: dict[str, Any] = {"num_filters": r.integer(), "nr": r.integer(), "nc": r.integer()}
    f["stride"] = (r.integer(), r.integer())
    f["padding"] = (r.integer(), r.integer())
    f["filters"], f["biases"] = r.alias("con_ filters"), r.alias("con_ biases")
    f["multipliers"] = tuple(r.real("con_ multiplier") for _ in range(4))
    f["use_bias"] = r.boolean("con_ use_bias") if version != "con_4" else True
    f["use_relu"] = r.boolean("con_ use_relu") if version == "con_6" else False
    return Layer("con", fields=f, tensors={"params": params})


def _affine(r: DlibReader, version: str) -> Layer:
    if version not in ("affine_", "affine_2"):
        raise DlibFormatError(f"{r.name}: unsupported affine layer version {version!r} (bn_ is not supported)")
    params = r.tensor("affine_ params")
    f: dict[str, Any] = {"gamma": r.alias("affine_ gamma"), "beta": r.alias("affine_ beta"), "mode": r.integer()}
    f["disabled"] = r.boolean("affine_ disabled") if version == "affine_2" else False
    return Layer("affine", fields=f, tensors={"params": params})


def _fc(r: DlibReader, version: str) -> Layer:
    if version not in ("fc_2", "fc_3"):
        raise DlibFormatError(f"{r.name}: unsupported fc layer version {version!r}")
    f: dict[str, Any] = {"num_outputs": r.integer(), "num_inputs": r.integer()}
    params = r.tensor("fc_ params")
    f["weights"], f["biases"] = r.alias("fc_ weights"), r.alias("fc_ biases")
    f["bias_mode"] = r.integer("fc_ bias mode")
    f["multipliers"] = tuple(r.real("fc_ multiplier") for _ in range(4))
    f["use_bias"] = r.boolean("fc_ use_bias") if version == "fc_3" else True
    return Layer("fc", fields=f, tensors={"params": params})


def _details(r: DlibReader) -> Layer:
    version = r.string("a layer type")
    if version.startswith(("max_pool_", "avg_pool_")):
        return _pool(r, version)
    if version.startswith("con_"):
        return _con(r, version)
    if version.startswith("affine_") or version.startswith("bn_"):
        return _affine(r, version)
    if version.startswith("fc_"):
        return _fc(r, version)
    if version in ("relu_", "relu_2"):
        return Layer("relu", fields={"disabled": r.boolean("relu_ disabled") if version == "relu_2" else False})
    if version == "add_prev_":
        return Layer("add_prev")
    raise DlibFormatError(f"{r.name}: unexpected layer type {version!r} at offset {r.pos}")


def _input(r: DlibReader) -> Layer:
    version = r.string("the input layer type")
    if version != "input_rgb_image_sized":
        raise DlibFormatError(f"{r.name}: input layer is {version!r}, expected input_rgb_image_sized")
    means = tuple(r.real("input channel mean") for _ in range(3))
    return Layer("input", fields={"means": means, "nr": r.integer(), "nc": r.integer()})


def _training_state(r: DlibReader, version: int, over_input: bool) -> None:
    """What an add_layer writes after its details (flags and cached tensors); read and dropped."""
    for what in ("setup flag", "gradient flag", "output flag"):
        r.boolean(f"add_layer {what}")
    r.tensor("add_layer x_grad")
    r.tensor("add_layer cached output")
    if over_input or version >= 2:
        r.tensor("add_layer gradient")
    if over_input and version >= 3:
        r.integer("add_layer sample expansion factor")


def read_network(data: bytes, expected: list[Layer], name: str = "<bytes>") -> tuple[Layer, list[Layer]]:
    """Parse a whole file: (the loss layer, the layers in ``expected``'s order with their details)."""
    r = DlibReader(data, name)
    if r.integer("the loss layer version") != 1:
        raise DlibFormatError(f"{name}: not a dlib network with a loss layer (unknown first version)")
    loss_type = r.string("the loss layer type")
    if loss_type not in ("loss_metric_", "loss_metric_2"):
        raise DlibFormatError(f"{name}: loss layer is {loss_type!r}, expected dlib's loss_metric")
    loss = Layer("loss_metric", fields={"margin": r.real(), "threshold": r.real()} if loss_type.endswith("2") else {})
    versions: list[int] = []
    for i, exp in enumerate(expected[:-1]):
        v = r.integer(f"the version of layer {i} ({exp.kind})")
        allowed = (1,) if exp.kind in ("tag", "skip") else (2, 3) if i == len(expected) - 2 else (1, 2)
        if v not in allowed:
            raise DlibFormatError(f"{name}: layer {i} ({exp.kind}) has version {v}, expected one of {allowed}")
        versions.append(v)
    found: list[Layer] = [Layer("?")] * len(expected)
    found[-1] = _input(r)
    for i in range(len(expected) - 2, -1, -1):
        if expected[i].kind in ("tag", "skip"):
            found[i] = Layer(expected[i].kind)
            continue
        layer = _details(r)
        if layer.kind != expected[i].kind:
            raise DlibFormatError(f"{name}: layer {i} is {layer.kind}, expected {expected[i].kind} ({expected[i].module})")
        _training_state(r, versions[i], over_input=i == len(expected) - 2)
        found[i] = layer
    if not r.at_end():
        raise DlibFormatError(f"{name}: {len(data) - r.pos} unexpected byte(s) after the network at offset {r.pos}")
    return loss, found


# --------------------------------------------------------------------------- checks and conversion


def _check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def _convert_con(layer: Layer, conv: torch.nn.Conv2d, where: str, out: dict[str, np.ndarray], problems: list[str]) -> None:
    f, params = layer.fields, layer.tensors["params"].reshape(-1)
    wshape = tuple(conv.weight.shape)
    _check(problems, f["num_filters"] == conv.out_channels, f"{where}: {f['num_filters']} filters, module {conv.out_channels}")
    _check(problems, (f["nr"], f["nc"]) == conv.kernel_size, f"{where}: kernel {f['nr']}x{f['nc']}, module {conv.kernel_size}")
    _check(problems, f["stride"] == conv.stride, f"{where}: stride {f['stride']}, module {conv.stride}")
    _check(problems, f["padding"] == conv.padding, f"{where}: padding {f['padding']}, module {conv.padding}")
    _check(problems, f["filters"] == wshape, f"{where}: filters {f['filters']}, module {wshape}")
    _check(problems, f["use_bias"] and f["biases"] == (1, conv.out_channels, 1, 1), f"{where}: bias {f['biases']}")
    _check(problems, not f["use_relu"], f"{where}: a conv with a fused ReLU is not supported")
    n = int(np.prod(wshape))
    _check(problems, params.size == n + conv.out_channels, f"{where}: {params.size} parameters, expected {n + conv.out_channels}")
    if params.size == n + conv.out_channels:
        out[f"{where}.weight"] = params[:n].reshape(wshape)  # dlib's filter layout is (out, in, rows, cols) too
        out[f"{where}.bias"] = params[n:]


def _convert_affine(layer: Layer, channels: int, where: str, out: dict[str, np.ndarray], problems: list[str]) -> None:
    f, params = layer.fields, layer.tensors["params"].reshape(-1)
    _check(problems, f["mode"] == 0, f"{where}: affine mode {f['mode']}, expected 0 (per-channel, conv mode)")
    _check(problems, not f["disabled"], f"{where}: affine layer disabled")
    for part in ("gamma", "beta"):
        _check(problems, f[part] == (1, channels, 1, 1), f"{where}: {part} {f[part]}, expected (1, {channels}, 1, 1)")
    _check(problems, params.size == 2 * channels, f"{where}: {params.size} parameters, expected {2 * channels}")
    if params.size == 2 * channels:
        out[f"{where}.weight"], out[f"{where}.bias"] = params[:channels], params[channels:]


def _convert_fc(layer: Layer, fc: torch.nn.Linear, out: dict[str, np.ndarray], problems: list[str]) -> None:
    f, params = layer.fields, layer.tensors["params"]
    sizes = (f["num_inputs"], f["num_outputs"])
    _check(problems, sizes == (fc.in_features, fc.out_features), f"fc: {sizes} in/out, module {(fc.in_features, fc.out_features)}")
    _check(problems, f["bias_mode"] == 1, f"fc: bias mode {f['bias_mode']}, expected 1 (fc_no_bias)")
    _check(problems, f["weights"] == (fc.in_features, fc.out_features, 1, 1), f"fc: weights {f['weights']}")
    if params.size == fc.in_features * fc.out_features:
        out["fc.weight"] = params.reshape(fc.in_features, fc.out_features).T  # dlib: x (1 x in) @ W (in x out)
    else:
        problems.append(f"fc: {params.size} parameters, expected {fc.in_features * fc.out_features}")


def _check_fixed(exp: Layer, got: Layer, where: str, problems: list[str]) -> None:
    """Pools, ReLUs and the input layer: their stored settings against the module's."""
    if exp.kind in ("avg_pool", "max_pool"):
        for key, value in exp.fields.items():
            _check(problems, got.fields[key] == value, f"{where} {exp.kind}: {key} {got.fields[key]}, module {value}")
    elif exp.kind == "relu":
        _check(problems, not got.fields["disabled"], f"{where}: ReLU disabled in the file")
    elif exp.kind == "input":
        size = (got.fields["nr"], got.fields["nc"])
        _check(problems, size == (_INPUT_SIZE, _INPUT_SIZE), f"input: {size}, module {_INPUT_SIZE}x{_INPUT_SIZE}")
        means = got.fields["means"]
        _check(problems, bool(np.allclose(means, CONTRACT.mean, atol=1e-3)), f"input means {means}, contract {CONTRACT.mean}")


def convert_dat(path: str | Path, model: DlibResNet | None = None) -> dict[str, torch.Tensor]:
    """Read ``path`` (``.dat``, or ``.dat.bz2`` as dlib.net serves it) into ``DlibResNet``'s state dict.

    Raises :class:`DlibFormatError` (a ``ModelFileError``) if the file is truncated or corrupt, or lists
    every way it differs from the module.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:3] == b"BZh":
            data = bz2.decompress(data)
    except (OSError, ValueError, EOFError) as exc:
        raise DlibFormatError(f"cannot read the dlib model {path}: {exc}") from exc
    model = model if model is not None else DlibResNet()
    expected = expected_layers(model)
    loss, found = read_network(data, expected, name=str(path))
    modules = dict(model.named_modules())
    arrays: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for exp, got in zip(expected, found, strict=True):
        where = exp.module or f"{exp.kind} layer"
        if exp.kind == "con":
            _convert_con(got, modules[exp.module], exp.module, arrays, problems)  # type: ignore[arg-type]
        elif exp.kind == "affine":
            channels = int(modules[exp.module].weight.shape[0])  # type: ignore[union-attr]
            _convert_affine(got, channels, exp.module, arrays, problems)
        elif exp.kind == "fc":
            _convert_fc(got, model.fc, arrays, problems)
        else:
            _check_fixed(exp, got, where, problems)
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    _check(problems, not missing, f"module parameters left without a value: {', '.join(missing)}")
    for key, value in arrays.items():
        _check(problems, tuple(state[key].shape) == value.shape, f"{key}: file {value.shape}, module {tuple(state[key].shape)}")
        _check(problems, bool(np.isfinite(value).all()), f"{key}: the file holds non-finite values")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DlibFormatError(f"{path} does not match dlib's face ResNet ({len(problems)} problem(s)):\n  {shown}{more}")
    log.info("converted %d tensors from %s (loss_metric %s)", len(arrays), path, loss.fields)
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
