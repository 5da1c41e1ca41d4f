"""Generate the Mahimahi traces shipped in scenarios/traces/ (deterministic).

    .venv/bin/python scripts/make_traces.py [--out DIR]

Each trace is a piecewise-constant rate schedule turned into delivery opportunities
by `testbed.emulation.link.trace.opportunities_from_rates`. The random traces draw only
uniform numbers from a seeded PCG64 (`Generator.random`), whose stream numpy keeps
stable, and round rates to whole kbit/s, so the files do not depend on the machine;
tests/test_trace.py regenerates them and compares byte for byte.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.emulation.link.trace import opportunities_from_rates, write_trace

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "scenarios" / "traces"


def lte_like(
    seed: int,
    duration_ms: int,
    low_mbps: float,
    high_mbps: float,
    median_mbps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A cellular-like rate: the log-rate takes a mean-reverting bounded random walk,
    changing every 100-500 ms, and a two-state Markov chain adds deep fades (a few
    hundred ms to about 2 s at a sixth of the rate) as at a cell edge or in a handover."""
    rng = np.random.default_rng(seed)
    lo, hi, mid = math.log(low_mbps), math.log(high_mbps), math.log(median_mbps)
    durations, rates = [], []
    x, fading, elapsed = mid, False, 0
    while elapsed < duration_ms:
        step = min(100 + int(rng.random() * 401), duration_ms - elapsed)
        x += 0.15 * (mid - x) + (rng.random() - 0.5) * 1.0  # up to x1.65 per change
        x = lo + abs(x - lo)  # reflect into [lo, hi]
        x = hi - abs(hi - x)
        fading = rng.random() < (0.6 if fading else 0.04)
        rate = math.exp(x) / (6 if fading else 1)
        durations.append(step)
        rates.append(max(low_mbps, round(rate, 3)))
        elapsed += step
    return np.array(durations), np.array(rates)


def traces() -> dict[str, tuple[list[int] | np.ndarray, list[float] | np.ndarray]]:
    """Every shipped trace as (segment durations in ms, rates in Mbit/s)."""
    return {
        # LTE-like, 60 s: uplink 0.5-10 Mbit/s around 3, downlink 0.5-20 around 8
        "lte.up": lte_like(seed=1, duration_ms=60_000, low_mbps=0.5, high_mbps=10, median_mbps=3),
        "lte.down": lte_like(seed=2, duration_ms=60_000, low_mbps=0.5, high_mbps=20, median_mbps=8),
        # a bandwidth step: 10 Mbit/s for 10 s then 0.5 Mbit/s for 10 s, looping (a
        # factor of 20, so that a 33 KB photo is clearly worth sending at one level and
        # clearly not at the other, whatever the device's CPU share does to its timings)
        "step.up": ([10_000, 10_000], [10.0, 0.5]),
        "step.down": ([20_000], [10.0]),
        # an outage of 2 s in every 10 s, from 8 s to 10 s, in both directions (radio lost)
        "outage.up": ([8_000, 2_000], [2.0, 0.0]),
        "outage.down": ([8_000, 2_000], [5.0, 0.0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (durations, rates) in traces().items():
        opportunities = opportunities_from_rates(durations, rates)
        path = args.out / name
        write_trace(path, opportunities)
        period = int(opportunities[-1])
        mean = opportunities.size * 12_000 / (period * 1e3)
        print(
            f"{path}: {opportunities.size} lines, {path.stat().st_size} bytes, "
            f"period {period} ms, mean {mean:.3f} Mbit/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
