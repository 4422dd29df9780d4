"""FaceNet Inception-ResNet-v1 (512-d) as a PyTorch module (part of ``facediag.training.backbones.facenet``).

Batch norm is folded into the conv weights and biases of the frozen graph the
weights come from, so every conv here is a plain conv with a bias and no
BatchNorm. Each unit remembers its TensorFlow name scope (``tf_scope``) so the
converter (``facenet_convert``) can find and check its weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facediag.edge.face.contract import PreprocessContract
from facediag.training.backbones.base import ContractScaling

CONTRACT = PreprocessContract(template="facenet_160x160", colour_order="RGB", scaling="prewhiten")
EMBEDDING_DIM = 512
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
