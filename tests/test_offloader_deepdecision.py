"""The `deepdecision` offloader: its decision rule on constructed profiles and link
estimates, its payloads (round trips, and what the edge must refuse, quickly), its
calibration's accuracy bound on real data, and, through the real agents on a Mininet
link replaying a bandwidth step, its choices following the link."""

from __future__ import annotations

import io
import itertools
import json
import statistics
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image

from testbed import offloaders
from testbed.errors import PluginError
from testbed.models import plugins
from testbed.models.plugin_api import Dataset, InputSpec, Plugin
from testbed.offloaders import deepdecision
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.link_estimate import LinkEstimate
from tests.mininet_utils import ROOT, needs_mininet
from tests.test_e2e_mininet import read_csv, run_cli

RTT_MS = 40.0


class ColourPlugin(Plugin):
    """A small RGB plugin with a non-square input: width and height must not be swapped."""

    def build_stages(self):
        torch.manual_seed(0)
        return [
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()),
            torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 5)
            ),
        ]

    def load_model(self):
        model = torch.nn.Sequential(*self.build_stages())
        return model.eval()

    def test_data(self):
        """Smooth colour images (noise would be ruined by JPEG's chroma subsampling)."""
        rng = np.random.default_rng(1)
        y, x = np.mgrid[0:32, 0:40]
        phases = rng.uniform(0, 6, (8, 3, 1, 1))
        inputs = 128 + 100 * np.sin(x / 7 + phases) * np.cos(y / 9 + 2 * phases)
        return Dataset(inputs.astype(np.uint8), np.zeros(8, dtype=np.int64))

    train_data = test_data


def colour_plugin(shape=(3, 32, 40), dtype="uint8") -> ColourPlugin:
    return ColourPlugin(
        name="colour_test",
        description="test",
        num_classes=5,
        input_spec=InputSpec(shape=shape, dtype=dtype, low=0, high=255),
        split_points=(1,),
    )


def link_at(mbps: float) -> LinkEstimate:
    """An estimate that has seen RTT_MS and one 100 KB upload at `mbps`."""
    link = LinkEstimate()
    link.observe_rtt(RTT_MS)
    nbytes = 100_000
    link.observe_upload(nbytes, nbytes * 8 / (mbps * 1000) + RTT_MS / 2)
    assert link.uplink_mbps == pytest.approx(mbps)
    return link


def option(scale, quality, mean_bytes, drop_pp=0.5, within=True):
    return {
        "scale": scale,
        "quality": quality,
        "drop_pp": drop_pp,
        "mean_bytes": mean_bytes,
        "within_bound": within,
    }


def constructed(fashion, options, device_model_ms, encode_ms, mbps, **params):
    """An offloader with these calibrated options and profiles, on a link at `mbps`."""
    plugin, model, _ = fashion
    offloader = offloaders.get("deepdecision")(plugin, model, **params)
    offloader.options = options
    offloader.device_model_ms = device_model_ms
    offloader.encode_ms = encode_ms
    offloader.connect(
        {"edge_model_ms": 5.0, "edge_decode_ms": {"1.0": 1.0, "0.5": 0.5}}, link_at(mbps)
    )
    return offloader


# ------------------------------------------------------------------------ decision rule

# full size costs no resize on the device but 4x the bytes of half size
TRADE = [option(1.0, 90, 20_000), option(0.5, 90, 5_000)]
TRADE_ENCODE = {1.0: 5.0, 0.5: 40.0}


def test_the_bigger_image_wins_on_a_fast_link_and_the_cheaper_one_on_a_slow_link(fashion):
    fast = constructed(fashion, TRADE, 1000.0, TRADE_ENCODE, mbps=50)
    best, choice = fast.choose()
    assert (best["scale"], choice["quality"]) == (1.0, 90)
    # 5 encode + 3.2 upload + 20 one way + 1 decode + 5 model + 20 reply
    assert choice["predicted_ms"] == pytest.approx(5 + 3.2 + 20 + 1 + 5 + 20, abs=0.01)
    assert choice["est_mbps"] == pytest.approx(50)
    slow = constructed(fashion, TRADE, 1000.0, TRADE_ENCODE, mbps=1)
    best, choice = slow.choose()
    assert choice["scale"] == 0.5 and choice["predicted_ms"] == pytest.approx(40 + 40 + 45.5)
    assert "mode" not in choice and "probe" not in choice


