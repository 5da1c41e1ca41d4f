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


def std(values) -> float:
    """The sample standard deviation (n - 1); NaN with fewer than two values."""
    array = finite(values)
    return float(np.std(array, ddof=1)) if array.size > 1 else float("nan")


def paired_difference(first, second, confidence: float = CONFIDENCE) -> Estimate:
    """share(first) - share(second) of paired 0/1 outcomes (the same samples scored for
    two offloaders), with Newcombe's (1998, method 10) interval: the two Wilson
    intervals combined through the pairs' correlation, so only the discordant pairs
    (right in one, wrong in the other) move the difference. NaN without pairs."""
    pairs = np.column_stack([np.asarray(first, float), np.asarray(second, float)])
    pairs = pairs[np.isfinite(pairs).all(axis=1)] > 0.5
    n = pairs.shape[0]
    if n == 0:
        return NAN
    a = int(np.sum(pairs[:, 0] & pairs[:, 1]))
    b = int(np.sum(pairs[:, 0] & ~pairs[:, 1]))
    c = int(np.sum(~pairs[:, 0] & pairs[:, 1]))
    d = n - a - b - c
    return discordant_difference(a, b, c, d, confidence)


def discordant_difference(
    a: int, b: int, c: int, d: int, confidence: float = CONFIDENCE
) -> Estimate:
    """Newcombe's method 10 from the paired counts: `a` both right, `b` only the first,
    `c` only the second, `d` neither."""
    n = a + b + c + d
    if n == 0:
        return NAN
    one, two = wilson(a + b, n, confidence), wilson(a + c, n, confidence)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    # the pairs' correlation, continuity-corrected towards 0 (Newcombe's, as in Altman
    # et al., Statistics with Confidence, 2000)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(denominator) if denominator > 0 else 0.0
    dl1, du1 = one.value - one.low, one.high - one.value
    dl2, du2 = two.value - two.low, two.high - two.value
    below = math.sqrt(max(0.0, dl1**2 - 2 * phi * dl1 * du2 + du2**2))
    above = math.sqrt(max(0.0, du1**2 - 2 * phi * du1 * dl2 + dl2**2))
    theta = (b - c) / n
    return Estimate(theta, max(-1.0, theta - below), min(1.0, theta + above))


# bimodality: see `bimodal`
BIMODAL_MIN_N = 20
BIMODAL_MIN_SHARE = 0.1
BIMODAL_MIN_MODE = 5  # requests in the smaller mode
BIMODAL_MIN_D = 5.0


def bimodal(values) -> tuple[bool, float, float]:
    """Whether latencies look bimodal: (flag, Ashman's D, the smaller mode's share).

    The log latencies are split in two where the within-part variance is least (1-D
    two-means, exact over the sorted values); the split is called two modes when both
    parts hold at least 10% of the values (and 5 values) and Ashman's D =
    sqrt(2)|m1 - m2| / sqrt(s1^2 + s2^2) is at least 5. Splitting any sample finds
    *some* gap (a large normal sample gives D near 2.7, a uniform one 3.5, and small
    samples scatter: with 20 requests, 5 flags 2% of exponential-tailed and 0.4% of
    lognormal ones); a tail of a few slow requests (retransmissions) is under 10% and
    reads as a tail, not a mode. Fewer than 20 values: never flagged."""
    array = finite(values)
    array = np.sort(np.log(array[array > 0]))
    n = array.size
    if n < BIMODAL_MIN_N:
        return False, float("nan"), float("nan")
    sums, squares = np.cumsum(array), np.cumsum(array**2)
    k = np.arange(1, n)  # size of the lower part
    low_sum, high_sum = sums[:-1], sums[-1] - sums[:-1]
    low_sq, high_sq = squares[:-1], squares[-1] - squares[:-1]
    within = (low_sq - low_sum**2 / k) + (high_sq - high_sum**2 / (n - k))
    cut = int(np.argmin(within)) + 1
    lower, upper = array[:cut], array[cut:]
    share = min(cut, n - cut) / n
    spread = math.sqrt(float(np.var(lower) + np.var(upper)))
    gap = float(np.mean(upper) - np.mean(lower))
    d = math.sqrt(2) * gap / spread if spread > 0 else (math.inf if gap > 0 else 0.0)
    big_enough = share >= BIMODAL_MIN_SHARE and min(cut, n - cut) >= BIMODAL_MIN_MODE
    return bool(big_enough and d >= BIMODAL_MIN_D), d, share
