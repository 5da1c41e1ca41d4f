"""fashion_cnn: a small CNN on Fashion-MNIST, the testbed's first and simplest plugin.

Importing this package is cheap (no torch, no data): the registry imports every plugin
just to list it, and torch and the 30 MB of idx files are loaded only when used.
"""

from __future__ import annotations

from pathlib import Path

from testbed.models.plugin_api import Dataset, InputSpec, Plugin

WEIGHTS = Path(__file__).parent / "weights.pt"


class FashionCNN(Plugin):
    def build_stages(self) -> list:
        from plugins.fashion_cnn.model import build_stages

        return build_stages()

    def test_data(self) -> Dataset:
        from plugins.fashion_cnn.data import load_split

        return load_split("test")

    def train_data(self) -> Dataset:
        from plugins.fashion_cnn.data import load_split

        return load_split("train")


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
