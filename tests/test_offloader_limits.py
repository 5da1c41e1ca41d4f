"""What an edge half accepts, bounded from the plugin's shapes and the offloader's
settings (`Offloader.max_payload`, which the edge agent enforces from a REQUEST's header):
every shipped offloader's own payloads fit, the bound is not loose, one byte more is a
ValueError from the edge half itself; features must be finite and bounded; an image
payload over its bound is refused before Pillow parses it; and the edge's stage profiles
are taken once per model, not once per offloader of a HELLO."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image

from kernels import entropy, quantize
from testbed import offloaders
from testbed.models import plugins
from testbed.offloaders import adaptive, deepdecision
from testbed.offloaders.base import PhaseTimer
from testbed.offloaders.split import (
    FEATURE_BOUND,
    feature_shape,
    pack_coded,
    pack_features,
    run_head,
    unpack_coded,
)
from tests.helpers import loaded

pytestmark = pytest.mark.usefixtures("cache")  # conftest.py: a cache of its own

# settings with the largest payloads and no calibration (fixed quality, pinned splits)
PARAMS = {
    "fashion_cnn": {"jpeg": {"quality": 100}, "webp": {"quality": 100}},
    "mobilenet_v2": {
        "jpeg": {"quality": 100},
        "webp": {"quality": 100},
        "bottlenet": {"split": 5, "channels": 16, "bits": 4, "stride": 1},
    },
}
# Pillow-coded formats: their bound is stated from the pixel count (pillow_codec), far
# above what photos take; their worst content (noise) is checked against it instead
IMAGE_CODECS = {"jpeg", "webp", "deepdecision", "feature_png", "feature_jpeg"}
SAMPLES = 3


@pytest.fixture(scope="module", params=["fashion_cnn", "mobilenet_v2"])
def setup(request):
    plugin, model, data = loaded(request.param)
    return plugin, model, data.inputs[:SAMPLES]


def shipped() -> list[str]:
    return [
        n
        for n in offloaders.names()
        if offloaders.get(n).__module__.startswith("testbed.offloaders.")
    ]


def build(name: str, plugin, model):
    return offloaders.get(name)(plugin, model, **PARAMS[plugin.name].get(name, {}))


def noise(plugin, seed: int = 0) -> np.ndarray:
    spec = plugin.input_spec
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, spec.shape).astype(spec.dtype)


def payloads(off, plugin, model, inputs) -> list[bytes]:
    """What this offloader's device side sends for these inputs, over all its options
    where it chooses per request (each split, scale, the largest bits and quality)."""
    name, out = off.name, []
    for sample in inputs:
        if name == "local":
            assert off.device(sample, PhaseTimer()).payload is None
        elif name in ("raw", "jpeg", "webp", "deepcod", "bottlenet"):
            out.append(off.device(sample, PhaseTimer()).payload)
        elif name == "neurosurgeon":
            out.append(pack_features(0, sample))
            out += [
                pack_features(k, run_head(plugin, model, sample, k)) for k in plugin.split_points
            ]
        elif name == "jalad":
            out += [
                pack_coded(k, 8, run_head(plugin, model, sample, k)) for k in plugin.split_points
            ]
        elif name == "deepdecision":
            out += [off.encode(sample, scale, 100) for scale in off.sizes]
        elif name in ("feature_png", "feature_jpeg"):
            quality = 100 if name == "feature_jpeg" else None
            for split in off.planes:
                if split == 0:
                    values = plugin.to_tensor(sample[None])[0].numpy()
                else:
                    values = run_head(plugin, model, sample, split)
                out.append(off.encode(split, values, quality))
        else:  # pragma: no cover - a new shipped offloader needs its case here
            raise AssertionError(f"no payloads for {name}")
    return out


def worst_legal(off, plugin) -> int:
    """The longest payload this offloader's device side can send for some input: noise
    for images, evenly spread codes for entropy-coded ones, the exact size otherwise."""
    name = off.name
    rng = np.random.default_rng(1)
    if name == "local":
        return 0
    if name in ("raw", "jpeg", "webp"):
        return len(off.device(noise(plugin), PhaseTimer()).payload)
    if name == "neurosurgeon":
        return max(len(p) for p in payloads(off, plugin, off.model, [noise(plugin)]))
    if name == "deepdecision":
        return max(len(off.encode(noise(plugin), scale, 100)) for scale in off.sizes)
    if name in ("feature_png", "feature_jpeg"):
        quality = 100 if name == "feature_jpeg" else None
        return max(
            len(off.encode(split, rng.normal(size=feature_shape(plugin, split)), quality))
            for split in off.planes
        )
    if name == "jalad":
        return max(
            len(pack_coded(k, 8, rng.uniform(0, 1, feature_shape(plugin, k)).astype(np.float32)))
            for k in plugin.split_points
        )
    if name == "deepcod":
        centres = len(off.codebook.centres)
        return len(entropy.encode(rng.integers(0, centres, off.shape).astype(np.uint8)))
    if name == "bottlenet":
        y = rng.uniform(0, 1, off.code_shape).astype(np.float32)
        codes = quantize.quantize_uniform(y, off.bits, off.step, np.float32(0))
        return 2 + len(entropy.encode(codes))
    raise AssertionError(f"no worst case for {name}")  # pragma: no cover


def test_every_shipped_offloader_states_a_bound_its_payloads_fit(setup):
    plugin, model, inputs = setup
    names = shipped()
    assert {"raw", "local", "deepcod", "jalad", "neurosurgeon", "bottlenet"} <= set(names)
    report = []
    for name in names:
        off = build(name, plugin, model)
        bound = off.max_payload()
        sent = payloads(off, plugin, model, inputs)
        worst = worst_legal(off, plugin)
        largest = max((len(p) for p in sent), default=0)
        report.append(f"{plugin.name} {name}: bound {bound}, sent <= {largest}, worst {worst}")
        assert largest <= bound and worst <= bound, report[-1]
        if name not in IMAGE_CODECS and worst:
            assert largest <= worst and bound <= 4 * worst, report[-1]
        # one byte more: the edge half refuses it itself, whatever the agent did
        longer = (sent[0] if sent else b"") + b"\0" * (bound + 1 - len(sent[0] if sent else b""))
        assert len(longer) == bound + 1
        with pytest.raises(ValueError):
            off.edge(longer, PhaseTimer())
        if sent:  # and its own payloads are served
            off.edge(sent[0], PhaseTimer())
    print("\n".join(report))


def test_float_features_must_be_finite_and_bounded(fashion):
    plugin, model, data = fashion
    off = offloaders.get("neurosurgeon")(plugin, model)
    features = run_head(plugin, model, data.inputs[0], 1)
    assert off.edge(pack_features(1, features), PhaseTimer()) is not None
    for bad in (np.nan, np.inf, -np.inf, 2 * FEATURE_BOUND):
        spoiled = features.copy()
        spoiled.flat[17] = bad
        with pytest.raises(ValueError, match=r"NaN or infinite|beyond"):
            off.edge(pack_features(1, spoiled), PhaseTimer())


@pytest.mark.parametrize(
    "scale, offset, message",
    [
        (3e38, 0.0, "beyond"),  # the audit's: 255 * 3e38 overflows float32 to inf
        (1e14, 0.0, "beyond"),  # finite, but its top code is 2.55e16
        (1.0, -2e15, "beyond"),
        (float("inf"), 0.0, "scale"),
        (1.0, float("nan"), "offset"),
    ],
)
def test_coded_features_must_dequantize_within_the_bound(fashion, scale, offset, message):
    plugin, model, data = fashion
    off = offloaders.get("jalad")(plugin, model)
    payload = pack_coded(1, 8, run_head(plugin, model, data.inputs[0], 1))
    assert off.edge(payload, PhaseTimer()) is not None
    forged = payload[:2] + struct.pack("<ff", scale, offset) + payload[10:]
    with pytest.raises(ValueError, match=message):
        off.edge(forged, PhaseTimer())
    with pytest.raises(ValueError, match=message):
        unpack_coded(plugin, forged, {1})


def test_feature_codec_ranges_must_be_bounded(fashion):
    plugin, model, data = fashion
    off = offloaders.get("feature_png")(plugin, model, split=1)
    values = run_head(plugin, model, data.inputs[0], 1)
    payload = off.encode(1, values, None)
    off.decode(payload)
    channels = off.planes[1][0]
    lo_at = 9  # after the header: C minima, then C maxima
    for bad in (np.nan, np.inf, -2 * FEATURE_BOUND):
        forged = bytearray(payload)
        forged[lo_at : lo_at + 4] = struct.pack("<f", bad)
        with pytest.raises(ValueError, match="channel range"):
            off.decode(bytes(forged))
    assert lo_at + 8 * channels < len(payload)


def jpeg_with_comments(image_bytes: bytes, total: int) -> bytes:
    """A valid JPEG with `total` bytes of COM segments after its SOI marker."""
    chunk = b"\xff\xfe" + struct.pack(">H", 65535) + b"x" * 65533
    comments = chunk * (total // len(chunk))
    return image_bytes[:2] + comments + image_bytes[2:]


def test_an_image_behind_megabytes_of_markers_is_refused_before_parsing(fashion):
    plugin, model, data = fashion
    for name in ("jpeg", "deepdecision"):
        off = offloaders.get(name)(plugin, model)
        buffer = io.BytesIO()
        Image.fromarray(data.inputs[0][0]).save(buffer, format="JPEG", quality=90)
        hostile = jpeg_with_comments(buffer.getvalue(), 4 << 20)
        assert len(hostile) > 4_000_000
        Image.open(io.BytesIO(hostile)).load()  # Pillow would parse it all: legal JPEG
        start = time.perf_counter()
        with pytest.raises(ValueError, match="at most"):
            off.edge(hostile, PhaseTimer())
        assert time.perf_counter() - start < 0.05
    off = offloaders.get("webp")(plugin, model)
    with pytest.raises(ValueError, match="at most"):
        off.edge(b"RIFF" + b"\0" * (off.max_payload()), PhaseTimer())


def test_the_edge_profiles_a_model_once_for_all_its_offloaders(monkeypatch):
    """A HELLO naming 32 split offloaders (and two deepdecisions) costs one profile of
    the stages (and one of the whole model and decoder), not one per offloader."""
    plugin = plugins.get("fashion_cnn")
    model = plugin.load_model()  # an object no other test has profiled
    calls = {"stages": 0, "deepdecision": 0}
    profile = adaptive.profile_stages
    edge_profile = deepdecision.DeepDecision._edge_profile

    def counted_profile(*args, **kwargs):
        calls["stages"] += 1
        return profile(*args, **kwargs)

    def counted_edge_profile(self):
        calls["deepdecision"] += 1
        return edge_profile(self)

    monkeypatch.setattr(adaptive, "profile_stages", counted_profile)
    monkeypatch.setattr(deepdecision.DeepDecision, "_edge_profile", counted_edge_profile)
    names = ["neurosurgeon", "jalad", "feature_png", "feature_jpeg"] * 8
    built = [offloaders.get(n)(plugin, model) for n in names]
    built += [offloaders.get("deepdecision")(plugin, model) for _ in range(2)]
    start = time.perf_counter()
    for off in built:
        off.prepare("edge")
    took = time.perf_counter() - start
    assert calls == {"stages": 1, "deepdecision": 1}, took
    profiles = {tuple(off.edge_ms) for off in built[:32]}
    assert len(profiles) == 1 and len(next(iter(profiles))) == len(model)
    built[0].edge_ms[0] = -1.0  # each gets its own copy
    assert built[1].edge_ms[0] != -1.0
    assert built[-1].edge_model_ms == built[-2].edge_model_ms is not None
