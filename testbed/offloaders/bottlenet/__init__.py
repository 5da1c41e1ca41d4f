"""`bottlenet`: a learned bottleneck at a split point (BottleNet 2019, BottleNet++ 2020).

Device: stages[:split] (`device` phase), then (`encode`) the bottleneck's encoder down
to a few channels in [0, 1], k-bit uniform codes with the fixed step 1/(2^k - 1) (so no
scale or offset travels) and entropy coding by the Numba kernels. Edge (`decode`):
entropy decoding, validation, the codes' values and the learned decoder back to the
split's feature shape; then (`edge`) the plugin's unmodified stages[split:].

The payload is a 2-byte header (split, bits), checked against the loaded networks so
that a device and an edge with different artefacts fail loudly, then the blob of
`kernels.entropy`, which carries the codes' shape. The networks come from
`python -m testbed.offloaders.bottlenet.train`; the scenario's `split`, `channels`, `bits` and
`stride` only pick the artefact (`bottlenet-s2-c4-b4-x2.pt`), whose saved config is what
the networks are built from. The defaults (split -1: the plugin's last split point;
4 channels, 4 bits, stride 2) pick the artefact committed for fashion_cnn.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from testbed.errors import PluginError
from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader, to_edge, to_host
from testbed.offloaders.bottlenet.artefacts import artefact_path, command
from testbed.offloaders.bottlenet.model import BottleNet, resolve_split, step
from testbed.offloaders.params import Param
from testbed.offloaders.split import feature_shape, run_head

HEADER = struct.Struct("<BB")  # split, bits


def _settings(key: tuple) -> str:
    plugin, split, channels, bits, stride = key
    return (
        f"of plugin {plugin!r} at split {split} ({channels} channels, {bits} bits, stride {stride})"
    )


@register
class BottleNetOffloader(Offloader):
    name = "bottlenet"
    order = 70
    description = "stages up to a split, learned bottleneck + k-bit codes + entropy coding"
    params = {  # noqa: RUF012
        "split": Param(
            int,
            -1,
            "-1 (the plugin's last split point) or one of its split points",
            lambda s: s == -1 or 1 <= s <= 255,
        ),
        "channels": Param(int, 4, "an integer >= 1", lambda c: c >= 1),
        "bits": Param(int, 4, "an integer in 1..8", lambda b: 1 <= b <= 8),
        "stride": Param(
            int, 2, "an integer >= 1 (2 halves the codes' height and width)", lambda s: s >= 1
        ),
    }
    uses_kernels = True

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        given = self.config
        split = resolve_split(plugin, given["split"])
        asked = (plugin.name, split, given["channels"], given["bits"], given["stride"])
        path = artefact_path(plugin, *asked[1:])
        retrain = command(*asked)
        if not path.is_file():
            raise PluginError(
                f"bottlenet: no trained bottleneck {_settings(asked)} ({path}); "
                f"train it with: {retrain}"
            )
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            config = saved["config"]
            found = (
                config["plugin"],
                config["split"],
                config["channels"],
                config["bits"],
                config["stride"],
            )
            self.net = BottleNet(
                config["feature_shape"],
                config["channels"],
                config["bits"],
                config["width"],
                config["stride"],
            )
            self.net.load_state_dict(saved["state_dict"])
        except Exception as exc:
            raise PluginError(
                f"bottlenet: cannot load {path} ({type(exc).__name__}: {exc}); "
                f"train it again with: {retrain}"
            ) from None
        self.net.eval()
        shape = feature_shape(plugin, split)
        if found != asked or self.net.feature_shape != shape:
            raise PluginError(
                f"bottlenet: {path} holds the bottleneck {_settings(found)} for features "
                f"{self.net.feature_shape}, not {_settings(asked)} for features {shape}; "
                f"train it again with: {retrain}"
            )
        self.split, self.bits = split, found[3]
        self.step = step(self.bits)
        self.code_shape = self.net.code_shape

    def device(self, sample, timer):
        from kernels import entropy, quantize

        with timer.phase("device"):
            features = run_head(self.plugin, self.model, sample, self.split)
        with timer.phase("encode"), torch.inference_mode():
            y = self.net.encoder(torch.from_numpy(features)[None])[0].numpy()
            codes = quantize.quantize_uniform(y, self.bits, self.step, np.float32(0))
            payload = HEADER.pack(self.split, self.bits) + entropy.encode(codes)
        return DeviceResult(payload=payload, choice={"split": self.split, "bits": self.bits})

    def edge(self, payload, timer):
        from kernels import quantize

        with timer.phase("decode"), torch.inference_mode():
            codes = self.unpack(payload)
            y = quantize.dequantize_uniform(codes, self.step, np.float32(0))
            features = self.net.decoder(to_edge(y[None]))
        with timer.phase("edge"), torch.inference_mode():
            logits = self.model[self.split :](features)
        return predictions.predict(self.plugin, to_host(logits))[0]

    def max_payload(self) -> int:
        """Header and the blob of the codes' shape, its k-bit codes spread evenly."""
        from kernels import entropy

        return HEADER.size + entropy.max_blob_size(self.code_shape, np.uint8, 1 << self.bits)

    def unpack(self, payload: bytes) -> np.ndarray:
        """The codes, after checking everything: the payload is untrusted network input."""
        from kernels import entropy

        if len(payload) > self.max_payload():
            raise ValueError(
                f"bottlenet payload of {len(payload)} bytes, at most {self.max_payload()}"
            )
        if len(payload) < HEADER.size:
            raise ValueError(f"bottlenet payload of {len(payload)} bytes, shorter than its header")
        split, bits = HEADER.unpack_from(payload)
        if (split, bits) != (self.split, self.bits):
            raise ValueError(
                f"bottlenet payload at split {split} with {bits} bits; this edge decodes "
                f"split {self.split} with {self.bits} bits"
            )
        try:
            codes = entropy.decode(
                memoryview(payload)[HEADER.size :], shape=self.code_shape, dtype=np.uint8
            )
        except entropy.CorruptBlob as exc:
            raise ValueError(f"bottlenet payload: {exc}") from None
        if codes.size and int(codes.max()) >= 1 << self.bits:
            raise ValueError(f"bottlenet payload has a code above {self.bits} bits")
        return codes

    def describe(self):
        return {
            **self.config,
            "split": self.split,
            "channels": self.net.channels,
            "bits": self.bits,
            "stride": self.net.stride,
            "codes": list(self.code_shape),
        }
