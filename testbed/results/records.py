"""Per-request records and their per-offloader summary (the results contract).

A request that failed or timed out stays in requests.csv with its status, and
counts as a wrong prediction in `accuracy`, so failures can never raise accuracy. A
request `not_run` (the edge was lost before it started) has no measurement: its
timings are blank, and it enters no statistic; the summary counts it (`planned`,
`not_run`) and marks the run `partial`. A request that ran longer than the scenario's
`stall_ms` is flagged `stalled` (requests.csv) and counted (summary.csv): it stays in
the statistics, since its latency was measured, but it says something held it.

For a detection plugin (`testbed.models.predictions`) a request `agrees` when its boxes match
the unmodified model's on the original input one to one (no false positive, no false
negative), `tp`/`fp`/`fn` count its boxes against those (a failed request found
nothing: its reference boxes are all false negatives), `accuracy` is the share of
images that agree, and `precision`/`recall` pool the boxes; both are empty for a
classifier.

Comparisons are at matched accuracy (docs/results.md): an offloader's speedup over
another is claimed only when the other loses at least as much accuracy, since a faster
offloader that loses more accuracy is not better; `within_bound` says whether its drop
stays within the scenario's `max_drop_pp`, `over_bound` whether even the drop's paired
95% interval lies above its bound (`drop_interval`, `over`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from testbed.agents import contract
from testbed.models.predictions import Comparison
from testbed.results import roles, stats
from testbed.results.paired import versus

REQUEST_COLUMNS = list(contract.REQUEST_COLUMNS)  # a record's, with its comparison
SUMMARY_COLUMNS = [
    "offloader",
    "n",
    "p50_ms",
    "mean_ms",
    "std_ms",
    "p95_ms",
    "p99_ms",
    "mean_bytes_up",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "agreement",
    "accuracy_drop_pp",
    "drop_lo_pp",
    "drop_hi_pp",
    "within_bound",
    "over_bound",
    "speedup_vs_raw",
    "failed",
    "p50_device_ms",
    "p50_encode_ms",
    "p50_uplink_ms",
    "choice",
    "p50_queue_ms",
    "precision",
    "recall",
    "planned",
    "not_run",
    "stalled",
    "partial",
]
DEFAULT_MAX_DROP_PP = 1.0  # the scenario's default bound (Scenario.max_drop_pp)
# what a choice says about the request's configuration (the rest is prediction)
CHOICE_KEYS = ("split", "bits", "scale", "quality", "ratio", "mode")
# stall_ms: auto: a request is stalled above STALL_FACTOR x its offloader's median latency
# (ok requests), and never below STALL_FLOOR_MS (docs/scenarios.md, `stall_ms`)
STALL_FACTOR = 10.0
STALL_FLOOR_MS = 1000.0
# what a request that never ran has none of: blank in requests.csv
UNMEASURED = (
    *contract.PHASES,
    "total_ms",
    "bytes_up",
    "bytes_down",
    "prediction",
    "correct",
    "agrees",
    "tp",
    "fp",
    "fn",
    "stalled",
)


TRAFFIC_COLUMNS = [
    "flow",
    "kind",
    "direction",
    "throughput_mbps",
    "bytes",
    "retransmits",
    "lost_packets",
    "status",
    "error",
]


CAPTURE_COLUMNS = [
    "offloader",
    "request",
    "bytes_up",
    "wire_bytes_up",
    "bytes_down",
    "wire_bytes_down",
    "retransmissions",
]


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
    return records


def ran(rows: list[dict]) -> list[dict]:
    """The requests that ran (any status but `not_run`): what statistics are made of."""
    return [r for r in rows if r.get("status") != contract.NOT_RUN]


def stall_thresholds(
    records: list[dict], labels: list[str], setting: float | str | None
) -> dict[str, float]:
    """Label -> the latency (ms) above which its requests are stalled: the scenario's
    `stall_ms`, or under `auto` STALL_FACTOR x the median of its ok requests (at least
    STALL_FLOOR_MS); empty where the setting is None (off)."""
    if setting is None:
        return {}
    if setting != "auto":
        return dict.fromkeys(labels, float(setting))
    out = {}
    for label in labels:
        totals = [r["total_ms"] for r in records if r["offloader"] == label and r["status"] == "ok"]
        median = float(np.median(totals)) if totals else 0.0
        out[label] = max(STALL_FLOOR_MS, STALL_FACTOR * median)
    return out


def complete_records(
    records: list[dict],
    reference: dict,
    compare: Callable[[Any, Any], Comparison] | None = None,
    stall: dict[str, float] | None = None,
) -> list[dict]:
    """Add `correct` and `agrees` (with the unsplit model's prediction on the sample) and,
    for detection, `tp`/`fp`/`fn`: `compare` is the plugin's (`predictions.comparer`;
    None: a classifier's equality). `stall`: label -> the threshold of `stalled` (1 where
    a request that ran took longer; blank where none is set). A `not_run` request's
    measurements are blank."""
    compare = compare or (lambda prediction, ref: Comparison(agrees=prediction == ref))
    out = []
    for record in records:
        if record.get("status") == contract.NOT_RUN:
            row = {column: record.get(column, "") for column in REQUEST_COLUMNS}
            out.append({**row, **dict.fromkeys(UNMEASURED, "")})
            continue
        row = {column: record.get(column, "") for column in REQUEST_COLUMNS}
        ok = record.get("status") == "ok"
        prediction, label = record.get("prediction", -1), record.get("label", -1)
        row["correct"] = int(ok and label >= 0 and prediction == label)
        ref = reference.get(record.get("sample"))
        found = compare(prediction if ok else None, ref) if ref is not None else Comparison(False)
        row["agrees"] = int(ok and found.agrees)
        # the unsplit model's own correctness on the sample: pairs the drop (not written)
        row["reference_correct"] = int(label >= 0 and _same_class(ref, label))
        for key in ("tp", "fp", "fn"):
            row[key] = "" if getattr(found, key) is None else getattr(found, key)
        threshold = (stall or {}).get(row["offloader"])
        answered = record.get("status") != "timeout"  # a timeout is its own verdict
        row["stalled"] = "" if threshold is None else int(answered and row["total_ms"] > threshold)
        out.append(row)
    return out


def _same_class(prediction, label) -> bool:
    """A classifier's prediction equals the label (a detector's boxes never do)."""
    return isinstance(prediction, int | np.integer) and int(prediction) == int(label)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _fmt(value):
    if value is None:  # not measured: blank
        return ""
    if isinstance(value, list | tuple):  # a detection's boxes
        return json.dumps(value, separators=(",", ":"))
    return f"{value:.4f}" if isinstance(value, float) else value


def summarize(
    rows: list[dict],
    order: list[str],
    reference_score: float,
    metric: str,
    max_drop_pp: float = DEFAULT_MAX_DROP_PP,
    configured: dict[str, float] | None = None,
    planned: int | None = None,
    partial: bool = False,
) -> list[dict]:
    """One row per offloader; `accuracy` is agreement with the unsplit model where the
    plugin's metric is agreement (no labels); `agreement` is that in every case.
    `drop_lo_pp`/`drop_hi_pp`: the drop's 95% interval (`drop_interval`); `over_bound`: 1
    where all of it lies above the bound (`over`); `configured`: label -> the bound an
    offloader was configured with. Only requests that ran are counted in the statistics;
    `planned`: requests per offloader the scenario asked for (None: those recorded), the
    rest `not_run`; `partial`: the run did not finish (1 on every row)."""
    score_key = "correct" if metric == "accuracy" else "agrees"
    summary = []
    for name in order:
        recorded = [r for r in rows if r["offloader"] == name]
        mine = ran(recorded)
        ok = [r for r in mine if r["status"] == "ok"]
        totals = np.array([float(r["total_ms"]) for r in ok])
        score = stats.wilson(sum(int(r[score_key]) for r in mine), len(mine))
        wanted = len(recorded) if planned is None else planned
        base = _reference_of(mine, len(mine) == wanted, reference_score, metric)
        drop = (base - score.value) * 100
        drop_ci = drop_interval(mine, metric, drop, score)
        bound = min(max_drop_pp, (configured or {}).get(name, math.inf))
        summary.append(
            {
                "offloader": name,
                "n": len(ok),
                "p50_ms": _pct(totals, 50),
                "mean_ms": float(np.mean(totals)) if len(totals) else float("nan"),
                "std_ms": stats.std(totals),
                "p95_ms": _pct(totals, 95),
                "p99_ms": _pct(totals, 99),
                "mean_bytes_up": float(np.mean([r["bytes_up"] for r in ok])) if ok else math.nan,
                "accuracy": score.value,
                "accuracy_lo": score.low,
                "accuracy_hi": score.high,
                "agreement": stats.wilson(sum(int(r["agrees"]) for r in mine), len(mine)).value,
                "accuracy_drop_pp": drop,
                "drop_lo_pp": drop_ci.low,
                "drop_hi_pp": drop_ci.high,
                "within_bound": int(within(drop, max_drop_pp)),
                "over_bound": int(over(drop_ci, bound)),
                "speedup_vs_raw": "",
                "failed": len(mine) - len(ok),
                "p50_device_ms": _pct(_column(ok, "device_ms"), 50),
                "p50_encode_ms": _pct(_column(ok, "encode_ms"), 50),
                "p50_uplink_ms": _pct(_column(ok, "uplink_ms"), 50),
                "choice": _common_choice(ok),
                # open loop: how late the device started requests (0 in closed loop)
                "p50_queue_ms": _pct(_column(ok, "queue_ms"), 50),
                **_pooled(mine),
                "planned": wanted,
                "not_run": wanted - len(mine),
                "stalled": sum(r.get("stalled") == 1 for r in mine),
                "partial": int(partial),
            }
        )
    raw = next((s for s in summary if s["offloader"] == "raw"), None)
    if raw is not None:
        for row in summary:
            if row["p50_ms"] > 0:
                row["speedup_vs_raw"] = raw["p50_ms"] / row["p50_ms"]
    return summary


def _reference_of(mine: list[dict], whole: bool, score: float, metric: str) -> float:
    """The unsplit model's score to measure a drop against: the run's, unless requests
    did not run; then its own on the samples that ran (each request carries it as
    `reference_correct`), so a partial run's drop compares like with like."""
    if whole or metric != "accuracy" or not mine:
        return score
    if not all("reference_correct" in r for r in mine):
        return score
    return sum(r["reference_correct"] for r in mine) / len(mine)


