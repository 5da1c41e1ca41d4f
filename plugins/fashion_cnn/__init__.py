"""fashion_cnn: a small CNN on Fashion-MNIST, the testbed's first and simplest plugin.

Importing this package is cheap (no torch, no data): the registry imports every plugin
just to list it, and torch and the 30 MB of idx files are loaded only when used.
"""

from __future__ import annotations

from pathlib import Path

from testbed.models.plugin_api import InputSpec, PackagedPlugin, Plugin

WEIGHTS = Path(__file__).parent / "weights.pt"


class FashionCNN(PackagedPlugin):
    """Stages from model.py, data from data.py."""


def make_plugin() -> Plugin:
    return FashionCNN(
        name="fashion_cnn",
        description="2-block CNN on Fashion-MNIST (28x28 grey clothing images, 10 classes)",
        input_spec=InputSpec(shape=(1, 28, 28), dtype="uint8", low=0, high=255),
        num_classes=10,
        split_points=(1, 2),
        metric="accuracy",
        artefacts={"weights": WEIGHTS},
    )
