"""`feature_png` and `feature_jpeg` (Ko et al. 2018): tiling, the exact PNG path, sizes and
agreement on the real plugins, per-request choices, calibration, hostile payloads."""

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from testbed import offloaders
from testbed.errors import PluginError
from testbed.offloaders import feature_codec
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.feature_codec import dequantize, grid, planes_shape, quantize, tile, untile
from testbed.offloaders.link_estimate import LinkEstimate
from tests.helpers import loaded

CODECS = ["feature_png", "feature_jpeg"]
HEADER = struct.Struct("<BBBHHH")  # the documented layout: split, bits, format, C, H, W


@pytest.fixture(scope="module")
def mobilenet():
    return loaded("mobilenet_v2")


pytestmark = pytest.mark.usefixtures("cache")  # conftest.py: a cache of its own


def make(name, plugin, model, **params):
    return offloaders.get(name)(plugin, model, **offloaders.validate_params(name, params))


def link_at(mbps, rtt_ms=40.0):
    link = LinkEstimate()
    link.observe_rtt(rtt_ms)
    link.observe_upload(100_000, 100_000 * 8 / (mbps * 1000) + rtt_ms / 2)
    return link


def head(plugin, model, inputs, split):
    with torch.inference_mode():
        return model[:split](plugin.to_tensor(inputs)).numpy()


def tail(model, values, split):
    with torch.inference_mode():
        return model[split:](torch.from_numpy(np.ascontiguousarray(values))).argmax(1).numpy()


# ----------------------------------------------------------------------------- tiling


@settings(max_examples=150, deadline=None)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 300), st.integers(1, 20), st.integers(1, 20)),
        st.tuples(st.integers(1, 100), st.integers(1, 300)),
        st.tuples(st.integers(1, 2000)),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_tiling_round_trips_on_a_near_square_grid(shape, seed):
    channels, height, width = planes = planes_shape(shape)
    assert channels * height * width == int(np.prod(shape))
    values = np.random.default_rng(seed).integers(1, 256, planes, dtype=np.uint8)
    image = tile(values)
    rows, cols = grid(*planes)
    assert image.shape == (rows * height, cols * width)
    assert rows * cols >= channels > (rows - 1) * cols  # no empty row of tiles
    assert np.array_equal(untile(image, *planes), values)
    assert int((image == 0).sum()) == (rows * cols - channels) * height * width  # black padding
    # channel c at (c // cols, c % cols)
    c = channels - 1
    r, k = divmod(c, cols)
    assert np.array_equal(
        image[r * height : (r + 1) * height, k * width : (k + 1) * width], values[c]
    )
    if height == width:  # square tiles: a square grid, or one more column than rows
        assert 0 <= cols - rows <= 1