# ------------------------------------------------------------ matched accuracy


def within(drop_pp: float, bound_pp: float) -> bool:
    """Whether a drop (points) stays within a bound; an unknown drop does not."""
    return math.isfinite(drop_pp) and drop_pp <= bound_pp + 1e-9


def over(drop: stats.Estimate, bound_pp: float) -> bool:
    """Whether a drop breaks a bound beyond its interval: even the interval's low end is
    above it, so the samples cannot be blamed (a point drop above the bound with an
    interval reaching under it is `within_bound` 0 but not `over`)."""
    return math.isfinite(drop.low) and drop.low > bound_pp + 1e-9


def drop_interval(
    rows: list[dict], metric: str, drop_pp: float, score: stats.Estimate
) -> stats.Estimate:
    """The drop (points) with its 95% interval. Accuracy, where each request carries the
    unsplit model's own correctness (`reference_correct`): paired by request, Newcombe's
    interval of the difference (`stats.discordant_difference`); otherwise the reference
    is taken as fixed (agreement: the unsplit model agrees with itself) and the interval
    is the score's Wilson interval, mirrored."""
    paired = metric == "accuracy" and bool(rows) and all("reference_correct" in r for r in rows)
    if paired:
        diff = stats.paired_difference(
            [r["reference_correct"] for r in rows], [r["correct"] for r in rows]
        )
        shift = drop_pp - 100 * diff.value  # the drop's own centre (the runner's reference)
        return stats.Estimate(drop_pp, 100 * diff.low + shift, 100 * diff.high + shift)
    return fixed_reference_drop(drop_pp, score)


