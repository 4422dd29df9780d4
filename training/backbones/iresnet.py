"""ArcFace iResNet-50 / iResNet-100 (112x112 ArcFace crop -> 512-d), in insightface's checkpoint layout.

The parameter names and shapes follow the ``backbone.pth`` files that
insightface's ``recognition/arcface_torch`` writes and publishes (its model zoo:
ms1mv3 / glint360k / webface r50 and r100), so those files load with every key
checked:

- stem: ``conv1.weight`` (64, 3, 3, 3), ``bn1.*``, ``prelu.weight`` (64,);
- ``layer1``..``layer4`` of ``IBasicBlock`` (64, 128, 256, 512 channels; blocks
  3/4/14/3 for r50, 3/13/30/3 for r100), each block ``bn1``, ``conv1``, ``bn2``,
  ``prelu``, ``conv2`` (carries the stride), ``bn3``; the first block of each
  layer has ``downsample.0`` (1x1 conv, stride 2) and ``downsample.1`` (BN);
- head: ``bn2.*`` (512), ``fc.weight`` (512, 512*7*7) + ``fc.bias``,
  ``features.*`` (BatchNorm1d(512), the embedding).

All BatchNorms use eps 1e-5 as in arcface_torch. Its preprocessing is RGB,
``(x / 255 - 0.5) / 0.5`` = ``(x - 127.5) / 127.5``; here that happens inside the
module (``ContractScaling``), so ``forward`` takes ``crops_to_input`` output.
Dropout (p=0 in the published configs) has no parameters and is omitted.
"""

from __future__ import annotations

import torch
from torch import nn

from facediag.edge.face.contract import PreprocessContract
from facediag.training.backbones.base import ContractScaling

CONTRACT = PreprocessContract(
    template="arcface_112x112", colour_order="RGB", scaling="mean_std", mean=(127.5,) * 3, std=(127.5,) * 3
)
EMBEDDING_DIM = 512
LAYER_WIDTHS = (64, 128, 256, 512)
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
_FC_SPATIAL = 7 * 7  # 112 / 2**4


def _conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut."""

    def __init__(self, inp: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp, eps=1e-5)
        self.conv1 = _conv3x3(inp, out)
        self.bn2 = nn.BatchNorm2d(out, eps=1e-5)
        self.prelu = nn.PReLU(out)
        self.conv2 = _conv3x3(out, out, stride)
        self.bn3 = nn.BatchNorm2d(out, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _make_layer(inp: int, width: int, blocks: int) -> nn.Sequential:
    """One stage: a stride-2 block with a projection shortcut, then ``blocks - 1`` identity blocks."""
    return nn.Sequential(
        IBasicBlock(inp, width, stride=2), *[IBasicBlock(width, width) for _ in range(blocks - 1)]
    )


class IResNet(nn.Module):
    """iResNet backbone: ``crops_to_input`` batch (N, 3, 112, 112) RGB 0..255 -> (N, 512)."""

    def __init__(self, name: str = "iresnet50") -> None:
        super().__init__()
        if name not in DEPTHS:
            raise ValueError(f"unknown iResNet depth {name!r}: choose one of {', '.join(DEPTHS)}")
        self.contract = CONTRACT
        self.embedding_dim = EMBEDDING_DIM
        self.backbone_name = name
        self.scaling = ContractScaling(CONTRACT)  # no state-dict entries: buffers are non-persistent
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        depths = DEPTHS[name]
        self.layer1 = _make_layer(64, LAYER_WIDTHS[0], depths[0])
        self.layer2 = _make_layer(LAYER_WIDTHS[0], LAYER_WIDTHS[1], depths[1])
        self.layer3 = _make_layer(LAYER_WIDTHS[1], LAYER_WIDTHS[2], depths[2])
        self.layer4 = _make_layer(LAYER_WIDTHS[2], LAYER_WIDTHS[3], depths[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * _FC_SPATIAL, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # arcface_torch keeps the embedding BN's scale fixed at 1.
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (CONTRACT.height, CONTRACT.width):
            raise ValueError(
                f"iResNet takes 112x112 crops (template {CONTRACT.template}), got {tuple(x.shape[-2:])}"
            )
        x = self.prelu(self.bn1(self.conv1(self.scaling(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(x))


def build_iresnet(name: str) -> IResNet:
    """A freshly initialised iResNet (``iresnet50`` or ``iresnet100``)."""
    return IResNet(name)
