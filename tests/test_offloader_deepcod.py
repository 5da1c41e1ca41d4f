"""The `deepcod` offloader's halves, with networks trained briefly in the test."""

import numpy as np
import pytest

from testbed import offloaders
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.deepcod import train as deepcod_train


@pytest.fixture(scope="module")
def deepcod(tmp_path_factory):
    path = tmp_path_factory.mktemp("deepcod") / "deepcod.pt"
    assert (
        deepcod_train.main(
            [
                "--plugin",
                "fashion_cnn",
                "--epochs",
                "1",
                "--limit",
                "512",
                "--width",
                "16",
                "--threads",
                "1",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    plugin = plugins.get("fashion_cnn")
    plugin.artefacts["deepcod-r0.1"] = path
    return offloaders.get("deepcod")(plugin, plugin.load_model(), ratio=0.1), plugin


def test_round_trip_sends_a_few_dozen_bytes(deepcod):
    offloader, plugin = deepcod
    data = plugin.test_data()
    for sample in data.inputs[:10]:
        timer = PhaseTimer()
        sent = offloader.device(sample, timer)
        assert sent.prediction is None and len(sent.payload) < 784 / 10  # >10x below raw
        prediction = offloader.edge(sent.payload, timer)
        assert 0 <= prediction < 10
        assert set(timer.ms) == {"encode", "decode", "edge"}
    assert offloader.describe()["measurements"] == [1, 7, 7]


@pytest.mark.parametrize(
    "mangle",
    [lambda b: b[:5], lambda b: b[:-1] + bytes([b[-1] ^ 1]), lambda b: b"\0" * 40, lambda b: b""],
)
def test_bad_payloads_are_value_errors(deepcod, mangle):
    offloader, plugin = deepcod
    payload = offloader.device(plugin.test_data().inputs[0], PhaseTimer()).payload
    with pytest.raises(ValueError, match="deepcod payload"):
        offloader.edge(mangle(payload), PhaseTimer())


def test_wrong_shape_is_refused(deepcod):
    from kernels import entropy

    offloader, _ = deepcod
    with pytest.raises(ValueError, match="expected"):
        offloader.edge(entropy.encode(np.zeros((1, 1, 8, 8), np.uint8)), PhaseTimer())


def test_missing_networks_name_the_training_command(tmp_path):
    plugin = plugins.get("fashion_cnn")
    plugin.artefacts["deepcod-r0.5"] = tmp_path / "none.pt"
    with pytest.raises(
        PluginError,
        match=r"python -m testbed\.offloaders\.deepcod\.train --plugin fashion_cnn --ratio 0\.5",
    ):
        offloaders.get("deepcod")(plugin, plugin.load_model(), ratio=0.5)
