"""The report's figures, drawn from a `Study`: latency against each numeric axis, latency
distributions, where the time goes, bytes per request, accuracy drop against latency and
scaling with device hosts.

Each function returns a matplotlib Figure (and what it left out); `report` saves them and
writes their captions. Every offloader keeps its colour across all figures.
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from testbed.results import stats
from testbed.results.formatting import (
    DEVICE_AXES,
    axis_label,
    bytes_text,
    bytes_tick,
    is_number,
    joined,
    score_name,
    short,
    short_names,
    sig,
    tick,
    value_text,
)
from testbed.results.load import Group, OffloaderStats, Study

PHASE_NAMES = {
    "queue_ms": "queue",
    "device_ms": "device compute",
    "encode_ms": "encode",
    "uplink_ms": "uplink",
    "decode_ms": "edge decode",
    "edge_ms": "edge compute",
    "downlink_ms": "downlink",
    "other": "unattributed",
}
PHASE_COLOURS = {
    "queue_ms": "#bdbdbd",
    "device_ms": "#1f77b4",
    "encode_ms": "#17becf",
    "uplink_ms": "#d62728",
    "decode_ms": "#9467bd",
    "edge_ms": "#2ca02c",
    "downlink_ms": "#ff7f0e",
    "other": "#f0e442",
}
MAX_PANELS = 12  # subplots per figure; the report names the groups left out
MAX_DEVICE_ROWS = 6


def numeric_axes(study: Study) -> list[str]:
    """The swept axes whose values are all numbers: each gets a latency-against-it plot."""
    return [a for a, values in study.axes.items() if values and all(map(is_number, values))]


def devices_axis(study: Study) -> str | None:
    """The numeric axis that counts device hosts, if one was swept."""
    for axis in numeric_axes(study):
        if short(axis) in DEVICE_AXES or axis == "device.count":
            return axis
    return None


def latency_figure(study: Study, axis: str) -> Figure:
    """Median latency against `axis`, a line per offloader with its 95% band; one panel
    per combination of the other axes' values."""
    combos = panels_by_other_axes(study, axis)
    shown = combos[:MAX_PANELS]
    fig, axs = _panels(len(shown))
    logx = _log_x(axis, study.axes[axis])
    for ax, (combo_label, members) in zip(axs, shown, strict=False):
        positive = True
        for name in study.offloaders:
            points = []
            for group in members:
                s = group.offloaders.get(name)
                if s is not None and math.isfinite(s.median.value):
                    points.append((group.values[axis], s.median))
            if not points:
                continue
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            ys = [p[1].value for p in points]
            positive = positive and min(p[1].low for p in points) > 0
            colour = _colour(study, name)
            ax.plot(xs, ys, marker="o", color=colour, label=name)
            ax.fill_between(
                xs,
                [p[1].low for p in points],
                [p[1].high for p in points],
                color=colour,
                alpha=0.2,
                linewidth=0,
                gid=f"band:{name}",
            )
        if logx:
            _log(ax.xaxis)
        if positive and ax.lines:
            _log(ax.yaxis)
        _value_ticks(ax, study.axes[axis])
        ax.set_xlabel(axis_label(axis))
        ax.set_ylabel("median end-to-end latency (ms)")
        ax.set_title(combo_label or f"latency against {short(axis)}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axs)
    if len(shown) > 1:
        _suptitle(fig, f"Median end-to-end latency against {short(axis)} (95% bands)")
    return fig


def cdf_figure(study: Study) -> tuple[Figure, list[int]]:
    """Latency CDFs, a panel per cell-group (the first MAX_PANELS), a line per offloader;
    returns the figure and the indices of the groups shown."""
    shown = list(range(min(len(study.groups), MAX_PANELS)))
    fig, axs = _panels(len(shown))
    for ax, index in zip(axs, shown, strict=False):
        group = study.groups[index]
        positive = True
        for name in study.offloaders:
            s = group.offloaders.get(name)
            if s is None or s.n == 0:
                continue
            # from 0 at the fastest request up to 1 at the slowest
            xs = np.concatenate([[s.totals.min()], np.sort(s.totals)])
            ys = np.arange(xs.size) / s.n
            positive = positive and xs[0] > 0
            ax.plot(xs, ys, drawstyle="steps-post", color=_colour(study, name), label=name)
        if positive and ax.lines:
            _log(ax.xaxis)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(study.label(group) if study.axes else "latency CDF", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axs)
    return fig, shown


def phase_figure(study: Study) -> tuple[Figure, list[int]]:
    """Stacked mean time per phase, a bar per offloader, a panel per cell-group (the first
    MAX_PANELS). Means, because means add up: the stack's height is the mean latency."""
    shown = list(range(min(len(study.groups), MAX_PANELS)))
    fig, axs = _panels(len(shown), width=max(4.8, 0.55 * len(study.offloaders) + 1.5))
    segments = [*study.phases, "other"]
    for ax, index in zip(axs, shown, strict=False):
        group = study.groups[index]
        names = [n for n in study.offloaders if n in group.offloaders]
        breakdown = [phase_means(group.offloaders[n], study.phases) for n in names]
        bottom = np.zeros(len(names))
        for segment in segments:
            heights = np.array([b[segment] for b in breakdown])
            ax.bar(
                np.arange(len(names)),
                heights,
                bottom=bottom,
                width=0.7,
                color=PHASE_COLOURS[segment],
                label=PHASE_NAMES[segment],
                gid=f"phase:{segment}",
            )
            bottom = bottom + heights
        ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel("mean time per request (ms)")
        ax.set_title(study.label(group) if study.axes else "where the time goes", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    _legend(fig, axs)
    return fig, shown


def phase_means(s: OffloaderStats, phases: list[str]) -> dict[str, float]:
    """Mean ms per phase of completed requests, plus `other`: the mean total's remainder
    (time between the timed phases), so the segments sum to the mean total."""
    out = {p: _nanmean(s.phases[p]) for p in phases}
    total = float(np.mean(s.totals)) if s.n else 0.0
    out["other"] = max(0.0, total - sum(out.values()))
    return out


def bytes_profiles(study: Study) -> list[tuple[list[int], dict[str, float]]]:
    """Cell-groups with the same mean uplink bytes per offloader (to 3 significant digits)
    share one profile: (group indices, bytes per offloader)."""
    profiles: dict[str, tuple[list[int], dict[str, float]]] = {}
    for index, group in enumerate(study.groups):
        means = {n: s.mean_bytes_up for n, s in group.offloaders.items()}
        key = json.dumps({n: sig(v) for n, v in sorted(means.items())})
        profiles.setdefault(key, ([], means))[0].append(index)
    return list(profiles.values())


def bytes_figure(study: Study) -> tuple[Figure, int]:
    """Mean uplink bytes per request per offloader (log y); a bar per distinct profile.
    Returns the figure and the number of profiles."""
    profiles = bytes_profiles(study)
    shown = profiles[:MAX_PANELS]
    names = study.offloaders
    width = 0.8 / max(1, len(shown))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.2))
    for k, (indices, means) in enumerate(shown):
        heights = [means.get(n, math.nan) for n in names]
        xs = np.arange(len(names)) + (k - (len(shown) - 1) / 2) * width
        if len(shown) == 1:
            label = "all cell-groups" if len(study.groups) > 1 else None
            colours = [_colour(study, n) for n in names]
        else:
            label = _profile_label(study, indices)
            colours = None
        ax.bar(xs, heights, width=width * 0.95, color=colours, label=label, gid=f"bytes:{k}")
        if len(shown) == 1:
            for x, h in zip(xs, heights, strict=True):
                if math.isfinite(h) and h > 0:
                    ax.annotate(
                        bytes_text(h),
                        (x, h),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        for x, h in zip(xs, heights, strict=True):
            if math.isfinite(h) and h <= 0:  # no bar on a log scale: say so at its foot
                ax.annotate(
                    "0 B",
                    (x, 0),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    _log(ax.yaxis, bytes_tick)
    positive = [h for _, means in shown for h in means.values() if math.isfinite(h) and h > 0]
    if positive:  # whole decades, with room above the tallest bar for its label
        ax.set_ylim(10 ** math.floor(math.log10(min(positive))), max(positive) * 2.5)
    ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("mean uplink bytes per request")
    ax.set_title("Uplink bytes per request")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if any(not (a.get_label() or "_").startswith("_") for a in ax.containers):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig, len(profiles)


def _profile_label(study: Study, indices: list[int]) -> str:
    """The axis values the profile's cell-groups share (`bandwidth_mbps=1`), else the
    groups themselves."""
    names = short_names(list(study.axes))
    shared = []
    for axis in study.axes:
        values = {json.dumps(study.groups[i].values.get(axis)) for i in indices}
        if len(values) == 1:
            shared.append(f"{names[axis]}={value_text(study.groups[indices[0]].values.get(axis))}")
    if shared:
        return ", ".join(shared) + (f" ({len(indices)} cell-groups)" if len(indices) > 1 else "")
    return joined([study.label(study.groups[i]) for i in indices])


def drop_figure(study: Study) -> Figure:
    """Accuracy drop against median latency, a point per offloader per cell-group."""
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    labelled = []
    for name in study.offloaders:
        points = [
            (g.offloaders[name].median.value, g.offloaders[name].drop_pp)
            for g in study.groups
            if name in g.offloaders
        ]
        points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, color=_colour(study, name), label=name, s=36, zorder=3)
        labelled.append((name, xs[0], ys[0]))
    offsets = [np.asarray(c.get_offsets()) for c in ax.collections]
    logx = bool(offsets) and all(x > 0 for o in offsets for x in o[:, 0])
    if logx:
        _log(ax.xaxis)
    if len(study.groups) == 1:
        _annotate_points(ax, labelled, bool(logx))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("median end-to-end latency (ms)")
    score = score_name(study.metric)
    ax.set_ylabel(f"{score} drop (percentage points)")
    ax.set_title(f"{score.capitalize()} drop against latency (lower left is better)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig, [ax])
    return fig


def _annotate_points(ax, points: list[tuple[str, float, float]], logx: bool) -> None:
    """Name each point; a name near an earlier one moves down a line, so none overlap."""
    if not points:
        return
    xs = np.array([math.log10(p[1]) if logx else p[1] for p in points])
    ys = np.array([p[2] for p in points])
    span_x = float(np.ptp(xs)) or 1.0
    span_y = float(np.ptp(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []
    for (name, x, y), px, py in zip(points, xs, ys, strict=True):
        near = [
            line
            for qx, qy, line in placed
            if abs(qx - px) / span_x < 0.12 and abs(qy - py) / span_y < 0.06
        ]
        line = max(near) + 1 if near else 0
        placed.append((px, py, line))
        ax.annotate(name, (x, y), xytext=(5, 4 - 11 * line), textcoords="offset points", fontsize=8)


def _log(axis, text=None) -> None:
    """Log scale with plain tick labels (1, 2, 5 times powers of ten), not 3x10^2."""
    if axis.axis_name == "x":
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: (text or tick)(v)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _value_ticks(ax, values: list) -> None:
    """Ticks at the swept values themselves (where there are few enough to label)."""
    numbers = sorted({float(v) for v in values if is_number(v)})
    if 0 < len(numbers) <= 12:
        ax.set_xticks(numbers, [tick(v) for v in numbers])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def devices_figure(study: Study, axis: str) -> Figure:
    """Median total latency, uplink time and edge time (decode + edge) against the
    number of device hosts: the part that grows with devices is the bottleneck."""
    combos = panels_by_other_axes(study, axis)[:MAX_DEVICE_ROWS]
    metrics = [
        ("total", "end-to-end latency", ("total",)),
        ("uplink", "uplink time", ("uplink_ms",)),
        ("edge", "edge time (decode + compute)", ("decode_ms", "edge_ms")),
    ]
    fig, grid = plt.subplots(len(combos), 3, figsize=(14.0, 3.6 * len(combos)), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.97, wspace=0.3, hspace=0.5)
    _suptitle(fig, "Where the time grows as device hosts are added")
    for row, (combo_label, members) in enumerate(combos):
        for col, (key, ylabel, parts) in enumerate(metrics):
            ax = grid[row][col]
            for name in study.offloaders:
                points = []
                for group in sorted(members, key=lambda g: g.values[axis]):
                    s = group.offloaders.get(name)
                    if s is None or s.n == 0:
                        continue
                    if key == "total":
                        y = s.median.value
                    else:
                        y = float(np.median(np.nansum([s.phases[p] for p in parts], axis=0)))
                    points.append((group.values[axis], y))
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        color=_colour(study, name),
                        label=name,
                        gid=f"{key}:{name}",
                    )
            _value_ticks(ax, study.axes[axis])
            ax.set_xlabel("device hosts")
            ax.set_ylabel("median (ms)")
            ax.set_title(ylabel + (f"; {combo_label}" if combo_label else ""), fontsize=10)
            ax.grid(True, alpha=0.3)
    _legend(fig, [ax for row in grid for ax in row])
    return fig


# ---------------------------------------------------------------------------- helpers


def panels_by_other_axes(study: Study, axis: str) -> list[tuple[str, list[Group]]]:
    """The groups split by the values of the axes other than `axis`, in report order."""
    others = [a for a in study.axes if a != axis]
    names = short_names(list(study.axes))
    combos: dict[str, tuple[str, list[Group]]] = {}
    for group in study.groups:
        if not is_number(group.values.get(axis)):
            continue
        key = json.dumps([group.values.get(a) for a in others])
        label = ", ".join(f"{names[a]}={value_text(group.values.get(a))}" for a in others)
        combos.setdefault(key, (label, []))[1].append(group)
    return list(combos.values())


def _panels(count: int, width: float = 4.8) -> tuple[Figure, list]:
    count = max(1, count)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    scale = 1.4 if count == 1 else 1.0
    fig, grid = plt.subplots(
        rows, cols, figsize=(width * cols * scale, 3.7 * rows * scale), squeeze=False
    )
    # fixed spacing for the panels' labels and titles: tight_layout costs seconds per figure
    fig.subplots_adjust(left=0.08, right=0.97, wspace=0.3, hspace=0.55, bottom=0.12)
    axs = [ax for row in grid for ax in row]
    for ax in axs[count:]:
        ax.set_visible(False)
    return fig, axs[:count]


def _suptitle(fig: Figure, text: str) -> None:
    """A title above the panels' own titles, half an inch above the top row."""
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - 0.75 / height)
    fig.suptitle(text, y=1 - 0.12 / height)


def _legend(fig: Figure, axs: list) -> None:
    """One legend for the figure (every panel uses the same colours), right of the panels."""
    handles, labels = {}, []
    for ax in axs:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=9,
            frameon=False,
        )


def _colour(study: Study, name: str):
    index = study.offloaders.index(name) if name in study.offloaders else 0
    palette = plt.get_cmap("tab10" if len(study.offloaders) <= 10 else "tab20")
    return palette(index % palette.N)


def _log_x(axis: str, values: list) -> bool:
    numbers = [float(v) for v in values if is_number(v)]
    if not numbers or min(numbers) <= 0:
        return False
    return "bandwidth" in axis or max(numbers) / min(numbers) > 10


def _nanmean(values: np.ndarray) -> float:
    array = stats.finite(values)
    return float(np.mean(array)) if array.size else 0.0