def test_local_wins_when_the_link_is_very_slow_and_loses_when_it_is_fast(fashion):
    slow = constructed(fashion, TRADE, 300.0, TRADE_ENCODE, mbps=0.05)
    best, choice = slow.choose()
    assert best["mode"] == "local"
    assert choice == {"mode": "local", "predicted_ms": 300.0, "est_mbps": 0.05}
    fast = constructed(fashion, TRADE, 300.0, TRADE_ENCODE, mbps=10)
    assert "scale" in fast.choose()[1]


def test_the_accuracy_bound_excludes_candidates(fashion):
    # the small image is fastest at any rate, but is outside the bound
    options = [option(1.0, 90, 20_000), option(0.5, 50, 1_000, drop_pp=9.0, within=False)]
    offloader = constructed(fashion, options, 1000.0, {1.0: 5.0, 0.5: 1.0}, mbps=1)
    assert [c.get("scale") for c in offloader.candidates()] == [None, 1.0]
    assert offloader.choose()[1]["scale"] == 1.0
    # nothing within the bound: local, whatever the link
    offloader.options = [dict(o, within_bound=False) for o in options]
    offloader.link = link_at(100)
    assert offloader.choose()[1]["mode"] == "local"


def test_the_prior_serves_until_an_upload_is_measured(fashion):
    offloader = constructed(fashion, TRADE, 200.0, TRADE_ENCODE, mbps=1, prior_mbps=50.0)
    offloader.link = LinkEstimate()
    best, choice = offloader.choose()
    assert best["scale"] == 1.0 and choice["est_mbps"] is None  # 50 Mbit/s assumed
    offloader = constructed(fashion, TRADE, 200.0, TRADE_ENCODE, mbps=1, prior_mbps=0.1)
    offloader.link = LinkEstimate()
    assert offloader.choose()[0]["mode"] == "local"


def upload_at(link: LinkEstimate, mbps: float, nbytes: int = 100_000) -> None:
    link.observe_upload(nbytes, nbytes * 8 / (mbps * 1000) + RTT_MS / 2)


def kind(choice: dict) -> str:
    return "probe" if choice.get("probe") else choice.get("mode", "offload")


def test_probes_refresh_the_estimate_after_a_run_of_local_requests(fashion):
    offloader = constructed(fashion, TRADE, 150.0, TRADE_ENCODE, mbps=0.05, probe_every=3)
    choices = [offloader.choose()[1] for _ in range(8)]
    # the link did not change: a probe that leaves the estimate alone is not repeated
    assert [kind(c) for c in choices] == ["local"] * 3 + ["probe"] + ["local"] * 3 + ["probe"]
    assert choices[3]["scale"] == 0.5  # the fastest offload option

    # the link recovered: the probe's upload moved the estimate, so probe again at once,
    # until offloading wins on its own
    link = offloader.link
    for _ in range(3):
        upload_at(link, 10)
    assert kind(offloader.choose()[1]) == "probe"
    upload_at(link, 10)
    assert kind(offloader.choose()[1]) in ("probe", "offload")
    for _ in range(8):
        upload_at(link, 10)
    assert kind(offloader.choose()[1]) == "offload"
    assert kind(offloader.choose()[1]) == "offload"  # nothing moved: no probe

    never = constructed(fashion, TRADE, 150.0, TRADE_ENCODE, mbps=0.05, probe_every=0)
    assert all(never.choose()[1]["mode"] == "local" for _ in range(30))


def test_a_falling_estimate_is_followed_until_it_settles(fashion):
    offloader = constructed(fashion, TRADE, 150.0, TRADE_ENCODE, mbps=10, probe_every=10)
    assert kind(offloader.choose()[1]) == "offload"
    upload_at(offloader.link, 0.05)  # the link fell: local wins, but the estimate moves
    first = offloader.choose()[1]
    assert kind(first) == "probe" and first["est_mbps"] < 0.2
    upload_at(offloader.link, 0.05)
    assert kind(offloader.choose()[1]) == "probe"  # still moving
    # settled (no upload since the last probe): local until the next scheduled probe
    assert [kind(offloader.choose()[1]) for _ in range(11)] == ["local"] * 10 + ["probe"]


def test_profiles_come_from_prepare_and_travel_in_describe(fashion, cache):
    plugin, model, _ = fashion
    edge = offloaders.get("deepdecision")(plugin, model, calibration_samples=32)
    edge.prepare("edge")
    described = json.loads(json.dumps(edge.describe()))  # as it crosses the wire
    assert set(described["edge_decode_ms"]) == {"1.0", "0.75", "0.5", "0.35"}
    assert described["edge_model_ms"] > 0
    device = offloaders.get("deepdecision")(plugin, model, calibration_samples=32)
    device.prepare("device")
    device.connect(described, link_at(2))
    assert device.edge_decode_ms.keys() == {1.0, 0.75, 0.5, 0.35}
    assert set(device.encode_ms) == {1.0, 0.75, 0.5, 0.35}
    assert all(ms > 0 for ms in device.encode_ms.values()) and device.device_model_ms > 0
    out = device.describe()
    assert len(out["options"]) == 4 and out["device_model_ms"] > 0


