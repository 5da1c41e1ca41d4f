"""Log-mel features and a small CNN, cut into five stages so that it can be split.

stage 0 computes features from the waveform (no parameters); stages 1-3 are conv blocks
(conv 3x3, batch norm, ReLU, max-pool 2); stage 4 averages over time (a word may sit
anywhere in the second) and classifies from the 64x5 channel-by-frequency summary. Per sample: 1x16000 waveform in, 1x40x101 features, 16x20x50, 32x10x25,
64x5x12, 12 logits out.
"""

from __future__ import annotations

from torch import nn

from plugins.speech_kws.features import FEATURE_SHAPE, LogMel

NUM_CLASSES = 12
CHANNELS = (16, 32, 64)

# (channels, height, width) that each stage emits, for one sample.
STAGE_OUTPUT_SHAPES = (FEATURE_SHAPE, (16, 20, 50), (32, 10, 25), (64, 5, 12), (NUM_CLASSES,))


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def build_stages() -> list[nn.Module]:
    """Fresh stages with random weights (seed torch first for reproducible ones)."""
    c1, c2, c3 = CHANNELS
    return [
        LogMel(),
        conv_block(1, c1),
        conv_block(c1, c2),
        conv_block(c2, c3),
        nn.Sequential(
            nn.AdaptiveAvgPool2d((STAGE_OUTPUT_SHAPES[3][1], 1)),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(c3 * STAGE_OUTPUT_SHAPES[3][1], NUM_CLASSES),
        ),
    ]
