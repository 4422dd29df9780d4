"""Composite frozen-feature extractors: tapped blocks, fused backbones and flip averaging in one module.

A *feature recipe* is a backbone name that says which frozen features the DTL2
head sees, written ``BACKBONE[+BACKBONE...][:taps][:flip]``:

- ``facenet``: a registered backbone's final embedding (unchanged meaning);
- ``facenet:taps``: the embedding plus the global-average-pooled outputs of the
  backbone's last blocks (``TAPS``), each part L2-normalised before concatenation;
- ``facenet+dlib``: several backbones on ONE input crop (FaceDisNet-style fusion).
  The crop is made with the first backbone's contract; for every other backbone
  it is re-sampled to that backbone's template and re-coloured inside the graph
  (``TemplateResampler``: two fixed matrix products, exact for the scale+shift
  relation between facediag's templates), so a station still feeds one crop and
  the whole thing exports to one ONNX graph;
- ``...:flip``: horizontal-flip test-time averaging, features of x and of its
  mirror image averaged inside the graph (so the station gets it too).

``build_features(recipe, weights, pretrained)`` returns a :class:`FeatureExtractor`,
an ``nn.Module`` with ``.contract``, ``.embedding_dim`` and ``.backbone_name`` (the
canonical recipe string), so ``FaceClassifier`` (backbone -> normalise -> Linear ->
softmax), checkpoints (``get_backbone(recipe)``) and ``facediag export`` work unchanged.
The resampling matrices and flip index are computed from the contracts (non-persistent
buffers), so a checkpoint holds exactly the component backbones' weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facediag.edge.errors import ConfigError
from facediag.edge.face.contract import TEMPLATES, PreprocessContract

log = logging.getLogger(__name__)

__all__ = [
    "OPTIONS", "TAPS", "FeatureExtractor", "FeatureRecipe", "TappedBackbone", "TemplateResampler",
    "build_features", "is_recipe", "parse_recipe", "recipe_contract",
]

OPTIONS = ("taps", "flip")
MAX_ROTATION = 0.02  # radians between two templates that the in-graph re-sampling may ignore

#: Per backbone family, the blocks whose outputs ``:taps`` adds (global-average-pooled), in forward order.
#: FaceNet: the 17x17-stage output (896 ch) and the last Inception-ResNet block (1792 ch);
#: MobileFaceNet: the last bottleneck stage (128 ch) and the 512-ch 1x1 expansion before the global conv;
#: dlib: its last two residual stages (the second is what the 128-d projection reads).
TAPS: dict[str, tuple[str, ...]] = {
    "facenet": ("repeat_1", "block8"),
    "mobilefacenet": ("blocks", "conv2"),
    "dlib": ("stage4", "stage5"),
}


@dataclass(frozen=True)
class FeatureRecipe:
    backbones: tuple[str, ...]
    taps: bool = False
    flip: bool = False

    @property
    def name(self) -> str:
        opts = [o for o in OPTIONS if getattr(self, o)]
        return "+".join(self.backbones) + "".join(f":{o}" for o in opts)

    @property
    def composite(self) -> bool:
        return len(self.backbones) > 1 or self.taps or self.flip


def is_recipe(name: str) -> bool:
    """Whether ``name`` is a composite feature recipe rather than one registered backbone."""
    return "+" in name or ":" in name


def parse_recipe(name: str) -> FeatureRecipe:
    """``facenet+dlib:taps:flip`` -> FeatureRecipe; unknown backbones or options are ConfigErrors."""
    from facediag.training.backbones import BACKBONES

    head, *opts = name.strip().split(":")
    parts = tuple(p.strip() for p in head.split("+") if p.strip())
    if not parts:
        raise ConfigError(f"feature recipe {name!r} names no backbone")
    for p in parts:
        if p not in BACKBONES or is_recipe(p):
            raise ConfigError(f"feature recipe {name!r}: unknown backbone {p!r} (known: {', '.join(BACKBONES.names())})")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"feature recipe {name!r} names a backbone twice")
    bad = [o for o in opts if o not in OPTIONS]
    if bad:
        raise ConfigError(f"feature recipe {name!r}: unknown option(s) {', '.join(bad)} (choose from {', '.join(OPTIONS)})")
    return FeatureRecipe(parts, taps="taps" in opts, flip="flip" in opts)


def recipe_contract(name: str) -> PreprocessContract:
    """The contract of a recipe's input crop: its first backbone's."""
    from facediag.training.backbones import backbone_contract

    return backbone_contract(parse_recipe(name).backbones[0])


def _axis_matrix(n_out: int, n_in: int, scale: float, shift: float) -> np.ndarray:
    """(n_out, n_in) resampling weights: output pixel i reads input position ``i * scale + shift``.

    Triangle (tent) filter of half-width max(1, scale): bilinear when enlarging, an
    anti-aliased average when shrinking; rows sum to 1; positions beyond the edge clamp.
    """
    support = max(1.0, scale)
    pos = np.arange(n_out, dtype=np.float64) * scale + shift
    src = np.arange(n_in, dtype=np.float64)
    w = np.clip(1.0 - np.abs(src[None, :] - np.clip(pos, 0, n_in - 1)[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


class TemplateResampler(nn.Module):
    """Re-sample a crop made for ``source`` into ``target``'s template and colour order (in the graph).

    Both crops are similarity warps of the same photo onto two 5-point templates,
    so the target crop is (up to the templates' own difference) the source crop
    under the template-to-template similarity ``p_src = s * p_tgt + t``, fitted on
    the landmarks. facediag's templates are upright, so its rotation is negligible
    (dlib's mean face: 0.3 degrees; over ``MAX_ROTATION`` is refused) and left out,
    which makes the re-sampling separable: two fixed matrix products, which
    export to ONNX as MatMul. ``residual_px``: the largest landmark misfit (0 for the
    ArcFace-derived templates; a few pixels for dlib's mean-face chip).
    Input and output are 0..255 NCHW float in the respective colour orders.
    """

    ry: torch.Tensor
    rxt: torch.Tensor

    def __init__(self, source: PreprocessContract, target: PreprocessContract) -> None:
        super().__init__()
        from facediag.edge.face.align import similarity_transform

        hs, ws, ps = TEMPLATES[source.template]
        ht, wt, pt = TEMPLATES[target.template]
        m = similarity_transform(pt, ps)
        angle = float(np.arctan2(m[1, 0], m[0, 0]))
        if abs(angle) > MAX_ROTATION:
            raise ConfigError(f"templates {source.template} and {target.template} differ by a rotation ({angle:.4f} rad)")
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        tx, ty = float(m[0, 2]), float(m[1, 2])
        self.residual_px = float(np.abs(pt * scale + np.array([tx, ty]) - ps).max())
        self.swap = source.colour_order != target.colour_order
        self.identity = source.template == target.template
        self.register_buffer("ry", torch.from_numpy(_axis_matrix(ht, hs, scale, ty).astype(np.float32)), persistent=False)
        self.register_buffer("rxt", torch.from_numpy(_axis_matrix(wt, ws, scale, tx).T.astype(np.float32).copy()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swap:
            x = x[:, [2, 1, 0]]
        if self.identity:
            return x
        return torch.matmul(torch.matmul(self.ry, x), self.rxt)


class TappedBackbone(nn.Module):
    """A backbone's embedding, optionally followed by pooled activations of ``taps``; every part L2-normalised."""

    def __init__(self, backbone: nn.Module, taps: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.net = backbone
        self.taps = tuple(taps)
        modules = dict(backbone.named_modules())
        missing = [t for t in self.taps if t not in modules]
        if missing:
            raise ConfigError(f"backbone {getattr(backbone, 'backbone_name', '?')} has no block(s) {', '.join(missing)}")
        self._captured: list[torch.Tensor] = []
        self._active = False  # hooks record only during this module's own forward
        for t in self.taps:
            modules[t].register_forward_hook(self._capture)
        self.dims = [int(backbone.embedding_dim)] + [self._channels(modules[t]) for t in self.taps]  # type: ignore[arg-type]

    def _capture(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if self._active:
            self._captured.append(output)

    def _channels(self, module: nn.Module) -> int:
        params = [p for p in module.parameters() if p.dim() >= 1]
        convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.PReLU))]
        last = convs[-1] if convs else None
        if isinstance(last, nn.Conv2d):
            return int(last.out_channels)
        if isinstance(last, nn.BatchNorm2d):
            return int(last.num_features)
        if isinstance(last, nn.PReLU):
            return int(last.num_parameters)
        raise ConfigError(f"cannot tell the width of tap {module} ({len(params)} parameters)")

    @property
    def embedding_dim(self) -> int:
        return int(sum(self.dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._captured, self._active = [], True
        try:
            emb = self.net(x)
        finally:
            self._active = False
        pooled = [t.mean(dim=(2, 3)) for t in self._captured]
        self._captured = []
        if len(pooled) != len(self.taps):
            raise RuntimeError(f"expected {len(self.taps)} tapped activations, got {len(pooled)}")
        return torch.cat([F.normalize(p, dim=1) for p in [emb, *pooled]], dim=1)


class FeatureExtractor(nn.Module):
    """One crop -> concatenated normalised features of one or more (tapped) backbones, optionally flip-averaged."""

    flip_index: torch.Tensor

    def __init__(self, backbones: list[nn.Module], taps: bool = False, flip: bool = False) -> None:
        super().__init__()
        if not backbones:
            raise ValueError("a feature extractor needs at least one backbone")
        first: PreprocessContract = backbones[0].contract  # type: ignore[assignment]
        self.contract = first
        self.parts = nn.ModuleList(
            TappedBackbone(b, TAPS.get(str(b.backbone_name), ()) if taps else ()) for b in backbones
        )
        self.resamplers = nn.ModuleList(TemplateResampler(first, b.contract) for b in backbones)  # type: ignore[arg-type]
        self.flip = bool(flip)
        self.recipe = FeatureRecipe(tuple(str(b.backbone_name) for b in backbones), taps=bool(taps), flip=self.flip)
        self.backbone_name = self.recipe.name
        self.embedding_dim = int(sum(p.embedding_dim for p in self.parts))  # type: ignore[misc]
        self.register_buffer("flip_index", torch.arange(first.width - 1, -1, -1), persistent=False)

    def part_slices(self) -> list[tuple[str, int, int]]:
        """(part name, start, stop) of each normalised block in the feature vector."""
        out: list[tuple[str, int, int]] = []
        start = 0
        for part in self.parts:
            assert isinstance(part, TappedBackbone)
            names = ["embedding", *part.taps]
            for nm, d in zip(names, part.dims, strict=True):
                out.append((f"{getattr(part.net, 'backbone_name', '?')}.{nm}", start, start + d))
                start += d
        return out

    def single(self, x: torch.Tensor) -> torch.Tensor:
        """Features without flip averaging."""
        return torch.cat([part(rs(x)) for part, rs in zip(self.parts, self.resamplers, strict=True)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip:
            return self.single(x)
        both = torch.cat([x, x.index_select(3, self.flip_index)], dim=0)
        f = self.single(both)
        return f.reshape(2, -1, f.shape[1]).mean(dim=0)


def _weights_for(names: tuple[str, ...], weights: str | Path | None) -> dict[str, str | Path | None]:
    """``weights`` goes to the one component without offline weights (an error when that is ambiguous)."""
    from facediag.training.backbones import available_pretrained

    if weights is None:
        return {n: None for n in names}
    need = [n for n in names if not available_pretrained(n)]
    target = need if need else list(names[:1])
    if len(target) != 1:
        raise ConfigError(
            f"--weights is ambiguous for a fusion of {', '.join(need)} (each needs a weights file); "
            "use backbones with offline weights, or fuse at most one that needs --weights"
        )
    return {n: (weights if n == target[0] else None) for n in names}


def build_features(recipe: str, weights: str | Path | None = None, pretrained: bool = True) -> FeatureExtractor:
    """The feature extractor of ``recipe`` (see the module docstring), in eval mode."""
    from facediag.training.backbones import get_backbone

    spec = parse_recipe(recipe)
    per = _weights_for(spec.backbones, weights)
    nets = [get_backbone(n, weights=per[n], pretrained=pretrained) for n in spec.backbones]
    return FeatureExtractor(nets, taps=spec.taps, flip=spec.flip).eval()
