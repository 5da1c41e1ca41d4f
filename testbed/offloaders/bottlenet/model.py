"""The bottleneck autoencoder that BottleNet (Eshratifar et al., ISLPED 2019) and
BottleNet++ (Shao and Zhang, ICC 2020) insert at a split point.

Device: `encoder`, a 3x3 convolution down to a few channels (stride 2 also halves the
height and width: on fashion_cnn that beat fewer channels at stride 1 for the same
bytes), batch norm and a sigmoid, so that every value lies in [0, 1] and k-bit uniform
codes need no per-request scale or offset on the wire. Edge: the codes' values, then
`decoder`, two 3x3 convolutions (nearest upsampling between them after a stride) back
to the split's feature shape, then the plugin's unmodified stages[split:].

Features are CxHxW (2-D convolutions) or CxL (1-D: a temporal CNN); a flat vector has
no channels to reduce and is refused. Quantization is the same float32 arithmetic as
`kernels.quantize.quantize_uniform` with scale 1/(2^k - 1) and offset 0, so that what
the networks saw in training and evaluation is what the offloader sends.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from testbed.errors import PluginError


def resolve_split(plugin, split: int) -> int:
    """-1 is the plugin's last split point (usually its smallest features); any other
    value must be one of its split points (0, the input, is not a feature map)."""
    if split == -1 and plugin.split_points:
        return plugin.split_points[-1]
    if split not in plugin.split_points:
        raise PluginError(
            f"bottlenet: split {split} is not a split point of plugin {plugin.name!r}; "
            f"allowed: {', '.join(map(str, plugin.split_points))} or -1 for the last"
        )
    return split


def check_feature_shape(plugin, split: int, shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise PluginError(
            f"bottlenet needs CxHxW or CxL features; plugin {plugin.name!r} gives "
            f"{'x'.join(map(str, shape))} at split {split}"
        )


def step(bits: int) -> np.float32:
    """The quantization step, 1/(2^k - 1) in float32: code q stands for q * step."""
    return np.float32(1.0) / np.float32((1 << bits) - 1)


class BottleNet(nn.Module):
    def __init__(
        self, feature_shape, channels: int, bits: int, width: int = 0, stride: int = 1
    ) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.feature_shape = tuple(int(d) for d in feature_shape)
        self.channels, self.bits, self.stride = channels, bits, stride
        conv, norm = (
            (nn.Conv1d, nn.BatchNorm1d)
            if len(self.feature_shape) == 2
            else (nn.Conv2d, nn.BatchNorm2d)
        )
        features = self.feature_shape[0]
        width = width or features
        self.encoder = nn.Sequential(
            conv(features, channels, 3, stride=stride, padding=1), norm(channels), nn.Sigmoid()
        )
        up = [nn.Upsample(size=self.feature_shape[1:])] if stride > 1 else []
        self.decoder = nn.Sequential(
            conv(channels, width, 3, padding=1),
            norm(width),
            nn.ReLU(),
            *up,
            conv(width, features, 3, padding=1),
        )
        self.step = float(step(bits))
        self.inv_step = float(np.float32(1.0) / step(bits))  # as the kernel computes it

    @property
    def code_shape(self) -> tuple[int, ...]:
        """One sample's codes: a 3x3 convolution with padding 1 at this stride."""
        return (self.channels, *((d - 1) // self.stride + 1 for d in self.feature_shape[1:]))

    def codes(self, y: torch.Tensor) -> torch.Tensor:
        """floor(y / step + 0.5) clipped to 0..2^k-1, as float (quantize_uniform's rule)."""
        return torch.floor(y * self.inv_step + 0.5).clamp(0, (1 << self.bits) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder, k-bit quantization, decoder. Training: straight-through rounding, the
        forward pass sees the codes' values while the gradient passes unchanged."""
        y = self.encoder(x)
        q = self.codes(y) * self.step
        if self.training:
            q = y + (q - y).detach()
        return self.decoder(q)
