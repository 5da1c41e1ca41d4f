"""The summary table a run prints on the console and summary.md shows (Markdown, also
readable in a terminal): a row per offloader of summary.csv.

Latency percentiles with the mean and standard deviation beside them, the score with
its Wilson interval, the drop with its paired interval, whether the bound holds (and
whether it broke beyond the drop's interval), and `vs raw` only at matched accuracy.
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
    raw = next((s for s in summary if s["offloader"] == "raw"), None)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [
            s["offloader"],
            str(s["n"]),
            f"{s['p50_ms']:.1f}",
            _num(s.get("mean_ms", ""), 1),
            _num(s.get("std_ms", ""), 1),
            f"{s['p95_ms']:.1f}",
            f"{s['p99_ms']:.1f}",
            f"{s['mean_bytes_up']:.0f}",
            _score(s),
            _share(s.get("agreement", "")),
            _drop(s),
            _bound(s.get("within_bound", ""), s.get("over_bound", "")),
            _vs_raw(s, raw),
            f"{s['p50_encode_ms']:.2f}",
            s["choice"] or "-",
        ]
        if boxes:
            cells += [_share(s.get("precision", "")), _share(s.get("recall", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    text = f"{s['accuracy_drop_pp']:+.2f}"
    if low == "" or not (math.isfinite(low) and math.isfinite(high)):
        return text
    return f"{text} [{low:.1f}, {high:.1f}]"


def _bound(value, over_value="") -> str:
    """`yes`, `no`, or `NO: over beyond its CI` where the drop's interval lies wholly above
    the bound (`over`)."""
    if over_value == 1:
        return "NO: over beyond its CI"
    return {1: "yes", 0: "no"}.get(value, "-") if value != "" else "-"


def _num(value, digits: int) -> str:
    if value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _share(value) -> str:
    if value == "" or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%"