# -------------------------------------------------------------------------- construction


def test_refuses_plugins_whose_input_is_not_an_image():
    for name in ("imu_har", "speech_kws"):
        plugin = plugins.get(name)
        with pytest.raises(PluginError, match="needs an image"):
            offloaders.get("deepdecision")(plugin, None)
    for shape, dtype in [((2, 32, 32), "uint8"), ((3, 32, 32), "float32"), ((32, 32), "uint8")]:
        with pytest.raises(PluginError, match="colour_test"):
            offloaders.get("deepdecision")(colour_plugin(shape, dtype), None)


def test_bad_parameters_are_refused():
    for params in (
        {"max_drop_pp": -1.0},
        {"probe_every": -1},
        {"calibration_samples": 2},
        {"prior_mbps": 0.0},
        {"scale": 0.5},
    ):
        with pytest.raises(ValueError):
            offloaders.validate_params("deepdecision", params)


# ------------------------------------------------------------------------------ payloads


def predict(plugin, model, pixels):
    with torch.inference_mode():
        return int(model(plugin.to_tensor(pixels[None])).argmax(dim=1)[0])


@pytest.mark.parametrize("which", ["fashion", "colour"])
def test_round_trip_at_every_scale(fashion, which):
    if which == "fashion":
        plugin, model, data = fashion
    else:
        plugin = colour_plugin()
        model, data = plugin.load_model(), plugin.test_data()
    offloader = offloaders.get("deepdecision")(plugin, model)
    channels, height, width = plugin.input_spec.shape
    assert len(offloader.sizes) == 4
    for scale, size in offloader.sizes.items():
        for sample in data.inputs[:4]:
            payload = offloader.encode(sample, scale, 90)
            with Image.open(io.BytesIO(payload)) as image:
                assert image.format == "JPEG" and image.size == size
                assert image.mode == ("L" if channels == 1 else "RGB")
            decoded_scale, pixels = offloader.decode(payload)
            assert decoded_scale == scale and pixels.shape == (channels, height, width)
            timer = PhaseTimer()
            assert offloader.edge(payload, timer) == predict(plugin, model, pixels)
            assert set(timer.ms) == {"decode", "edge"}
    # at full size and quality 100, the image barely changes
    sample = data.inputs[0]
    pixels = offloader.decode(offloader.encode(sample, 1.0, 100))[1]
    assert np.abs(pixels.astype(int) - sample).mean() < 3


def test_device_half_sends_what_it_chose_or_answers_locally(fashion):
    plugin, model, data = fashion
    offloader = constructed(fashion, TRADE, 1000.0, TRADE_ENCODE, mbps=1)
    timer = PhaseTimer()
    sent = offloader.device(data.inputs[0], timer)
    assert sent.prediction is None and sent.choice["scale"] == 0.5
    assert offloader.decode(sent.payload)[0] == 0.5 and set(timer.ms) == {"encode"}
    offloader.device_model_ms = 1.0
    timer = PhaseTimer()
    answered = offloader.device(data.inputs[0], timer)
    assert answered.payload is None and answered.choice["mode"] == "local"
    assert answered.prediction == predict(plugin, model, data.inputs[0])
    assert set(timer.ms) == {"device"}


