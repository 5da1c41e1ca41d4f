"""`local`: the whole model on the device; nothing crosses the network."""

import torch

from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader


@register
class Local(Offloader):
    name = "local"
    order = 10
    description = "whole model on the device, nothing offloaded"
    tasks = ("classification", "detection")

    def device(self, sample, timer):
        with timer.phase("device"), torch.inference_mode():
            logits = self.model(self.plugin.to_tensor(sample[None]))
            prediction = predictions.predict(self.plugin, logits)[0]
        return DeviceResult(prediction=prediction)

    def max_payload(self) -> int:
        """Nothing is sent."""
        return 0

    def edge(self, payload, timer):
        raise ValueError(f"local sends nothing to the edge; got a payload of {len(payload)} bytes")
