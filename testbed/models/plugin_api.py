"""What a model plugin declares, so that every offloader can work with it.

A plugin gives its model as ordered stages: the model is `stages[0] -> ... -> stages[-1]`,
and a split point `k` means "stages[:k] on the device, stages[k:] on the edge".
Inputs cross the wire as the plugin's raw input dtype (e.g. uint8 pixels);
`to_tensor` turns a batch of them into what `stages[0]` takes.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # one sample, without the batch dimension
    dtype: str  # numpy dtype name of the raw input, e.g. "uint8"
    low: float
    high: float

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        return f"{dims} {self.dtype} in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Dataset:
    """Samples in the plugin's raw input dtype and their integer labels (-1: no label)."""

    inputs: np.ndarray  # shape (N, *input_spec.shape)
    labels: np.ndarray  # shape (N,), int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Plugin(ABC):
    name: str
    description: str
    input_spec: InputSpec
    num_classes: int
    # split points k in 1..len(stages)-1, in stage order
    split_points: tuple[int, ...]
    # "accuracy" (labels exist) or "agreement" (top-1 agreement with the unsplit model);
    # for task "detection": "detection_agreement" (boxes against the unmodified model's)
    metric: str = "accuracy"
    # artefact name -> path; "weights" is the model's own
    artefacts: dict[str, Path] = field(default_factory=dict)
    # what a prediction is (testbed.models.predictions): "classification" (logits of
    # num_classes) or "detection" (the plugin then declares output_shape, predict(output)
    # and counts(pred, ref) -> tp, fp, fn)
    task: str = "classification"

    @abstractmethod
    def build_stages(self) -> list:
        """Return the model's stages (torch modules) with random weights."""

    @abstractmethod
    def test_data(self) -> Dataset: ...

    @abstractmethod
    def train_data(self) -> Dataset: ...

    def test_data_from(self, folder: Path) -> Dataset:
        """A folder of the user's own inputs replacing the test set (scenario key
        `test_data:`, `--test-data`); image plugins read labelled photos
        (`testbed.models.image_folder`). Default: this plugin takes none."""
        from testbed.errors import PluginError

        raise PluginError(
            f"plugin {self.name!r} takes no test_data folder (its test set is fixed); "
            "image plugins such as mobilenet_v2 do"
        )

    def train_images(self) -> tuple[list[np.ndarray], np.ndarray] | None:
        """The train inputs whole, each (C, H, W) of any size at least the input's, with
        their labels, for random resized crops in training; None: use `train_data()`."""
        return None

    def artefact_file(self, key: str) -> Path:
        """Where the artefact `key` (e.g. `deepcod-r0.1`) lives: `artefacts[key]` where set
        (tests redirect it), else `<key>.pt` beside the plugin's code."""
        if key in self.artefacts:
            return Path(self.artefacts[key])
        module = sys.modules[type(self).__module__]
        return Path(module.__file__ or ".").resolve().parent / f"{key}.pt"

    def calibration_data(self) -> Dataset:
        """Where adaptive offloaders measure their options (testbed.offloaders.calibration): the
        train split; a plugin without one may say otherwise, and documents it."""
        return self.train_data()

    def to_tensor(self, inputs: np.ndarray):
        """Raw inputs (batch) -> float tensor for stages[0]. Default: scale to [0, 1]."""
        import torch

        array = np.ascontiguousarray(inputs)
        if not array.flags.writeable:  # a payload from the wire: torch warns on read-only
            array = array.copy()
        x = torch.from_numpy(array).float()
        return (x - self.input_spec.low) / (self.input_spec.high - self.input_spec.low)

    def load_model(self):
        """Stages with the trained weights loaded, in eval mode, as one torch Sequential."""
        import torch

        from testbed.errors import PluginError

        path = self.artefacts.get("weights")
        if path is None or not Path(path).is_file():
            raise PluginError(self.weights_missing(path))
        model = torch.nn.Sequential(*self.build_stages())
        self.load_weights(model, Path(path))
        model.eval()
        return model

    def weights_missing(self, path: Path | None) -> str:
        """Why `load_model` fails when the weights file is not there, and how to make it."""
        return (
            f"plugin {self.name!r}: trained weights missing at {path}; "
            f"train them with: python -m plugins.{self.name}.train"
        )

    def load_weights(self, model, path: Path) -> None:
        """Read the weights file into the stages (`model`); by default a state dict of them."""
        import torch

        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class PackagedPlugin(Plugin):
    """A plugin whose package has `model.build_stages()` and `data.load_split(split)`, as
    most of the project's do: those modules are imported only when used, so that listing
    the plugins (importing each) loads neither torch nor data."""

    def _module(self, name: str):
        package = sys.modules[type(self).__module__].__package__
        return importlib.import_module(f"{package}.{name}")

    def build_stages(self) -> list:
        return self._module("model").build_stages()

    def test_data(self) -> Dataset:
        return self._module("data").load_split("test")

    def train_data(self) -> Dataset:
        return self._module("data").load_split("train")


# the metrics a plugin of each task may declare
METRICS = {"classification": ("accuracy", "agreement"), "detection": ("detection_agreement",)}


def check_plugin(plugin: Plugin) -> list[tuple[int, ...]]:
    """Check what a plugin declares against what its model does; return each stage's
    output shape (one sample). A PluginError names the plugin, the stage and the fix."""
    import torch

    from testbed.errors import PluginError
    from testbed.models import predictions

    stages = plugin.build_stages()
    if not stages:
        raise PluginError(f"plugin {plugin.name!r}: build_stages() returned no stages")
    points = list(plugin.split_points)
    if points != sorted(set(points)) or any(not 1 <= k < len(stages) for k in points):
        raise PluginError(
            f"plugin {plugin.name!r}: split_points {tuple(points)} must be increasing, "
            f"each between 1 and {len(stages) - 1} (it has {len(stages)} stages)"
        )
    spec = plugin.input_spec
    task = predictions.task_of(plugin)
    metrics = METRICS[task.name]
    if plugin.metric not in metrics:
        raise PluginError(
            f"plugin {plugin.name!r}: metric {plugin.metric!r}; allowed for a {task.name} "
            f"plugin: {', '.join(metrics)}"
        )
    x = plugin.to_tensor(np.full((1, *spec.shape), spec.low, dtype=spec.dtype))
    shapes = []
    with torch.inference_mode():
        for i, stage in enumerate(stages):
            stage.eval()
            try:
                x = stage(x)
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin.name!r}: stage {i} does not take stage {i - 1}'s output "
                    f"of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}"
                    if i
                    else f"plugin {plugin.name!r}: stage 0 does not take the input "
                    f"{spec.describe()}: {type(exc).__name__}: {exc}"
                ) from None
            shapes.append(tuple(x.shape[1:]))
    task.check_output(plugin, shapes[-1])
    return shapes
