"""`deepcod`: DeepCOD (Yao et al., SenSys 2020), on the input or after a split point.

Device (`encode` phase): the learned sampling convolution, nearest-centre quantization
and entropy coding by the Numba kernels; with `split: k` the device first runs
stages[:k] (`device` phase) and DeepCOD encodes their features. Edge (`decode` phase):
entropy decoding, the centres' values, the decoder back to the input's (or the
features') space; then (`edge`) the plugin's unmodified model (stages[k:]). The
networks come from `python -m testbed.offloaders.deepcod.train`. Sizes that are not multiples of 4
are padded by the encoder and cropped back after the decoder (`testbed.offloaders.deepcod.model`).

`ratios: [0.05, 0.1, 0.25]` instead of `ratio` makes it adaptive: one trained `Codec` per
ratio, and per request the ratio, or the whole model on the device, predicted fastest
within an accuracy bound (`testbed.offloaders.deepcod.adaptive`); its payload starts with
one byte, the chosen ratio's index in the sorted list.
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.errors import PluginError
from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader, to_edge, to_host
from testbed.offloaders.deepcod.adaptive import ADAPTIVE_PARAMS, AdaptiveRatios
from testbed.offloaders.deepcod.artefacts import artefact_path, command
from testbed.offloaders.deepcod.model import PADDING, PATCH, DeepCOD, padded
from testbed.offloaders.params import Param
from testbed.offloaders.split import feature_shape


class Codec:
    """One trained DeepCOD (a ratio, after a split): its networks, its codebook and the
    shape of its measurements on the wire."""

    def __init__(self, plugin, ratio: float, split: int) -> None:
        from kernels import quantize

        path = artefact_path(plugin, ratio, split)
        if not path.is_file():
            raise PluginError(
                f"deepcod: no trained networks for plugin {plugin.name!r} at ratio "
                f"{ratio:g}{f' after split {split}' if split else ''} ({path}); "
                f"train them with: {command(plugin.name, ratio, split)}"
            )
        self.ratio, self.path = ratio, path
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = saved["config"]
        self.networks = DeepCOD(
            config["in_channels"],
            config["ratio"],
            config["centres"],
            config.get("width", 64),
            bounded=split == 0,
            padding=config.get("padding", PADDING),
            scale=config.get("scale", 1.0),
            attention_pool=config.get("attention_pool", 1),
        )
        self.networks.load_state_dict(saved["state_dict"])
        self.networks.eval()
        self.codebook = quantize.Codebook(self.networks.quantizer.centres.detach().numpy())
        self.size = feature_shape(plugin, split)[1:]
        h, w = (padded(n) // PATCH for n in self.size)
        self.shape = (1, self.networks.encoder.out_channels, h, w)

    def encode(self, x: torch.Tensor) -> bytes:
        """One input (or its features), batch of 1 -> the entropy-coded centre indices."""
        from kernels import entropy, quantize

        with torch.inference_mode():
            y = to_host(self.networks.encode(to_edge(x))).numpy()  # the edge's profile: its GPU
        return entropy.encode(quantize.nearest_centre(y, self.codebook))

    def max_payload(self) -> int:
        """The blob of the measurements' shape, its centre indices spread evenly."""
        from kernels import entropy

        return entropy.max_blob_size(self.shape, np.uint8, len(self.codebook.centres))

    def decode(self, payload: bytes) -> torch.Tensor:
        """A blob -> the decoder's reconstruction; ValueError for anything malformed."""
        from kernels import entropy, quantize

        limit = self.max_payload()
        if len(payload) > limit:
            raise ValueError(f"deepcod payload of {len(payload)} bytes, at most {limit}")
        try:
            indices = entropy.decode(payload, shape=self.shape, dtype=np.uint8)
        except entropy.CorruptBlob as exc:
            raise ValueError(f"deepcod payload: {exc}") from None
        if indices.size and int(indices.max()) >= len(self.codebook.centres):
            raise ValueError("deepcod payload names a centre that does not exist")
        y = quantize.centre_values(indices, self.codebook)
        with torch.inference_mode():
            return self.networks.decode(to_edge(y), self.size)


