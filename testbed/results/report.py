"""The results report of a run folder or a sweep folder: report.md and PNG plots.

A run folder is what `run_scenario.py SCENARIO --out DIR` writes; a sweep folder holds
`sweep.json` and one run folder per cell. Repeats of the same axis values are pooled
into one cell-group: statistics come from the pooled requests, so a repeat adds
requests rather than a point. Offloaders are compared at matched accuracy: a speedup
is claimed only over an offloader that loses at least as much accuracy, so a faster but
less faithful offloader is never called better. How to read the report: docs/results.md.

    python -m testbed.report FOLDER [--title TITLE]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported

import matplotlib.pyplot as plt
import numpy as np
import yaml
from matplotlib import ticker
from matplotlib.figure import Figure

from testbed.results import records as results

from testbed.results import stats

from testbed.results import timeline
from testbed.errors import ScenarioError, TestbedError

# phases of one request, in the order they happen; queue_ms: open-loop runs only
PHASES = ("queue_ms", "device_ms", "encode_ms", "uplink_ms", "decode_ms", "edge_ms", "downlink_ms")
PHASE_NAMES = {
    "queue_ms": "queue", "device_ms": "device compute", "encode_ms": "encode",
    "uplink_ms": "uplink", "decode_ms": "edge decode", "edge_ms": "edge compute",
    "downlink_ms": "downlink", "other": "unattributed",
}  # fmt: skip
PHASE_COLOURS = {
    "queue_ms": "#bdbdbd", "device_ms": "#1f77b4", "encode_ms": "#17becf",
    "uplink_ms": "#d62728", "decode_ms": "#9467bd", "edge_ms": "#2ca02c",
    "downlink_ms": "#ff7f0e", "other": "#f0e442",
}  # fmt: skip
TEXT_COLUMNS = ("offloader", "status", "error", "choice", "device")
MAX_PANELS = 12  # subplots per figure; the report names the groups left out
MAX_DEVICE_ROWS = 6
DPI = 110
UNITS = {"_mbps": "Mbit/s", "_ms": "ms", "_pct": "%", "_s": "s", "_hz": "Hz", "_packets": "packets"}
DEVICE_AXES = ("devices", "device_count", "n_devices", "num_devices")


# ----------------------------------------------------------------------------- data


@dataclass
class Cell:
    """One run folder, parsed."""

    folder: Path
    rows: list[dict]
    columns: list[str]
    summary: dict[str, dict]
    order: list[str]
    scenario: dict
    environment: dict

    @property
    def bound(self) -> float:
        """The scenario's accuracy bound (points); the default where none was recorded."""
        recorded = (self.environment.get("bounds") or {}).get("max_drop_pp")
        value = self.scenario.get("max_drop_pp", recorded)
        return float(value) if _is_number(value) else results.DEFAULT_MAX_DROP_PP

    @property
    def configured(self) -> dict[str, float]:
        """Label -> the bound each offloader was configured with (runner's record, else
        read back from the resolved scenario)."""
        recorded = (self.environment.get("bounds") or {}).get("offloaders")
        if isinstance(recorded, dict):
            return {k: float(v) for k, v in recorded.items() if _is_number(v)}
        return results.configured_bounds(self.scenario.get("offloaders") or [])


@dataclass
class OffloaderStats:
    """One offloader in one cell-group: latencies of its completed requests, pooled."""

    name: str
    totals: np.ndarray
    failed: int
    median: stats.Estimate
    p95: float
    mean_bytes_up: float
    score: float  # fraction, mean over the group's cells (summary.csv)
    drop_pp: float  # mean over the group's cells (summary.csv)
    score_ci: stats.Estimate  # Wilson interval of the pooled requests' score
    agreement: float  # share of pooled requests agreeing with the unmodified model
    phases: dict[str, np.ndarray]
    per_device: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.totals.size)

    @property
    def mean(self) -> float:
        return float(np.mean(self.totals)) if self.totals.size else math.nan


@dataclass
class Group:
    """The cells that share axis values (the repeats), and their pooled statistics."""

    values: dict[str, Any]
    cells: list[Cell]
    offloaders: dict[str, OffloaderStats] = field(default_factory=dict)

    @property
    def bound(self) -> float:
        """The accuracy bound of the group's comparisons: its first cell's."""
        return self.cells[0].bound if self.cells else results.DEFAULT_MAX_DROP_PP

    def within(self, name: str) -> bool:
        s = self.offloaders.get(name)
        return s is not None and results.within(s.drop_pp, self.bound)


@dataclass
class Study:
    folder: Path
    kind: str  # "run" or "sweep"
    name: str
    source: str
    axes: dict[str, list]
    repeats: int
    groups: list[Group]
    missing: list[dict]
    offloaders: list[str]
    metric: str  # "accuracy", "agreement" or "detection" (image-level box agreement)
    phases: list[str]
    done: int

    def label(self, group: Group, full: bool = False) -> str:
        """`bandwidth_mbps=0.25, devices=1`; `all requests` without axes."""
        if not self.axes:
            return "all requests"
        names = _short_names(list(self.axes))
        return ", ".join(f"{names[a]}={_value_text(group.values.get(a), full)}" for a in self.axes)


