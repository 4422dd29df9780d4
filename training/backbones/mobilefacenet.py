"""MobileFaceNet (Chen et al. 2018), 112x96 SphereFace crop -> 128-d embedding.

The module's state-dict layout is exactly that of the widely used CASIA-WebFace
PyTorch checkpoint (``{"epoch", "net_state_dict"}``, 68 modules): ``conv1``,
``dw_conv1``, ``blocks.0..14`` (inverted residual bottlenecks as one
``conv`` Sequential: 1x1 expand, BN, PReLU, 3x3 depthwise, BN, PReLU, 1x1
project, BN), ``conv2``, ``linear7`` (7x6 global depthwise conv) and ``linear1``
(1x1 projection to 128). The 7x6 kernel is why the input must be 112x96.

Preprocessing (found by experiment on the fixture photos, see tests): the
network expects RGB and ``(x - 127.5) / 128``; scaling happens inside the
module through ``ContractScaling``, so ``forward`` takes ``crops_to_input``
output (float32 NCHW, 0..255, RGB).
"""

from __future__ import annotations

import torch
from torch import nn

from facediag.edge.face.contract import PreprocessContract
from facediag.training.backbones.base import ContractScaling

CONTRACT = PreprocessContract(
    template="sphereface_112x96", colour_order="RGB", scaling="mean_std", mean=(127.5,) * 3, std=(128.0,) * 3
)
EMBEDDING_DIM = 128

# (expansion t, output channels c, repeats n, first stride s) per stage, as in the paper's Table 1.
BOTTLENECK_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBlock(nn.Module):
    """Conv (no bias) + BN, followed by PReLU unless ``linear``. Keys: conv, bn[, prelu]."""

    def __init__(
        self,
        inp: int,
        oup: int,
        kernel: int | tuple[int, int],
        stride: int,
        padding: int,
        depthwise: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel, stride, padding, groups=inp if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        self.prelu = None if linear else nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual; adds the input back when shape is unchanged (stride 1, same width)."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone: ``crops_to_input`` batch (N, 3, 112, 96) RGB 0..255 -> (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.contract = CONTRACT
        self.embedding_dim = EMBEDDING_DIM
        self.backbone_name = "mobilefacenet"
        self.scaling = ContractScaling(CONTRACT)  # no state-dict entries: buffers are non-persistent
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        blocks: list[nn.Module] = []
        channels = 64
        for expansion, out, repeats, stride in BOTTLENECK_STAGES:
            for i in range(repeats):
                blocks.append(Bottleneck(channels, out, stride if i == 0 else 1, expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(channels, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, EMBEDDING_DIM, 1, 1, 0, linear=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (CONTRACT.height, CONTRACT.width):
            raise ValueError(
                f"MobileFaceNet takes {CONTRACT.height}x{CONTRACT.width} crops (template {CONTRACT.template}), "
                f"got {tuple(x.shape[-2:])}"
            )
        x = self.scaling(x)
        x = self.dw_conv1(self.conv1(x))
        x = self.blocks(x)
        x = self.linear1(self.linear7(self.conv2(x)))
        return torch.flatten(x, 1)


def build_mobilefacenet() -> MobileFaceNet:
    """A freshly initialised MobileFaceNet (load weights with ``facediag.training.backbones.loading``)."""
    return MobileFaceNet()
