"""imu_har: human-activity recognition from a smartwatch's 6-axis IMU (the IoT sensing case).

Importing this package is cheap (no torch, no data): the registry imports every plugin
just to list it; torch and the data set are loaded only when used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.models.plugin_api import InputSpec, PackagedPlugin, Plugin

WEIGHTS = Path(__file__).parent / "weights.pt"
LSB = 1e-3  # g or rad/s per int16 count; the same as data.LSB (checked by the tests)


class ImuHAR(PackagedPlugin):
    """Stages from model.py, data from data.py."""

    def to_tensor(self, inputs: np.ndarray):
        """int16 counts (batch, 6, 100) -> float32 g and rad/s; stage 0 standardises."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(inputs)).float() * LSB


def make_plugin() -> Plugin:
    return ImuHAR(
        name="imu_har",
        description=(
            "DeepSense-style conv+GRU on seglearn's smartwatch IMU data "
            "(2 s windows of 6-axis accel+gyro at 50 Hz, 7 shoulder exercises)"
        ),
        input_spec=InputSpec(shape=(6, 100), dtype="int16", low=-32768, high=32767),
        num_classes=7,
        split_points=(1, 2),
        metric="accuracy",
        artefacts={"weights": WEIGHTS},
    )
