"""DeepCOD's networks, after the paper and its official implementation.

Device: `SamplingEncoder`, one strided convolution (kernel 4, stride 4, no bias) with
spectral normalization: a learned compressive-sensing measurement whose rows are kept
near-orthonormal by `orthogonality_loss`. Its output is quantized to a few learned
centres (`SoftToHardQuantizer`) and entropy coded by the kernels.

Edge: `Decoder`, residual upsampling blocks with SAGAN-style self-attention (its gain
starts at 0), spectral normalization, back to the input's space; then the plugin's
unmodified model.

Sizes that are not multiples of 4 (speech_kws's 40x101 log-mel features) are padded on
the bottom/right to the next multiple by replicating the last row/column, and the
decoder's output is cropped back. Replicate rather than zeros: a padded 4x4 patch then
looks like a real one (the last frame held) instead of a step to 0, which is black for an
image and the clip's mean level for speech_kws's normalised log-mel, a jump the encoder
would spend measurements on. Sizes that are multiples of 4 are not padded at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

PATCH = 4
PADDING = "replicate"  # torch.nn.functional.pad's mode; stored in an artefact that uses it


def padded(size: int) -> int:
    """The next multiple of PATCH: the size the encoder samples."""
    return -(-size // PATCH) * PATCH


def pad_to_patches(x: torch.Tensor, mode: str = PADDING) -> torch.Tensor:
    """Bottom/right padding of (N, C, H, W) to multiples of PATCH; `x` itself when none
    is needed, so that inputs that fit go through exactly the unpadded computation."""
    h, w = x.shape[-2:]
    if h % PATCH == 0 and w % PATCH == 0:
        return x
    return nn.functional.pad(x, (0, padded(w) - w, 0, padded(h) - h), mode=mode)


def encoder_channels(in_channels: int, ratio: float) -> int:
    """int(C*16*ratio), at least 1: 4 for RGB at ratio 0.1, as the official code."""
    return max(1, int(in_channels * PATCH * PATCH * ratio))


class SamplingEncoder(nn.Module):
    """(C, H, W) -> (K, ceil(H/4), ceil(W/4)) measurements; see the module's padding rule."""

    def __init__(self, in_channels: int, ratio: float, padding: str = PADDING) -> None:
        super().__init__()
        self.out_channels = encoder_channels(in_channels, ratio)
        self.padding = padding
        self.conv = nn.Conv2d(in_channels, self.out_channels, PATCH, stride=PATCH, bias=False)
        spectral_norm(self.conv)  # registers the parametrization on the module in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_to_patches(x, self.padding))

    def orthogonality_loss(self) -> torch.Tensor:
        """||W W^T - I||^2 over the measurement rows (W: out x in*16)."""
        w = self.conv.weight.flatten(1)
        gram = w @ w.t()
        return ((gram - torch.eye(gram.shape[0], device=w.device)) ** 2).sum()


class SoftToHardQuantizer(nn.Module):
    """Scalar quantization to `centres` learnable values. Training: the forward pass
    uses the nearest centre while gradients flow through a softmax assignment
    (straight-through); inference: nearest centre (done by the kernels on the device)."""

    def __init__(self, centres: int = 8, sigma: float = 1.0) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.linspace(-1.0, 1.0, centres))
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.unsqueeze(-1) - self.centres) ** 2
        soft = (torch.softmax(-self.sigma * distance, dim=-1) * self.centres).sum(-1)
        hard = self.centres[distance.argmin(dim=-1)]
        return soft + (hard - soft).detach()

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.unsqueeze(-1) - self.centres) ** 2).argmin(dim=-1)


