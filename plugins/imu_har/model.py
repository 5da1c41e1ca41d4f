"""A DeepSense-style network for 6-axis IMU windows, cut into three stages.

DeepSense (Yao et al., WWW 2017) runs one convolution stack per sensor, merges the sensors
with a convolution, then a recurrent layer over time. Here, for a (6, 100) window
(ax ay az wx wy wz at 50 Hz, in g and rad/s as `Plugin.to_tensor` gives them):

- stage 0, on the device: standardise each channel; accelerometer and gyroscope each go
  through their own 2 convolutions (kernel 5) and a max-pool: 2 x (32, 50) -> (64, 50);
- stage 1: the merge convolution over both sensors, max-pool: (64, 25);
- stage 2: a GRU (64 units) over the 25 time steps, mean over time, dropout, linear to
  the 7 classes.
"""

from __future__ import annotations

import torch
from torch import nn

# Per-channel mean and standard deviation (ax ay az in g, wx wy wz in rad/s) of the
# training windows (subjects other than data.TEST_SUBJECTS), after int16 quantisation.
MEAN = (0.0012, 0.3845, -0.1731, 0.0214, 0.0010, 0.0070)
STD = (0.8658, 0.4994, 0.5095, 0.9731, 2.3812, 1.0488)

NUM_CLASSES = 7
SENSOR_CHANNELS = 32  # per sensor, after stage 0
MERGED_CHANNELS = 64
GRU_UNITS = 64

# What each stage emits for one (6, 100) window.
STAGE_OUTPUT_SHAPES = ((2 * SENSOR_CHANNELS, 50), (MERGED_CHANNELS, 25), (NUM_CLASSES,))


class Normalize(nn.Module):
    """Per-channel standardisation, kept inside stage 0 so that both sides of a split take
    the physical units of Plugin.to_tensor."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        # Non-persistent buffers: constants of the architecture, not weights to load
        # (the state dict stays as trained), yet moved with the model to the edge's device.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _sensor_stack(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_channels, SENSOR_CHANNELS, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.Conv1d(SENSOR_CHANNELS, SENSOR_CHANNELS, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
    )


class PerSensor(nn.Module):
    """Stage 0: a separate convolution stack for the accelerometer and the gyroscope."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize()
        self.accel = _sensor_stack(3)
        self.gyro = _sensor_stack(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return torch.cat([self.accel(x[:, :3]), self.gyro(x[:, 3:])], dim=1)


class Recurrent(nn.Module):
    """Stage 2: GRU over time, mean of its outputs, classifier."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(MERGED_CHANNELS, GRU_UNITS, batch_first=True)
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(GRU_UNITS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.transpose(1, 2))  # (batch, time, features)
        return self.classifier(self.dropout(out.mean(dim=1)))


def build_stages() -> list[nn.Module]:
    """Fresh stages with random weights (seed torch first for reproducible ones)."""
    merge = nn.Sequential(
        nn.Conv1d(2 * SENSOR_CHANNELS, MERGED_CHANNELS, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
    )
    return [PerSensor(), merge, Recurrent()]