def load_study(folder: Path) -> Study:
    """Read a run or sweep folder and compute every cell-group's statistics."""
    folder = Path(folder)
    if (folder / "sweep.json").is_file():
        study = _load_sweep(folder)
    elif (folder / "requests.csv").is_file():
        cell = read_run(folder)
        study = Study(
            folder=folder, kind="run", name=str(cell.scenario.get("name") or folder.name),
            source=" ".join(map(str, cell.environment.get("command") or [])) or str(folder),
            axes={}, repeats=1, groups=[Group({}, [cell])], missing=[], offloaders=[],
            metric="accuracy", phases=[], done=1,
        )  # fmt: skip
    else:
        raise ScenarioError(
            f"{folder}: neither a run folder (no requests.csv) nor a sweep folder "
            "(no sweep.json); give the folder that run_scenario.py --out or a sweep wrote"
        )
    cells = [c for g in study.groups for c in g.cells]
    study.offloaders = _offloader_order(cells)
    study.metric = _metric(cells)
    # open-loop runs only: closed-loop runs write zeros (or older runs no column at all)
    has_queue = any(r.get("queue_ms", 0) > 0 for c in cells for r in c.rows)
    study.phases = [p for p in PHASES if p != "queue_ms" or has_queue]
    for group in study.groups:
        group.offloaders = _group_stats(group, study)
    return study


def read_run(folder: Path) -> Cell:
    """A run folder's requests, summary, resolved scenario and environment."""
    folder = Path(folder)
    path = folder / "requests.csv"
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ScenarioError(f"{path}: cannot read it ({error})") from None
    lacking = [c for c in ("offloader", "total_ms", "status") if c not in columns]
    if lacking:
        raise ScenarioError(f"{path}: not a requests.csv (no column {', '.join(lacking)})")
    rows = [_parse_row(row) for row in raw_rows]
    summary, order = {}, []
    summary_path = folder / "summary.csv"
    if summary_path.is_file():
        with summary_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                name = row.get("offloader", "")
                summary[name] = {
                    k: (v if k in ("offloader", "choice") else _number(v)) for k, v in row.items()
                }
                order.append(name)
    return Cell(
        folder=folder, rows=rows, columns=columns, summary=summary, order=order,
        scenario=_read_yaml(folder / "resolved_scenario.yaml"),
        environment=_read_json(folder / "environment.json"),
    )  # fmt: skip


