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
from typing import Any, cast

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


# --- Inference: the same function, computed cheaper -----------------------------------


def _bn_affine(bn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference batch norm as x * scale + shift (float64: folds add no rounding)."""
    weight, bias = bn.weight.detach().double(), bn.bias.detach().double()
    scale = weight / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bias - bn.running_mean.double() * scale


def _conv(conv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight (spectral norm applied, as in eval mode) and bias, float64."""
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    return conv.weight.detach().double(), bias.detach().double()


# Output row 2i+a of a nearest 2x upsampling then a 3x3 convolution (padding 1) reads
# upsampled rows 2i+a-1..2i+a+1, which are original rows i-1, i, i (a = 0) or i, i, i+1
# (a = 1): a transposed convolution (stride 2, padding 1) whose 4 taps per axis are sums
# of the 3x3 kernel's (`_UPSAMPLED_TAPS[k]`: the rows that tap k of it adds up).
_UPSAMPLED_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)


def _upsampled_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) of a convolution after a nearest 2x upsampling -> the (C, O, 4, 4)
    weight of `conv_transpose2d(stride=2, padding=1)` on the original grid that computes
    the same: 16 multiply-adds per output instead of 36, and no upsampled copy."""
    taps = _UPSAMPLED_TAPS.to(weight)
    return torch.einsum("kr,ocrs,ls->cokl", taps, weight, taps)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous()


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.float().contiguous(memory_format=torch.channels_last)


class _FusedUp:
    """`ResidualUp` for inference: the body's upsampling and first convolution as one
    transposed convolution (`_upsampled_conv_weight`) with the batch norm that follows
    folded in; the skip's 1x1 convolution before its nearest upsampling (they commute),
    added to each 2x2 cell; `after`: a batch norm applied to the block's output, folded
    into both branches (it is affine: bn(body + skip) = s*body + (s*skip + t))."""

    def __init__(self, block: Any, after: Any) -> None:
        """`block`: a `ResidualUp`; `after`: a `BatchNorm2d` or None."""
        bn0, _, _, conv1, bn1, _, conv2 = block.body
        self.scale0, self.shift0 = (_f32(t).view(1, -1, 1, 1) for t in _bn_affine(bn0))
        w1, b1 = _conv(conv1)
        s1, t1 = _bn_affine(bn1)
        self.w1 = _channels_last(_upsampled_conv_weight(w1 * s1.view(-1, 1, 1, 1)))
        self.b1 = _f32(b1 * s1 + t1)
        w2, b2 = _conv(conv2)
        ws, bs = _conv(block.skip[1])
        if after is not None:
            s, t = _bn_affine(after)
            w2, b2 = w2 * s.view(-1, 1, 1, 1), b2 * s
            ws, bs = ws * s.view(-1, 1, 1, 1), bs * s + t
        self.w2, self.b2 = _channels_last(w2), _f32(b2)
        # the skip twice over: its output's channels-last rows are then those of a 2x2
        # cell's two columns, added to both rows of the cell by a cheap broadcast
        self.ws, self.bs = _channels_last(torch.cat([ws, ws])), _f32(torch.cat([bs, bs]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = nn.functional
        n, _, h, _ = x.shape
        a = torch.addcmul(self.shift0, x, self.scale0).relu_()
        u = f.conv_transpose2d(a, self.w1, self.b1, stride=2, padding=1).relu_()
        body = f.conv2d(u, self.w2, self.b2, padding=1)
        body = body.contiguous(memory_format=torch.channels_last)  # for the views below
        skip = f.conv2d(x, self.ws, self.bs).contiguous(memory_format=torch.channels_last)
        rows = body.permute(0, 2, 3, 1).view(n, h, 2, -1)  # output rows 2i, 2i+1
        rows += skip.permute(0, 2, 3, 1).reshape(n, h, 1, -1)
        return body


class FusedDecoder:
    """A trained `Decoder`'s function (eval mode) in fewer operations, for the edge:
    spectral norms applied once, batch norms folded into the convolutions, each nearest
    upsampling + 3x3 convolution as one transposed convolution on the small grid, 1x1
    skips before their upsampling, attention by `scaled_dot_product_attention` with its
    gain folded into the values, channels-last tensors. The same function up to float
    rounding (outputs within about 1e-6), 2.1-2.5x faster on one core for MobileNetV2's
    decoders (docs/offloaders.md). A snapshot: the weights are read at construction."""

    def __init__(self, decoder: Decoder) -> None:
        conv0, attention, up1, up2, bn, _, conv_out, last = cast(Any, decoder.net)
        w, b = _conv(conv0)
        self.w0, self.b0 = _f32(w), _f32(b)  # few input channels: faster in NCHW
        self.pool = attention.pool
        gamma = float(attention.gamma.detach())
        self.attend = gamma != 0.0  # a gain of 0 adds exactly nothing
        wq, bq = _conv(attention.query)
        wk, bk = _conv(attention.key)
        wv, bv = _conv(attention.value)
        self.inner = wq.shape[0]
        self.wqkv = _channels_last(torch.cat([wq, wk, gamma * wv]))
        self.bqkv = _f32(torch.cat([bq, bk, gamma * bv]))
        self.up1 = _FusedUp(up1, None)
        self.up2 = _FusedUp(up2, bn)
        w, b = _conv(conv_out)
        self.w_out, self.b_out = _channels_last(w), _f32(b)
        self.bounded = isinstance(last, nn.Sigmoid)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = nn.functional.avg_pool2d(x, self.pool, ceil_mode=True) if self.pool > 1 else x
        qkv = nn.functional.conv2d(p, self.wqkv, self.bqkv)
        qkv = qkv.permute(0, 2, 3, 1).reshape(n, 1, -1, qkv.shape[1])  # n, 1, positions, -
        q, k, v = qkv.split([self.inner, self.inner, c], dim=-1)
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
        out = out.view(n, *p.shape[-2:], c).permute(0, 3, 1, 2)
        if self.pool > 1:
            out = out.repeat_interleave(self.pool, 2).repeat_interleave(self.pool, 3)
            out = out[..., :h, :w]
        return x + out

    def __call__(self, y: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        x = nn.functional.conv2d(y.contiguous(), self.w0, self.b0, padding=1)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.attend:
            x = self._attention(x)
        x = self.up2(self.up1(x)).relu_()
        out = nn.functional.conv2d(x, self.w_out, self.b_out, padding=1)
        out = out.sigmoid_() if self.bounded else out
        if size is not None and tuple(size) != tuple(out.shape[-2:]):
            out = out[..., : size[0], : size[1]]
        return out.contiguous()


def _state_key(tensors: list[torch.Tensor]) -> tuple:
    """Changes when any of `tensors` is written in place (its version) or moved."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


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
        self._fused: tuple[list[torch.Tensor], tuple, FusedDecoder] | None = None
        self.register_load_state_dict_post_hook(DeepCOD._forget_fused)  # even assign=True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The measurements (before quantization) of an input in the plugin's range."""
        return self.encoder(x / self.scale if self.scale != 1 else x)

    def decode(
        self, y: torch.Tensor, size: Sequence[int] | None = None, reference: bool = False
    ) -> torch.Tensor:
        """Measurements' centre values -> the input, in the plugin's range. In eval mode
        without gradients (the edge, under torch.inference_mode) by a `FusedDecoder` of
        the current weights; training, or `reference`, by the modules themselves."""
        if reference or self.training or torch.is_grad_enabled():
            out = self.decoder(y, size)
        else:
            out = self.fused_decoder()(y, size)
        return out * self.scale if self.scale != 1 else out

    def fused_decoder(self) -> FusedDecoder:
        """The decoder's `FusedDecoder`, rebuilt when a weight or buffer changed in place
        or moved (an optimiser step, .to()) or was loaded since it was built."""
        if self._fused is not None:
            tensors, key, fused = self._fused
            if _state_key(tensors) == key:
                return fused
        tensors = [*self.decoder.parameters(), *self.decoder.buffers()]  # ~0.4 ms: kept
        fused = FusedDecoder(self.decoder)
        try:
            self._fused = (tensors, _state_key(tensors), fused)
        except RuntimeError:  # inference tensors keep no version: never trust a snapshot
            self._fused = None
        return fused

    def _forget_fused(self, *_) -> None:
        self._fused = None

    def _apply(self, fn, recurse=True):  # .to(), .float(): tensors may be new objects
        self._forget_fused()
        return super()._apply(fn, recurse)

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
