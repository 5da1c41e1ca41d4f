"""Per-packet delay variation and loss for the userspace link element: pure, seeded
functions, so the same seed gives the same impairments run after run."""

from __future__ import annotations

import math
import random

PARETO_SHAPE = 3.0  # finite variance, heavy enough tail to model bufferbloat spikes
JITTER_DISTRIBUTIONS = ("normal", "uniform", "pareto")
LOSS_MODELS = ("random", "gilbert_elliott")


class Jitter:
    """Extra delay in seconds drawn per packet. `normal` (sigma = jitter) and `uniform`
    (+-jitter) keep the mean delay; `pareto` is a one-sided excess with mean = jitter."""

    def __init__(self, jitter_s: float, distribution: str, rng: random.Random) -> None:
        self.jitter_s, self.distribution, self.rng = jitter_s, distribution, rng
        if distribution not in JITTER_DISTRIBUTIONS:
            raise ValueError(f"unknown jitter distribution {distribution!r}")

    def sample(self) -> float:
        if self.jitter_s <= 0:
            return 0.0
        if self.distribution == "normal":
            return self.rng.gauss(0.0, self.jitter_s)
        if self.distribution == "uniform":
            return self.rng.uniform(-self.jitter_s, self.jitter_s)
        # paretovariate(a) >= 1 has mean a/(a-1): its excess over 1 has mean 1/(a-1)
        excess = self.rng.paretovariate(PARETO_SHAPE) - 1.0
        return self.jitter_s * (PARETO_SHAPE - 1.0) * excess


class Loss:
    """Random (Bernoulli) or Gilbert-Elliott loss with the given long-run rate.

    Gilbert-Elliott here is the two-state form netem also offers: every packet in the
    bad state is lost, none in the good one; leaving the bad state has probability
    1/burst, entering it p = r*L/(1-L), so the stationary loss is L and bursts last
    `burst` packets on average."""

    def __init__(self, loss_pct: float, model: str, burst: float, rng: random.Random) -> None:
        self.rate, self.model, self.rng = loss_pct / 100.0, model, rng
        if model not in LOSS_MODELS:
            raise ValueError(f"unknown loss model {model!r}")
        self.r = 1.0 / max(burst, 1.0)
        self.p = self.r * self.rate / (1.0 - self.rate) if self.rate < 1 else 1.0
        self.bad = False

    def lost(self) -> bool:
        if self.rate <= 0:
            return False
        if self.model == "random":
            return self.rng.random() < self.rate
        self.bad = (self.rng.random() >= self.r) if self.bad else (self.rng.random() < self.p)
        return self.bad

    def gemodel_params(self) -> tuple[float, float]:
        """(p, r) in percent, as netem's `loss gemodel p r 100 0` takes them."""
        return 100 * min(self.p, 1.0), 100 * self.r


def clamp_delay(delay_s: float) -> float:
    return delay_s if delay_s > 0 and math.isfinite(delay_s) else 0.0
