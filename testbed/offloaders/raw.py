"""`raw`: send the raw input (e.g. uint8 pixels) and run the whole model on the edge."""

import numpy as np
import torch

from testbed.models import predictions
from testbed.offloaders import register
from testbed.offloaders.base import DeviceResult, Offloader, to_edge, to_host


@register
class Raw(Offloader):
    name = "raw"
    order = 20
    description = "raw input sent as is, whole model on the edge"
    tasks = ("classification", "detection")

    def device(self, sample, timer):
        with timer.phase("encode"):
            payload = np.ascontiguousarray(sample, dtype=self.plugin.input_spec.dtype).tobytes()
        return DeviceResult(payload=payload)

    def max_payload(self) -> int:
        """Exactly the input's bytes."""
        spec = self.plugin.input_spec
        return int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize

    def edge(self, payload, timer):
        spec = self.plugin.input_spec
        dtype = np.dtype(spec.dtype)
        expected = self.max_payload()
        if len(payload) != expected:
            raise ValueError(f"raw payload of {len(payload)} bytes, expected {expected}")
        with timer.phase("decode"):
            sample = np.frombuffer(payload, dtype=dtype).reshape(spec.shape)
        with timer.phase("edge"), torch.inference_mode():
            logits = self.model(to_edge(self.plugin.to_tensor(sample[None])))
        return predictions.predict(self.plugin, to_host(logits))[0]
