"""`deepcod`: DeepCOD (Yao et al., SenSys 2020), on the input or after a split point.

Device (`encode` phase): the learned sampling convolution, nearest-centre quantization
and entropy coding by the Numba kernels; with `split: k` the device first runs
stages[:k] (`device` phase) and DeepCOD encodes their features. Edge (`decode` phase):
entropy decoding, the centres' values, the decoder back to the input's (or the
features') space; then (`edge`) the plugin's unmodified model (stages[k:]). The
networks come from `python -m testbed.offloaders.deepcod.train`. Sizes that are not multiples of 4
are padded by the encoder and cropped back after the decoder (`testbed.offloaders.deepcod.model`).
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.errors import PluginError
from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader
from testbed.offloaders.deepcod.artefacts import artefact_path, command
from testbed.offloaders.deepcod.model import PADDING, PATCH, DeepCOD, padded
from testbed.offloaders.params import Param
from testbed.offloaders.split import feature_shape


@register
class DeepCODOffloader(Offloader):
    name = "deepcod"
    order = 30
    role = "proposed"  # the offloader this testbed evaluates: compared with every other
    description = "learned sampling encoder + quantizer + entropy coding, decoder on the edge"
    params = {  # noqa: RUF012
        "ratio": Param(float, 0.1, "a number > 0 and <= 1", lambda r: 0 < r <= 1),
        "split": Param(
            int, 0, "0 (the input) or one of the plugin's split points", lambda k: k >= 0
        ),
    }
    uses_kernels = True
    # trained per plugin on its train split: a classifier's logits and a detector's boxes
    # both come out of the unmodified model on the decoded input (testbed.models.predictions)
    tasks = ("classification", "detection")

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        from kernels import quantize

        self.split = split = self.config["split"]
        if split and split not in plugin.split_points:
            raise PluginError(
                f"deepcod: split {split} is not a split point of plugin {plugin.name!r} "
                f"({', '.join(map(str, plugin.split_points))}; 0 for the input)"
            )
        path = artefact_path(plugin, self.config["ratio"], split)
        if not path.is_file():
            raise PluginError(
                f"deepcod: no trained networks for plugin {plugin.name!r} at ratio "
                f"{self.config['ratio']:g}{f' after split {split}' if split else ''} ({path}); "
                f"train them with: {command(plugin.name, self.config['ratio'], split)}"
            )
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

    def device(self, sample, timer):
        from kernels import entropy, quantize

        if self.split:
            with timer.phase("device"), torch.inference_mode():
                x = self.model[: self.split](self.plugin.to_tensor(sample[None]))
        with timer.phase("encode"), torch.inference_mode():
            x = x if self.split else self.plugin.to_tensor(sample[None])
            y = self.networks.encode(x).numpy()
            indices = quantize.nearest_centre(y, self.codebook)
            payload = entropy.encode(indices)
        return DeviceResult(payload=payload)

    def max_payload(self) -> int:
        """The blob of the measurements' shape, its centre indices spread evenly."""
        from kernels import entropy

        return entropy.max_blob_size(self.shape, np.uint8, len(self.codebook.centres))

    def edge(self, payload, timer):
        from kernels import entropy, quantize

        limit = self.max_payload()
        if len(payload) > limit:
            raise ValueError(f"deepcod payload of {len(payload)} bytes, at most {limit}")
        with timer.phase("decode"), torch.inference_mode():
            try:
                indices = entropy.decode(payload, shape=self.shape, dtype=np.uint8)
            except entropy.CorruptBlob as exc:
                raise ValueError(f"deepcod payload: {exc}") from None
            if indices.size and int(indices.max()) >= len(self.codebook.centres):
                raise ValueError("deepcod payload names a centre that does not exist")
            y = quantize.centre_values(indices, self.codebook)
            recon = self.networks.decode(torch.from_numpy(np.ascontiguousarray(y)), self.size)
        with timer.phase("edge"), torch.inference_mode():
            output = self.model[self.split :](recon)
        return predictions.predict(self.plugin, output)[0]

    def describe(self):
        return {
            **self.config,
            "measurements": list(self.shape[1:]),
            "centres": len(self.codebook.centres),
        }
