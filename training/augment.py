"""Light training-time augmentation of network inputs, in torch (no torchvision).

Works on what ``crops_to_input`` returns: float32 NCHW, values 0..255, in the
backbone contract's colour order. Three kinds of change, each drawn per photo
from a private ``torch.Generator`` (so a seed gives the same batches):

- a horizontal mirror image (probability 0.5; an exact flip of the pixel columns);
- colour jitter: brightness (multiply), contrast (towards the photo's mean grey)
  and saturation (towards each pixel's grey), each by a factor in ``1 +- s``;
  grey is the channel mean, so the result does not depend on RGB vs BGR order;
- geometry jitter: a rotation of a few degrees, a scale of a few percent and a
  shift of a few percent of the crop size (bilinear resampling, edges repeated).

The crops are already aligned by the face front-end, so the jitter stays small:
it imitates the alignment wobble and lighting of real captures, it does not
invent new poses. At zero strength (``AugmentConfig.light(0)`` without flips)
the input comes back unchanged. Augmentation is for training batches only;
validation, calibration and test photos are never augmented.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: Maxima at strength 1 (``--augment 1``, DTL1's default).
LIGHT = {"brightness": 0.10, "contrast": 0.10, "saturation": 0.10, "rotate_deg": 5.0, "scale": 0.05, "shift": 0.04}


@dataclass(frozen=True)
class AugmentConfig:
    """Largest change of each kind (0 = that kind is off); ``flip``: random mirror images."""

    flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    rotate_deg: float = 0.0
    scale: float = 0.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if k != "flip" and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"augmentation {k} must be a finite number >= 0, got {v!r}")
        if self.brightness >= 1 or self.contrast >= 1 or self.saturation >= 1 or self.scale >= 1 or self.shift >= 0.5:
            raise ValueError(f"augmentation too strong for aligned face crops: {self}")

    @classmethod
    def light(cls, strength: float = 1.0, flip: bool = True) -> AugmentConfig:
        """``LIGHT`` scaled by ``strength`` (0: no colour or geometry jitter)."""
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"--augment must be >= 0, got {strength}")
        return cls(flip=flip, **{k: v * strength for k, v in LIGHT.items()})

    @property
    def colour(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0

    @property
    def geometry(self) -> bool:
        return self.rotate_deg > 0 or self.scale > 0 or self.shift > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uniform(n: int, amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """n draws from U(-amplitude, amplitude)."""
    return (torch.rand(n, generator=gen) * 2.0 - 1.0) * amplitude


def mirror(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``x`` with the photos where ``which`` (bool, N) is true mirrored left-right (exactly)."""
    return torch.where(which[:, None, None, None], x.flip(-1), x)


def colour_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    b = 1.0 + _uniform(n, cfg.brightness, gen)
    c = 1.0 + _uniform(n, cfg.contrast, gen)
    s = 1.0 + _uniform(n, cfg.saturation, gen)
    y = x * b[:, None, None, None]
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * c[:, None, None, None]
    grey = y.mean(dim=1, keepdim=True)
    y = grey + (y - grey) * s[:, None, None, None]
    return y.clamp(0.0, 255.0)


def geometry_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Rotate, scale and shift each photo about its centre (bilinear, border pixels repeated)."""
    n = x.shape[0]
    angle = _uniform(n, math.radians(cfg.rotate_deg), gen)
    zoom = 1.0 + _uniform(n, cfg.scale, gen)
    tx = _uniform(n, 2.0 * cfg.shift, gen)  # normalised coordinates span 2
    ty = _uniform(n, 2.0 * cfg.shift, gen)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0.0, 255.0)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of a batch of network inputs (float NCHW, 0..255); ``x`` is not modified.

    Same shape and dtype, values stay in 0..255. The draws come from ``gen`` only,
    in a fixed order (flips, colour, geometry), so the same generator state gives the same batch.
    """
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    y = x
    if cfg.flip:
        y = mirror(y, torch.rand(x.shape[0], generator=gen) < 0.5)
    if cfg.colour:
        y = colour_jitter(y, cfg, gen)
    if cfg.geometry:
        y = geometry_jitter(y, cfg, gen)
    return y.clone() if y is x else y
