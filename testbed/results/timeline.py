"""Requests over time, for offloaders whose per-request choice changes (adaptive ones on a
bandwidth trace): pooled medians hide when the choice switched and what the device
believed about the link when it did.

Pure functions on the parsed rows of one run's requests.csv; the report draws the figure.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from testbed.results import stats
from testbed.results.records import CHOICE_KEYS

LOCAL = "local"
MAX_OFFLOADERS = 4  # columns of the figure; the report names the others


def choice_label(choice: str) -> str:
    """What a request's choice configured, without the prediction around it:
    `local`, `split=3 bits=6`, `scale=0.5 quality=75`; "" when it recorded none."""
    try:
        data = json.loads(choice) if choice else {}
    except json.JSONDecodeError:
        return choice
    if not isinstance(data, dict):
        return str(data)
    if data.get("mode") == LOCAL:
        return LOCAL
    parts = [f"{key}={data[key]}" for key in CHOICE_KEYS if key != "mode" and key in data]
    return " ".join(parts) or str(data.get("mode", ""))


def is_probe(choice: str) -> bool:
    try:
        data = json.loads(choice) if choice else {}
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and bool(data.get("probe"))


def changing_offloaders(rows: list[dict]) -> list[str]:
    """Offloaders, in order of first appearance, whose completed requests recorded more
    than one choice."""
    labels: dict[str, set[str]] = {}
    for row in rows:
        if row.get("status") == "ok":
            labels.setdefault(row["offloader"], set()).add(choice_label(row.get("choice", "")))
    return [name for name, seen in labels.items() if len(seen - {""}) > 1]


def series(rows: list[dict], offloader: str) -> dict[str, np.ndarray | list[str]]:
    """One offloader's completed requests in send order: seconds since its first send,
    latency, choice label, probe flag, the device's uplink estimate, and the rate each
    offloaded request's upload achieved (bytes over uplink time, which includes the
    one-way delay, so it reads below the link's rate for small payloads)."""
    mine = [r for r in rows if r.get("offloader") == offloader and r.get("status") == "ok"]
    mine.sort(key=lambda r: stats.number(r.get("intended_ms")))
    sent = np.array([stats.number(r.get("intended_ms")) for r in mine])
    start = np.nanmin(sent) if sent.size and not np.all(np.isnan(sent)) else 0.0
    up_bytes = np.array([stats.number(r.get("bytes_up")) for r in mine])
    up_ms = np.array([stats.number(r.get("uplink_ms")) for r in mine])
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where((up_bytes > 0) & (up_ms > 0), up_bytes * 8 / (up_ms * 1000), np.nan)
    return {
        "t_s": (sent - start) / 1000,
        "total_ms": np.array([stats.number(r.get("total_ms")) for r in mine]),
        "label": [choice_label(r.get("choice", "")) for r in mine],
        "probe": np.array([is_probe(r.get("choice", "")) for r in mine], dtype=bool),
        "est_mbps": np.array([stats.number(r.get("est_uplink_mbps")) for r in mine]),
        "rate_mbps": rate,
    }


def timeline_figure(rows: list[dict], offloaders: list[str]) -> Figure:
    """Per offloader a column: latency of each request coloured by its choice (probes
    hollow) above the device's uplink estimate and each upload's achieved rate."""
    shown = offloaders[:MAX_OFFLOADERS]
    fig, grid = plt.subplots(
        2,
        len(shown),
        figsize=(6.4 * len(shown), 6.4),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [3, 2]},
    )
    fig.subplots_adjust(left=0.08, right=0.97, hspace=0.12, wspace=0.25, bottom=0.1, top=0.88)
    palette = plt.get_cmap("tab10")
    for column, name in enumerate(shown):
        data = series(rows, name)
        top, bottom = grid[0][column], grid[1][column]
        labels = list(dict.fromkeys(data["label"]))
        labels.sort(key=lambda label: (label != LOCAL, label))
        for index, label in enumerate(labels):
            colour = "#555555" if label == LOCAL else palette(index % palette.N)
            chosen = np.array([lab == label for lab in data["label"]], dtype=bool)
            for probe in (False, True):
                pick = chosen & (data["probe"] == probe)
                if not pick.any():
                    continue
                top.scatter(
                    data["t_s"][pick],
                    data["total_ms"][pick],
                    s=16,
                    facecolors="none" if probe else colour,
                    edgecolors=colour,
                    label=f"{label} (probe)" if probe else label,
                )
        top.set_ylim(bottom=0)
        top.set_ylabel("end-to-end latency (ms)")
        top.set_title(name, fontsize=10)
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8, loc="best", frameon=True)
        estimate = data["est_mbps"]
        if np.isfinite(estimate).any():
            bottom.step(data["t_s"], estimate, where="post", color="#1f77b4", label="estimate")
        rate = data["rate_mbps"]
        if np.isfinite(rate).any():
            bottom.scatter(data["t_s"], rate, s=12, color="#d62728", label="achieved by the upload")
        bottom.set_ylabel("uplink (Mbit/s)")
        bottom.set_xlabel("time since the first request (s)")
        bottom.set_ylim(bottom=0)
        bottom.grid(True, alpha=0.3)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(fontsize=8, loc="best")
    fig.suptitle("Requests over time: the choice per request and the uplink it saw")
    return fig
