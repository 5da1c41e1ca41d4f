"""The imu_har plugin: its data, its subject split, its stages, and the committed weights.

Nothing is skipped when seglearn is missing: the project's setup installs it, so its
absence is a failure, and the PluginError then carries the install hint.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

import plugins.imu_har as imu_har
from plugins.imu_har import data as imu_data
from plugins.imu_har.model import STAGE_OUTPUT_SHAPES
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.cache import ENV as CACHE_ENV
from testbed.models.training import count_correct
from tests.helpers import check_trained_weights, plugin_fixtures, stage_outputs

# plugins/imu_har/README.md: the committed weights' accuracy on the held-out subjects.
DOCUMENTED_ACCURACY = 0.9090  # 1,199 / 1,319 windows
INSTALL = "pip install --no-deps seglearn==1.2.5"
WINDOWS = {"train": 3358, "test": 1319}


plugin, test_data = plugin_fixtures("imu_har")


def test_registered(plugin):
    assert "imu_har" in plugins.available()
    assert plugin.name == "imu_har"
    assert plugin.num_classes == 7 == len(imu_data.CLASS_NAMES)
    assert plugin.metric == "accuracy"
    assert plugin.input_spec.shape == (6, imu_data.WINDOW) == (6, 100)
    assert plugin.input_spec.dtype == "int16"
    assert (plugin.input_spec.low, plugin.input_spec.high) == (-32768, 32767)
    assert imu_har.LSB == imu_data.LSB


@pytest.mark.parametrize("split", ["train", "test"])
def test_data_shapes(plugin, split):
    data = plugin.train_data() if split == "train" else plugin.test_data()
    count = WINDOWS[split]
    assert len(data) == count
    assert data.inputs.shape == (count, 6, 100)
    assert data.inputs.dtype == np.int16
    assert data.labels.shape == (count,) and data.labels.dtype == np.int64
    # Every exercise is in both splits (each subject did all 7 with both arms).
    assert set(np.unique(data.labels)) == set(range(7))
    # Real motion: accelerometer near gravity's 1 g = 1000 counts, gyroscope moving.
    norm = np.linalg.norm(data.inputs[:, :3].astype(np.float64), axis=1)
    assert 700 < np.median(norm) < 1300
    assert np.abs(data.inputs[:, 3:]).max() > 3000


def test_subject_split():
    train = set(imu_data.split_subjects("train").tolist())
    test = set(imu_data.split_subjects("test").tolist())
    assert test == set(imu_data.TEST_SUBJECTS) == {3, 5, 7}
    assert train == set(imu_data.SUBJECTS) - test
    assert not train & test


def test_to_tensor(plugin):
    raw = np.array([[[-32768, 0, 1000, 32767]] * 6], dtype=np.int16)
    x = plugin.to_tensor(raw)
    assert x.dtype == torch.float32
    assert torch.allclose(x[0, 0], torch.tensor([-32.768, 0.0, 1.0, 32.767]))


def test_stages_chain(plugin):
    stages = plugin.build_stages()
    k = plugin.split_points
    assert k and list(k) == sorted(set(k)) and all(1 <= p < len(stages) for p in k)

    raw = np.random.default_rng(0).integers(-3000, 3000, (3, 6, 100)).astype(np.int16)
    outputs = stage_outputs(plugin, stages, raw)
    assert all(o.shape[0] == 3 for o in outputs)
    assert [tuple(o.shape[1:]) for o in outputs] == list(STAGE_OUTPUT_SHAPES)
    assert outputs[-1].shape == (3, plugin.num_classes)


def test_load_model(plugin):
    check_trained_weights(plugin, max_bytes=1_000_000)


def test_weights_accuracy(plugin, test_data):
    correct = count_correct(plugin, plugin.load_model(), test_data)
    assert correct / len(test_data) >= DOCUMENTED_ACCURACY - 0.01


def test_missing_weights(plugin, tmp_path):
    missing = imu_har.make_plugin()
    missing.artefacts["weights"] = tmp_path / "weights.pt"
    with pytest.raises(PluginError, match=re.escape("python -m plugins.imu_har.train")) as info:
        missing.load_model()
    assert str(tmp_path / "weights.pt") in str(info.value)


def test_missing_data(plugin, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "watch_dataset.npy"
    monkeypatch.setenv(imu_data.ENV_VAR, str(missing))
    with pytest.raises(PluginError, match=INSTALL) as info:
        plugin.test_data()
    assert str(missing) in str(info.value)


def test_seglearn_not_installed(monkeypatch):
    monkeypatch.delenv(imu_data.ENV_VAR, raising=False)
    monkeypatch.setattr(imu_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PluginError, match=INSTALL):
        imu_data.source_file()


def _fake_watch(path, series, labels, subjects) -> None:
    record = {
        "X": series,
        "y": np.asarray(labels),
        "subject": np.asarray(subjects),
        "side": np.zeros(len(labels)),
        "X_labels": list(imu_data.CHANNELS),
        "y_labels": list(imu_data.CLASS_NAMES),
    }
    np.save(path, np.array(record, dtype=object), allow_pickle=True)


def test_windows_and_cache(tmp_path, monkeypatch):
    """Windowing, quantisation, subject split and the cache, on a small file made here."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    series = [rng.normal(0, 1, (n, 6)) for n in (250, 99, 160)]
    series[0][:, 0] = np.arange(250) * 0.01  # a ramp, to check window starts and the scale
    path = tmp_path / "watch.npy"
    _fake_watch(path, series, labels=[4, 5, 6], subjects=[1, 3, 2])

    train = imu_data.load_split("train", path)  # subjects 1 and 2
    test = imu_data.load_split("test", path)  # subject 3: its series is shorter than a window
    # (250 - 100) // 50 + 1 = 4 windows, none from 99 samples, (160 - 100) // 50 + 1 = 2.
    assert len(train) == 6 and len(test) == 0
    assert train.labels.tolist() == [4, 4, 4, 4, 6, 6]
    assert train.inputs[:, 0, 0].tolist() == [0, 500, 1000, 1500] + [
        round(series[2][s, 0] * 1000) for s in (0, 50)
    ]
    assert np.array_equal(train.inputs[1], imu_data.quantize(series[0][50:150].T))
    cached = list((tmp_path / "cache" / "imu_har").glob("windows-*.npz"))
    assert len(cached) == 1
    # A second load comes from the cache, without decoding the source again.
    monkeypatch.setattr(imu_data, "read_watch", lambda p: pytest.fail("not cached"))
    again = imu_data.load_split("train", path)
    assert np.array_equal(again.inputs, train.inputs)


