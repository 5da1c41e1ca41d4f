"""`deepdecision`: Ran et al., INFOCOM 2018 ("DeepDecision: a mobile deep learning
framework for edge video analytics"). Per request the device either runs the whole
model itself or sends the input image downscaled (SCALES) and JPEG-coded (QUALITIES);
the edge upscales it back to the model's input size (bilinear) and runs the model.

The rule here: the option with the lowest predicted latency among those whose accuracy
drop, measured on a calibration set from the train split (`testbed.offloaders.calibration`), stays
within `max_drop_pp`. Local (drop 0) is always an option. Predicted latency:

    local:    the device's profiled model time
    offload:  device resize + encode (profiled) + bytes * 8 / estimated uplink
              + one-way delay + edge decode + upscale + model (the edge's profile)
              + one-way delay for the small reply

Within a scale, fewer bytes are never slower, so calibration keeps per scale only the
lowest quality within the bound (a bisection, as JALAD does per split).

The testbed's bandwidth estimate is passive (`testbed.offloaders.link_estimate`): while the device runs
everything locally it learns nothing about the link. So after `probe_every` local
requests in a row the next one offloads the fastest option anyway (a probe), and
while the last offloaded request moved the estimate by more than 5 %, the next one
probes too: the estimate settles on the new rate after a step, either way, and the
decision returns to offloading when the link recovers.

The edge treats the payload as untrusted network input: JPEG only, and the header's
size must be one of the allowed scales of the model's input and its mode the expected
one before any pixel is decoded.
"""

from __future__ import annotations

import io
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from testbed.agents.protocol import HEADER
from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.adaptive import PRIOR
from testbed.offloaders.base import (
    DeviceResult,
    Offloader,
    measured_once,
    median_ms,
    model_ms,
    to_edge,
    to_host,
)
from testbed.offloaders.calibration import Calibrator, max_drop
from testbed.offloaders.image_codec import Jpeg
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.offloaders.params import Param
from testbed.offloaders.pillow_codec import (
    calibration_identity,
    check_codec,
    image_input,
    max_coded_size,
    open_image,
    planes,
    to_image,
    undecodable,
)

SCALES = (1.0, 0.75, 0.5, 0.35)  # of the model's input width and height, largest first
QUALITIES = (50, 75, 90, 100)  # JPEG qualities, cheapest first (Calibrator.lowest's order)
RESAMPLE = Image.Resampling.BILINEAR  # down on the device, up on the edge
SAVE_OPTIONS = Jpeg.save_options  # the same deterministic encoder settings as `jpeg`
MOVING = 0.05  # an upload that moved the estimate this much is followed by a probe
LOCAL = "local"


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


