"""Adaptive DeepCOD: `{name: deepcod, ratios: [0.05, 0.1, 0.25]}`, each ratio a trained
artefact. Per request the device runs one ratio's encoder, or the whole model itself
(local), whichever is predicted fastest among the options whose accuracy drop, measured
once on a calibration set from the train split (`testbed.offloaders.calibration`), stays
within `max_drop_pp`. Local (drop 0) is always an option. Predicted latency:

    local:    the device's profiled model time
    ratio r:  device encode (stages[:split] and r's encoder, profiled on the device)
              + mean bytes(r) * 8 / estimated uplink + one-way delay
              + edge decode + the model's rest (profiled at the edge, sent in HELLO_OK)
              + one-way delay for the small reply

Within the bound the smallest ratio is usually the fastest (fewer bytes, a smaller
encoder), so the choice that follows the link is mostly local against offloading; a
larger ratio wins only where its measured encode or decode is cheaper. With networks
that lose tens of points (this testbed's, docs/offloaders.md "DeepCOD"), the default
1-point bound leaves only local: that is the rule working, not a failure.

The bandwidth estimate is passive (`testbed.offloaders.link_estimate`), so, as
`deepdecision` does, after `probe_every` local requests in a row the next one offloads
the fastest option within the bound anyway (a probe), and while the last offloaded
request moved the estimate by more than 5 %, the next one probes too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from testbed.agents.protocol import HEADER
from testbed.offloaders.adaptive import PRIOR
from testbed.offloaders.base import measured_once, median_ms, model_ms
from testbed.offloaders.calibration import Calibrator, file_digest, max_drop
from testbed.offloaders.link_estimate import LinkEstimate
from testbed.offloaders.params import Param

LOCAL = "local"
MOVING = 0.05  # an upload that moved the estimate this much is followed by a probe
MAX_RATIOS = 8


def _ratio_list(value: list) -> bool:
    """[] (a fixed `ratio`), or up to MAX_RATIOS distinct numbers in (0, 1]."""
    numbers = all(
        isinstance(r, int | float) and not isinstance(r, bool) and 0 < r <= 1 for r in value
    )
    return numbers and len(value) <= MAX_RATIOS and len({float(r) for r in value}) == len(value)


ADAPTIVE_PARAMS = {
    "ratios": Param(
        list,
        [],
        f"[] (the one `ratio`) or a list of up to {MAX_RATIOS} distinct numbers > 0 and <= 1, "
        "each a trained ratio, instead of `ratio`",
        _ratio_list,
        excludes="ratio",
    ),
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


def key(ratio: float) -> str:
    """A ratio as the profiles and options name it (JSON keys are strings)."""
    return f"{ratio:g}"


class AdaptiveRatios:
    """The adaptive part of the `deepcod` offloader (`self.adaptive`): calibration,
    profiles, and the per-request choice. Without `ratios` every method here leaves the
    offloader as it was."""

    # set by the offloader (testbed.offloaders.deepcod.DeepCODOffloader)
    adaptive: bool
    ratios: list[float]
    codecs: list[Any]
    split: int
    plugin: Any
    model: Any
    config: dict[Any, Any]

    def init_adaptive(self) -> None:
        self.options: list[dict[str, Any]] | None = None  # per ratio, from calibration
        self.device_model_ms: float | None = None
        self.encode_ms: dict[str, float] = {}  # per ratio, on the device
        self.edge_ms: dict[str, float] = {}  # per ratio: decode + the model's rest, at the edge
        self.link = LinkEstimate()
        self._local_streak = 0  # local requests in a row
        self._sent_with: float | None = None  # the estimate the last request was sent with

    # ------------------------------------------------------------------- calibration

    def _run_ratio(self, codec, inputs: np.ndarray):
        """The Calibrator's measurement of one ratio: device head and encoder, entropy
        coding, the edge's decode and the model's rest; sizes as frames on the wire."""
        x = self.plugin.to_tensor(inputs)
        if self.split:
            x = self.model[: self.split](x)
        sizes, decoded = [], []
        for one in x:
            blob = codec.encode(one[None])
            sizes.append(HEADER.size + 1 + len(blob))
            decoded.append(codec.decode(blob))
        return self.model[self.split :](torch.cat(decoded)), sizes

    def calibrate(self) -> list[dict[str, Any]] | None:
        """Each ratio's accuracy drop and mean frame size, cached per artefact (its
        digest), marked within `max_drop_pp` or not; None for a fixed ratio."""
        if not self.adaptive:
            return None
        if self.options is not None:
            return self.options
        bound, count = self.config["max_drop_pp"], self.config["calibration_samples"]
        options = []
        for codec in self.codecs:
            identity = f"split {self.split} {file_digest(codec.path)}"
            run = lambda _, inputs, codec=codec: self._run_ratio(codec, inputs)  # noqa: E731
            calibrator = Calibrator(self.plugin, self.model, "deepcod", run, count, identity)
            options.append(calibrator.score(codec.ratio).option(bound, ratio=codec.ratio))
        self.options = options
        return options

    # ------------------------------------------------------------------------ profiles

    def _typical_sample(self) -> np.ndarray:
        """A fixed pseudo-random input: the networks' cost does not depend on the values,
        and the host may not have the data."""
        spec = self.plugin.input_spec
        rng = np.random.default_rng(0)
        return rng.uniform(spec.low, spec.high, size=tuple(spec.shape)).astype(spec.dtype)

    def _encode_work(self, codec, sample: np.ndarray):
        @torch.inference_mode()
        def work() -> bytes:
            x = self.plugin.to_tensor(sample[None])
            return codec.encode(self.model[: self.split](x) if self.split else x)

        return work

    def prepare(self, side: str) -> None:
        """Profiles taken on the host itself: on the device the whole model and each
        ratio's encoding (then calibration, cached); at the edge each ratio's decode and
        the model's rest, once per process for every deepcod with these ratios."""
        if not self.adaptive:
            super().prepare(side)  # type: ignore[misc]
            return
        if side != "device":
            where = ("deepcod edge", self.plugin.name, tuple(self.ratios), self.split)
            self.edge_ms = measured_once(self.model, where, self._edge_profile)
            return
        sample = self._typical_sample()
        self.device_model_ms = model_ms(self.plugin, self.model, sample)
        self.calibrate()
        self.encode_ms = {
            key(c.ratio): median_ms(self._encode_work(c, sample)) for c in self.codecs
        }

    def _edge_profile(self) -> dict[str, float]:
        sample, out = self._typical_sample(), {}
        for codec in self.codecs:
            payload = self._encode_work(codec, sample)()

            @torch.inference_mode()
            def work(codec=codec, payload=payload):
                self.model[self.split :](codec.decode(payload))

            out[key(codec.ratio)] = median_ms(work)
        return out

    def connect(self, edge: dict[str, Any], link: LinkEstimate) -> None:
        self.edge_ms = {str(k): float(v) for k, v in (edge.get("edge_ms") or {}).items()}
        self.link = link

    # ------------------------------------------------------------------------ decision

    def candidates(self) -> list[dict[str, Any]]:
        """Local first, then every ratio within the accuracy bound."""
        options = self.calibrate() or []
        return [{"mode": LOCAL, "drop_pp": 0.0}] + [o for o in options if o["within_bound"]]

    def predict_ms(self, option: dict[str, Any]) -> float:
        """The latency model of the module docstring. Missing profiles count as free,
        except the device's model, which is profiled now."""
        if self.device_model_ms is None:
            self.device_model_ms = model_ms(self.plugin, self.model, self._typical_sample())
        if option.get("mode") == LOCAL:
            return self.device_model_ms
        name = key(option["ratio"])
        return (
            self.encode_ms.get(name, 0.0)
            + self.link.transfer_ms(option["mean_bytes"], self.config["prior_mbps"])
            + self.edge_ms.get(name, 0.0)
            + self.link.one_way_ms
        )

    def choose(self) -> tuple[int | None, dict[str, Any]]:
        """The fastest candidate within the bound (ties: the smaller drop), or a probe:
        the chosen ratio's index in `ratios` (None: local) and what to record."""
        scored = sorted(
            ((self.predict_ms(o), o["drop_pp"], i, o) for i, o in enumerate(self.candidates())),
            key=lambda t: t[:3],
        )
        predicted, _, _, best = scored[0]
        probe = False
        offload = [(ms, o) for ms, _, _, o in scored if o.get("mode") != LOCAL]
        estimate = self.link.uplink_mbps
        current = estimate if estimate is not None else self.config["prior_mbps"]
        if best.get("mode") == LOCAL and offload and self.config["probe_every"]:
            sent = self._sent_with
            moved = sent is not None and abs(current / sent - 1) > MOVING
            if moved or self._local_streak >= self.config["probe_every"]:
                (predicted, best), probe = offload[0], True
        is_local = best.get("mode") == LOCAL
        self._sent_with = None if is_local else current
        self._local_streak = self._local_streak + 1 if is_local else 0
        choice: dict[str, Any] = {"mode": LOCAL} if is_local else {"ratio": best["ratio"]}
        # the estimate used: the last trusted one, else the prior (link_estimate's rule)
        choice.update(predicted_ms=round(predicted, 2), **self.link.record())
        if probe:
            choice["probe"] = True
        return (None if is_local else self.ratios.index(best["ratio"])), choice

    def describe_adaptive(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.options is not None:
            out["options"] = self.options
        if self.device_model_ms is not None:
            out["device_model_ms"] = round(self.device_model_ms, 3)
            out["device_encode_ms"] = {k: round(ms, 3) for k, ms in self.encode_ms.items()}
        if self.edge_ms:
            out["edge_ms"] = {k: round(ms, 3) for k, ms in self.edge_ms.items()}
        return out
