"""A third-party plugin as docs/plugins.md describes one: a linear classifier on
Fashion-MNIST, with weights it trains itself (seeded) into a temporary folder."""

import os
from pathlib import Path

import torch
from torch import nn

from testbed.models.plugin_api import Dataset, InputSpec, Plugin

WEIGHTS = Path(os.environ.get("TINYPLUG_WEIGHTS", "/tmp/tinyplug-weights.pt"))


class TinyFashion(Plugin):
    def build_stages(self):
        return [nn.Flatten(), nn.Sequential(nn.Linear(784, 32), nn.ReLU()), nn.Linear(32, 10)]

    def test_data(self) -> Dataset:
        from plugins.fashion_cnn.data import load_split

        return load_split("test")

    def train_data(self) -> Dataset:
        from plugins.fashion_cnn.data import load_split

        return load_split("train")


def train(path: Path = WEIGHTS) -> None:
    torch.manual_seed(0)
    plugin = make_plugin()
    model = nn.Sequential(*plugin.build_stages())
    data = plugin.train_data()
    x, y = plugin.to_tensor(data.inputs[:6000]), torch.from_numpy(data.labels[:6000])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    torch.save(model.state_dict(), path)


def make_plugin() -> Plugin:
    return TinyFashion(
        name="tiny_fashion",
        description="throw-away test plugin",
        input_spec=InputSpec(shape=(1, 28, 28), dtype="uint8", low=0, high=255),
        num_classes=10,
        split_points=(1, 2),
        artefacts={"weights": WEIGHTS},
    )
