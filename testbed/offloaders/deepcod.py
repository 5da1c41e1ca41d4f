"""`deepcod`: DeepCOD on the input (Yao et al., SenSys 2020).

Device (`encode` phase): the learned sampling convolution, nearest-centre quantization
and entropy coding by the Numba kernels. Edge (`decode` phase): entropy decoding, the
centres' values, the decoder back to the input's space; then (`edge`) the plugin's
unmodified model. The networks come from `python -m testbed.deepcod.train`.
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.deepcod.model import DeepCOD
from testbed.deepcod.train import artefact_path
from testbed.errors import PluginError
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader, Param


@register
class DeepCODOffloader(Offloader):
    name = "deepcod"
    description = "learned sampling encoder + quantizer + entropy coding, decoder on the edge"
    params = {"ratio": Param(float, 0.1, "a number > 0 and <= 1", lambda r: 0 < r <= 1)}  # noqa: RUF012
    uses_kernels = True

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        from kernels import quantize

        path = artefact_path(plugin, params["ratio"])
        if not path.is_file():
            raise PluginError(
                f"deepcod: no trained networks for plugin {plugin.name!r} at ratio "
                f"{params['ratio']:g} ({path}); train them with: python -m testbed.deepcod.train "
                f"--plugin {plugin.name} --ratio {params['ratio']:g}"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = saved["config"]
        self.networks = DeepCOD(config["in_channels"], config["ratio"], config["centres"],
                                config.get("width", 64))  # fmt: skip
        self.networks.load_state_dict(saved["state_dict"])
        self.networks.eval()
        self.codebook = quantize.Codebook(self.networks.quantizer.centres.detach().numpy())
        h, w = plugin.input_spec.shape[1:]
        self.shape = (1, self.networks.encoder.out_channels, h // 4, w // 4)

    def device(self, sample, timer):
        from kernels import entropy, quantize

        with timer.phase("encode"), torch.inference_mode():
            y = self.networks.encoder(self.plugin.to_tensor(sample[None])).numpy()
            indices = quantize.nearest_centre(y, self.codebook)
            payload = entropy.encode(indices)
        return DeviceResult(payload=payload)

    def edge(self, payload, timer):
        from kernels import entropy, quantize

        with timer.phase("decode"), torch.inference_mode():
            try:
                indices = entropy.decode(payload)
            except entropy.CorruptBlob as exc:
                raise ValueError(f"deepcod payload: {exc}") from None
            if indices.shape != self.shape or indices.dtype != np.uint8:
                raise ValueError(f"deepcod payload of shape {indices.shape}, expected {self.shape}")
            if indices.size and int(indices.max()) >= len(self.codebook.centres):
                raise ValueError("deepcod payload names a centre that does not exist")
            y = quantize.centre_values(indices, self.codebook)
            recon = self.networks.decoder(torch.from_numpy(np.ascontiguousarray(y)))
        with timer.phase("edge"), torch.inference_mode():
            logits = self.model(recon)
        return int(logits.argmax(dim=1)[0])

    def describe(self):
        return {
            **self.config,
            "measurements": list(self.shape[1:]),
            "centres": len(self.codebook.centres),
        }