def test_quantize_clips():
    x = np.array([-40.0, -1.2344, 0.0, 0.0015, 40.0])
    assert imu_data.quantize(x).tolist() == [-32768, -1234, 0, 2, 32767]


def test_malformed_file(tmp_path):
    path = tmp_path / "watch.npy"
    np.save(path, np.zeros((3, 6)))
    with pytest.raises(PluginError, match="malformed") as info:
        imu_data.read_watch(path)
    assert str(path) in str(info.value) and INSTALL in str(info.value)

    path.write_bytes(b"not numpy at all")
    with pytest.raises(PluginError, match="malformed"):
        imu_data.read_watch(path)

    _fake_watch(path, [np.zeros((200, 5))], labels=[0], subjects=[1])
    with pytest.raises(PluginError, match=r"\(n, 6\)"):
        imu_data.read_watch(path)


class _Evil:
    def __reduce__(self):
        return (pytest.fail, ("unpickling ran code",))


def test_foreign_pickle_refused(tmp_path):
    """The data file is unpickled with a restricted unpickler: no code runs from it."""
    path = tmp_path / "watch.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        pickle.dump(np.array({"X": [_Evil()]}, dtype=object), f, protocol=2)
    with pytest.raises(PluginError, match="not allowed"):
        imu_data.read_watch(path)