def _load_sweep(folder: Path) -> Study:
    path = folder / "sweep.json"
    try:
        sweep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScenarioError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("cells"), list):
        raise ScenarioError(f"{path}: expected an object with a list `cells`")
    axes = sweep.get("axes") or {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) for v in axes.values()):
        raise ScenarioError(f"{path}: `axes` must map each axis to its list of values")
    repeats = sweep.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool):
        raise ScenarioError(f"{path}: `repeats` must be a whole number, not {repeats!r}")
    groups: dict[str, Group] = {}
    missing = []
    done = 0
    for index, entry in enumerate(sweep["cells"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("values", {}), dict):
            raise ScenarioError(f"{path}: cells[{index}] must be an object with `values`")
        values = {a: entry.get("values", {}).get(a) for a in axes}
        info = {
            "id": str(entry.get("id", index)), "values": values,
            "repeat": entry.get("repeat", 0), "status": str(entry.get("status", "?")),
        }  # fmt: skip
        if entry.get("status") != "done":
            missing.append(info)
            continue
        cell_dir = folder / str(entry.get("dir", ""))
        if not (cell_dir / "requests.csv").is_file() or not entry.get("dir"):
            missing.append({**info, "status": "done, but no requests.csv"})
            continue
        done += 1
        key = json.dumps([values[a] for a in axes])
        groups.setdefault(key, Group(values, [])).cells.append(read_run(cell_dir))
    ordered = sorted(groups.values(), key=lambda g: _axis_order(g.values, axes))
    return Study(
        folder=folder, kind="sweep", name=str(sweep.get("name") or folder.name),
        source=str(sweep.get("source", "")), axes=axes, repeats=repeats,
        groups=ordered, missing=missing, offloaders=[], metric="accuracy", phases=[], done=done,
    )  # fmt: skip


def _group_stats(group: Group, study: Study) -> dict[str, OffloaderStats]:
    out = {}
    for name in study.offloaders:
        present = [c for c in group.cells if name in c.summary]
        rows = [r for c in group.cells for r in c.rows if r["offloader"] == name]
        if not present and not rows:
            continue  # this offloader did not run in this group
        ok = [r for r in rows if r["status"] == "ok"]
        totals = stats.finite([r["total_ms"] for r in ok])
        # aligned with `ok` (NaN where a phase is blank), so phases can be added per request
        phases = {p: np.array([r.get(p, math.nan) for r in ok], dtype=float) for p in study.phases}
        per_device: dict[str, list] = {}
        for row in ok:
            if row.get("device", "") != "":
                per_device.setdefault(row["device"], []).append(row["total_ms"])
        bytes_up = _column(ok, "bytes_up")
        score = _mean([c.summary[name].get("accuracy") for c in present])
        out[name] = OffloaderStats(
            name=name, totals=totals, failed=len(rows) - len(ok),
            median=stats.median_ci(totals), p95=stats.percentile(totals, 95),
            mean_bytes_up=float(np.mean(bytes_up)) if bytes_up.size else math.nan,
            score=score,
            drop_pp=_mean([c.summary[name].get("accuracy_drop_pp") for c in present]),
            score_ci=_score_ci(rows, study.metric, score),
            agreement=_agreement(rows, present, name, study.metric, score),
            phases=phases,
            per_device={
                d: stats.finite(v) for d, v in sorted(per_device.items(), key=_device_key)
            },
        )  # fmt: skip
    return out


def _score_ci(rows: list[dict], metric: str, score: float) -> stats.Estimate:
    """Wilson interval of the pooled requests' score (failed ones count as wrong); NaN
    where requests.csv lacks the score's column."""
    key = "correct" if metric == "accuracy" else "agrees"
    values = _column(rows, key)
    if values.size == 0 or values.size < len(rows):
        return stats.Estimate(score, math.nan, math.nan)
    return stats.wilson(float(values.sum()), values.size)


def _agreement(
    rows: list[dict], present: list[Cell], name: str, metric: str, score: float
) -> float:
    """Share of the pooled requests agreeing with the unmodified model: from requests.csv
    (`agrees`), else summary.csv (`agreement`); for an agreement metric, the score."""
    values = _column(rows, "agrees")
    if values.size and values.size == len(rows):
        return float(values.mean())
    recorded = _mean([c.summary[name].get("agreement") for c in present])
    return score if metric != "accuracy" and not math.isfinite(recorded) else recorded


def comparisons(study: Study, label: str) -> list[dict[str, results.Versus]]:
    """Per cell-group: `label` against every baseline at matched accuracy; a ratio
    (median(baseline) / median(label), paired by sample) only where the baseline loses
    at least as much accuracy."""
    out = []
    for group in study.groups:
        mine = group.offloaders.get(label)
        row = {}
        for name in baselines(study):
            other = group.offloaders.get(name)
            if mine is None or other is None:
                continue
            cells = [c.rows for c in group.cells]
            row[name] = results.versus(cells, label, name, mine.drop_pp, other.drop_pp)
        out.append(row)
    return out


def fastest_within(study: Study, name: str) -> Group | None:
    """The cell-group (configuration) in which `name` has the lowest median latency while
    its drop stays within that group's bound; None where it never does."""
    points = [
        (index, g.offloaders[name].median.value, g.offloaders[name].drop_pp)
        for index, g in enumerate(study.groups)
        if name in g.offloaders and g.within(name)
    ]
    index = results.fastest_within(points, math.inf)
    return None if index is None else study.groups[index]


def deepcod_labels(study: Study) -> list[str]:
    return [name for name in study.offloaders if name.startswith("deepcod")]


def baselines(study: Study) -> list[str]:
    return [name for name in study.offloaders if not name.startswith("deepcod")]


# ---------------------------------------------------------------------------- plots


def numeric_axes(study: Study) -> list[str]:
    return [a for a, values in study.axes.items() if values and all(map(_is_number, values))]


def devices_axis(study: Study) -> str | None:
    for axis in numeric_axes(study):
        if axis.split(".")[-1] in DEVICE_AXES or axis == "device.count":
            return axis
    return None


def latency_figure(study: Study, axis: str) -> Figure:
    """Median latency against `axis`, a line per offloader with its 95% band; one panel
    per combination of the other axes' values."""
    combos = _combos(study, axis)
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
                xs, [p[1].low for p in points], [p[1].high for p in points],
                color=colour, alpha=0.2, linewidth=0, gid=f"band:{name}",
            )  # fmt: skip
        if logx:
            _log(ax.xaxis)
        if positive and ax.lines:
            _log(ax.yaxis)
        _value_ticks(ax, study.axes[axis])
        ax.set_xlabel(_axis_label(axis))
        ax.set_ylabel("median end-to-end latency (ms)")
        ax.set_title(combo_label or f"latency against {_short(axis)}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axs)
    if len(shown) > 1:
        _suptitle(fig, f"Median end-to-end latency against {_short(axis)} (95% bands)")
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
                np.arange(len(names)), heights, bottom=bottom, width=0.7,
                color=PHASE_COLOURS[segment], label=PHASE_NAMES[segment], gid=f"phase:{segment}",
            )  # fmt: skip
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
        key = json.dumps({n: _sig(v) for n, v in sorted(means.items())})
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
                    ax.annotate(_bytes_text(h), (x, h), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 2), textcoords="offset points")  # fmt: skip
        for x, h in zip(xs, heights, strict=True):
            if math.isfinite(h) and h <= 0:  # no bar on a log scale: say so at its foot
                ax.annotate("0 B", (x, 0), xycoords=("data", "axes fraction"), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    _log(ax.yaxis, _bytes_tick)
    positive = [h for _, means in shown for h in means.values() if math.isfinite(h) and h > 0]
    if positive:  # whole decades, with room above the tallest bar for its label
        ax.set_ylim(10 ** math.floor(math.log10(min(positive))), max(positive) * 2.5)
    ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("mean uplink bytes per request")
    ax.set_title("Uplink bytes per request")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if any(a.get_label() and not a.get_label().startswith("_") for a in ax.containers):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig, len(profiles)


def _profile_label(study: Study, indices: list[int]) -> str:
    """The axis values the profile's cell-groups share (`bandwidth_mbps=1`), else the
    groups themselves."""
    names = _short_names(list(study.axes))
    shared = []
    for axis in study.axes:
        values = {json.dumps(study.groups[i].values.get(axis)) for i in indices}
        if len(values) == 1:
            shared.append(f"{names[axis]}={_value_text(study.groups[indices[0]].values.get(axis))}")
    if shared:
        return ", ".join(shared) + (f" ({len(indices)} cell-groups)" if len(indices) > 1 else "")
    return _joined([study.label(study.groups[i]) for i in indices])


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
    logx = ax.collections and all(x > 0 for c in ax.collections for x in c.get_offsets()[:, 0])
    if logx:
        _log(ax.xaxis)
    if len(study.groups) == 1:
        _annotate_points(ax, labelled, bool(logx))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("median end-to-end latency (ms)")
    ax.set_ylabel(f"{_score_name(study)} drop (percentage points)")
    ax.set_title(f"{_score_name(study).capitalize()} drop against latency (lower left is better)")
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
            line for qx, qy, line in placed
            if abs(qx - px) / span_x < 0.12 and abs(qy - py) / span_y < 0.06
        ]  # fmt: skip
        line = max(near) + 1 if near else 0
        placed.append((px, py, line))
        ax.annotate(name, (x, y), xytext=(5, 4 - 11 * line), textcoords="offset points",
                    fontsize=8)  # fmt: skip


