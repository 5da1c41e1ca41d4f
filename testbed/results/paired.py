"""Paired comparisons of two offloaders that ran on the same samples: per-sample
latencies and scores matched by sample, their ratio and difference with intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from testbed.results import stats
from testbed.results.formatting import factor_text

__all__ = ["Versus", "claimable", "paired_scores", "paired_totals", "versus"]


def claimable(drop_pp: float, other_drop_pp: float) -> bool:
    """Whether a speedup over `other` may be claimed: only when `other` loses at least as
    much accuracy, or a faster but less faithful offloader would be called better."""
    finite = math.isfinite(drop_pp) and math.isfinite(other_drop_pp)
    return finite and other_drop_pp >= drop_pp - 1e-9


def paired_totals(cells: list[list[dict]], name: str, other: str) -> tuple[np.ndarray, ...]:
    """Latencies of `name` and `other` on the same samples, aligned: within each cell (a
    run, whose offloaders all send the same samples) the k-th completed request of a
    sample pairs with the other's k-th of that sample."""
    mine, theirs = [], []
    for rows in cells:
        a, b = _by_sample(rows, name), _by_sample(rows, other)
        for key in (k for k in a if k in b):  # a's order: the same pairs, the same bytes
            mine.append(a[key])
            theirs.append(b[key])
    return np.array(mine, dtype=float), np.array(theirs, dtype=float)


def _by_sample(
    rows: list[dict], name: str, key: str = "total_ms", failed_too: bool = False
) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    seen: dict[object, int] = {}
    for r in rows:
        sample = r.get("sample", "")
        if r["offloader"] != name or not _is_finite(sample):
            continue
        if r["status"] != "ok" and not failed_too:
            continue
        seen[sample] = seen.get(sample, 0) + 1
        value = r.get(key, "")
        out[(float(sample), seen[sample])] = float(value) if _is_finite(value) else math.nan
    return dict(sorted(out.items()))


def _is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Versus:
    """`name` against `other` at matched accuracy: `ratio` is median(other) / median(name)
    (above 1: `name` is faster), computed only where a speedup may be claimed."""

    name: str
    other: str
    drop_pp: float
    other_drop_pp: float
    ratio: stats.Estimate = stats.NAN
    pairs: int = 0  # 0: unpaired (no shared samples), independent resampling
    # score(name) - score(other) on the same samples (fractions), Newcombe's interval
    score_diff: stats.Estimate = stats.NAN
    score_pairs: int = 0

    @property
    def claimed(self) -> bool:
        return claimable(self.drop_pp, self.other_drop_pp)

    def verdict(self) -> str:
        """What the comparison supports, in words."""
        if not self.claimed:
            if not (math.isfinite(self.drop_pp) and math.isfinite(self.other_drop_pp)):
                return f"{self.other}: no accuracy to compare: no speedup claimed"
            return (
                f"{self.other} loses less accuracy (drop {self.other_drop_pp:.2f} vs "
                f"{self.drop_pp:.2f} points): no speedup claimed"
            )
        if not math.isfinite(self.ratio.value):
            return f"{self.other}: no completed requests to compare"
        if self.ratio.low > 1:
            return f"{self.name} faster at no larger drop"
        if self.ratio.high < 1:
            return f"{self.name} slower"
        return "no clear difference in latency"

    def score_diff_text(self) -> str:
        """`-0.50 [-2.1, 1.0] (200 pairs)`: points, `name` minus `other`."""
        e = self.score_diff
        if not math.isfinite(e.value):
            return "-"
        return (
            f"{100 * e.value:+.2f} [{100 * e.low:.1f}, {100 * e.high:.1f}] "
            f"({self.score_pairs} pairs)"
        )

    def ratio_text(self) -> str:
        if not self.claimed or not math.isfinite(self.ratio.value):
            return "-"
        how = f"paired, {self.pairs} pairs" if self.pairs else "unpaired"
        return f"{factor_text(self.ratio)} ({how})"


def versus(
    cells: list[list[dict]],
    name: str,
    other: str,
    drop_pp: float,
    other_drop_pp: float,
    score_key: str = "correct",
) -> Versus:
    """Compare `name` with `other` over the cells' requests: paired by sample where they
    share samples, else resampled independently; no ratio where no speedup may be
    claimed. The scores (`score_key`: `correct`, or `agrees` where the metric is
    agreement) are always compared, paired by sample."""
    mine_scores, their_scores = paired_scores(cells, name, other, score_key)
    diff = stats.paired_difference(mine_scores, their_scores)
    scored = int(np.isfinite(mine_scores + their_scores).sum())
    base = Versus(name, other, drop_pp, other_drop_pp, score_diff=diff, score_pairs=scored)
    if not base.claimed:
        return base
    mine, theirs = paired_totals(cells, name, other)
    if mine.size:
        ratio = stats.paired_ratio_of_medians_ci(theirs, mine)
        return replace(base, ratio=ratio, pairs=int(mine.size))
    totals = [_ok_totals(rows, n) for n in (other, name) for rows in cells]
    half = len(cells)
    ratio = stats.ratio_of_medians_ci(np.concatenate(totals[:half]), np.concatenate(totals[half:]))
    return replace(base, ratio=ratio)


def paired_scores(
    cells: list[list[dict]], name: str, other: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 scores (`key`) of `name` and `other` on the same samples, aligned as
    `paired_totals` aligns latencies, failed requests included (as wrong); NaN where a
    request lacks the column."""
    mine, theirs = [], []
    for rows in cells:
        a, b = _by_sample(rows, name, key, True), _by_sample(rows, other, key, True)
        for sample in (k for k in a if k in b):
            mine.append(a[sample])
            theirs.append(b[sample])
    return np.array(mine, dtype=float), np.array(theirs, dtype=float)


def _ok_totals(rows: list[dict], name: str) -> np.ndarray:
    return np.array(
        [float(r["total_ms"]) for r in rows if r["offloader"] == name and r["status"] == "ok"]
    )
