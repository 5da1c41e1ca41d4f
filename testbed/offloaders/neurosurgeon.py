"""`neurosurgeon`: Kang et al., ASPLOS 2017. Per request, the split with the lowest
predicted latency (device stages + upload of float32 features at the estimated
bandwidth + edge stages), from stage profiles taken on each host; split 0 sends the
raw input, the last split runs everything locally. Features cross the wire as float32,
uncompressed, as in the paper.
"""

from __future__ import annotations

import numpy as np

from testbed.agents.protocol import HEADER
from testbed.offloaders import register
from testbed.offloaders.adaptive import AdaptiveSplit
from testbed.offloaders.base import DeviceResult
from testbed.offloaders.split import (
    Candidate,
    feature_shape,
    max_float_payload,
    pack_features,
    run_head,
    run_tail,
    unpack_features,
)

_SPLIT_HEADER = 1  # the split byte in front of the features


@register
class Neurosurgeon(AdaptiveSplit):
    name = "neurosurgeon"
    order = 50
    description = "split chosen per request by profiled, predicted latency; float32 features"

    def candidates(self) -> list[Candidate]:
        spec = self.plugin.input_spec
        raw = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        out = [
            Candidate(0, HEADER.size + _SPLIT_HEADER + raw, bits=8 * np.dtype(spec.dtype).itemsize)
        ]
        for split in self.plugin.split_points:
            size = int(np.prod(feature_shape(self.plugin, split))) * 4
            out.append(Candidate(split, HEADER.size + _SPLIT_HEADER + size))
        out.append(Candidate(len(self.model), 0))
        return out

    def device(self, sample, timer):
        best, choice = self.choose()
        if best.split == len(self.model):
            return self.run_whole_model(sample, timer, choice)
        if best.split == 0:
            features = np.ascontiguousarray(sample, dtype=self.plugin.input_spec.dtype)
        else:
            with timer.phase("device"):
                features = run_head(self.plugin, self.model, sample, best.split)
        with timer.phase("encode"):
            payload = pack_features(best.split, features)
        return DeviceResult(payload=payload, choice=choice)

    def max_payload(self) -> int:
        """The largest split's features as float32, or the raw input at split 0: exact."""
        return max_float_payload(self.plugin, {0, *self.plugin.split_points})

    def edge(self, payload, timer):
        with timer.phase("decode"):
            split, features = unpack_features(self.plugin, payload, {0, *self.plugin.split_points})
        with timer.phase("edge"):
            return run_tail(self.plugin, self.model, features, split)