@register
class DeepCODOffloader(AdaptiveRatios, Offloader):
    name = "deepcod"
    order = 30
    role = "proposed"  # the offloader this testbed evaluates: compared with every other
    description = "learned sampling encoder + quantizer + entropy coding, decoder on the edge"
    params = {  # noqa: RUF012
        "ratio": Param(float, 0.1, "a number > 0 and <= 1", lambda r: 0 < r <= 1),
        "split": Param(
            int, 0, "0 (the input) or one of the plugin's split points", lambda k: k >= 0
        ),
        **ADAPTIVE_PARAMS,  # used with `ratios` only
    }
    uses_kernels = True
    # trained per plugin on its train split: a classifier's logits and a detector's boxes
    # both come out of the unmodified model on the decoded input (testbed.models.predictions)
    tasks = ("classification", "detection")

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        self.split = split = self.config["split"]
        if split and split not in plugin.split_points:
            raise PluginError(
                f"deepcod: split {split} is not a split point of plugin {plugin.name!r} "
                f"({', '.join(map(str, plugin.split_points))}; 0 for the input)"
            )
        self.ratios = sorted(float(r) for r in self.config["ratios"])  # [] unless adaptive
        self.adaptive = bool(self.ratios)
        self.codecs = [Codec(plugin, r, split) for r in self.ratios or [self.config["ratio"]]]
        self.init_adaptive()
        # the one codec of a fixed ratio, as its attributes were named before `ratios`
        codec = self.codecs[0]
        self.networks, self.codebook, self.size, self.shape = (
            codec.networks,
            codec.codebook,
            codec.size,
            codec.shape,
        )

    def device(self, sample, timer):
        index, choice = self.choose() if self.adaptive else (0, None)
        if index is None:  # adaptive, and the whole model here was predicted fastest
            return self.run_whole_model(sample, timer, choice)
        if self.split:
            with timer.phase("device"), torch.inference_mode():
                features = self.model[: self.split](self.plugin.to_tensor(sample[None]))
        with timer.phase("encode"):
            x = features if self.split else self.plugin.to_tensor(sample[None])
            payload = self.codecs[index].encode(x)
            if self.adaptive:
                payload = bytes([index]) + payload
        return DeviceResult(payload=payload, choice=choice)

    def max_payload(self) -> int:
        """The largest codec's blob, and the ratio's byte where the offloader is adaptive:
        the edge accepts any of the listed ratios (the device's choice is its own)."""
        return int(self.adaptive) + max(c.max_payload() for c in self.codecs)

    def edge(self, payload, timer):
        limit = self.max_payload()
        if len(payload) > limit:
            raise ValueError(f"deepcod payload of {len(payload)} bytes, at most {limit}")
        codec = self.codecs[0]
        if self.adaptive:
            if not payload or payload[0] >= len(self.codecs):
                raise ValueError(
                    f"deepcod payload names no ratio of {len(self.codecs)} (its first byte)"
                )
            codec, payload = self.codecs[payload[0]], payload[1:]
        with timer.phase("decode"):
            recon = codec.decode(payload)
        with timer.phase("edge"), torch.inference_mode():
            output = self.model[self.split :](recon)
        return predictions.predict(self.plugin, to_host(output))[0]

    def place(self, device) -> None:
        """Every ratio's networks (its fused decoder is rebuilt from them once moved)."""
        for codec in self.codecs:
            codec.networks.to(device)

    def describe(self):
        out = {
            **self.config,
            "measurements": list(self.shape[1:]),
            "centres": len(self.codebook.centres),
        }
        if self.adaptive:
            out["measurements"] = {f"{c.ratio:g}": list(c.shape[1:]) for c in self.codecs}
            out.update(self.describe_adaptive())
        return out
