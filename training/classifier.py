"""The trained classifier: backbone -> (L2 normalisation) -> linear head -> softmax(logits / T).

Every strategy produces this one module shape, so DTL1, DTL2 and "from scratch"
checkpoints load, export to ONNX and run on a station the same way. Its input is
``crops_to_input()`` output (float32 NCHW 0..255 in the contract's colour order),
its output class probabilities. ``logits()`` gives the uncalibrated scores that
training and calibration work with.

The temperature is a persistent buffer, so it travels in ``model.safetensors``
as well as in ``checkpoint.json``; Platt scaling (binary) is folded into the
head's weights instead, and leaves T = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FaceClassifier(nn.Module):
    """backbone (N, D) embeddings -> optional L2 normalisation -> Linear(D, C) -> softmax(z / T)."""

    temperature: torch.Tensor  # a registered buffer (saved with the weights)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        l2_normalize: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        for attr in ("contract", "embedding_dim", "backbone_name"):
            if not hasattr(backbone, attr):
                raise TypeError(f"backbone {type(backbone).__name__} has no .{attr}; use facediag.training.backbones.get_backbone")
        self.backbone = backbone
        self.l2_normalize = bool(l2_normalize)
        embedding_dim: int = backbone.embedding_dim  # type: ignore[assignment]  # checked just above
        self.head = nn.Linear(int(embedding_dim), num_classes)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    @property
    def contract(self):  # -> PreprocessContract
        return self.backbone.contract

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features the head sees (normalised when ``l2_normalize``)."""
        z = self.backbone(x)
        return F.normalize(z, dim=1) if self.l2_normalize else z

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x) / self.temperature, dim=1)

    def set_temperature(self, t: float) -> None:
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        self.temperature.fill_(float(t))


def trailing_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's parameterised blocks in definition order, Sequentials expanded one level.

    ``--unfreeze N`` trains the last N of these. Definition order follows the
    forward order in every backbone facediag ships (stem, stages, embedding layer).
    """
    out: list[nn.Module] = []
    for child in backbone.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            out.extend(c for c in child.children() if any(True for _ in c.parameters()))
        elif any(True for _ in child.parameters()):
            out.append(child)
    return out


def freeze_backbone(model: FaceClassifier, unfreeze: int | None) -> list[nn.Module]:
    """Freeze all backbone parameters except the last ``unfreeze`` blocks (None = train everything).

    Returns the trainable blocks; frozen blocks should run in eval mode (their
    batch-norm statistics stay those of the pretrained network).
    """
    blocks = trailing_blocks(model.backbone)
    if unfreeze is None:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        return blocks
    if unfreeze < 0:
        raise ValueError(f"--unfreeze must be >= 0, got {unfreeze}")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    chosen = blocks[len(blocks) - unfreeze :] if unfreeze else []
    for b in chosen:
        for p in b.parameters():
            p.requires_grad_(True)
    return chosen
