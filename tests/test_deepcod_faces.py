"""DeepCOD for a detection plugin: mtcnn_faces' train split (no photo shared with the
test frames), the training command for a detector (reconstruction only, random crops,
pooled attention), and the committed artefact `plugins/mtcnn_faces/deepcod-r0.1.pt`
through the `deepcod` offloader; the figures are in plugins/mtcnn_faces/README.md,
section "DeepCOD". Tests that need the MTCNN weights skip when facenet-pytorch is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from plugins.mtcnn_faces import data
from plugins.mtcnn_faces.model import WEIGHTS_PIP
from testbed import offloaders
from testbed.models import plugins, predictions
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.deepcod import train as deepcod_train
from testbed.offloaders.deepcod.model import DeepCOD, SelfAttention

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None,
    reason=f"MTCNN weights not installed: {WEIGHTS_PIP}",
)

RATIO = 0.1
# README, section DeepCOD: the committed artefact on these test frames (portraits,
# the group, two crowds, a landscape, the motorcycle)
FRAMES = [0, 1, 3, 9, 10, 14, 19, 34]
# on these 8 frames: 22,052 bytes a frame (mean; 22,815 with Huffman alone, before the
# rANS coder) and 3 frames agreeing (0, 1, 19: the others lose or move a face); allow 2%
# of the bytes and one frame for another CPU's rounding
MEASURED_BYTES, MEASURED_AGREE = 22_052, 3
SHA256 = "e845964271fee8f4413b6d89927deb84af328b6b624cd8871ced80b259707322"


def test_train_split_shares_no_photo_with_the_test_frames():
    test_sources = {s for frame in data.frame_info() for s in frame["sources"]}
    train_sources = {s for frame in data.train_info() for s in frame["sources"]}
    assert train_sources == set(data.TRAIN_PHOTOS)
    assert not train_sources & test_sources
    assert "scikit-image:motorcycle_right.png" not in train_sources  # motorcycle_left's twin
    train = make_plugin_train()
    assert train.inputs.shape == (3 * len(data.TRAIN_PHOTOS), 3, 480, 640)
    assert (train.labels == -1).all()


def make_plugin_train():
    return plugins.get("mtcnn_faces").train_data()


def test_train_split_is_deterministic():
    inputs, meta = data.build_train()
    cached = make_plugin_train().inputs
    assert np.array_equal(inputs, cached)
    assert meta == data.train_info()


def test_pooled_attention_keeps_the_shape_and_starts_off():
    layer = SelfAttention(8, pool=4)
    x = torch.randn(2, 8, 30, 42)  # not multiples of the pool: ceil cells, cropped back
    assert torch.equal(layer(x), x)  # gamma starts at 0
    layer.gamma.data.fill_(1.0)
    assert layer(x).shape == x.shape
    model = DeepCOD(3, RATIO, width=8, scale=255.0, attention_pool=4)
    frame = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        out = model.eval()(frame)
    assert out.shape == frame.shape and float(out.min()) >= 0 and float(out.max()) <= 255


def test_default_options_keep_the_paper_layer():
    """No pooling and scale 1 unless asked: the older artefacts load unchanged."""
    model = DeepCOD(1, RATIO)
    assert model.decoder.net[1].pool == 1 and model.scale == 1.0


@needs_weights
def test_training_command_works_for_a_detector(tmp_path):
    out = tmp_path / "deepcod.pt"
    status = deepcod_train.main(
        [
            "--plugin",
            "mtcnn_faces",
            "--ratio",
            "0.1",
            "--epochs",
            "1",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--crop",
            "64x64",
            "--attention-pool",
            "4",
            "--width",
            "8",
            "--threads",
            "1",
            "--eval-count",
            "1",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    config = torch.load(out, weights_only=True)["config"]
    assert config["plugin"] == "mtcnn_faces" and config["scale"] == 255.0
    assert config["crop"] == [64, 64] and config["attention_pool"] == 4


@needs_weights
def test_the_committed_artefact_is_declared_small_and_pooled():
    plugin = plugins.get("mtcnn_faces")
    assert "detection" in offloaders.get("deepcod").tasks
    path = deepcod_train.artefact_path(plugin, RATIO)
    assert path.name == "deepcod-r0.1.pt" and path.is_file()
    assert path.stat().st_size < 300_000
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["attention_pool"] == 4 and saved["config"]["scale"] == 255.0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256  # as in the README


@pytest.fixture(scope="module")
def faces():
    plugin = plugins.get("mtcnn_faces")
    model = plugin.load_model()
    return plugin, model, offloaders.get("deepcod")(plugin, model, ratio=RATIO)


@needs_weights
def test_the_committed_artefact_reproduces_its_figures(faces):
    plugin, model, offloader = faces
    torch.set_num_threads(1)
    frames = plugin.test_data().inputs
    sizes, agree = [], 0
    for index in FRAMES:
        timer = PhaseTimer()
        sent = offloader.device(frames[index], timer)
        sizes.append(len(sent.payload))
        boxes = offloader.edge(sent.payload, timer)
        assert set(timer.ms) == {"encode", "decode", "edge"}
        predictions.decode(plugin, predictions.encode(plugin, boxes))  # sendable
        with torch.inference_mode():
            reference = predictions.predict(plugin, model(plugin.to_tensor(frames[index][None])))
        agree += predictions.compare(plugin, boxes, reference[0]).agrees
    assert offloader.describe()["measurements"] == [4, 120, 160]
    assert abs(np.mean(sizes) - MEASURED_BYTES) < 0.02 * MEASURED_BYTES
    assert abs(agree - MEASURED_AGREE) <= 1