def _log(axis, text=None) -> None:
    """Log scale with plain tick labels (1, 2, 5 times powers of ten), not 3x10^2."""
    if axis.axis_name == "x":
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: (text or _tick)(v)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _value_ticks(ax, values: list) -> None:
    """Ticks at the swept values themselves (where there are few enough to label)."""
    numbers = sorted({float(v) for v in values if _is_number(v)})
    if 0 < len(numbers) <= 12:
        ax.set_xticks(numbers, [_tick(v) for v in numbers])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _tick(value: float) -> str:
    return f"{value:g}"


def devices_figure(study: Study, axis: str) -> Figure:
    """Median total latency, uplink time and edge time (decode + edge) against the
    number of device hosts: the part that grows with devices is the bottleneck."""
    combos = _combos(study, axis)[:MAX_DEVICE_ROWS]
    metrics = [
        ("total", "end-to-end latency", ("total",)),
        ("uplink", "uplink time", ("uplink_ms",)),
        ("edge", "edge time (decode + compute)", ("decode_ms", "edge_ms")),
    ]
    fig, grid = plt.subplots(
        len(combos), 3, figsize=(14.0, 3.6 * len(combos)), squeeze=False
    )  # fmt: skip
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
                    ax.plot(xs, ys, marker="o", color=_colour(study, name), label=name,
                            gid=f"{key}:{name}")  # fmt: skip
            _value_ticks(ax, study.axes[axis])
            ax.set_xlabel("device hosts")
            ax.set_ylabel("median (ms)")
            ax.set_title(ylabel + (f"; {combo_label}" if combo_label else ""), fontsize=10)
            ax.grid(True, alpha=0.3)
    _legend(fig, [ax for row in grid for ax in row])
    return fig


# ---------------------------------------------------------------------------- report