@settings(max_examples=100, deadline=None)
@given(
    channels=st.integers(1, 8),
    bits=st.integers(1, 8),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantization_is_per_channel_and_within_half_a_step(channels, bits, scale, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(channels, 5, 6)) * scale * rng.uniform(0, 1, (channels, 1, 1))
    values = values.astype(np.float32)
    values[0] = 1.5  # a constant channel
    codes, lo, hi = quantize(values, bits)
    assert codes.dtype == np.uint8 and codes.max() < 1 << bits
    assert np.array_equal(lo, values.min(axis=(1, 2))) and np.array_equal(
        hi, values.max(axis=(1, 2))
    )
    restored = dequantize(codes, lo, hi, bits)
    step = (hi - lo) / ((1 << bits) - 1)
    error = np.abs(restored - values).max(axis=(1, 2))
    assert (error <= step / 2 + 1e-6 * np.maximum(np.abs(hi), np.abs(lo)) + 1e-7).all()
    assert np.all(restored[0] == 1.5)


# ------------------------------------------------------------------ the real plugins


@pytest.mark.parametrize("bits", [8, 3])
def test_png_is_lossless_after_quantization(fashion, mobilenet, bits):
    for plugin, model, data, samples, splits in (
        (*fashion, 3, [0, 1, 2]),
        (*mobilenet, 1, [0, 3, 6]),
    ):
        offloader = make("feature_png", plugin, model, bits=bits)
        for split in splits:
            for values in head(plugin, model, data.inputs[:samples], split):
                payload = offloader.encode(split, values, None)
                codes, lo, hi = quantize(values.reshape(offloader.planes[split]), bits)
                got_split, restored = offloader.decode(payload)
                assert got_split == split and restored.shape == values.shape
                assert np.array_equal(
                    restored, dequantize(codes, lo, hi, bits).reshape(values.shape)
                )
                assert payload[:3] == bytes([split, bits, 1])
                assert Image.open(io.BytesIO(payload[HEADER.size + 8 * len(lo) :])).format == "PNG"


def test_jpeg_at_quality_50_is_smaller_than_png(fashion, mobilenet):
    for plugin, model, data, samples in ((*fashion, 20), (*mobilenet, 2)):
        png = make("feature_png", plugin, model)
        jpeg = make("feature_jpeg", plugin, model, quality=50)
        for split in png.planes:
            features = head(plugin, model, data.inputs[:samples], split)
            png_bytes = np.mean([len(png.encode(split, f, None)) for f in features])
            jpeg_bytes = np.mean([len(jpeg.encode(split, f, 50)) for f in features])
            assert jpeg_bytes < png_bytes < features[0].nbytes, (plugin.name, split)


def test_both_agree_with_the_unsplit_model(fashion, mobilenet):
    """Measured on fashion_cnn's first 200 test images: 8-bit PNG agrees on all at every
    split, JPEG at quality 75 on 98-99%; on mobilenet_v2's first 16 photos, PNG on all,
    JPEG 75 on 81-100% by split. The bounds leave room for a few samples more."""
    for (plugin, model, data), count, jpeg_floor in ((fashion, 100, 0.95), (mobilenet, 3, 0.6)):
        inputs = data.inputs[:count]
        with torch.inference_mode():
            reference = model(plugin.to_tensor(inputs)).argmax(1).numpy()
        png = make("feature_png", plugin, model)
        jpeg = make("feature_jpeg", plugin, model, quality=75)
        splits = list(png.planes) if plugin.name == "fashion_cnn" else [0, 2, 4, 6]
        jpeg_agree = []
        for split in splits:
            features = head(plugin, model, inputs, split)
            restored = np.stack([png.decode(png.encode(split, f, None))[1] for f in features])
            assert np.mean(tail(model, restored, split) == reference) >= 0.98, split
            restored = np.stack([jpeg.decode(jpeg.encode(split, f, 75))[1] for f in features])
            jpeg_agree.append(np.mean(tail(model, restored, split) == reference))
        assert min(jpeg_agree) >= jpeg_floor, jpeg_agree


def forced(name, plugin, model, split, **params):
    """A device half and an edge half whose profiles make `split` the fastest."""
    device, edge = make(name, plugin, model, **params), make(name, plugin, model, **params)
    device.prepare("device")
    edge.prepare("edge")
    stages = len(model)
    device.device_ms = [0.0 if i < split else 1000.0 for i in range(stages)]
    device.connect(
        {"edge_stage_ms": [1000.0 if i < split else 0.0 for i in range(stages)]}, link_at(100.0)
    )
    return device, edge


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_halves_record_their_choice_and_predict_as_the_model(fashion, name, split):
    plugin, model, data = fashion
    params = {"quality": 75} if name == "feature_jpeg" else {}
    device, edge = forced(
        name, plugin, model, split, max_drop_pp=100.0, calibration_samples=10, **params
    )
    inputs = data.inputs[:20]
    with torch.inference_mode():
        expected = model(plugin.to_tensor(inputs)).argmax(1).tolist()
    got = []
    for sample in inputs:
        timer = PhaseTimer()
        result = device.device(sample, timer)
        choice = json.loads(json.dumps(result.choice))  # what requests.csv holds
        assert choice["split"] == split and choice["est_mbps"] == pytest.approx(100.0)
        if split == len(model):
            assert result.payload is None and "bits" not in choice
            got.append(result.prediction)
            continue
        assert choice["bits"] == 8 and result.payload[0] == split
        assert choice.get("quality") == params.get("quality")
        got.append(edge.edge(result.payload, timer))
        assert {"encode", "decode", "edge"} <= set(timer.ms)
    agree = np.mean(np.array(got) == expected)
    assert agree == 1.0 if name == "feature_png" or split == len(model) else agree >= 0.9


def test_the_choice_follows_the_bandwidth(fashion):
    plugin, model, _ = fashion
    device = make(
        "feature_jpeg", plugin, model, calibration_samples=10, quality=50, max_drop_pp=100.0
    )
    device.prepare("device")
    assert set(device.encode_ms) == {0, 1, 2} and all(ms > 0 for ms in device.encode_ms.values())
    device.device_ms = [100.0, 100.0, 100.0]  # a device 100x slower than the edge
    device.connect({"edge_stage_ms": [1.0, 1.0, 1.0]}, link_at(100.0))
    best, choice = device.choose()
    assert best.split == 0 and choice["bits"] == 8
    # Neurosurgeon's prediction plus the device's measured encoding time
    option = next(o for o in device.describe()["options"] if o["split"] == 0)
    assert choice["predicted_ms"] == pytest.approx(
        option["mean_bytes"] * 8 / 100e3 + 20 + 3 + device.encode_ms[0], abs=0.01
    )
    device.connect({"edge_stage_ms": [1.0, 1.0, 1.0]}, link_at(0.01))
    assert device.choose()[0].split == len(model)


def test_auto_quality_stays_within_the_bound_on_the_calibration_set(fashion, monkeypatch):
    plugin, model, _ = fashion
    chosen = {}
    for bound in (0.0, 2.0):
        device = make("feature_jpeg", plugin, model, max_drop_pp=bound, calibration_samples=64)
        device.calibrate()
        options = device.describe()["options"]
        assert [o["split"] for o in options] == [0, *plugin.split_points]
        calibrator = device.calibrator()  # the same scores, from the cache
        for option in options:
            quality = option["quality"]
            assert quality in feature_codec.LADDER
            assert option["within_bound"] == (option["drop_pp"] <= bound)
            score = calibrator.score([option["split"], 8, quality])
            assert score.drop_pp == option["drop_pp"]
            if option["within_bound"] and quality > feature_codec.LADDER[0]:
                # a bisection: the rung just below the choice is outside the bound
                assert calibrator.score([option["split"], 8, quality - 5]).drop_pp > bound
        chosen[bound] = [o["quality"] for o in options]
    assert all(t >= loose for t, loose in zip(chosen[0.0], chosen[2.0], strict=True))
    assert chosen[0.0] != chosen[2.0]  # the bound matters
    # a second device half reads the cache: no measurement
    monkeypatch.setattr(feature_codec.FeatureCodec, "_run_option", pytest.fail)
    again = make("feature_jpeg", plugin, model, max_drop_pp=2.0, calibration_samples=64)
    again.calibrate()
    assert [o["quality"] for o in again.options] == chosen[2.0]


# ------------------------------------------------------------------ hostile payloads


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def _bomb(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming another size, its CRC recomputed: a valid header."""
    at = png.index(b"IHDR")
    chunk = bytearray(png[at : at + 17])
    chunk[4:12] = struct.pack(">II", width, height)
    return png[:at] + bytes(chunk) + struct.pack(">I", zlib.crc32(bytes(chunk))) + png[at + 21 :]


def _parts(payload):
    split, bits, fmt, c, h, w = HEADER.unpack_from(payload)
    side = HEADER.size + 8 * c
    return (split, bits, fmt, c, h, w), payload[HEADER.size : side], payload[side:]


def _with(payload, image=None, side=None, **fields):
    values, old_side, old_image = _parts(payload)
    names = ("split", "bits", "fmt", "c", "h", "w")
    header = dict(zip(names, values, strict=True)) | fields
    return (
        HEADER.pack(*header.values())
        + (old_side if side is None else side)
        + (old_image if image is None else image)
    )


NAN = struct.pack("<f", float("nan"))
BAD = {
    "empty": lambda p: b"",
    "header only": lambda p: p[: HEADER.size],
    "truncated side info": lambda p: p[: HEADER.size + 100],
    "truncated image": lambda p: p[: len(p) // 2 + 300],
    "split 9": lambda p: _with(p, split=9),
    "split 3 (local)": lambda p: _with(p, split=3),
    "split 2 with split 1's features": lambda p: _with(p, split=2),
    "wrong shape": lambda p: _with(p, c=31, side=_parts(p)[1][:-8]),
    "wrong bits": lambda p: _with(p, bits=4),
    "other format id": lambda p: _with(p, fmt=2),
    "nan range": lambda p: _with(p, side=NAN + _parts(p)[1][4:]),
    "inverted range": lambda p: _with(p, side=_parts(p)[1][128:] + _parts(p)[1][:128]),
    "png bomb": lambda p: _with(p, image=_bomb(_parts(p)[2], 60_000, 60_000)),
    "png bomb under Pillow's limit": lambda p: _with(p, image=_bomb(_parts(p)[2], 10_000, 10_000)),
    "png of the wrong size": lambda p: _with(p, image=_bomb(_parts(p)[2], 84, 70)),
    "jpeg instead of png": lambda p: _with(p, image=_jpeg(np.zeros((84, 84), np.uint8))),
    "rgb png": lambda p: _with(p, image=_png(np.zeros((84, 84, 3), np.uint8))),
    "16-bit png": lambda p: _with(p, image=_png(np.zeros((84, 84), np.uint16))),
    "garbage image": lambda p: _with(p, image=bytes(range(256)) * 4),
    "huge image part": lambda p: _with(p, image=b"\0" * 100_000),
}


@pytest.mark.parametrize("mangle", BAD.values(), ids=BAD.keys())
def test_bad_payloads_are_value_errors_found_quickly(fashion, mangle):
    plugin, model, data = fashion
    offloader = make("feature_png", plugin, model)
    good = offloader.encode(1, head(plugin, model, data.inputs[:1], 1)[0], None)
    assert _parts(good)[0] == (1, 8, 1, 32, 14, 14) and grid(32, 14, 14) == (6, 6)
    offloader.edge(good, PhaseTimer())
    bad = mangle(good)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="feature_png payload"):
        offloader.edge(bad, PhaseTimer())
    assert time.perf_counter() - start < 0.5


def test_jpeg_refuses_a_png_and_a_huge_jpeg(fashion):
    plugin, model, data = fashion
    offloader = make("feature_jpeg", plugin, model, quality=50)
    good = offloader.encode(2, head(plugin, model, data.inputs[:1], 2)[0], 50)
    assert _parts(good)[0] == (2, 8, 2, 64, 7, 7)
    offloader.edge(good, PhaseTimer())
    image = bytearray(_parts(good)[2])
    sof = image.index(b"\xff\xc0")  # baseline frame header: height, width at +5, +7
    image[sof + 5 : sof + 9] = (60_000).to_bytes(2, "big") * 2
    for bad in (
        _with(good, image=_png(np.zeros((56, 56), np.uint8))),
        _with(good, fmt=1),
        _with(good, image=bytes(image)),
    ):
        with pytest.raises(ValueError, match="feature_jpeg payload"):
            offloader.edge(bad, PhaseTimer())


@pytest.mark.parametrize("name", CODECS)
def test_params_have_defaults_and_are_validated(fashion, name):
    defaults = {
        "prior_mbps": 1.0,
        "bits": 8,
        "max_drop_pp": 1.0,
        "calibration_samples": 200,
        "split": "auto",
    }
    if name == "feature_jpeg":
        defaults["quality"] = "auto"
    assert offloaders.validate_params(name, {}) == defaults
    bad = [
        ("bits", 0),
        ("bits", 9),
        ("bits", 8.0),
        ("max_drop_pp", -1),
        ("prior_mbps", 0),
        ("calibration_samples", 5),
        ("split", -1),
        ("split", "2"),
        ("split", True),
        ("colour", 1),
    ]
    if name == "feature_jpeg":
        bad += [("quality", 0), ("quality", 101), ("quality", "75"), ("quality", True)]
    else:
        bad += [("quality", 50)]  # PNG has no quality
    for key, value in bad:
        with pytest.raises(ValueError) as info:
            offloaders.validate_params(name, {key: value})
        assert info.value.param == key, (key, value)
    with pytest.raises(ValueError):  # direct construction checks them too
        offloaders.get(name)(*fashion[:2], bits=0)
    with pytest.raises(PluginError, match="split 3 is not one it can use"):  # 3: local
        offloaders.get(name)(*fashion[:2], split=3)


def test_a_pinned_split_runs_every_request_there(fashion):
    plugin, model, data = fashion
    device = make("feature_jpeg", plugin, model, split=2, calibration_samples=10)
    edge = make("feature_jpeg", plugin, model, split=2, calibration_samples=10)
    device.prepare("device")
    assert [o["split"] for o in device.describe()["options"]] == [2]
    device.device_ms = [100.0, 100.0, 100.0]  # split 0 would be the fastest
    device.connect({"edge_stage_ms": [1.0, 1.0, 1.0]}, link_at(100.0))
    result = device.device(data.inputs[0], PhaseTimer())
    option = device.describe()["options"][0]
    assert result.choice["split"] == 2 and result.choice["quality"] == option["quality"]
    edge.edge(result.payload, PhaseTimer())
    other = make("feature_jpeg", plugin, model, split=1, quality=50)
    payload = other.encode(1, head(plugin, model, data.inputs[:1], 1)[0], 50)
    with pytest.raises(ValueError, match="at split 1; this offloader uses \\[2\\]"):
        edge.edge(payload, PhaseTimer())
