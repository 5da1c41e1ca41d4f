"""The summary table a run prints on the console and summary.md shows (Markdown, also
readable in a terminal): a row per offloader of summary.csv.

Latency percentiles with the mean and standard deviation beside them, the score with
its Wilson interval, the drop with its paired interval, whether the bound holds (and
whether it broke beyond the drop's interval), and `vs raw` only at matched accuracy.
Where requests failed, were not run or stalled, a column counts them, and a partial run
says so under the table; a figure nothing measured reads `-`.
"""

from __future__ import annotations

import math

from testbed.results.formatting import significant
from testbed.results.paired import claimable


def table(summary: list[dict]) -> str:
    """The summary as a Markdown table (also readable in a terminal). `vs raw` only where
    the offloader loses no more accuracy than raw: a speedup bought with accuracy is no
    speedup at matched accuracy."""
    head = ["offloader", "n", "p50 ms", "mean ms", "std ms", "p95 ms", "p99 ms", "bytes up"]
    head += ["accuracy [95% CI]", "agreement", "drop pp [95% CI]", "in bound", "vs raw"]
    head += ["encode ms"]
    head += ["choice"]
    boxes = any(s.get("precision", "") != "" for s in summary)  # a detector's
    if boxes:
        head += ["precision", "recall"]
    troubled = any(_troubles(s) for s in summary)
    if troubled:
        head += ["ran / planned", "failed", "stalled"]
    raw = next((s for s in summary if s["offloader"] == "raw"), None)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [
            s["offloader"],
            str(s["n"]),
            _num(s["p50_ms"], 1),
            _num(s.get("mean_ms", ""), 1),
            _num(s.get("std_ms", ""), 1),
            _num(s["p95_ms"], 1),
            _num(s["p99_ms"], 1),
            _num(s["mean_bytes_up"], 0),
            _score(s),
            _share(s.get("agreement", "")),
            _drop(s),
            _bound(s.get("within_bound", ""), s.get("over_bound", ""), s["accuracy_drop_pp"]),
            _vs_raw(s, raw),
            _num(s["p50_encode_ms"], 2),
            s["choice"] or "-",
        ]
        if boxes:
            cells += [_share(s.get("precision", "")), _share(s.get("recall", ""))]
        if troubled:
            planned = s.get("planned", "")
            ran = "-" if planned == "" else f"{planned - s.get('not_run', 0)} / {planned}"
            cells += [ran, str(s.get("failed", "-")), str(s.get("stalled", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + stalled_lines(summary) + partial_lines(summary))


def stalled_lines(summary: list[dict]) -> list[str]:
    """Under the table: which offloaders had stalled requests (longer than `stall_ms`)."""
    counts = [f"{s['offloader']} {_count(s.get('stalled'))}" for s in summary]
    counts = [c for c, s in zip(counts, summary, strict=True) if _count(s.get("stalled"))]
    if not counts:
        return []
    return [
        "",
        f"**Stalled requests** (longer than `stall_ms`, still in the figures): "
        f"{', '.join(counts)}; see `stalled` in requests.csv.",
    ]


def partial_lines(summary: list[dict]) -> list[str]:
    """Under the table of a partial run: how much of it ran, and what the figures are."""
    if not any(s.get("partial") == 1 for s in summary):
        return []
    planned = sum(_count(s.get("planned")) for s in summary)
    not_run = sum(_count(s.get("not_run")) for s in summary)
    return [
        "",
        f"**PARTIAL RUN: {planned - not_run} of {planned} planned requests ran; "
        f"{not_run} were not run.** The figures are of the requests that ran; `-`: not "
        "measured.",
    ]


def _troubles(s: dict) -> bool:
    """Whether an offloader's row needs the counts: failed, not run or stalled requests."""
    return any(_count(s.get(k)) > 0 for k in ("failed", "not_run", "stalled"))


def _count(value) -> int:
    """A count cell as an int; 0 where blank or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _score(s: dict) -> str:
    low, high = s.get("accuracy_lo", ""), s.get("accuracy_hi", "")
    if low == "" or not math.isfinite(low):
        return _share(s["accuracy"])
    return f"{_share(s['accuracy'])} [{100 * low:.1f}, {100 * high:.1f}]"


def _vs_raw(s: dict, raw: dict | None) -> str:
    if s["speedup_vs_raw"] == "" or raw is None:
        return "-"
    if not claimable(s["accuracy_drop_pp"], raw["accuracy_drop_pp"]):
        return "loses more"
    return f"{significant(s['speedup_vs_raw'])}x"


def _drop(s: dict) -> str:
    """`+0.50 [-1.2, 2.3]`: the drop with its interval where one was computed."""
    low, high = s.get("drop_lo_pp", ""), s.get("drop_hi_pp", "")
    if not math.isfinite(s["accuracy_drop_pp"]):
        return "-"  # nothing ran: no drop measured
    text = f"{s['accuracy_drop_pp']:+.2f}"
    if low == "" or not (math.isfinite(low) and math.isfinite(high)):
        return text
    return f"{text} [{low:.1f}, {high:.1f}]"


def _bound(value, over_value="", drop=0.0) -> str:
    """`yes`, `no`, or `NO: over beyond its CI` where the drop's interval lies wholly above
    the bound (`over`); `-` where no drop was measured."""
    if isinstance(drop, float) and not math.isfinite(drop):
        return "-"
    if over_value == 1:
        return "NO: over beyond its CI"
    return {1: "yes", 0: "no"}.get(value, "-") if value != "" else "-"


def _num(value, digits: int) -> str:
    """`-` where nothing was measured (blank or NaN)."""
    if value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _share(value) -> str:
    if value == "" or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%"