def write_report(folder: Path, *, title: str | None = None) -> Path:
    """Write `report.md` and its plots (under `plots/`) into `folder`; returns the path of
    report.md. The same inputs give the same report.md bytes."""
    folder = Path(folder)
    study = load_study(folder)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    lines = _header(study, title)
    lines += _warnings(study)
    lines += _tables(study)
    lines += _matched_section(study)
    lines += _speedup_section(study)
    lines += _plots_section(study, plots)
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _header(study: Study, title: str | None) -> list[str]:
    first = study.groups[0].cells[0] if study.groups else None
    scenario = first.scenario if first else {}
    env = first.environment if first else {}
    lines = [f"# {title or 'Results: ' + study.name}", ""]
    lines.append(f"- Scenario: `{study.name}`, from `{study.source or '?'}`")
    if study.kind == "sweep":
        if study.axes:
            axes = "; ".join(
                f"`{a}` = {', '.join(_value_text(v, True) for v in vs)}"
                for a, vs in study.axes.items()
            )
        else:
            axes = "none"
        lines.append(f"- Axes: {axes}")
        lines.append(f"- Repeats: {study.repeats} per cell-group (requests pooled)")
        lines.append(f"- Cells: {study.done} done, {len(study.missing)} missing")
    else:
        lines.append("- A single run (no sweep axes)")
    model = scenario.get("model", "?")
    lines.append(f"- Model: `{model}`; score: {_score_text(study)}")
    lines.append(f"- Accuracy bound: {_bounds_text(study)}")
    if scenario:
        arrival = scenario.get("arrival", {}).get("process", "closed")
        lines.append(
            f"- Samples per offloader per cell: {scenario.get('samples', '?')}; arrivals: {arrival}"
        )
    if env:
        lines.append(f"- Environment (first cell): {_environment_text(env)}")
    cells = [c for g in study.groups for c in g.cells]
    commits = {c.environment.get("commit") for c in cells if c.environment}
    if len(commits) > 1:
        lines.append(f"- **The cells ran from {len(commits)} different commits.**")
    interrupted = [c.folder.name for c in cells if c.environment.get("interrupted")]
    if interrupted:
        lines.append(f"- **Interrupted (partial) runs:** {', '.join(interrupted)}")
    lines += [
        "",
        f"Latency statistics use completed requests (status ok); failed requests count in "
        f"`failed` and as wrong in the score. Intervals: percentile bootstrap, "
        f"{int(stats.CONFIDENCE * 100)}%, {stats.RESAMPLES} resamples, seed {stats.SEED}. "
        "How to read this report: docs/results.md.",
        "",
    ]
    if study.missing:
        lines += [
            "## Missing cells",
            "",
            "| cell | values | repeat | status |",
            "|---|---|---|---|",
        ]
        names = _short_names(list(study.axes))
        for m in study.missing:
            values = ", ".join(f"{names[a]}={_value_text(v, True)}" for a, v in m["values"].items())
            lines.append(f"| {m['id']} | {values or '-'} | {m['repeat']} | {m['status']} |")
        lines.append("")
    return lines


def _bounds_text(study: Study) -> str:
    """The scenario's max_drop_pp (all cells'), saying where it is the default."""
    cells = [c for g in study.groups for c in g.cells]
    bounds = sorted({c.bound for c in cells})
    text = " / ".join(f"{b:g}" for b in bounds) or f"{results.DEFAULT_MAX_DROP_PP:g}"
    recorded = any("max_drop_pp" in c.scenario for c in cells)
    note = "" if recorded else "; the default: the run recorded none"
    return f"`max_drop_pp` = {text} (points of drop{note})"


def _warnings(study: Study) -> list[str]:
    """A line per offloader whose drop broke the scenario's or its own configured bound,
    naming its worst cell-group."""
    lines = []
    for name in study.offloaders:
        broken = [g for g in study.groups if name in g.offloaders and _broken(g, name)]
        if not broken:
            continue
        worst = max(broken, key=lambda g: g.offloaders[name].drop_pp)
        where = ""
        if study.axes:
            count = f"over in {len(broken)} of {len(study.groups)} cell-groups"
            where = f" in {study.label(worst)} ({count})"
        drops = {name: worst.offloaders[name].drop_pp}
        lines += results.bound_warnings(drops, worst.bound, worst.cells[0].configured, where)
    return ["## Warnings", "", *(f"- {line}" for line in lines), ""] if lines else []


def _broken(group: Group, name: str) -> bool:
    drops = {name: group.offloaders[name].drop_pp}
    return bool(results.bound_warnings(drops, group.bound, group.cells[0].configured))


def _environment_text(env: dict) -> str:
    parts = []
    if "kernel" in env:
        parts.append(f"kernel {env['kernel']}")
    if "link_backend" in env:
        parts.append(f"link backend {env['link_backend']}")
    if "commit" in env:
        parts.append(f"commit {str(env['commit'])[:12]}" + (" (dirty)" if env.get("dirty") else ""))
    if "cpu_count" in env:
        parts.append(f"{env['cpu_count']} x {env.get('cpu_model', 'CPU')}")
    if "python" in env:
        parts.append(f"Python {env['python']}")
    if (env.get("packages") or {}).get("torch"):
        parts.append(f"torch {env['packages']['torch']}")
    return ", ".join(parts) or "not recorded"


