"""The `bottlenet` offloader and its training command, on the real fashion_cnn model and
data: a tiny bottleneck trained inside the test for the payload checks, the committed
one for the accuracy and bytes it was reported with."""

import hashlib

import numpy as np
import pytest
import torch

from kernels import entropy
from testbed import offloaders
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.bottlenet import HEADER
from testbed.offloaders.bottlenet import train as bottlenet_train
from testbed.offloaders.bottlenet.model import BottleNet

TINY = [
    "--plugin",
    "fashion_cnn",
    "--split",
    "2",
    "--channels",
    "4",
    "--bits",
    "4",
    "--stride",
    "2",
    "--epochs",
    "1",
    "--threads",
    "1",
    "--eval",
    "100",
]
KEY = "bottlenet-s2-c4-b4-x2"

# The committed artefact, measured when it was trained (README of fashion_cnn): accuracy
# on the first 2,000 test images (89.46 % on all 10,000) and mean payload bytes over the
# first 200 requests (52.34 over all 10,000). The bounds allow another CPU's rounding to
# flip a few predictions (10 of 2,000) and codes, not a different network.
COMMITTED_ACCURACY_2000 = 0.9030
COMMITTED_BYTES_200 = 52.26


def tiny(path, *extra):
    assert bottlenet_train.main([*TINY, "--limit", "512", "--out", str(path), *extra]) == 0
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tiny(tmp_path_factory.mktemp("bottlenet") / "tiny.pt")
    plugin = plugins.get("fashion_cnn")
    plugin.artefacts[KEY] = path
    return offloaders.get("bottlenet")(plugin, plugin.load_model()), plugin, path


def test_round_trip_sends_a_few_dozen_bytes(trained):
    offloader, plugin, _ = trained
    data = plugin.test_data()
    for sample in data.inputs[:10]:
        timer = PhaseTimer()
        sent = offloader.device(sample, timer)
        assert sent.prediction is None and len(sent.payload) < 784 / 8  # raw: 784 bytes
        assert sent.choice == {"split": 2, "bits": 4}
        assert 0 <= offloader.edge(sent.payload, timer) < 10
        assert set(timer.ms) == {"device", "encode", "decode", "edge"}
    described = offloader.describe()
    assert (described["split"], described["channels"], described["bits"]) == (2, 4, 4)
    assert described["codes"] == [4, 4, 4]


@torch.inference_mode()
def test_kernel_codes_are_the_networks_codes(trained):
    """The offloader quantizes with the kernels, training and evaluation with torch: the
    codes must be the same, or the accuracy the training reports is not what is sent."""
    offloader, plugin, _ = trained
    inputs = plugin.test_data().inputs[:50]
    net, model = offloader.net, plugin.load_model()
    expected = net.codes(net.encoder(model[:2](plugin.to_tensor(inputs)))).numpy()
    for sample, want in zip(inputs, expected, strict=True):
        codes = offloader.unpack(offloader.device(sample, PhaseTimer()).payload)
        np.testing.assert_array_equal(codes, want.astype(np.uint8))


def test_training_is_reproducible_and_loadable(trained, tmp_path):
    _, _, first = trained
    again = tiny(tmp_path / "again.pt")
    other = tiny(tmp_path / "other.pt", "--seed", "1")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, again, other)]
    assert digest[0] == digest[1]
    assert digest[0] != digest[2]  # the comparison can tell runs apart
    saved = torch.load(again, weights_only=True)
    assert saved["config"]["feature_shape"] == [64, 7, 7] and saved["config"]["limit"] == 512


def _header(bits=4, split=2):
    return HEADER.pack(split, bits)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:5],  # truncated
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # a flipped bit (the blob's CRC)
        lambda b: b[:1] + bytes([b[1] ^ 1]) + b[2:],  # a flipped bit in the header
        lambda b: b"",
        lambda b: b"\0",
        lambda b: _header(split=1) + b[2:],
        lambda b: _header() + entropy.encode(np.zeros((4, 4, 5), np.uint8)),  # wrong shape
        lambda b: _header() + entropy.encode(np.zeros((1, 4, 4, 4), np.uint8)),
        lambda b: _header() + entropy.encode(np.zeros((4, 4, 4), np.uint16)),
        lambda b: _header() + entropy.encode(np.full((4, 4, 4), 16, np.uint8)),  # > 4 bits
    ],
)
def test_bad_payloads_are_value_errors(trained, mangle):
    offloader, plugin, _ = trained
    payload = offloader.device(plugin.test_data().inputs[0], PhaseTimer()).payload
    with pytest.raises(ValueError, match="bottlenet payload"):
        offloader.edge(mangle(payload), PhaseTimer())


def test_missing_artefact_names_the_training_command(tmp_path):
    plugin = plugins.get("fashion_cnn")
    plugin.artefacts["bottlenet-s2-c5-b3-x2"] = tmp_path / "none.pt"
    with pytest.raises(
        PluginError,
        match=r"python -m testbed\.offloaders\.bottlenet\.train --plugin fashion_cnn --split 2 "
        r"--channels 5 --bits 3 --stride 2$",
    ):
        offloaders.get("bottlenet")(plugin, plugin.load_model(), split=-1, channels=5, bits=3)


def test_an_artefact_for_other_settings_is_refused(trained):
    _, _, path = trained
    plugin = plugins.get("fashion_cnn")
    plugin.artefacts["bottlenet-s2-c4-b3-x2"] = path  # trained with 4 bits
    with pytest.raises(PluginError, match=r"4 bits.*not .*3 bits.*--bits 3"):
        offloaders.get("bottlenet")(plugin, plugin.load_model(), bits=3)


def test_bad_split_and_params_are_refused():
    plugin = plugins.get("fashion_cnn")
    with pytest.raises(PluginError, match="split 3 is not a split point"):
        offloaders.get("bottlenet")(plugin, plugin.load_model(), split=3)
    for bad in ({"bits": 9}, {"bits": 0}, {"channels": 0}, {"split": 0}, {"stride": 0}):
        with pytest.raises(ValueError):
            offloaders.validate_params("bottlenet", bad)


def test_feature_shapes_it_takes_and_refuses():
    """CxHxW and CxL features (a temporal CNN such as imu_har's); no flat vectors."""
    from testbed.offloaders.bottlenet.model import check_feature_shape

    for shape, codes in [((64, 25), (3, 13)), ((160, 7, 7), (3, 4, 4)), ((16, 5, 12), (3, 3, 6))]:
        net = BottleNet(shape, 3, 2, stride=2).eval()
        assert net.code_shape == codes
        assert net(torch.rand(2, *shape)).shape == (2, *shape)
    with pytest.raises(PluginError, match="CxHxW or CxL"):
        check_feature_shape(plugins.get("fashion_cnn"), 3, (10,))


@torch.inference_mode()
def test_committed_artefact_accuracy_and_bytes():
    plugin = plugins.get("fashion_cnn")
    offloader = offloaders.get("bottlenet")(plugin, plugin.load_model())  # the defaults
    accuracy, unsplit, count, agrees = bottlenet_train.evaluate(plugin, offloader.net, 2, 2000)
    assert count == 2000 and unsplit == pytest.approx(0.9245, abs=0.002)
    assert accuracy <= agrees + (
        1 - unsplit
    )  # a sample right through it agrees, or the model was wrong
    assert accuracy == pytest.approx(COMMITTED_ACCURACY_2000, abs=0.005)
    sizes = [
        len(offloader.device(x, PhaseTimer()).payload) for x in plugin.test_data().inputs[:200]
    ]
    assert np.mean(sizes) == pytest.approx(COMMITTED_BYTES_200, abs=2)
