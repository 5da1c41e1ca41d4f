"""How numbers and names read in the report: its tables, captions and plot labels.

Shared by the tables (`markdown`) and the figures (`figures`), so a value reads the same
in both: latencies to 3 significant figures, a swept axis by its last dotted name, a
trace path by its file name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TypeGuard

from testbed.results import stats

# an axis name's suffix -> the unit its values are in
UNITS = {"_mbps": "Mbit/s", "_ms": "ms", "_pct": "%", "_s": "s", "_hz": "Hz", "_packets": "packets"}
# names of an axis that counts device hosts (its last dotted component)
DEVICE_AXES = ("devices", "device_count", "n_devices", "num_devices")
# the study's metric -> the score's name; the rest are agreement
SCORE_NAMES = {"accuracy": "accuracy", "detection": "detection agreement"}
SCORE_TEXTS = {
    "accuracy": "top-1 accuracy against the labels; drop against the unsplit model's accuracy",
    "detection": "detection agreement: the share of images whose boxes all match the "
    "unmodified detector's (IoU >= 0.5, one to one); pooled box precision and recall in "
    "summary.csv",
}


def score_name(metric: str) -> str:
    """`accuracy`, `detection agreement` or `agreement`: what the score column holds."""
    return SCORE_NAMES.get(metric, "agreement")


def score_text(metric: str) -> str:
    """The score in a sentence, for the report's header."""
    return SCORE_TEXTS.get(metric, "top-1 agreement with the unsplit model (no labels)")


# ------------------------------------------------------------------- names and axes


def is_number(value) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def short(axis: str) -> str:
    """An axis by its last dotted component: `network.uplink.bandwidth_mbps` -> `bandwidth_mbps`."""
    return axis.split(".")[-1]


def short_names(axes: list[str]) -> dict[str, str]:
    """Last dotted component of each axis name, unless two axes share it."""
    shorts = [short(a) for a in axes]
    return {a: (s if shorts.count(s) == 1 else a) for a, s in zip(axes, shorts, strict=True)}


def axis_label(axis: str) -> str:
    """A plot's axis title: the short name with its unit, `device hosts` for a count."""
    for suffix, unit in UNITS.items():
        if axis.endswith(suffix):
            return f"{short(axis)} ({unit})"
    if short(axis) in DEVICE_AXES:
        return "device hosts"
    return short(axis)


def value_text(value, full: bool = False) -> str:
    """An axis value: `0.25`; a trace path by its file name unless `full`."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and not full and "/" in value:
        return Path(value).name  # a trace path: its file name is enough on a plot
    return str(value)


def slug(text: str) -> str:
    """A file-name-safe form of an axis name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "axis"


def joined(labels: list[str], limit: int = 3) -> str:
    """The first `limit` labels, saying how many more there are."""
    text = "; ".join(labels[:limit])
    return text + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")


def device_order(device: str) -> tuple:
    """Sort key of a device host's name: numerically where it is a number."""
    try:
        return (0, float(device), device)
    except ValueError:
        return (1, 0.0, device)


# ------------------------------------------------------------------------- numbers


def sig(value: float) -> float | None:
    """The value to 3 significant digits (None where not finite): to compare profiles."""
    return float(f"{value:.3g}") if math.isfinite(value) else None


def ms(value: float) -> str:
    """Milliseconds to about 3 significant figures; `-` where unknown."""
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def estimate_text(e: stats.Estimate) -> str:
    """`250 [240, 262]`: milliseconds with their interval."""
    if not math.isfinite(e.value):
        return "-"
    return f"{ms(e.value)} [{ms(e.low)}, {ms(e.high)}]"


def fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "-"


def count(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "-"


def tick(value: float) -> str:
    return f"{value:g}"


def bytes_tick(value: float) -> str:
    """A byte count on a log axis: `1 kB`, `2 MB`."""
    for scale, unit in ((1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def bytes_text(value: float) -> str:
    """A byte count above a bar: `2.0 kB`."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} MB"
    if value >= 1e3:
        return f"{value / 1e3:.1f} kB"
    return f"{value:.0f} B"


def significant(value: float, digits: int = 2) -> str:
    """A value to `digits` significant digits, never in exponent form: `0.012`, `3.4`,
    `120`; `-` where not finite."""
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    if rounded and math.floor(math.log10(abs(rounded))) > math.floor(math.log10(abs(value))):
        decimals -= 1  # 0.0996 rounds up to 0.10, not 0.100
    return f"{round(value, decimals):.{max(decimals, 0)}f}"


def factor_text(e: stats.Estimate) -> str:
    """A ratio with its interval to 2 significant digits each: `0.012x [0.011, 0.013]`;
    a bound that would read `1.0` without being 1 gets a third (`[1.04, 1.8]`), so the
    text never hides which side of 1 it is on."""
    if not math.isfinite(e.value):
        return "-"
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return f"{significant(e.value)}x"
    return f"{significant(e.value)}x [{_bound_text(e.low)}, {_bound_text(e.high)}]"


def _bound_text(value: float) -> str:
    text = significant(value)
    return significant(value, 3) if text == "1.0" and value != 1 else text
