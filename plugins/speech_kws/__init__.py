"""speech_kws: keyword spotting (ten digits, "unknown", "silence") on 1 s, 16 kHz clips.

The raw input is the int16 waveform; the model's stage 0 turns it into log-mel features,
so that a split after stage 0 sends features instead of audio. The clips are synthesized
with flite, espeak-ng and sox (see `synth.py`) into the testbed's cache on first use.

Importing this package is cheap (no torch, no audio): the registry imports every plugin
just to list it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.models.plugin_api import InputSpec, PackagedPlugin, Plugin

WEIGHTS = Path(__file__).parent / "weights.pt"


class SpeechKWS(PackagedPlugin):
    """Stages from model.py, data from data.py."""

    def to_tensor(self, inputs: np.ndarray):
        """int16 samples -> float32 in [-1, 1), what stage 0 (the log-mel) expects."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(inputs)).float() / 32768.0


def make_plugin() -> Plugin:
    return SpeechKWS(
        name="speech_kws",
        description=(
            "keyword spotting: log-mel + 3-block CNN on 1 s 16 kHz clips "
            "(digits zero-nine, unknown, silence; synthesized with flite/espeak-ng/sox)"
        ),
        input_spec=InputSpec(shape=(1, 16_000), dtype="int16", low=-32768, high=32767),
        num_classes=12,
        split_points=(1, 2, 3, 4),
        metric="accuracy",
        artefacts={"weights": WEIGHTS},
    )
