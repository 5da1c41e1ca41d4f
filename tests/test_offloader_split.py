"""The split family: payload formats, Neurosurgeon's and JALAD's choices, calibration."""

import json

import numpy as np
import pytest
import torch

from testbed import offloaders
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.calibration import Calibrator, Score
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.offloaders.split import (
    feature_shape,
    pack_coded,
    pack_features,
    run_head,
    unpack_coded,
    unpack_features,
)

pytestmark = pytest.mark.usefixtures("cache")  # conftest.py: a cache of its own


def link_at(mbps, rtt_ms=40.0):
    link = LinkEstimate()
    link.observe_rtt(rtt_ms)
    link.observe_upload(100_000, 100_000 * 8 / (mbps * 1000) + rtt_ms / 2)
    return link


def test_float_features_round_trip_exactly(fashion):
    plugin, model, data = fashion
    for split in plugin.split_points:
        features = run_head(plugin, model, data.inputs[0], split)
        assert features.shape == feature_shape(plugin, split)
        got_split, got = unpack_features(plugin, pack_features(split, features), {split})
        assert got_split == split and np.array_equal(got, features)
    split, scaled = unpack_features(plugin, pack_features(0, data.inputs[0]), {0})
    assert split == 0 and np.allclose(scaled, data.inputs[0] / 255.0)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "shorter than its header"),
        (bytes([9]) + b"\0" * 64, "at split 9"),
        (bytes([1]) + b"\0" * 64, "expected 25088"),
    ],
)
def test_bad_float_payloads(fashion, payload, message):
    plugin = fashion[0]
    with pytest.raises(ValueError, match=message):
        unpack_features(plugin, payload, {0, 1, 2})


def test_coded_features_round_trip_within_half_a_step(fashion):
    plugin, model, data = fashion
    features = run_head(plugin, model, data.inputs[1], 1)
    for bits in (2, 4, 8):
        split, got_bits, restored = unpack_coded(plugin, pack_coded(1, bits, features), {1})
        step = (features.max() - features.min()) / (2**bits - 1)
        assert (split, got_bits) == (1, bits)
        assert np.abs(restored - features).max() <= step / 2 + 1e-5
    assert len(pack_coded(1, 2, features)) < len(pack_coded(1, 8, features)) < features.nbytes


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda p: p[:5], "shorter than its header"),
        (lambda p: bytes([2]) + p[1:], "expected"),  # split 2's shape differs from split 1's
        (lambda p: p[:1] + bytes([9]) + p[2:], "bits 9"),
        (lambda p: p[:2] + b"\xff\xff\xff\x7f" + p[6:], "scale"),  # NaN scale
        (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "coded payload"),  # CRC
        (lambda p: p[:1] + bytes([1]) + p[2:], "above 1 bits"),
        (lambda p: bytes([7]) + p[1:], "at split 7"),
    ],
)
def test_bad_coded_payloads(fashion, mangle, message):
    plugin, model, data = fashion
    payload = pack_coded(1, 4, run_head(plugin, model, data.inputs[2], 1))
    with pytest.raises(ValueError, match=message):
        unpack_coded(plugin, mangle(payload), {1, 2})


def make(name, plugin, model, **params):
    return offloaders.get(name)(plugin, model, **offloaders.validate_params(name, params))


def halves(name, plugin, model, **params):
    device, edge = make(name, plugin, model, **params), make(name, plugin, model, **params)
    device.prepare("device")
    edge.prepare("edge")
    return device, edge


def test_neurosurgeon_follows_the_bandwidth(fashion):
    plugin, model, _ = fashion
    device, edge = halves("neurosurgeon", plugin, model)
    assert len(edge.describe()["edge_stage_ms"]) == len(model)
    # a device 100x slower than the edge: fast links offload the input, slow ones nothing
    device.device_ms = [100.0, 100.0, 100.0]
    device.connect({"edge_stage_ms": [1.0, 1.0, 1.0]}, link_at(100.0))
    assert device.choose()[0].split == 0
    device.connect({"edge_stage_ms": [1.0, 1.0, 1.0]}, link_at(0.01))
    assert device.choose()[0].split == len(model)
    # the prediction: device stages, upload at the estimate plus the one-way delay, edge
    device.connect({"edge_stage_ms": [1.0, 2.0, 3.0]}, link_at(100.0))
    best, choice = device.choose()
    assert best.split == 0 and choice["est_mbps"] == pytest.approx(100.0)
    assert choice["predicted_ms"] == pytest.approx((16 + 1 + 784) * 8 / 100e3 + 20 + 6, abs=0.01)


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_neurosurgeon_predicts_as_the_unsplit_model_at_every_split(fashion, split):
    plugin, model, data = fashion
    device, edge = halves("neurosurgeon", plugin, model)
    device.device_ms = [0.0 if i < split else 1000.0 for i in range(len(model))]
    device.connect(
        {"edge_stage_ms": [1000.0 if i < split else 0.0 for i in range(len(model))]}, link_at(1e6)
    )
    assert device.choose()[0].split == split
    with torch.inference_mode():
        expected = model(plugin.to_tensor(data.inputs[:20])).argmax(1).tolist()
    got = []
    for sample in data.inputs[:20]:
        timer = PhaseTimer()
        result = device.device(sample, timer)
        assert json.loads(json.dumps(result.choice))["split"] == split
        got.append(
            result.prediction if result.payload is None else edge.edge(result.payload, timer)
        )
    assert got == expected


