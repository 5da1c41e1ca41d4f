"""`feature_png` and `feature_jpeg`: Ko et al., "Edge-host partitioning of deep neural
networks with feature space encoding for resource-constrained IoT platforms" (AVSS
2018). The device runs the model to a split, quantizes the feature map to `bits` bits
per channel (each channel's own min/max, sent as float32 side info), tiles the channels
into one grayscale image and compresses it with a standard image codec: PNG (lossless,
so only the quantization loses) or JPEG (`quality`). The edge undoes each step and runs
the rest of the model.

Tiling: a feature map of shape (C, H, W) is C tiles of H x W; a (C, L) map is C tiles of
1 x L and a flat (N,) vector one tile of 1 x N. The grid has cols = ceil(sqrt(C * H / W))
columns (at most C) and rows = ceil(C / cols) rows, so the image is near square in
pixels; channel c sits at row c // cols, column c % cols, and the tiles left over at the
end are black. A b-bit code travels as the pixel code << (8 - b): the codec always sees
the full 0-255 range, and the edge rounds a pixel to the nearest code.

Candidates, per request, like `neurosurgeon` and `jalad` (`testbed.offloaders.adaptive`):
split 0 (the model's input tensor, e.g. an image's channels scaled to [0, 1], through the
same quantization and tiling), each of the plugin's split points, and local (the whole
model on the device, nothing sent). Each split's bytes and accuracy drop are measured
once on a calibration set from the train split (`testbed.offloaders.calibration`, cached); a split
outside `max_drop_pp` is no candidate unless none is within. `feature_jpeg` with
`quality: auto` takes, per split, the lowest quality on image_codec's ladder within
`max_drop_pp` (bisected). The predicted latency adds to Neurosurgeon's model the time
the device took to quantize, tile and compress each split's features at `prepare`
(on a pseudo-random input; a slow device pays for PNG's deflate on a large feature map).
`split: k` pins one split for every request instead, as `deepcod`'s does: on a model as
small as fashion_cnn the codec costs the device about as much as the whole model, so the
per-request choice is local on any network, and only a pinned split shows the codec.

The edge treats the payload as untrusted: its length is bounded first (`max_payload`),
every header field is checked against the plugin's own shapes and this offloader's
settings, the ranges against `split.FEATURE_BOUND`, and only the expected format is
opened, its size, mode and frame count checked before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from testbed.agents.protocol import HEADER
from testbed.errors import PluginError
from testbed.offloaders import register
from testbed.offloaders.adaptive import PRIOR, AdaptiveSplit
from testbed.offloaders.base import DeviceResult, dilated
from testbed.offloaders.calibration import Calibrator, max_drop
from testbed.offloaders.params import Param
from testbed.offloaders.pillow_codec import (
    LADDER,
    calibration_identity,
    check_codec,
    check_size,
    is_quality,
    max_coded_size,
)
from testbed.offloaders.split import FEATURE_BOUND, Candidate, feature_shape, run_tail

# split, bits, format id, C, H, W; then C float32 minima, C float32 maxima; then the image
_HEADER = struct.Struct("<BBBHHH")
_FORMAT_IDS = {"PNG": 1, "JPEG": 2}


# --------------------------------------------------------------------------- the codec


def planes_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A feature shape as (channels, tile height, tile width)."""
    if len(shape) == 3:
        channels, height, width = shape
        return channels, height, width
    if len(shape) == 2:
        return shape[0], 1, shape[1]
    return 1, 1, math.prod(shape)


