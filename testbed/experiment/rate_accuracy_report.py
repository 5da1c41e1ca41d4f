"""What `testbed.experiment.rate_accuracy` writes once its points are measured: the
curves per configuration (with Wilson intervals), their markdown table and header, and
the rate-accuracy plot with each family's frontier."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display

import numpy as np
from matplotlib.figure import Figure

from testbed.agents.protocol import HEADER
from testbed.results.stats import wilson

if TYPE_CHECKING:
    from testbed.experiment.rate_accuracy import Config

# the families measured, in the order of tables and plots
FAMILIES = ("raw", "local", "jpeg", "webp", "jalad", "bottlenet", "deepcod")

# ------------------------------------------------------------------------------ summary


def score_key(plugin) -> str:
    """The points' column the plugin's metric counts (as `testbed.results.records.summarize`)."""
    return "correct" if plugin.metric == "accuracy" else "agrees"


def reference_score(plugin, references: list, labels: np.ndarray) -> float:
    if plugin.metric != "accuracy":
        return 1.0  # agreement of the unmodified model with itself
    return float(np.mean([ref == label for ref, label in zip(references, labels, strict=True)]))


def summarize(points: list[dict], configs: list[Config], key: str, ref: float) -> list[dict]:
    """One row per configuration, ordered by offloader family then mean bytes."""
    rows = []
    for config in configs:
        mine = [p for p in points if p["config"] == config.label]
        if not mine:
            continue  # skipped: it could not be built
        hits = sum(int(p[key] or 0) for p in mine)
        interval = wilson(hits, len(mine))
        low, high = interval.low, interval.high
        accuracy = hits / len(mine)
        rows.append(
            {
                "offloader": config.offloader,
                "config": config.label,
                "n": len(mine),
                "mean_bytes": float(np.mean([p["bytes"] for p in mine])),
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "agreement": float(np.mean([p["agrees"] for p in mine])),
                "drop_pp": (ref - accuracy) * 100,
            }
        )
    return sorted(rows, key=lambda r: (FAMILIES.index(r["offloader"]), r["mean_bytes"]))


def markdown(rows: list[dict], header: list[str]) -> str:
    head = ["offloader", "config", "n", "mean bytes", "accuracy", "95 % CI", "agreement"]
    lines = [*header, "", "| " + " | ".join([*head, "drop pp"]) + " |", "|" + "---|" * 8]
    for r in rows:
        cells = [
            r["offloader"],
            r["config"],
            str(r["n"]),
            f"{r['mean_bytes']:.0f}",
            f"{100 * r['accuracy']:.1f}%",
            f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%",
            f"{100 * r['agreement']:.1f}%",
            f"{r['drop_pp']:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def header_lines(plugin, n: int, ref: float, notes: list[str], command: str, source: str):
    metric = "top-1 accuracy against the labels"
    if plugin.metric != "accuracy":
        metric = "top-1 agreement with the unmodified model (the plugin has no labels)"
    interval = wilson(round(ref * n), n)
    low, high = interval.low, interval.high
    lines = [
        f"# Rate-accuracy curve: {plugin.name}",
        "",
        f"Plugin `{plugin.name}`, the first {n} samples of {source}; score: {metric}. Unmodified "
        f"model: {100 * ref:.1f}% (95 % CI {100 * low:.1f}-{100 * high:.1f}%). Bytes: "
        f"payload + {HEADER.size}-byte frame header per request (0 for local).",
        "",
        f"Made with: `{command}`",
    ]
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


# --------------------------------------------------------------------------------- plot


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no cheaper point beats (bytes ascending, score strictly rising)."""
    kept: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not kept or y > kept[-1][1]:
            kept.append((x, y))
    return kept


def plot(rows: list[dict], path: Path, plugin, n: int, ref: float) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    sent = [r["mean_bytes"] for r in rows if r["mean_bytes"] > 0]
    left = min(sent, default=1.0) / 2  # where local's 0 bytes are drawn
    for index, family in enumerate(f for f in FAMILIES if any(r["offloader"] == f for r in rows)):
        mine = [
            (r["mean_bytes"] or left, 100 * r["accuracy"]) for r in rows if r["offloader"] == family
        ]
        colour = f"C{index}"
        if family in ("raw", "local"):
            label = "local (0 bytes, drawn at the left)" if family == "local" else family
            ax.plot(
                *zip(*mine, strict=True),
                "s" if family == "raw" else "D",
                color=colour,
                markersize=8,
                label=label,
            )
            continue
        ax.plot(*zip(*mine, strict=True), "o", color=colour, alpha=0.35, markersize=4)
        ax.plot(
            *zip(*frontier(mine), strict=True),
            "o-",
            color=colour,
            markersize=5,
            label=f"{family} ({len(mine)})",
        )
    ax.axhline(100 * ref, color="black", linestyle="--", linewidth=1, label="unmodified model")
    ax.axhline(100 * ref - 1, color="black", linestyle=":", linewidth=1, label="1 point below")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per sample on the uplink (log)")
    metric = "accuracy" if plugin.metric == "accuracy" else "agreement with unmodified model"
    ax.set_ylabel(f"top-1 {metric} (%)")
    ax.set_title(f"{plugin.name}: rate-accuracy, n = {n}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        title_fontsize=8,
        title="markers: every configuration\nlines: each family's Pareto front",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
