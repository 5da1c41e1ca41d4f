"""The `jpeg` and `webp` offloaders on the real plugins: round trips, sizes, the "auto"
quality and its cache, and payloads the edge must refuse."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from testbed import offloaders
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.plugin_api import InputSpec
from testbed.offloaders import image_codec
from testbed.offloaders.base import PhaseTimer

CODECS = ["jpeg", "webp"]
SIGNATURES = {"jpeg": lambda p: p[:2] == b"\xff\xd8", "webp": lambda p: p[8:12] == b"WEBP"}
SAMPLES = 64  # calibration samples: enough to tell qualities apart, cheap on fashion_cnn


def predict(plugin, model, pixels):
    with torch.inference_mode():
        return int(model(plugin.to_tensor(pixels[None])).argmax(dim=1)[0])


def image_bytes(array, format, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_runs_the_model_on_the_decoded_image(fashion, name):
    plugin, model, data = fashion
    offloader = offloaders.get(name)(plugin, model, quality=75)
    agree = 0
    for sample in data.inputs[:20]:
        timer = PhaseTimer()
        sent = offloader.device(sample, timer)
        assert sent.prediction is None and sent.choice == {"quality": 75}
        assert SIGNATURES[name](sent.payload) and len(sent.payload) < 784  # raw's size
        decoded = np.array(Image.open(io.BytesIO(sent.payload)).convert("L"))[None]
        prediction = offloader.edge(sent.payload, timer)
        assert prediction == predict(plugin, model, decoded)
        agree += prediction == predict(plugin, model, sample)
        assert set(timer.ms) == {"encode", "decode", "edge"}
    assert agree >= 18  # quality 75 barely changes what the model sees
    assert offloader.describe() == {"quality": 75, "max_drop_pp": 1.0, "calibration_samples": 200}


@pytest.mark.parametrize("name", CODECS)
def test_lower_quality_gives_fewer_bytes_and_the_same_input_the_same_bytes(fashion, name):
    plugin, model, data = fashion
    mean_bytes = []
    for quality in (10, 50, 90):
        offloader = offloaders.get(name)(plugin, model, quality=quality)
        sizes = [len(offloader.device(x, PhaseTimer()).payload) for x in data.inputs[:50]]
        mean_bytes.append(np.mean(sizes))
    assert mean_bytes[0] < mean_bytes[1] < mean_bytes[2] < 784
    first, second = (offloaders.get(name)(plugin, model, quality=50) for _ in range(2))
    for sample in data.inputs[:10]:
        payload = first.device(sample, PhaseTimer()).payload
        assert second.device(sample.copy(), PhaseTimer()).payload == payload


@pytest.mark.parametrize("name", CODECS)
def test_auto_picks_the_lowest_quality_within_the_bound(fashion, cache, name):
    plugin, model, _ = fashion
    chosen = []
    for bound in (0.0, 2.0, 10.0):
        offloader = offloaders.get(name)(
            plugin, model, max_drop_pp=bound, calibration_samples=SAMPLES
        )
        assert "chosen_quality" not in offloader.describe()  # not calibrated yet
        offloader.calibrate()
        quality, described = offloader.quality, offloader.describe()
        assert quality in image_codec.LADDER and described["chosen_quality"] == quality
        assert described["calibration_drop_pp"] <= bound
        assert 0 < described["calibration_mean_bytes"] < 784
        calibrator = offloader.calibrator()  # the same scores, from the cache
        assert calibrator.score(quality).drop_pp == described["calibration_drop_pp"]
        # a bisection of the ladder: the rung just below the choice is outside the bound
        position = image_codec.LADDER.index(quality)
        if position:
            assert calibrator.score(image_codec.LADDER[position - 1]).drop_pp > bound
        chosen.append(quality)
    assert chosen == sorted(chosen, reverse=True)  # a looser bound never costs more bytes
    assert chosen[0] > chosen[-1]  # the bound matters on this ladder


def test_auto_reads_its_choice_from_the_cache(fashion, cache, monkeypatch):
    plugin, model, data = fashion
    first = offloaders.get("jpeg")(plugin, model, calibration_samples=SAMPLES)
    first.calibrate()
    assert list((cache / "calibration").glob("fashion_cnn-jpeg-*.json"))

    def measure(*args):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(image_codec.ImageCodec, "_run_option", measure)
    again = offloaders.get("jpeg")(plugin, model, calibration_samples=SAMPLES)
    again.prepare("device")  # what the device agent calls
    assert again.describe() == first.describe()
    lazy = offloaders.get("jpeg")(plugin, model, calibration_samples=SAMPLES)
    sent = lazy.device(data.inputs[0], PhaseTimer())  # unprepared: calibrates first
    assert sent.choice == {"quality": first.quality}
    # the scores depend on the calibration set: another size is measured, not reused
    other = offloaders.get("jpeg")(plugin, model, calibration_samples=SAMPLES + 1)
    with pytest.raises(AssertionError, match="measured again"):
        other.calibrate()


def _frames(size, count):
    frames = [Image.new("RGB", size, colour) for colour in ("red", "blue", "green")[:count]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], quality=50)
    return buffer.getvalue()


def _rgba(size):
    pixels = np.full((*size, 4), 255, np.uint8)
    pixels[0, 0, 3] = 0  # one transparent pixel: the WebP keeps its alpha
    return image_bytes(pixels, "WEBP", quality=50)


def _cmyk(size):
    buffer = io.BytesIO()
    Image.new("CMYK", size).save(buffer, format="JPEG")
    return buffer.getvalue()


GRAY = np.zeros((28, 28), np.uint8)
RGB = np.zeros((28, 28, 3), np.uint8)
BAD = {
    "empty": lambda name, good: b"",
    "truncated": lambda name, good: good[: len(good) // 2],
    "garbage": lambda name, good: bytes(range(256)) * 2,
    "png": lambda name, good: image_bytes(GRAY, "PNG"),
    "other codec": lambda name, good: image_bytes(
        RGB if name == "jpeg" else GRAY, "WEBP" if name == "jpeg" else "JPEG"
    ),
    "wrong size": lambda name, good: image_bytes(
        np.zeros((28, 27, 3) if name == "webp" else (28, 27), np.uint8), name.upper()
    ),
    "wrong mode": lambda name, good: (
        image_bytes(RGB, "JPEG") if name == "jpeg" else _rgba((28, 28))
    ),
    "animated or cmyk": lambda name, good: (
        _frames((28, 28), 2) if name == "webp" else _cmyk((28, 28))
    ),
}


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("mangle", BAD.values(), ids=BAD.keys())
def test_bad_payloads_are_value_errors(fashion, name, mangle):
    plugin, model, data = fashion
    offloader = offloaders.get(name)(plugin, model, quality=50)
    good = offloader.device(data.inputs[0], PhaseTimer()).payload
    offloader.edge(good, PhaseTimer())
    with pytest.raises(ValueError, match=f"{name} payload"):
        offloader.edge(mangle(name, good), PhaseTimer())


@pytest.mark.parametrize(("side", "message"), [(4000, "is 4000x4000"), (60_000, "bomb")])
def test_a_payload_claiming_a_huge_image_is_refused_before_decoding(fashion, side, message):
    plugin, model, _ = fashion
    offloader = offloaders.get("jpeg")(plugin, model, quality=50)
    payload = bytearray(image_bytes(GRAY, "JPEG", quality=50))
    sof = payload.index(b"\xff\xc0")  # baseline frame header: height, width at +5, +7
    payload[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    with pytest.raises(ValueError, match=f"jpeg payload .*{message}"):
        offloader.edge(bytes(payload), PhaseTimer())


def test_rgb_photos_round_trip_far_below_raw():
    plugin = plugins.get("mobilenet_v2")
    model, data = plugin.load_model(), plugin.test_data()
    for name in CODECS:
        offloader = offloaders.get(name)(plugin, model, quality=75)
        for sample in data.inputs[:2]:
            payload = offloader.device(sample, PhaseTimer()).payload
            assert len(payload) < 150_528 / 10  # raw's 3x224x224 bytes
            decoded = np.array(Image.open(io.BytesIO(payload)).convert("RGB")).transpose(2, 0, 1)
            assert offloader.edge(payload, PhaseTimer()) == predict(plugin, model, decoded)
            assert np.abs(decoded.astype(int) - sample).mean() < 10
        gray = image_bytes(np.zeros((224, 224), np.uint8), "JPEG")
        with pytest.raises(ValueError, match=f"{name} payload"):
            offloader.edge(gray if name == "jpeg" else _rgba((224, 224)), PhaseTimer())


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("plugin_name", ["imu_har", "speech_kws"])
def test_non_image_plugins_are_refused(name, plugin_name):
    with pytest.raises(PluginError, match=f"{name} needs an image"):
        offloaders.get(name)(plugins.get(plugin_name), None)


def test_two_channel_images_are_refused(fashion):
    plugin = dataclasses.replace(
        fashion[0], input_spec=InputSpec(shape=(2, 28, 28), dtype="uint8", low=0, high=255)
    )
    with pytest.raises(PluginError, match="needs an image"):
        offloaders.get("jpeg")(plugin, None)


@pytest.mark.parametrize("name", CODECS)
def test_params_are_validated(fashion, name):
    defaults = {"quality": "auto", "max_drop_pp": 1.0, "calibration_samples": 200}
    assert offloaders.validate_params(name, {}) == defaults
    for quality in (1, 100):
        assert offloaders.validate_params(name, {"quality": quality})["quality"] == quality
    assert offloaders.validate_params(name, {"max_drop_pp": 0})["max_drop_pp"] == 0.0
    bad = [
        ("quality", 0),
        ("quality", 101),
        ("quality", 75.0),
        ("quality", "75"),
        ("quality", "high"),
        ("quality", True),
        ("quality", None),
        ("max_drop_pp", -0.1),
        ("max_drop_pp", float("nan")),
        ("max_drop_pp", float("inf")),
        ("max_drop_pp", "1"),
        ("calibration_samples", 0),
        ("calibration_samples", 10.0),
        ("colour", 1),
    ]
    for key, value in bad:
        with pytest.raises(ValueError) as info:
            offloaders.validate_params(name, {key: value})
        assert info.value.param == key, (key, value)
    with pytest.raises(ValueError):  # direct construction checks them too
        offloaders.get(name)(fashion[0], fashion[1], quality=0)