class SelfAttention(nn.Module):
    """SAGAN self-attention; the gain gamma starts at 0, so training begins from the
    purely convolutional decoder and lets attention in as it helps. `pool` > 1 attends
    over a pooled grid (average over pool x pool positions, the result repeated back over
    them): the attention matrix shrinks by pool^4 (a 480x640 frame's 120x160 measurements
    are 19,200 positions, a 1.5 GB matrix; pooled by 4, 1,200). 1: the paper's layer."""

    def __init__(self, channels: int, pool: int = 1) -> None:
        super().__init__()
        self.pool = pool
        inner = max(1, channels // 8)
        self.query = spectral_norm(nn.Conv2d(channels, inner, 1))
        self.key = spectral_norm(nn.Conv2d(channels, inner, 1))
        self.value = spectral_norm(nn.Conv2d(channels, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            return x + self.gamma * self._pooled(x)
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # n, hw, inner
        k = self.key(x).flatten(2)  # n, inner, hw
        attention = torch.softmax(q @ k, dim=-1)  # n, hw, hw
        v = self.value(x).flatten(2)  # n, c, hw
        out = (v @ attention.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the grid pooled by `pool` (ceil: partial cells are averages of
        what they hold), repeated back over x's positions."""
        n, c, h, w = x.shape
        p = nn.functional.avg_pool2d(x, self.pool, ceil_mode=True)
        q = self.query(p).flatten(2).transpose(1, 2)
        k = self.key(p).flatten(2)
        attention = torch.softmax(q @ k, dim=-1)
        v = self.value(p).flatten(2)
        out = (v @ attention.transpose(1, 2)).view(n, c, *p.shape[-2:])
        out = out.repeat_interleave(self.pool, dim=2).repeat_interleave(self.pool, dim=3)
        return out[..., :h, :w]


class ResidualUp(nn.Module):
    """BigGAN-style residual block that doubles the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            spectral_norm(nn.Conv2d(in_channels, out_channels, 3, padding=1)),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            spectral_norm(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            spectral_norm(nn.Conv2d(in_channels, out_channels, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Decoder(nn.Module):
    """From (K, H/4, W/4) measurements back to (C, H, W) inputs in [0, 1]. Attention
    works at the measurements' resolution, where its cost (quadratic in positions)
    stays small: 56x56 for a 224x224 image."""

    def __init__(
        self,
        measurements: int,
        out_channels: int,
        width: int = 64,
        bounded: bool = True,
        attention_pool: int = 1,
    ) -> None:
        super().__init__()
        # inputs live in [0, 1] (a sigmoid); a split's features are unbounded (identity)
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(measurements, width, 3, padding=1)),
            SelfAttention(width, attention_pool),
            ResidualUp(width, width),
            ResidualUp(width, width // 2),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            spectral_norm(nn.Conv2d(width // 2, out_channels, 3, padding=1)),
            nn.Sigmoid() if bounded else nn.Identity(),
        )

    def forward(self, y: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """`size` (H, W): crop the (4h, 4w) output back to an input that was padded."""
        out = self.net(y)
        if size is not None and tuple(size) != tuple(out.shape[-2:]):
            out = out[..., : size[0], : size[1]]
        return out


class DeepCOD(nn.Module):
    """`bounded=False` where DeepCOD encodes a split's features instead of the input.
    `scale`: the bounded input's range is [0, scale] (1 for plugins whose `to_tensor`
    gives [0, 1]; 255 for mtcnn_faces' pixel values): the encoder sees x / scale and the
    decoder's sigmoid is multiplied by it. `attention_pool`: see `SelfAttention`."""

    def __init__(
        self,
        in_channels: int,
        ratio: float = 0.1,
        centres: int = 8,
        width: int = 64,
        bounded: bool = True,
        padding: str = PADDING,
        scale: float = 1.0,
        attention_pool: int = 1,
    ):
        super().__init__()
        self.ratio = ratio
        self.scale = scale
        self.encoder = SamplingEncoder(in_channels, ratio, padding)
        self.quantizer = SoftToHardQuantizer(centres)
        self.decoder = Decoder(
            self.encoder.out_channels, in_channels, width, bounded, attention_pool
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The measurements (before quantization) of an input in the plugin's range."""
        return self.encoder(x / self.scale if self.scale != 1 else x)

    def decode(self, y: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Measurements' centre values -> the input, in the plugin's range."""
        out = self.decoder(y, size)
        return out * self.scale if self.scale != 1 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer(self.encode(x)), x.shape[-2:])


class Critic(nn.Module):
    """WGAN-GP critic for the optional adversarial loss: strided convolutions to one
    score per sample. No batch norm (the gradient penalty is per sample)."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """(||grad critic(mix)|| - 1)^2 on random mixes of real and fake (Gulrajani et al.)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