def fixed_reference_drop(drop_pp: float, score: stats.Estimate) -> stats.Estimate:
    """The drop's interval with the reference's score taken as fixed: the score's
    interval, mirrored (runs that recorded no per-request reference)."""
    if not (math.isfinite(drop_pp) and math.isfinite(score.low)):
        return stats.Estimate(drop_pp, math.nan, math.nan)
    return stats.Estimate(
        drop_pp,
        drop_pp - 100 * (score.high - score.value),
        drop_pp + 100 * (score.value - score.low),
    )


def fastest_within(points: list[tuple[Any, float, float]], bound_pp: float) -> Any | None:
    """Of (key, median ms, drop pp) points, the key of the fastest within the bound (ties:
    the smaller drop, then the first); None where none is within."""
    fits = [p for p in points if within(p[2], bound_pp) and math.isfinite(p[1])]
    return min(fits, key=lambda p: (p[1], p[2]))[0] if fits else None


def configured_bounds(offloaders: list, labels: list[str] | None = None) -> dict[str, float]:
    """Label -> the `max_drop_pp` an offloader was configured to stay within (jpeg or
    webp only under `quality: auto`: a fixed quality aims at no bound); offloaders
    configured with none are left out. `offloaders`: the scenario's list (names, or
    dicts of name and parameters); `labels`: theirs, else spelled as the runner does."""
    specs = [{"name": o} if isinstance(o, str) else dict(o) for o in offloaders or []]
    names = [str(s.get("name", "")) for s in specs]
    if labels is None or len(labels) != len(specs):
        labels = [
            n if names.count(n) == 1 else _label(n, {k: v for k, v in s.items() if k != "name"})
            for n, s in zip(names, specs, strict=True)
        ]
    out = {}
    for spec, label in zip(specs, labels, strict=True):
        bound = spec.get("max_drop_pp")
        if isinstance(bound, int | float) and spec.get("quality", "auto") == "auto":
            out[label] = float(bound)
    return out


