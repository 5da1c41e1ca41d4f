"""Intervals for latency medians, their ratios and accuracies (the report's statistics).

Latencies are skewed and heavy-tailed (retransmissions, CPU-limit ticks), so the report
compares medians, with percentile-bootstrap intervals: no normality assumed. Every
function is seeded, so the same samples always give the same interval (the report's
bytes must not change between renderings). Accuracies are shares of requests: Wilson
intervals, which stay inside [0, 1] and are honest at 0/n and n/n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
# resampled values held in memory at once: bounds memory for large samples
_CHUNK_VALUES = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval; all NaN where there was no data."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return bool(self.low <= x <= self.high)


NAN = Estimate(float("nan"), float("nan"), float("nan"))


def number(value) -> float:
    """A cell of a results file as a float; NaN where it holds none (blank, text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite(values) -> np.ndarray:
    """The finite values as float64 (blank cells read as NaN are dropped)."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def percentile(values, q: float) -> float:
    array = finite(values)
    return float(np.percentile(array, q)) if array.size else float("nan")


def resampled_medians(
    values, resamples: int = RESAMPLES, seed: int | np.random.SeedSequence = SEED
) -> np.ndarray:
    """Medians of `resamples` resamples (with replacement) of `values`, vectorized."""
    array = finite(values)
    if array.size == 0:
        return np.full(resamples, np.nan)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_VALUES // array.size)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        index = rng.integers(0, array.size, size=(stop - start, array.size))
        out[start:stop] = np.median(array[index], axis=1)
    return out


def median_ci(
    values, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> Estimate:
    """The median with its percentile-bootstrap interval."""
    array = finite(values)
    if array.size == 0:
        return NAN
    medians = resampled_medians(array, resamples, seed)
    low, high = _bounds(medians, confidence)
    return Estimate(float(np.median(array)), low, high)


def ratio_of_medians_ci(
    numerator,
    denominator,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Estimate:
    """median(numerator) / median(denominator), with an interval from resampling the two
    samples independently (they are different requests, not pairs)."""
    top, bottom = finite(numerator), finite(denominator)
    if top.size == 0 or bottom.size == 0:
        return NAN
    point = _ratio(np.median(top), np.median(bottom))
    # different streams for the two samples, still fixed by `seed`
    seeds = np.random.SeedSequence(seed).spawn(2)
    tops = resampled_medians(top, resamples, seeds[0])
    bottoms = resampled_medians(bottom, resamples, seeds[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = tops / bottoms
    low, high = _bounds(ratios[np.isfinite(ratios)], confidence)
    return Estimate(point, low, high)


def paired_ratio_of_medians_ci(
    numerator,
    denominator,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Estimate:
    """median(numerator) / median(denominator) of paired values (the same samples sent
    by two offloaders), resampling the pairs together: the samples' own difficulty then
    cancels, so the interval is narrower than that of independent resampling."""
    pairs = np.column_stack([np.asarray(numerator, float), np.asarray(denominator, float)])
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    if pairs.shape[0] == 0:
        return NAN
    point = _ratio(np.median(pairs[:, 0]), np.median(pairs[:, 1]))
    rng = np.random.default_rng(seed)
    size = pairs.shape[0]
    rows = max(1, _CHUNK_VALUES // (2 * size))
    ratios = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        index = rng.integers(0, size, size=(stop - start, size))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:stop] = np.median(pairs[index, 0], axis=1) / np.median(
                pairs[index, 1], axis=1
            )
    low, high = _bounds(ratios[np.isfinite(ratios)], confidence)
    return Estimate(point, low, high)


def wilson(successes: float, trials: float, confidence: float = CONFIDENCE) -> Estimate:
    """A share with its Wilson score interval; NaN without trials."""
    if not trials > 0:
        return NAN
    z = _normal_quantile(0.5 + confidence / 2)
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    root = math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    spread = z / (1 + z * z / trials) * root
    low = 0.0 if successes <= 0 else max(0.0, centre - spread)
    high = 1.0 if successes >= trials else min(1.0, centre + spread)
    return Estimate(float(share), low, high)


def _normal_quantile(p: float) -> float:
    """The standard normal's quantile, by bisection on erf (no scipy needed)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _ratio(top: float, bottom: float) -> float:
    return float(top / bottom) if bottom > 0 else float("nan")


def _bounds(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
