"""`jpeg` and `webp`: the device compresses the raw image with a standard codec
(Pillow) and the edge decodes it and runs the whole model: the classic baselines
DeepCOD is compared against.

`quality: auto` picks, once per plugin and model, the lowest quality on a fixed ladder
whose accuracy drop on a calibration set from the train split stays within
`max_drop_pp` (`testbed.offloaders.calibration`, cached on disk): a codec is then compared at the
accuracy the scenario allows, not at an arbitrary setting that favours or hurts it.

The edge treats the payload as untrusted network input: a payload longer than
`max_payload` (`pillow_codec.max_coded_size`) is refused before Pillow sees it, only the
expected format's decoder is tried, and the header's size, mode and frame count are
checked before any pixel is decoded, so a payload cannot make the edge decode a huge
image nor parse megabytes of markers around a small one.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch

from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader, to_edge, to_host
from testbed.offloaders.calibration import Calibrator, Score, max_drop
from testbed.offloaders.params import Param
from testbed.offloaders.pillow_codec import (
    LADDER,
    calibration_identity,
    check_codec,
    image_input,
    is_quality,
    max_coded_size,
    open_image,
    planes,
    to_image,
    undecodable,
)


class ImageCodec(Offloader):
    """What both codecs share; a subclass names the format and its fixed options."""

    format: ClassVar[str]  # Pillow's format name, also what a payload must open as
    feature: ClassVar[str]  # PIL.features name of the codec library
    max_side: ClassVar[int]  # the largest width or height the format can hold
    gray_mode: ClassVar[str]  # the mode a grayscale image travels in
    # fixed, so that the same image and quality always give the same bytes
    save_options: ClassVar[dict[str, Any]]
    tasks: ClassVar = ("classification", "detection")  # whole model on the edge
    params: ClassVar[dict[str, Param]] = {
        "quality": Param(object, "auto", 'an integer 1-100 or "auto"', is_quality),
        "max_drop_pp": max_drop('a finite number >= 0 (accuracy points "auto" may lose)'),
        "calibration_samples": Param(int, 200, "an integer >= 1", lambda n: n >= 1),
    }

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        self.shape = image_input(self.name, plugin, self.format, self.max_side)
        check_codec(self.name, self.format, self.feature)
        self.wire_mode = "RGB" if self.shape[0] == 3 else self.gray_mode
        quality = self.config["quality"]
        self.quality: int | None = None if quality == "auto" else quality
        self.score: Score | None = None  # the chosen quality's calibration, under "auto"

    # ------------------------------------------------------------------------- codec

    def encode(self, sample: np.ndarray, quality: int) -> bytes:
        image = to_image(sample)
        if image.mode != self.wire_mode:
            image = image.convert(self.wire_mode)
        buffer = io.BytesIO()
        image.save(buffer, format=self.format, quality=quality, **self.save_options)
        return buffer.getvalue()

    def decode(self, payload: bytes) -> np.ndarray:
        """Payload -> uint8 pixels of the plugin's shape; ValueError for anything else."""
        what = f"{self.name} payload"
        channels, height, width = self.shape
        with open_image(what, payload, self.format, self.max_payload()) as image:
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise ValueError(f"{what} has {frames} frames, expected 1")
            if image.size != (width, height):
                raise ValueError(
                    f"{what} is {image.size[0]}x{image.size[1]}, expected {width}x{height}"
                )
            if image.mode != self.wire_mode:
                raise ValueError(f"{what} in mode {image.mode}, expected {self.wire_mode}")
            try:
                image.load()
                pixels = np.array(image.convert("L") if channels == 1 else image)  # writable: torch
            except Exception as exc:
                raise undecodable(what, payload, exc) from None
        return planes(pixels, self.shape, what)

    def max_payload(self) -> int:
        """`pillow_codec.max_coded_size` of the plugin's image (measured there)."""
        channels, height, width = self.shape
        return max_coded_size(self.format, channels, height, width)

    # ------------------------------------------------------------------- calibration

    def calibrator(self) -> Calibrator:
        identity = calibration_identity(self.feature, self.save_options)
        count = self.config["calibration_samples"]
        return Calibrator(self.plugin, self.model, self.name, self._run_option, count, identity)

    def calibrate(self) -> None:
        """Under "auto": the lowest quality on LADDER within `max_drop_pp` (the highest
        when none is)."""
        if self.config["quality"] != "auto" or self.score is not None:
            return
        self.quality, self.score = self.calibrator().lowest(
            list(LADDER), self.config["max_drop_pp"]
        )

    def _run_option(self, quality: int, inputs: np.ndarray):
        """The Calibrator's measurement: the batch through the codec, then the model."""
        payloads = [self.encode(sample, quality) for sample in inputs]
        decoded = np.stack([self.decode(payload) for payload in payloads])
        return self.model(self.plugin.to_tensor(decoded)), [len(p) for p in payloads]

    # ------------------------------------------------------------------------ halves

    def device(self, sample, timer):
        if self.quality is None:  # not prepared: calibrate (or read the cache) now
            self.calibrate()
        with timer.phase("encode"):
            payload = self.encode(sample, self.quality)
        return DeviceResult(payload=payload, choice={"quality": self.quality})

    def edge(self, payload, timer):
        with timer.phase("decode"):
            pixels = self.decode(payload)
        with timer.phase("edge"), torch.inference_mode():
            logits = self.model(to_edge(self.plugin.to_tensor(pixels[None])))
        return predictions.predict(self.plugin, to_host(logits))[0]

    def describe(self):
        out = dict(self.config)
        if self.score is not None:
            out.update(
                chosen_quality=self.quality,
                calibration_drop_pp=self.score.drop_pp,
                calibration_mean_bytes=round(self.score.mean_bytes, 1),
            )
        return out


@register
class Jpeg(ImageCodec):
    name = "jpeg"
    order = 40
    description = "input image as JPEG (Pillow), whole model on the edge"
    format, feature, max_side, gray_mode = "JPEG", "jpg", 65_500, "L"
    # optimized Huffman tables: still deterministic, and a third fewer bytes on small
    # images, whose fixed tables would otherwise be much of the payload
    save_options: ClassVar = {"optimize": True, "progressive": False, "subsampling": "4:2:0"}


@register
class WebP(ImageCodec):
    name = "webp"
    order = 41
    description = "input image as lossy WebP (Pillow, libwebp), whole model on the edge"
    # lossy WebP has no grayscale: a gray image travels as RGB and is converted back
    format, feature, max_side, gray_mode = "WEBP", "webp", 16_383, "RGB"
    save_options: ClassVar = {"method": 4, "lossless": False}
