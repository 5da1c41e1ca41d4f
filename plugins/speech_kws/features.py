"""Log-mel features in plain torch: the model's stage 0, so that a split after it sends
features (40x101 float32, 16,160 bytes) instead of the waveform (16,000 int16, 32,000 bytes).

The STFT is `torch.stft` (25 ms Hann window, 10 ms hop, 512-point FFT, centred); the mel
filterbank is built here (HTK mel scale, triangular filters, 20 Hz to 8 kHz), so that
torchaudio (which would pull another torch build) is not needed. Neither the window nor
the filterbank is a parameter: they are non-persistent buffers, rebuilt identically on
both sides of a split and absent from `weights.pt`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16_000
N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 40
F_MIN = 20.0
F_MAX = 8_000.0
N_FRAMES = 1 + SAMPLE_RATE // HOP_LENGTH  # 101 for a centred STFT of 1 s
FEATURE_SHAPE = (1, N_MELS, N_FRAMES)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the mel scale, each
    rising from its left neighbour's centre to its own and falling to its right one's."""
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - left) / (centre - left)
    falling = (right - bins_hz) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(nn.Module):
    """(batch, 1, 16000) waveform in [-1, 1] -> (batch, 1, 40, 101) log-mel energies.

    Each clip's features are centred on their own mean, so that the overall level of a
    recording (microphone gain, distance) does not shift the input of the CNN.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)
        self.register_buffer("fbank", torch.from_numpy(mel_filterbank()), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        batch = wave.shape[0]
        spec = torch.stft(
            wave.reshape(batch, -1),
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real**2 + spec.imag**2  # (batch, 257, frames)
        mel = torch.matmul(self.fbank, power)  # (batch, 40, frames)
        logmel = torch.log(mel + 1e-6)
        logmel = logmel - logmel.mean(dim=(1, 2), keepdim=True)
        return logmel.unsqueeze(1) / 4.0  # roughly unit scale