def jpeg(array, mode=None, **options):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def with_size(payload: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size."""
    at = payload.index(b"\xff\xc0")
    return payload[: at + 5] + struct.pack(">HH", height, width) + payload[at + 9 :]


def test_malformed_payloads_are_refused_quickly(fashion):
    plugin, model, data = fashion
    offloader = offloaders.get("deepdecision")(plugin, model)
    good = offloader.encode(data.inputs[0], 1.0, 75)
    assert offloader.decode(with_size(good, 28, 28))[0] == 1.0  # the helper is faithful
    png = io.BytesIO()
    Image.fromarray(data.inputs[0][0]).save(png, format="PNG")
    bad = {
        "empty": (b"", "empty"),
        "garbage": (b"\x00" * 1000, "not a JPEG"),
        "png": (png.getvalue(), "not a JPEG"),
        "wrong size": (jpeg(np.zeros((20, 28), np.uint8)), "28x20; allowed sizes"),
        "huge header": (with_size(good, 4000, 4000), "4000x4000; allowed"),
        "bomb": (with_size(good, 60_000, 60_000), "DecompressionBombError"),
        "too big": (jpeg(np.zeros((168, 168), np.uint8)), "168x168"),
        "colour": (jpeg(np.zeros((28, 28, 3), np.uint8)), "mode RGB"),
        "cmyk": (jpeg(np.zeros((28, 28), np.uint8), "CMYK"), "mode CMYK"),
        "truncated": (good[: len(good) // 2], "does not decode"),
    }
    for name, (payload, message) in bad.items():
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            offloader.edge(payload, PhaseTimer())
        assert time.perf_counter() - start < 0.2, name


# --------------------------------------------------------------------------- calibration


def test_calibration_keeps_per_scale_the_lowest_quality_within_the_bound(fashion, cache):
    plugin, model, _ = fashion
    offloader = offloaders.get("deepdecision")(
        plugin, model, calibration_samples=100, max_drop_pp=1.0
    )
    offloader.calibrate()
    calibrator = offloader.calibrator()  # the same cache file
    scores = {
        (s, q): calibrator.score([s, q]) for s in offloader.sizes for q in deepdecision.QUALITIES
    }
    within = [o for o in offloader.options if o["within_bound"]]
    assert within and all(o["drop_pp"] <= 1.0 for o in within)
    for o in offloader.options:
        assert o["within_bound"] == (o["drop_pp"] <= 1.0)
        assert scores[o["scale"], o["quality"]].drop_pp == o["drop_pp"]
        lower = [q for q in deepdecision.QUALITIES if q < o["quality"]]
        if o["within_bound"] and lower:  # the next lower quality is not within it
            assert scores[o["scale"], lower[-1]].drop_pp > 1.0
    # 28x28 shrunk to 14x14 and back loses far more than a point on Fashion-MNIST
    assert not next(o for o in offloader.options if o["scale"] == 0.5)["within_bound"]
    assert {c.get("scale") for c in offloader.candidates()} == {None} | {o["scale"] for o in within}
    # bytes as they cross the wire: the frame header counted
    assert all(o["mean_bytes"] > 16 for o in offloader.options)
    cached = offloaders.get("deepdecision")(plugin, model, calibration_samples=100)
    started = time.perf_counter()
    cached.calibrate()  # read from the cache
    assert cached.options == offloader.options and time.perf_counter() - started < 1


# ------------------------------------------------------------------- through the agents


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_trace_scenario_choices_follow_the_bandwidth_step(tmp_path):
    """The shipped scenario: MobileNetV2 on a 10 %-core device, the uplink stepping
    between 10 and 0.5 Mbit/s every 10 s. Offloading must win at 10, local at 0.5, and
    the device's estimate must see both levels."""
    out = tmp_path / "out"
    proc = run_cli(ROOT / "scenarios" / "deepdecision_trace.yaml", "--out", out, "--skip-fidelity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_csv(out / "requests.csv") if r["offloader"] == "deepdecision"]
    assert len(rows) == 200 and all(r["status"] == "ok" for r in rows)
    choices = [json.loads(r["choice"]) for r in rows]
    estimates = [float(r["est_uplink_mbps"] or "nan") for r in rows]
    # goodput: 0.956 of the rate; the estimate pools 8 uploads, so it lags the step
    high, low = 10 * 0.956, 0.5 * 0.956
    assert sum(e == pytest.approx(high, rel=0.15) for e in estimates) >= 20, estimates
    assert sum(e == pytest.approx(low, rel=0.15) for e in estimates) >= 10, estimates

    kinds = [kind(c) for c in choices]
    # the decision follows the estimate: offload when it says 10, local when it says 0.5
    for what, estimate in zip(kinds, estimates, strict=True):
        if estimate == pytest.approx(high, rel=0.15):
            assert what == "offload", (what, estimate)
        if estimate == pytest.approx(low, rel=0.15):
            assert what in ("local", "probe"), (what, estimate)
    # both steps of the loop are crossed: offload -> local and back
    decided = [k for k in kinds if k != "probe"]
    changes = {(a, b) for a, b in itertools.pairwise(decided) if a != b}
    assert changes == {("offload", "local"), ("local", "offload")}, kinds
    offloaded = [c for c in choices if "scale" in c]
    assert {(c["scale"], c["quality"]) for c in offloaded} == {(1.0, 100)}

    def median(kind, key):
        return statistics.median(
            float(r[key]) for r, k in zip(rows, kinds, strict=True) if k == kind
        )

    assert median("local", "bytes_up") == 0 and median("offload", "bytes_up") > 10_000
    # each level's choice beats what the other level's choice would have cost there
    assert median("offload", "total_ms") < median("local", "total_ms")