def grid(channels: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of tiles: near square in pixels (see the module's docstring)."""
    cols = min(channels, max(1, math.ceil(math.sqrt(channels * height / width))))
    return math.ceil(channels / cols), cols


def tile(planes: np.ndarray) -> np.ndarray:
    """(C, H, W) -> one (rows * H, cols * W) image, channel c at (c // cols, c % cols)."""
    channels, height, width = planes.shape
    rows, cols = grid(channels, height, width)
    padded = np.zeros((rows * cols, height, width), planes.dtype)
    padded[:channels] = planes
    return (
        padded.reshape(rows, cols, height, width)
        .transpose(0, 2, 1, 3)
        .reshape(rows * height, cols * width)
    )


def untile(image: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """tile's inverse: the (C, H, W) planes of an image of the right size."""
    rows, cols = grid(channels, height, width)
    tiles = image.reshape(rows, height, cols, width).transpose(0, 2, 1, 3)
    return tiles.reshape(rows * cols, height, width)[:channels]


def quantize(planes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, H, W) floats -> (b-bit codes as uint8, per-channel minima, maxima as float32)."""
    flat = planes.reshape(planes.shape[0], -1).astype(np.float32)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    levels = (1 << bits) - 1
    span = hi - lo
    scale = np.where(span > 0, levels / np.where(span > 0, span, 1), 0).astype(np.float32)
    codes = np.clip(np.rint((flat - lo[:, None]) * scale[:, None]), 0, levels)
    return codes.astype(np.uint8).reshape(planes.shape), lo, hi


def dequantize(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    step = (hi - lo) / np.float32((1 << bits) - 1)
    return (lo[:, None, None] + codes.astype(np.float32) * step[:, None, None]).astype(np.float32)


@dataclass(frozen=True)
class CodecCandidate(Candidate):
    """A split with its codec setting; the device's encoding time counts in its latency."""

    quality: int | None = None
    encode_ms: float = 0.0

    def predict_ms(self, device_ms, edge_ms, link, prior_mbps) -> float:
        return super().predict_ms(device_ms, edge_ms, link, prior_mbps) + self.encode_ms


def _is_split(value: Any) -> bool:
    return value == "auto" or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    )


_COMMON = {
    "prior_mbps": PRIOR,
    "bits": Param(int, 8, "an integer 1-8 (bits per feature value)", lambda v: 1 <= v <= 8),
    "max_drop_pp": max_drop("a finite number >= 0 (accuracy points a split may lose)"),
    "calibration_samples": Param(int, 200, "an integer >= 10", lambda v: v >= 10),
    "split": Param(
        object,
        "auto",
        '"auto" (chosen per request, local included) or one split for every request: '
        "0 (the input) or one of the plugin's split points",
        _is_split,
    ),
}


class FeatureCodec(AdaptiveSplit):
    """What both codecs share; a subclass names the format and its fixed options."""

    format: ClassVar[str]  # Pillow's format name, also what a payload must open as
    feature: ClassVar[str]  # PIL.features name of the codec library
    max_side: ClassVar[int]  # the largest width or height the format can hold
    # fixed, so that the same features and quality always give the same bytes
    save_options: ClassVar[dict[str, Any]]

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        check_codec(self.name, self.format, self.feature)
        self.bits = self.config["bits"]
        # split -> (C, H, W) of its features as tiles; split 0 only where the model's
        # input tensor has the plugin's input shape (to_tensor scales, it does not reshape)
        self.planes: dict[int, tuple[int, int, int]] = {}
        for split in (0, *plugin.split_points):
            shape = planes_shape(feature_shape(plugin, split))
            rows, cols = grid(*shape)
            if max(rows * shape[1], cols * shape[2]) > self.max_side or max(shape) > 0xFFFF:
                continue  # the image or the header could not hold it
            self.planes[split] = shape
        if 0 in self.planes:
            spec = plugin.input_spec
            zero = np.zeros((1, *spec.shape), spec.dtype)
            if tuple(plugin.to_tensor(zero).shape[1:]) != tuple(spec.shape):
                del self.planes[0]
        if not self.planes:
            raise PluginError(
                f"{self.name}: no split of plugin {plugin.name!r} fits a {self.format} "
                f"image of at most {self.max_side} pixels a side"
            )
        pinned = self.config["split"]
        if pinned != "auto":  # one split, always: the edge accepts no other either
            if pinned not in self.planes:
                raise PluginError(
                    f"{self.name}: split {pinned} is not one it can use with plugin "
                    f"{plugin.name!r} ({', '.join(map(str, self.planes))}; 0 for the input)"
                )
            self.planes = {pinned: self.planes[pinned]}
        self.options: list[dict[str, Any]] | None = None
        self.encode_ms: dict[int, float] = {}
        self._codes: dict[tuple[int, str], list] = {}  # calibration's quantized batches

    def qualities(self) -> list[int | None]:
        """The codec settings calibration chooses among, cheapest first."""
        return [None]

    # ------------------------------------------------------------------------- codec

    def encode(self, split: int, values: np.ndarray, quality: int | None) -> bytes:
        """Features at `split` (or the input tensor at 0) -> payload."""
        channels, height, width = self.planes[split]
        return self._compress(
            split, *quantize(values.reshape(channels, height, width), self.bits), quality
        )

    def _compress(self, split, codes, lo, hi, quality: int | None) -> bytes:
        channels, height, width = codes.shape
        image = Image.fromarray(tile(codes << (8 - self.bits)))
        buffer = io.BytesIO()
        options = (
            self.save_options if quality is None else {**self.save_options, "quality": quality}
        )
        image.save(buffer, format=self.format, **options)
        header = _HEADER.pack(split, self.bits, _FORMAT_IDS[self.format], channels, height, width)
        return header + lo.tobytes() + hi.tobytes() + buffer.getvalue()

    def split_max_payload(self, split: int) -> int:
        """Header, ranges and `pillow_codec.max_coded_size` of the split's tiled image."""
        channels, height, width = self.planes[split]
        rows, cols = grid(channels, height, width)
        image = max_coded_size(self.format, 1, rows * height, cols * width)
        return _HEADER.size + 8 * channels + image

    def max_payload(self) -> int:
        return max(self.split_max_payload(split) for split in self.planes)

    def decode(self, payload: bytes) -> tuple[int, np.ndarray]:
        """Payload -> (split, de-quantized float32 features of the plugin's shape at it);
        ValueError for anything else, before anything large is allocated or decoded."""
        what = f"{self.name} payload"
        check_size(what, payload, self.max_payload())
        if len(payload) < _HEADER.size:
            raise ValueError(f"{what} of {len(payload)} bytes is shorter than its header")
        split, bits, format_id, *shape = _HEADER.unpack_from(payload)
        if split not in self.planes:
            raise ValueError(f"{what} at split {split}; this offloader uses {sorted(self.planes)}")
        if bits != self.bits:
            raise ValueError(f"{what} with {bits} bits; this offloader uses {self.bits}")
        if format_id != _FORMAT_IDS[self.format]:
            raise ValueError(f"{what} says format {format_id}, expected {self.format}")
        channels, height, width = expected = self.planes[split]
        if tuple(shape) != expected:
            raise ValueError(
                f"{what} of shape {tuple(shape)} at split {split}, expected {expected}"
            )
        rows, cols = grid(channels, height, width)
        side = _HEADER.size + 8 * channels
        if len(payload) <= side:
            raise ValueError(
                f"{what} of {len(payload)} bytes ends within its {side} bytes of header and ranges"
            )
        check_size(f"{what} at split {split}", payload, self.split_max_payload(split))
        lo = np.frombuffer(payload, np.float32, channels, _HEADER.size)
        hi = np.frombuffer(payload, np.float32, channels, _HEADER.size + 4 * channels)
        with np.errstate(over="ignore", invalid="ignore"):
            bounded = (np.abs(lo) <= FEATURE_BOUND).all() and (np.abs(hi) <= FEATURE_BOUND).all()
            if not (bounded and (hi >= lo).all()):
                raise ValueError(
                    f"{what} has a channel range that is not ordered and within "
                    f"{FEATURE_BOUND:g} (split.FEATURE_BOUND)"
                )
        try:
            with warnings.catch_warnings():  # a claimed size is refused below, exactly
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(payload[side:]), formats=[self.format])
        except Exception as exc:  # Pillow raises many kinds for foreign or damaged data
            raise ValueError(
                f"{what} does not hold a {self.format} image ({type(exc).__name__}: {exc})"
            ) from None
        with image:
            if image.format != self.format:
                raise ValueError(f"{what} holds {image.format}, expected {self.format}")
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise ValueError(f"{what} has {frames} frames, expected 1")
            if image.size != (cols * width, rows * height):
                raise ValueError(
                    f"{what} image is {image.size[0]}x{image.size[1]}, expected "
                    f"{cols * width}x{rows * height} ({rows}x{cols} tiles of {height}x{width})"
                )
            if image.mode != "L":
                raise ValueError(f"{what} image in mode {image.mode}, expected L")
            try:
                image.load()
                gray = np.asarray(image)
            except Exception as exc:
                raise ValueError(
                    f"{what} image does not decode ({type(exc).__name__}: {exc})"
                ) from None
        if gray.shape != (rows * height, cols * width) or gray.dtype != np.uint8:
            raise ValueError(f"{what} image decoded to {gray.shape} {gray.dtype}")  # held above
        codes = untile(gray, channels, height, width)
        shift = 8 - self.bits
        if shift:  # the nearest code to each pixel (exact for PNG)
            codes = np.minimum(
                (codes.astype(np.uint16) + (1 << (shift - 1))) >> shift, (1 << self.bits) - 1
            ).astype(np.uint8)
        values = dequantize(codes, lo, hi, self.bits)
        return split, values.reshape(feature_shape(self.plugin, split))

    # ------------------------------------------------------------------- calibration

    def calibrator(self) -> Calibrator:
        # the bytes depend on the layout as much as on the codec
        identity = f"{calibration_identity(self.feature, self.save_options)} tiling 1"
        count = self.config["calibration_samples"]
        return Calibrator(self.plugin, self.model, self.name, self._run_option, count, identity)

    def _head(self, split: int, inputs: np.ndarray) -> np.ndarray:
        """A batch of raw inputs -> float32 features at `split` (the input tensor at 0)."""
        with torch.inference_mode():
            return self.model[:split](self.plugin.to_tensor(inputs)).numpy()

    def _run_option(self, option, inputs):
        """The Calibrator's measurement: the batch through the codec, then the tail."""
        split, _, quality = option
        # the codes do not depend on the quality: one split's are kept while its qualities
        # are tried (calibrate goes split by split): the head runs once per split, not once
        # per quality (a fifth less time for MobileNetV2's `auto`)
        key = (split, hashlib.sha1(np.ascontiguousarray(inputs).tobytes()).hexdigest())
        if key not in self._codes:
            if next(iter(self._codes), (split,))[0] != split:
                self._codes.clear()
            shape = self.planes[split]
            self._codes[key] = [
                quantize(one.reshape(shape), self.bits) for one in self._head(split, inputs)
            ]
        payloads = [self._compress(split, *coded, quality) for coded in self._codes[key]]
        restored = np.stack([self.decode(payload)[1] for payload in payloads])
        logits = self.model[split:](torch.from_numpy(restored))
        return logits, [HEADER.size + len(payload) for payload in payloads]

    def calibrate(self) -> list[dict[str, Any]]:
        """Per split: bytes and accuracy drop of its (cheapest within the bound) setting."""
        if self.options is not None:
            return self.options
        calibrator, bound = self.calibrator(), self.config["max_drop_pp"]
        options = []
        for split in self.planes:
            (_, _, quality), score = calibrator.lowest(
                [[split, self.bits, q] for q in self.qualities()], bound
            )
            options.append(score.option(bound, split=split, bits=self.bits, quality=quality))
        self.options = options
        return options
        self._codes.clear()

    def prepare(self, side: str) -> None:
        super().prepare(side)
        if side == "device":
            self._time_encoding()

    @torch.inference_mode()
    def _time_encoding(self, repeats: int = 3) -> None:
        """Median milliseconds of each option's encoding on this host, after a warm-up, on
        a fixed pseudo-random input's features (this host may not have the data)."""
        spec = self.plugin.input_spec
        rng = np.random.default_rng(0)
        sample = rng.uniform(spec.low, spec.high, size=(1, *spec.shape)).astype(spec.dtype)
        h = self.plugin.to_tensor(sample)
        values = {0: h[0].numpy()}
        for index, stage in enumerate(self.model, start=1):
            h = stage(h)
            values[index] = h[0].numpy()
        for option in self.calibrate():
            split, quality = option["split"], option["quality"]
            times = []
            for _ in range(repeats + 1):
                with dilated() as took:  # at the device's speed, as its requests run
                    self.encode(split, values[split], quality)
                times.append(took.ms)
            self.encode_ms[split] = float(np.median(times[1:]))

    # ------------------------------------------------------------------------ halves

    def candidates(self) -> list[Candidate]:
        options = self.calibrate()
        within = [o for o in options if o["within_bound"]]
        out: list[Candidate] = []
        for o in within or options:  # none within the bound: every split, recorded
            encode_ms = self.encode_ms.get(o["split"], 0.0)
            out.append(
                CodecCandidate(o["split"], o["mean_bytes"], o["bits"], o["quality"], encode_ms)
            )
        if self.config["split"] != "auto":
            return out
        return [*out, Candidate(len(self.model), 0)]

    def device(self, sample, timer):
        best, choice = self.choose()
        if best.split == len(self.model):
            return self.run_whole_model(sample, timer, choice)
        if best.quality is not None:
            choice["quality"] = best.quality
        if best.split == 0:
            with timer.phase("encode"):
                payload = self.encode(0, self._head(0, sample[None])[0], best.quality)
            return DeviceResult(payload=payload, choice=choice)
        with timer.phase("device"):
            values = self._head(best.split, sample[None])[0]
        with timer.phase("encode"):
            payload = self.encode(best.split, values, best.quality)
        return DeviceResult(payload=payload, choice=choice)

    def edge(self, payload, timer):
        with timer.phase("decode"):
            split, values = self.decode(payload)
        with timer.phase("edge"):
            return run_tail(self.plugin, self.model, values, split)

    def describe(self):
        out = super().describe()
        if self.options is not None:
            out["options"] = self.options
        if self.encode_ms:
            out["encode_ms"] = {str(k): round(v, 3) for k, v in self.encode_ms.items()}
        return out


@register
class FeaturePNG(FeatureCodec):
    name = "feature_png"
    order = 80
    description = (
        "split + per-channel k-bit features tiled into one PNG (Ko et al. 2018), lossless "
        "after quantization"
    )
    params: ClassVar[dict[str, Param]] = dict(_COMMON)
    format, feature, max_side = "PNG", "zlib", 2**31 - 1
    save_options: ClassVar = {"compress_level": 6, "optimize": False}


@register
class FeatureJPEG(FeatureCodec):
    name = "feature_jpeg"
    order = 81
    description = "split + per-channel k-bit features tiled into one JPEG (Ko et al. 2018)"
    params: ClassVar[dict[str, Param]] = {
        **_COMMON,
        "quality": Param(object, "auto", 'an integer 1-100 or "auto"', is_quality),
    }
    format, feature, max_side = "JPEG", "jpg", 65_500
    # optimized Huffman tables: deterministic, and fewer bytes on small images
    save_options: ClassVar = {"optimize": True, "progressive": False}

    def qualities(self) -> list[int | None]:
        quality = self.config["quality"]
        return list(LADDER) if quality == "auto" else [quality]
