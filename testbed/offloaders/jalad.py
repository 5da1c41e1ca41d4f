"""`jalad`: Li et al., ICPADS 2018. A split plus k-bit quantization of the features
(per-tensor min/max) and entropy coding (Huffman, the kernels). Each split's smallest
k whose accuracy drop stays within `max_drop_pp` is found once on a calibration set
(`testbed.offloaders.calibration`); per request, the (split, k) with the lowest predicted latency
at the estimated bandwidth runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from testbed.agents.protocol import HEADER
from testbed.offloaders import register
from testbed.offloaders.adaptive import PRIOR, AdaptiveSplit
from testbed.offloaders.base import DeviceResult
from testbed.offloaders.calibration import Calibrator
from testbed.offloaders.params import Param
from testbed.offloaders.split import (
    Candidate,
    max_coded_payload,
    pack_coded,
    run_head,
    run_tail,
    unpack_coded,
)

BITS = tuple(range(1, 9))


@register
class JALAD(AdaptiveSplit):
    name = "jalad"
    order = 60
    description = "split + k-bit feature quantization + entropy coding, within an accuracy bound"
    params = {  # noqa: RUF012
        "prior_mbps": PRIOR,
        "max_drop_pp": Param(float, 1.0, "a number of points >= 0", lambda v: v >= 0),
        "calibration_samples": Param(int, 200, "an integer >= 10", lambda v: v >= 10),
    }
    uses_kernels = True

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        self.options: list[dict[str, Any]] | None = None

    def _run(self, option, inputs):
        split, bits = option
        x = self.plugin.to_tensor(inputs)
        features = self.model[:split](x).numpy()
        sizes, restored = [], []
        for one in features:
            payload = pack_coded(split, bits, one)
            sizes.append(HEADER.size + len(payload))
            restored.append(unpack_coded(self.plugin, payload, {split})[2])
        return self.model[split:](torch.from_numpy(np.stack(restored))), sizes

    def calibrate(self) -> list[dict[str, Any]]:
        if self.options is not None:
            return self.options
        calibrator = Calibrator(
            self.plugin, self.model, "jalad", self._run, self.config["calibration_samples"]
        )
        options = []
        for split in self.plugin.split_points:
            (_, bits), score = calibrator.lowest(
                [[split, b] for b in BITS], self.config["max_drop_pp"]
            )
            options.append(score.option(self.config["max_drop_pp"], split=split, bits=bits))
        self.options = options
        return options

    def candidates(self) -> list[Candidate]:
        options = self.calibrate()
        within = [o for o in options if o["within_bound"]]
        # no split meets the bound: fall back to 8 bits everywhere (recorded in describe)
        chosen = within or [{**o, "bits": 8} for o in options]
        return [Candidate(o["split"], o["mean_bytes"], o["bits"]) for o in chosen]

    def device(self, sample, timer):
        best, choice = self.choose()
        with timer.phase("device"):
            features = run_head(self.plugin, self.model, sample, best.split)
        with timer.phase("encode"):
            payload = pack_coded(best.split, best.bits, features)
        return DeviceResult(payload=payload, choice=choice)

    def max_payload(self) -> int:
        """Header and the worst 8-bit blob of the largest split: the edge accepts any bits
        at any split point (the device's calibration is its own)."""
        return max_coded_payload(self.plugin, self.plugin.split_points)

    def edge(self, payload, timer):
        if len(payload) > self.max_payload():
            raise ValueError(f"jalad payload of {len(payload)} bytes, at most {self.max_payload()}")
        with timer.phase("decode"):
            split, _, features = unpack_coded(self.plugin, payload, set(self.plugin.split_points))
        with timer.phase("edge"):
            return run_tail(self.plugin, self.model, features, split)

    def describe(self):
        out = super().describe()
        if self.options is not None:
            out["options"] = self.options
        return out