@register
class DeepDecision(Offloader):
    name = "deepdecision"
    order = 90
    description = (
        "per request: local, or the image downscaled + JPEG, by predicted latency within "
        "an accuracy bound"
    )
    tasks: ClassVar = ("classification", "detection")  # whole model, either side
    params: ClassVar[dict[str, Param]] = {
        "prior_mbps": PRIOR,
        "max_drop_pp": max_drop("a finite number of points >= 0"),
        "calibration_samples": Param(int, 200, "an integer >= 10", lambda v: v >= 10),
        "probe_every": Param(
            int,
            10,
            "an integer >= 0: local requests in a row before a probe, 0 never",
            lambda v: v >= 0,
        ),
    }

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        self.shape = image_input(self.name, plugin, Jpeg.format, Jpeg.max_side)
        check_codec(self.name, Jpeg.format, Jpeg.feature)
        channels, height, width = self.shape
        self.wire_mode = "RGB" if channels == 3 else "L"
        # scale -> (width, height) on the wire, and back; tiny images may merge two scales
        self.sizes: dict[float, tuple[int, int]] = {}
        self.allowed: dict[tuple[int, int], float] = {}
        for scale in SCALES:
            size = scaled_size(width, height, scale)
            if size not in self.allowed:
                self.sizes[scale], self.allowed[size] = size, scale
        self.options: list[dict[str, Any]] | None = None  # per scale, from calibration
        self.device_model_ms: float | None = None
        self.encode_ms: dict[float, float] = {}  # per scale, its option's quality
        self.edge_model_ms: float | None = None
        self.edge_decode_ms: dict[float, float] = {}
        self.link = LinkEstimate()
        self._local_streak = 0  # local requests in a row
        self._sent_with: float | None = None  # the estimate the last request was sent with

    # ------------------------------------------------------------------------- codec

    def encode(self, sample: np.ndarray, scale: float, quality: int) -> bytes:
        image = to_image(sample)
        size = self.sizes[scale]
        if image.size != size:
            image = image.resize(size, RESAMPLE)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, **SAVE_OPTIONS)
        return buffer.getvalue()

    def max_payload(self) -> int:
        """The largest allowed size's JPEG bound (`pillow_codec.max_coded_size`)."""
        return max(
            max_coded_size(Jpeg.format, self.shape[0], height, width)
            for width, height in self.allowed
        )

    def decode(self, payload: bytes) -> tuple[float, np.ndarray]:
        """Payload -> (its scale, uint8 pixels upscaled to the plugin's shape); ValueError
        for anything but a JPEG of an allowed size and the expected mode."""
        what = f"{self.name} payload"
        height, width = self.shape[1:]
        image: Image.Image
        with open_image(what, payload, Jpeg.format, self.max_payload()) as image:
            scale = self.allowed.get(image.size)
            if scale is None:
                sizes = ", ".join(f"{w}x{h}" for w, h in self.allowed)
                raise ValueError(
                    f"{what} is {image.size[0]}x{image.size[1]}; allowed sizes: {sizes}"
                )
            if image.mode != self.wire_mode:
                raise ValueError(f"{what} in mode {image.mode}, expected {self.wire_mode}")
            try:
                image.load()
                if image.size != (width, height):
                    image = image.resize((width, height), RESAMPLE)
                pixels = np.array(image)  # writable: torch
            except Exception as exc:
                raise undecodable(what, payload, exc) from None
        return scale, planes(pixels, self.shape, what)

    # ------------------------------------------------------------------- calibration

    def _run_option(self, option, inputs: np.ndarray):
        """The Calibrator's measurement: device encode, edge decode + upscale, the model;
        sizes are whole frames, as they cross the wire."""
        scale, quality = option
        payloads = [self.encode(sample, scale, quality) for sample in inputs]
        decoded = np.stack([self.decode(payload)[1] for payload in payloads])
        return self.model(self.plugin.to_tensor(decoded)), [HEADER.size + len(p) for p in payloads]

    def calibrator(self) -> Calibrator:
        identity = f"{calibration_identity(Jpeg.feature, SAVE_OPTIONS)} bilinear"
        count = self.config["calibration_samples"]
        return Calibrator(self.plugin, self.model, self.name, self._run_option, count, identity)

    def calibrate(self) -> list[dict[str, Any]]:
        """Per scale, the lowest quality within `max_drop_pp`; a scale none of whose
        qualities is within it is kept, marked, and never chosen."""
        if self.options is not None:
            return self.options
        calibrator, bound = self.calibrator(), self.config["max_drop_pp"]
        options = []
        for scale in self.sizes:
            (_, quality), score = calibrator.lowest([[scale, q] for q in QUALITIES], bound)
            options.append(score.option(bound, scale=scale, quality=quality))
        self.options = options
        return options

    # ------------------------------------------------------------------------ profiles

    def _typical_image(self) -> np.ndarray:
        """A fixed image with smooth structure and some texture, for timing the codec: a
        JPEG's cost depends on the content, and the device may not have the data."""
        channels, height, width = self.shape
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        base = 128 + 70 * np.sin(x * 6 / width) * np.cos(y * 5 / height) + 0.2 * (x - y)
        rng = np.random.default_rng(0)
        shades = np.linspace(-20, 20, channels)[:, None, None]
        noisy = base[None] + shades + rng.normal(0, 10, (channels, height, width))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def prepare(self, side: str) -> None:
        """Profiles taken on the host itself (its CPU share is what makes the options
        differ): the whole model, and the codec work of each scale on that side; the
        edge's, the same for every deepdecision of this model, once per process."""
        if side != "device":
            key = ("deepdecision edge", self.plugin.name, tuple(self.sizes.items()))
            profile = measured_once(self.model, key, self._edge_profile)
            self.edge_model_ms, self.edge_decode_ms = profile
            return
        image = self._typical_image()
        self.device_model_ms = model_ms(self.plugin, self.model, image)
        options = self.calibrate()
        self.encode_ms = {
            o["scale"]: median_ms(partial(self.encode, image, o["scale"], o["quality"]))
            for o in options
        }

    def _edge_profile(self) -> tuple[float, dict[float, float]]:
        """(the whole model's ms, each scale's decode ms) on this host."""
        image = self._typical_image()
        whole_ms = model_ms(self.plugin, self.model, image)
        decode_ms = {}
        for scale in self.sizes:
            payload = self.encode(image, scale, 90)
            decode_ms[scale] = median_ms(partial(self.decode, payload))
        return whole_ms, decode_ms

    def connect(self, edge: dict[str, Any], link: LinkEstimate) -> None:
        self.edge_model_ms = edge.get("edge_model_ms")
        self.edge_decode_ms = {float(k): v for k, v in (edge.get("edge_decode_ms") or {}).items()}
        self.link = link

    # ------------------------------------------------------------------------ decision

    def candidates(self) -> list[dict[str, Any]]:
        """Local first, then every scale's option within the accuracy bound."""
        options = self.calibrate()
        return [{"mode": LOCAL, "drop_pp": 0.0}] + [o for o in options if o["within_bound"]]

    def predict_ms(self, option: dict[str, Any]) -> float:
        """The latency model of the module docstring. Missing profiles count as free,
        except the device's model, which is profiled now."""
        if self.device_model_ms is None:
            self.device_model_ms = model_ms(self.plugin, self.model, self._typical_image())
        if option.get("mode") == LOCAL:
            return self.device_model_ms
        scale = option["scale"]
        return (
            self.encode_ms.get(scale, 0.0)
            + self.link.transfer_ms(option["mean_bytes"], self.config["prior_mbps"])
            + self.edge_decode_ms.get(scale, 0.0)
            + (self.edge_model_ms or 0.0)
            + self.link.one_way_ms
        )

    def choose(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fastest candidate within the bound (ties: the smaller drop), or a probe;
        returns it and what to record."""
        scored = sorted(
            ((self.predict_ms(o), o["drop_pp"], i, o) for i, o in enumerate(self.candidates())),
            key=lambda t: t[:3],
        )
        predicted, _, _, best = scored[0]
        estimate = self.link.uplink_mbps
        probe = False
        offload = [(ms, o) for ms, _, _, o in scored if o.get("mode") != LOCAL]
        current = estimate if estimate is not None else self.config["prior_mbps"]
        if best.get("mode") == LOCAL and offload and self.config["probe_every"]:
            sent = self._sent_with
            moved = sent is not None and abs(current / sent - 1) > MOVING
            if moved or self._local_streak >= self.config["probe_every"]:
                (predicted, best), probe = offload[0], True
        is_local = best.get("mode") == LOCAL
        self._sent_with = None if is_local else current
        self._local_streak = self._local_streak + 1 if is_local else 0
        if best.get("mode") == LOCAL:
            choice: dict[str, Any] = {"mode": LOCAL}
        else:
            choice = {"scale": best["scale"], "quality": best["quality"]}
        # the estimate used: the last trusted one, else the prior (link_estimate's rule)
        choice.update(predicted_ms=round(predicted, 2), **self.link.record())
        if probe:
            choice["probe"] = True
        return best, choice

    # ------------------------------------------------------------------------ halves

    def device(self, sample, timer):
        best, choice = self.choose()
        if best.get("mode") == LOCAL:
            return self.run_whole_model(sample, timer, choice)
        with timer.phase("encode"):
            payload = self.encode(sample, best["scale"], best["quality"])
        return DeviceResult(payload=payload, choice=choice)

    def edge(self, payload, timer):
        with timer.phase("decode"):
            _, pixels = self.decode(payload)
        with timer.phase("edge"), torch.inference_mode():
            logits = self.model(to_edge(self.plugin.to_tensor(pixels[None])))
        return predictions.predict(self.plugin, to_host(logits))[0]

    def describe(self) -> dict[str, Any]:
        out = dict(self.config)
        if self.options is not None:
            out["options"] = self.options
        if self.device_model_ms is not None:
            out["device_model_ms"] = round(self.device_model_ms, 3)
            out["device_encode_ms"] = {str(s): round(ms, 3) for s, ms in self.encode_ms.items()}
        if self.edge_model_ms is not None:
            out["edge_model_ms"] = round(self.edge_model_ms, 3)
            out["edge_decode_ms"] = {str(s): round(ms, 3) for s, ms in self.edge_decode_ms.items()}
        return out
