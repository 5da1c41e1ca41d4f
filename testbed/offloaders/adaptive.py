"""The adaptive split family's common part: profile the stages on both hosts, then pick,
for every request, the option with the lowest predicted latency at the bandwidth the
device currently estimates (`testbed.offloaders.link_estimate`). Neurosurgeon and JALAD differ only in
their options and payloads.
"""

from __future__ import annotations

from typing import Any, ClassVar

from testbed.offloaders.base import Offloader, measured_once
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.offloaders.params import Param
from testbed.offloaders.split import Candidate, profile_stages

PRIOR = Param(float, 1.0, "a bandwidth in Mbit/s > 0", lambda v: v > 0)


class AdaptiveSplit(Offloader):
    """Subclasses give `candidates()`; the device half calls `choose()` per request."""

    params: ClassVar[dict[str, Param]] = {"prior_mbps": PRIOR}

    def __init__(self, plugin, model, **params) -> None:
        super().__init__(plugin, model, **params)
        self.device_ms: list[float] | None = None
        self.edge_ms: list[float] | None = None
        self.link = LinkEstimate()

    def prepare(self, side: str) -> None:
        # profiled on the host itself: the device's CPU share is what makes splits differ
        if side == "device":
            self.device_ms = profile_stages(self.plugin, self.model)
            self.calibrate()
        else:  # the same for every offloader of this model: once per process
            self.edge_ms = measured_once(
                self.model, ("stages", self.plugin.name), self._profile_stages
            )

    def _profile_stages(self) -> list[float]:
        return profile_stages(self.plugin, self.model)

    def connect(self, edge: dict[str, Any], link: LinkEstimate) -> None:
        self.edge_ms = list(edge.get("edge_stage_ms") or []) or None
        self.link = link

    def candidates(self) -> list[Candidate]:
        raise NotImplementedError

    def choose(self) -> tuple[Candidate, dict[str, Any]]:
        """The candidate with the lowest predicted latency, and what to record of it.
        Without an edge profile (a device half used alone) the edge's compute counts as
        free; without a device profile, one is taken now."""
        if self.device_ms is None:
            self.device_ms = profile_stages(self.plugin, self.model)
        edge_ms = self.edge_ms or [0.0] * len(self.device_ms)
        prior = self.config["prior_mbps"]
        scored = [
            (c.predict_ms(self.device_ms, edge_ms, self.link, prior), c) for c in self.candidates()
        ]
        predicted, best = min(scored, key=lambda pair: (pair[0], -pair[1].split))
        # the estimate used: the last trusted one, else the prior (link_estimate's rule)
        choice = {"split": best.split, "predicted_ms": round(predicted, 2), **self.link.record()}
        if best.bits != 32:
            choice["bits"] = best.bits
        return best, choice

    def describe(self) -> dict[str, Any]:
        out = dict(self.config)
        if self.edge_ms is not None:
            out["edge_stage_ms"] = [round(ms, 3) for ms in self.edge_ms]
        if self.device_ms is not None:
            out["device_stage_ms"] = [round(ms, 3) for ms in self.device_ms]
        return out
