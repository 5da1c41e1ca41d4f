"""A small CNN for Fashion-MNIST, cut into three stages so that it can be split.

The cuts sit after each pooling layer, where the activation is smallest relative to the
work done before it: 1x28x28 in, 32x14x14 after stage 0, 64x7x7 after stage 1, 10 logits out.
"""

from __future__ import annotations

import torch
from torch import nn

# Per-pixel mean and standard deviation of the 60,000 training images scaled to [0, 1].
MEAN = 0.2860
STD = 0.3530

# (channels, height, width) that each stage emits, for one sample.
STAGE_OUTPUT_SHAPES = ((32, 14, 14), (64, 7, 7), (10,))


class Normalize(nn.Module):
    """Standardises inside stage 0, so that the device and the edge share one input format
    (Plugin.to_tensor's [0, 1] floats) and no caller has to know these constants."""

    def __init__(self, mean: float = MEAN, std: float = STD):
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def build_stages() -> list[nn.Module]:
    """Fresh stages with random weights (seed torch first for reproducible ones)."""
    stage0 = nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    stage1 = nn.Sequential(
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    stage2 = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 10),
    )
    return [stage0, stage1, stage2]
