"""The classic tutorial network for 28x28 digits."""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two 5x5 conv layers (32, 64) with 2x2 max-pooling, a 1024-unit layer, dropout 0.5."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classify = nn.Sequential(
            nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(dropout), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