def _label(name: str, params: dict) -> str:
    """runner.offloader_labels' label of a repeated offloader."""
    return name + "_" + "_".join(f"{k}{v}" for k, v in params.items())


def bound_warnings(
    drops: dict[str, float], bound_pp: float, configured: dict[str, float], where: str = ""
) -> list[str]:
    """One line per offloader whose measured drop exceeds the scenario's bound or the
    bound it was configured with."""
    lines = []
    for name, drop in drops.items():
        broken = []
        if name in configured and not within(drop, configured[name]):
            broken.append(f"its configured max_drop_pp ({configured[name]:g})")
        if not within(drop, bound_pp) and math.isfinite(drop):
            broken.append(f"the scenario's bound ({bound_pp:g})")
        if broken:
            lines.append(
                f"**Warning:** {name} lost {drop:.2f} accuracy points{where}, beyond "
                + " and ".join(broken)
                + "."
            )
    return lines


def matched_lines(
    rows: list[dict],
    summary: list[dict],
    bound_pp: float,
    configured: dict[str, float],
    proposed: list[str] | None = None,
    metric: str = "accuracy",
) -> list[str]:
    """summary.md's matched-accuracy part: the bound, each proposed offloader's (DeepCOD's)
    comparisons (claimed only against offloaders that lose at least as much accuracy), and
    the warnings. `proposed`: their labels (`testbed.results.roles`); None: by label."""
    rows = ran(rows)
    drops = {s["offloader"]: s["accuracy_drop_pp"] for s in summary}
    lines = [
        f"Accuracy bound: {bound_pp:g} points of drop (`max_drop_pp`); within it: "
        + (", ".join(n for n, d in drops.items() if within(d, bound_pp)) or "none")
        + "."
    ]
    if proposed is None:
        proposed = roles.proposed(list(drops), None)
    for name in (n for n in drops if n in proposed):
        others = [n for n in drops if n not in proposed]
        key = "correct" if metric == "accuracy" else "agrees"
        found = [versus([rows], name, o, drops[name], drops[o], key) for o in others]
        lines += ["", f"{name} (drop {drops[name]:.2f} points) at matched accuracy:", ""]
        lines += [
            f"- {v.other}: {v.ratio_text()}, {v.verdict()}; score difference (paired, "
            f"{name} minus {v.other}): {v.score_diff_text()} points"
            for v in found
            if v.claimed
        ]
        lines += [
            f"- {v.verdict()}; score difference: {v.score_diff_text()} points"
            for v in found
            if not v.claimed
        ]
        if not any(v.claimed for v in found):
            lines.append("- No offloader loses at least as much accuracy: no speedup claimed.")
    warnings = bound_warnings(drops, bound_pp, configured)
    return lines + (["", *(f"- {w}" for w in warnings)] if warnings else [])


def _pooled(rows: list[dict]) -> dict:
    """Precision and recall of the boxes of all requests (failed ones included: they
    found nothing); empty where the requests carry no box counts (a classifier)."""
    counted = [r for r in rows if r.get("tp", "") != ""]
    if not counted:
        return {"precision": "", "recall": ""}
    tp, fp, fn = (sum(int(r[k]) for r in counted) for k in ("tp", "fp", "fn"))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,  # nothing found: nothing wrong
        "recall": tp / (tp + fn) if tp + fn else 1.0,  # nothing to find
    }


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows if r.get(key, "") != ""])


def _common_choice(rows: list[dict]) -> str:
    """The most frequent configuration adaptive offloaders chose, with its share:
    `split=4 bits=3 (28/30)`; empty for offloaders that choose nothing."""
    counts: dict[str, int] = {}
    for row in rows:
        if not row.get("choice"):
            continue
        choice = json.loads(row["choice"])
        text = " ".join(f"{k}={choice[k]}" for k in CHOICE_KEYS if k in choice)
        counts[text] = counts.get(text, 0) + 1
    if not counts:
        return ""
    text, count = max(counts.items(), key=lambda item: item[1])
    return f"{text} ({count}/{len(rows)})" if count < len(rows) else text


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def table(summary: list[dict]) -> str:
    """The summary as a Markdown table (`testbed.results.console`, which reads this
    module's rules: imported here late)."""
    from testbed.results import console

    return console.table(summary)
