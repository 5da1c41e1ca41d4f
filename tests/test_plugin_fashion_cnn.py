"""The fashion_cnn plugin: its data, its stages, and the committed weights.

Nothing here is skipped when the dataset is missing: the project's setup installs it, so
its absence is a failure, and the PluginError then carries the install hint.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from plugins.fashion_cnn.data import ENV_VAR, load_split, read_idx
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.plugin_api import InputSpec
from testbed.models.training import count_correct
from tests.helpers import check_trained_weights, plugin_fixtures, stage_outputs

INSTALL = "apt-get install dataset-fashion-mnist"


plugin, test_data = plugin_fixtures("fashion_cnn")


def test_registered(plugin):
    assert "fashion_cnn" in plugins.available()
    assert plugin.name == "fashion_cnn"
    assert (plugin.num_classes, plugin.metric) == (10, "accuracy")
    assert plugin.input_spec == InputSpec(shape=(1, 28, 28), dtype="uint8", low=0, high=255)


@pytest.mark.parametrize(("split", "count"), [("test", 10_000), ("train", 60_000)])
def test_data_shapes(plugin, split, count):
    data = plugin.test_data() if split == "test" else plugin.train_data()
    assert len(data) == count
    assert data.inputs.shape == (count, *plugin.input_spec.shape)
    assert data.inputs.dtype == np.dtype(plugin.input_spec.dtype)
    assert data.labels.shape == (count,)
    assert data.labels.dtype == np.int64
    # Fashion-MNIST is balanced: every class has exactly a tenth of each split.
    assert np.bincount(data.labels, minlength=10).tolist() == [count // 10] * 10
    assert data.inputs.max() > 200  # real images, not an all-black placeholder


def test_stages_chain(plugin):
    stages = plugin.build_stages()
    k = plugin.split_points
    assert k and list(k) == sorted(set(k)) and all(1 <= p < len(stages) for p in k)

    spec = plugin.input_spec
    raw = np.random.default_rng(0).integers(spec.low, spec.high + 1, (3, *spec.shape))
    x = plugin.to_tensor(raw.astype(spec.dtype))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    outputs = stage_outputs(plugin, stages, raw.astype(spec.dtype))
    assert all(o.shape[0] == 3 for o in outputs)
    assert outputs[-1].shape == (3, plugin.num_classes)
    assert [tuple(o.shape[1:]) for o in outputs] == [(32, 14, 14), (64, 7, 7), (10,)]


def test_load_model(plugin):
    check_trained_weights(plugin, max_bytes=2_000_000)


def test_weights_accuracy(plugin, test_data):
    correct = count_correct(plugin, plugin.load_model(), test_data)
    assert correct / len(test_data) >= 0.89


def test_missing_dir(plugin, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(PluginError, match=INSTALL) as info:
        plugin.test_data()
    assert str(missing) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PluginError, match=INSTALL) as info:
        load_split("test", tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


def _write_idx(path, magic: bytes, dims: tuple[int, ...], payload: bytes) -> None:
    header = magic + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_read_idx(tmp_path):
    path = tmp_path / "ok-idx3-ubyte.gz"
    _write_idx(path, b"\0\0\x08\x03", (2, 2, 3), bytes(range(12)))
    assert read_idx(path, ndim=3).tolist() == np.arange(12).reshape(2, 2, 3).tolist()


@pytest.mark.parametrize(
    ("magic", "dims", "payload", "complaint"),
    [
        (b"\0\0\x08\x01", (2, 2, 3), bytes(12), "magic number"),  # labels file, not images
        (b"\0\0\x0d\x03", (2, 2, 3), bytes(48), "magic number"),  # float32, not ubyte
        (b"\0\0\x08\x03", (2, 2, 3), bytes(11), "header declares"),  # truncated
        (b"\0\0\x08", (), b"", "shorter than"),
    ],
)
def test_malformed_idx(tmp_path, magic, dims, payload, complaint):
    path = tmp_path / "bad-idx3-ubyte.gz"
    _write_idx(path, magic, dims, payload)
    with pytest.raises(PluginError, match=complaint) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value) and INSTALL in str(info.value)


def test_not_gzip(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(PluginError, match=INSTALL) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)