def _tables(study: Study) -> list[str]:
    if not study.groups:
        return ["No cell finished: nothing to report.", ""]
    score = _score_name(study)
    both = study.metric == "accuracy"  # otherwise the score is the agreement
    lines = ["## Latency per cell-group" if study.axes else "## Latency", ""]
    head = ["offloader", "n", "median ms [95% CI]", "mean ms", "p95 ms", "mean bytes up"]
    head += [f"{score} % [95% CI]", *(["agreement %"] * both), "drop pp", "within bound"]
    head += ["failed"]
    for group in study.groups:
        if study.axes:
            cells = len(group.cells)
            lines += [f"### {study.label(group, full=True)} ({cells} cell{'s' * (cells > 1)})", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, s in group.offloaders.items():
            cells = [
                name, str(s.n), _estimate_text(s.median), _ms(s.mean), _ms(s.p95),
                _count(s.mean_bytes_up), _share_text(s.score, s.score_ci),
                *([_fixed(100 * s.agreement, 1)] * both), _signed(s.drop_pp),
                _yes(s.drop_pp, group.within(name)), str(s.failed),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _device_table(group)
    return lines


def _share_text(value: float, ci: stats.Estimate) -> str:
    """`95.0 [76.4, 99.1]` (percent); the bare value where no interval was possible."""
    if not math.isfinite(ci.low):
        return _fixed(100 * value, 1)
    return f"{_fixed(100 * value, 1)} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def _yes(drop: float, within: bool) -> str:
    return "-" if not math.isfinite(drop) else ("yes" if within else "no")


def _device_table(group: Group) -> list[str]:
    devices = sorted({d for s in group.offloaders.values() for d in s.per_device}, key=_dkey)
    if len(devices) < 2:
        return []
    head = ["offloader", *(f"device {d}" for d in devices)]
    lines = ["Median end-to-end ms per device host:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in group.offloaders.items():
        cells = [_ms(stats.percentile(s.per_device.get(d, []), 50)) for d in devices]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return [*lines, ""]


def _matched_section(study: Study) -> list[str]:
    """Which offloaders stay within the bound, and (sweeps) each one's fastest
    configuration that does."""
    if not study.groups or not any(g.offloaders for g in study.groups):
        return []
    lines = ["## Matched accuracy", ""]
    lines.append(
        "An offloader is *within the bound* where its drop is at most the scenario's "
        "`max_drop_pp`. Speedups are claimed only over offloaders that lose at least as "
        "much accuracy: none is called faster or better than one with a smaller drop."
    )
    lines.append("")
    if not study.axes:
        group = study.groups[0]
        inside = [n for n in group.offloaders if group.within(n)]
        outside = [
            f"{n} ({group.offloaders[n].drop_pp:.2f})"
            for n in group.offloaders
            if n not in inside and math.isfinite(group.offloaders[n].drop_pp)
        ]
        lines.append(f"- Within the bound ({group.bound:g} points): {', '.join(inside) or 'none'}")
        lines.append(f"- Over it (drop in points): {', '.join(outside) or 'none'}")
        return [*lines, ""]
    lines += ["Each offloader's fastest cell-group (configuration) within the bound:", ""]
    head = ["offloader", "fastest within the bound", "median ms [95% CI]", "drop pp",
            "within the bound in"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in study.offloaders:
        ran = [g for g in study.groups if name in g.offloaders]
        count = f"{sum(g.within(name) for g in ran)} of {len(ran)} cell-groups"
        best = fastest_within(study, name)
        if best is None:
            lines.append(f"| {name} | none within the bound | - | - | {count} |")
            continue
        s = best.offloaders[name]
        cells = [name, study.label(best, full=True), _estimate_text(s.median), _signed(s.drop_pp)]
        lines.append("| " + " | ".join([*cells, count]) + " |")
    return [*lines, ""]


def _speedup_section(study: Study) -> list[str]:
    labels = deepcod_labels(study)
    if not labels or not study.groups:
        return []
    lines = ["## DeepCOD at matched accuracy", ""]
    lines.append(
        "median(baseline) / median(DeepCOD) end-to-end latency, with its bootstrap 95% "
        "interval (paired: the same samples, resampled together), stated only against "
        "baselines that lose at least as much accuracy as DeepCOD; above 1 means DeepCOD "
        "is faster. A baseline that loses less accuracy gets no speedup figure."
    )
    lines.append("")
    for label in labels:
        if len(labels) > 1:
            lines += [f"### {label}", ""]
        lines += _versus_table(study, label)
    return lines


def _versus_table(study: Study, label: str) -> list[str]:
    rows = comparisons(study, label)
    if not any(rows):
        return ["No baseline ran beside it.", ""]
    head = ["cell-group" if study.axes else "run", "baseline", "drop pp (baseline vs DeepCOD)"]
    head += ["speedup [95% CI]", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, row in zip(study.groups, rows, strict=True):
        for name, v in row.items():
            drops = f"{_fixed(v.other_drop_pp, 2)} vs {_fixed(v.drop_pp, 2)}"
            cells = [study.label(group, full=True), name, drops, v.ratio_text(), v.verdict()]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if not any(v.claimed for row in rows for v in row.values()):
        lines += [
            f"No baseline loses at least as much accuracy as {label}"
            + (" in any cell-group" if study.axes else "")
            + ": no speedup is claimed.",
            "",
        ]
    return lines


def _plots_section(study: Study, plots: Path) -> list[str]:
    if not study.groups:
        return []
    lines = ["## Plots", ""]
    if not any(s.n for g in study.groups for s in g.offloaders.values()):
        return [*lines, "No request completed: nothing to plot.", ""]

    def emit(fig: Figure, name: str, heading: str, caption: str) -> None:
        fig.savefig(plots / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        lines.extend([f"### {heading}", "", f"![{heading}](plots/{name})", "", caption, ""])

    axes = numeric_axes(study)
    if not axes:
        why = "it has no sweep axes" if not study.axes else "no swept axis is numeric"
        lines += [f"No latency-against-axis plot: {why}.", ""]
    for axis in axes:
        others = [a for a in study.axes if a != axis]
        note = ""
        if others:
            count = len(_combos(study, axis))
            note = f"; one panel per value of {', '.join(f'`{_short(a)}`' for a in others)}"
            if count > MAX_PANELS:
                note += f" (first {MAX_PANELS} of {count} shown)"
        emit(
            latency_figure(study, axis), f"latency_vs_{_slug(axis)}.png",
            f"Latency against {_short(axis)}",
            f"Median end-to-end latency (ms) against `{axis}`, a line per offloader, shaded: "
            f"bootstrap 95% interval of the median{note}.",
        )  # fmt: skip
    fig, shown = cdf_figure(study)
    emit(
        fig, "latency_cdf.png", "Latency distributions",
        "Cumulative distribution of end-to-end latency (ms, log x) of completed requests, "
        f"a line per offloader{_shown_note(study, shown)}.",
    )  # fmt: skip
    fig, shown = phase_figure(study)
    emit(
        fig, "phases.png", "Where the time goes",
        "Mean time per phase (ms) per offloader, stacked: the bar's height is the mean "
        f"end-to-end latency (means add up, medians do not){_shown_note(study, shown)}.",
    )  # fmt: skip
    fig, profiles = bytes_figure(study)
    if profiles == 1:
        same = " (the same in every cell-group)" if len(study.groups) > 1 else ""
    else:
        same = f"; a bar per set of cell-groups with different bytes ({profiles} sets"
        same += f", first {MAX_PANELS} shown)" if profiles > MAX_PANELS else ")"
    emit(
        fig, "bytes.png", "Bytes per request",
        f"Mean uplink bytes per completed request per offloader (log y){same}.",
    )  # fmt: skip
    emit(
        drop_figure(study), "drop_vs_latency.png", f"{_score_name(study).capitalize()} drop",
        f"{_score_name(study).capitalize()} drop (percentage points, against the unsplit "
        "model) against median latency: a point per offloader per cell-group; lower left is "
        "better.",
    )  # fmt: skip
    axis = devices_axis(study)
    if axis is not None:
        emit(
            devices_figure(study, axis), f"devices_{_slug(axis)}.png", "Scaling with devices",
            f"Median end-to-end latency, uplink time and edge time (decode + compute) against "
            f"`{axis}`: the part that grows with the number of devices is the bottleneck "
            "(the link when uplink time grows, the edge when edge time grows).",
        )  # fmt: skip
    if study.kind == "run":
        rows = study.groups[0].cells[0].rows
        changing = timeline.changing_offloaders(rows)
        if changing:
            shown = changing[: timeline.MAX_OFFLOADERS]
            left = f" (the first {len(shown)} of {len(changing)})" if changing != shown else ""
            emit(
                timeline.timeline_figure(rows, shown), "timeline.png", "Requests over time",
                f"Every completed request of {', '.join(f'`{n}`' for n in shown)}{left}, whose choice changes "
                "between requests: above, its latency at its send time, coloured by its "
                "choice (probes hollow); below, the device's uplink estimate (line) and the "
                "rate each upload achieved (bytes over uplink time, one-way delay included).",
            )  # fmt: skip
    return lines


def _shown_note(study: Study, shown: list[int]) -> str:
    if len(study.groups) <= 1:
        return ""
    if len(shown) == len(study.groups):
        return "; a panel per cell-group"
    return (
        f"; a panel per cell-group, the first {len(shown)} of {len(study.groups)} shown "
        f"(up to {study.label(study.groups[shown[-1]])})"
    )


# ---------------------------------------------------------------------------- helpers


def _parse_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if key is None:
            continue  # a line with more fields than the header
        out[key] = (value or "") if key in TEXT_COLUMNS else _number(value)
    return out


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _column(rows: list[dict], key: str) -> np.ndarray:
    return stats.finite([r.get(key, math.nan) for r in rows])


def _nanmean(values: np.ndarray) -> float:
    array = stats.finite(values)
    return float(np.mean(array)) if array.size else 0.0


def _mean(values) -> float:
    array = stats.finite([math.nan if v is None else v for v in values])
    return float(np.mean(array)) if array.size else math.nan


def _offloader_order(cells: list[Cell]) -> list[str]:
    """Scenario order (summary.csv), then any others in the order requests name them."""
    order: list[str] = []
    for cell in cells:
        for name in [*cell.order, *(r["offloader"] for r in cell.rows)]:
            if name and name not in order:
                order.append(name)
    return order


RECORDED_METRICS = {"accuracy": "accuracy", "agreement": "agreement",
                    "detection_agreement": "detection"}  # fmt: skip


def _metric(cells: list[Cell]) -> str:
    """The plugin's metric as the runner recorded it (environment.json); for older runs
    guessed back: `accuracy` (the `correct` column) or `agreement` (`agrees`), whichever
    reproduces summary.csv's score; without labels it can only be agreement."""
    for cell in cells:
        recorded = RECORDED_METRICS.get(str(cell.environment.get("metric")))
        if recorded:
            return recorded
    rows = [r for c in cells for r in c.rows]
    if any(math.isfinite(r.get("tp", math.nan)) for r in rows):  # box counts: a detector
        return "detection"
    if rows and all(not r.get("label", -1) >= 0 for r in rows):
        return "agreement"
    error = {"accuracy": 0.0, "agreement": 0.0}
    for cell in cells:
        for name, summary in cell.summary.items():
            mine = [r for r in cell.rows if r["offloader"] == name]
            if not mine or not math.isfinite(summary.get("accuracy", math.nan)):
                continue
            for metric, key in (("accuracy", "correct"), ("agreement", "agrees")):
                error[metric] += abs(_mean([r.get(key) for r in mine]) - summary["accuracy"])
    return "agreement" if error["agreement"] < error["accuracy"] else "accuracy"


SCORE_NAMES = {"accuracy": "accuracy", "detection": "detection agreement"}
SCORE_TEXTS = {
    "accuracy": "top-1 accuracy against the labels; drop against the unsplit model's accuracy",
    "detection": "detection agreement: the share of images whose boxes all match the "
    "unmodified detector's (IoU >= 0.5, one to one); pooled box precision and recall in "
    "summary.csv",
}


def _score_name(study: Study) -> str:
    return SCORE_NAMES.get(study.metric, "agreement")


def _score_text(study: Study) -> str:
    return SCORE_TEXTS.get(study.metric, "top-1 agreement with the unsplit model (no labels)")


def _axis_order(values: dict, axes: dict) -> tuple:
    key = []
    for axis, listed in axes.items():
        value = values.get(axis)
        key.append(listed.index(value) if value in listed else len(listed))
        key.append(json.dumps(value))
    return tuple(key)


def _combos(study: Study, axis: str) -> list[tuple[str, list[Group]]]:
    """The groups split by the values of the axes other than `axis`, in report order."""
    others = [a for a in study.axes if a != axis]
    names = _short_names(list(study.axes))
    combos: dict[str, tuple[str, list[Group]]] = {}
    for group in study.groups:
        if not _is_number(group.values.get(axis)):
            continue
        key = json.dumps([group.values.get(a) for a in others])
        label = ", ".join(f"{names[a]}={_value_text(group.values.get(a))}" for a in others)
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
            [handles[label] for label in labels], labels, loc="center left",
            bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False,
        )  # fmt: skip


def _colour(study: Study, name: str):
    index = study.offloaders.index(name) if name in study.offloaders else 0
    palette = plt.get_cmap("tab10" if len(study.offloaders) <= 10 else "tab20")
    return palette(index % palette.N)


def _log_x(axis: str, values: list) -> bool:
    numbers = [float(v) for v in values if _is_number(v)]
    if not numbers or min(numbers) <= 0:
        return False
    return "bandwidth" in axis or max(numbers) / min(numbers) > 10


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(axis: str) -> str:
    return axis.split(".")[-1]


def _short_names(axes: list[str]) -> dict[str, str]:
    """Last dotted component of each axis name, unless two axes share it."""
    shorts = [_short(a) for a in axes]
    return {a: (s if shorts.count(s) == 1 else a) for a, s in zip(axes, shorts, strict=True)}


def _axis_label(axis: str) -> str:
    for suffix, unit in UNITS.items():
        if axis.endswith(suffix):
            return f"{_short(axis)} ({unit})"
    if axis.split(".")[-1] in DEVICE_AXES:
        return "device hosts"
    return _short(axis)


def _value_text(value, full: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and not full and "/" in value:
        return Path(value).name  # a trace path: its file name is enough on a plot
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "axis"


def _sig(value: float) -> float | None:
    return float(f"{value:.3g}") if math.isfinite(value) else None


def _joined(labels: list[str], limit: int = 3) -> str:
    text = "; ".join(labels[:limit])
    return text + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")


def _device_key(item) -> tuple:
    return _dkey(item[0])


def _dkey(device: str) -> tuple:
    try:
        return (0, float(device), device)
    except ValueError:
        return (1, 0.0, device)


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _estimate_text(e: stats.Estimate) -> str:
    if not math.isfinite(e.value):
        return "-"
    return f"{_ms(e.value)} [{_ms(e.low)}, {_ms(e.high)}]"


def _ratio_text(e: stats.Estimate) -> str:
    if not math.isfinite(e.value):
        return "-"
    return f"{e.value:.2f}x [{e.low:.2f}, {e.high:.2f}]"


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "-"


def _count(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "-"


def _bytes_tick(value: float) -> str:
    for scale, unit in ((1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def _bytes_text(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} MB"
    if value >= 1e3:
        return f"{value / 1e3:.1f} kB"
    return f"{value:.0f} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.report",
        description="Write report.md and plots for a run folder or a sweep folder.",
    )
    parser.add_argument("folder", type=Path, help="a run_scenario.py --out folder or a sweep")
    parser.add_argument("--title", help="the report's title (default: the scenario's name)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.folder, title=args.title)
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
