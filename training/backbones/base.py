"""What every backbone shares: the in-graph scaling that the preprocessing contract names."""

from __future__ import annotations

import torch
from torch import nn

from facediag.edge.face.contract import PreprocessContract


class ContractScaling(nn.Module):
    """Applies the contract's scaling to 0..255 float NCHW input, inside the graph (so it is exported too)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, contract: PreprocessContract) -> None:
        super().__init__()
        self.kind = contract.scaling
        self.register_buffer("mean", torch.tensor(contract.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean_std":
            return (x - self.mean) / self.std
        n = x.shape[0]
        flat = x.reshape(n, -1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1, unbiased=False).view(-1, 1, 1, 1)
        floor = 1.0 / float(flat.shape[1]) ** 0.5
        return (x - mean) / torch.clamp(std, min=floor)