def test_jalad_keeps_its_bound_and_calibrates_once(fashion, monkeypatch):
    plugin, model, data = fashion
    device, edge = halves("jalad", plugin, model, max_drop_pp=1.0, calibration_samples=100)
    options = device.describe()["options"]
    assert [o["split"] for o in options] == list(plugin.split_points)
    assert all(o["drop_pp"] <= 1.0 and 1 <= o["bits"] <= 8 for o in options)
    # a tighter bound never takes fewer bits
    strict, _ = halves("jalad", plugin, model, max_drop_pp=0.0, calibration_samples=100)
    for loose, tight in zip(options, strict.describe()["options"], strict=True):
        assert tight["bits"] >= loose["bits"]
    # a second device half reads the cache: no model call
    calls = []
    monkeypatch.setattr(type(device), "_run", lambda self, *a: calls.append(a))
    again = make("jalad", plugin, model, max_drop_pp=1.0, calibration_samples=100)
    again.calibrate()
    assert calls == [] and again.options == options
    device.connect(edge.describe(), link_at(1.0))
    agree = 0
    with torch.inference_mode():
        expected = model(plugin.to_tensor(data.inputs[:50])).argmax(1).tolist()
    for sample, want in zip(data.inputs[:50], expected, strict=True):
        timer = PhaseTimer()
        result = device.device(sample, timer)
        assert result.choice["bits"] == next(
            o["bits"] for o in options if o["split"] == result.choice["split"]
        )
        agree += edge.edge(result.payload, timer) == want
        assert {"device", "encode", "decode", "edge"} <= set(timer.ms)
    assert agree >= 47


def test_calibrator_scores_drops_against_the_unsplit_model(fashion):
    plugin, model, _ = fashion

    def run(option, inputs):
        logits = model(plugin.to_tensor(inputs))
        if option == "constant":
            logits = torch.zeros_like(logits)
            logits[:, 0] = 1
        return logits, [7] * len(inputs)

    calibrator = Calibrator(plugin, model, "test", run, count=200)
    same = calibrator.score("same")
    assert same.drop_pp == 0 and same.mean_bytes == 7
    # always predicting class 0 is right on about a tenth of Fashion-MNIST
    assert 70 < calibrator.score("constant").drop_pp < 90
    assert calibrator.lowest(["constant", "same"], 1.0)[0] == "same"
    assert calibrator.lowest(["constant"], 1.0)[0] == "constant"  # none within: the last
    saved = json.loads(calibrator.path.read_text())
    assert set(saved["scores"]) == {'"same"', '"constant"'}


def test_lowest_bisects_the_options(fashion):
    plugin, model, _ = fashion
    drops = dict(
        zip(range(5, 101, 5), [40, 30, 20, 9, 5, 3, 2, 1.5, 1.0, 0.5] + [0] * 10, strict=True)
    )
    asked = []

    class Fake(Calibrator):
        def score(self, option):
            asked.append(option)
            return Score(drops[option], 0.0)

    fake = Fake(plugin, model, "fake", run=None, count=10)
    assert fake.lowest(list(drops), 1.0)[0] == 45
    assert len(asked) <= 6  # 1 + log2(20), not 20
    assert fake.lowest(list(drops), 0.0)[0] == 55
    assert fake.lowest(list(drops), 100.0)[0] == 5
    drops[100] = 2.0  # nothing within 1 point: the last option, the highest fidelity
    assert fake.lowest(list(drops), 1.0) == (100, Score(2.0, 0.0))
