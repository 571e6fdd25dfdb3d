"""The study's network: a 1024-512-256-128-1 ReLU MLP, Glorot-uniform weights, zero biases."""

import torch
from torch import nn


class StockMLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...] = (1024, 512, 256, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, constituents) scaled prices -> (N,) scaled next-minute index."""
        return self.net(x).squeeze(-1)
