"""The results report of a run folder or a sweep folder: report.md and PNG plots.

Reads the folder (`load`), writes the text sections (`markdown`) and saves the figures
(`figures`) with their captions. Offloaders are compared at matched accuracy: a
speedup is claimed only over an offloader that loses at least as much accuracy, so a
faster but less faithful offloader is never called better. How to read the report:
docs/results.md.

    python -m testbed.report FOLDER [--title TITLE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from testbed.errors import TestbedError
from testbed.results import figures, markdown, setting, timeline
from testbed.results.formatting import score_name, short, slug
from testbed.results.load import Study, load_study

DPI = 110


def write_report(folder: Path, *, title: str | None = None) -> Path:
    """Write `report.md` and its plots (under `plots/`) into `folder`; returns the path of
    report.md. The same inputs give the same report.md bytes."""
    folder = Path(folder)
    study = load_study(folder)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    lines = markdown.header(study, title)
    lines += setting.setting_section(study)
    lines += markdown.warnings_section(study)
    lines += markdown.latency_tables(study)
    lines += markdown.matched_section(study)
    lines += markdown.speedup_section(study)
    lines += plots_section(study, plots)
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def plots_section(study: Study, plots: Path) -> list[str]:
    """Save each figure that has something to show under `plots` and return its heading,
    link and caption."""
    if not study.groups:
        return []
    lines = ["## Plots", ""]
    if not any(s.n for g in study.groups for s in g.offloaders.values()):
        return [*lines, "No request completed: nothing to plot.", ""]

    def emit(fig: Figure, name: str, heading: str, caption: str) -> None:
        fig.savefig(plots / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        lines.extend([f"### {heading}", "", f"![{heading}](plots/{name})", "", caption, ""])

    axes = figures.numeric_axes(study)
    if not axes:
        why = "it has no sweep axes" if not study.axes else "no swept axis is numeric"
        lines += [f"No latency-against-axis plot: {why}.", ""]
    for axis in axes:
        others = [a for a in study.axes if a != axis]
        note = ""
        if others:
            count = len(figures.panels_by_other_axes(study, axis))
            note = f"; one panel per value of {', '.join(f'`{short(a)}`' for a in others)}"
            if count > figures.MAX_PANELS:
                note += f" (first {figures.MAX_PANELS} of {count} shown)"
        emit(
            figures.latency_figure(study, axis),
            f"latency_vs_{slug(axis)}.png",
            f"Latency against {short(axis)}",
            f"Median end-to-end latency (ms) against `{axis}`, a line per offloader, shaded: "
            f"bootstrap 95% interval of the median{note}.",
        )
    fig, shown = figures.cdf_figure(study)
    emit(
        fig,
        "latency_cdf.png",
        "Latency distributions",
        "Cumulative distribution of end-to-end latency (ms, log x) of completed requests, "
        f"a line per offloader{_shown_note(study, shown)}.",
    )
    fig, shown = figures.phase_figure(study)
    emit(
        fig,
        "phases.png",
        "Where the time goes",
        "Mean time per phase (ms) per offloader, stacked: the bar's height is the mean "
        f"end-to-end latency (means add up, medians do not){_shown_note(study, shown)}.",
    )
    fig, profiles = figures.bytes_figure(study)
    if profiles == 1:
        same = " (the same in every cell-group)" if len(study.groups) > 1 else ""
    else:
        same = f"; a bar per set of cell-groups with different bytes ({profiles} sets"
        same += f", first {figures.MAX_PANELS} shown)" if profiles > figures.MAX_PANELS else ")"
    emit(
        fig,
        "bytes.png",
        "Bytes per request",
        f"Mean uplink bytes per completed request per offloader (log y){same}.",
    )
    score = score_name(study.metric).capitalize()
    emit(
        figures.drop_figure(study),
        "drop_vs_latency.png",
        f"{score} drop",
        f"{score} drop (percentage points, against the unsplit "
        "model) against median latency: a point per offloader per cell-group; lower left is "
        "better.",
    )
    devices_axis = figures.devices_axis(study)
    if devices_axis is not None:
        emit(
            figures.devices_figure(study, devices_axis),
            f"devices_{slug(devices_axis)}.png",
            "Scaling with devices",
            f"Median end-to-end latency, uplink time and edge time (decode + compute) against "
            f"`{devices_axis}`: the part that grows with the number of devices is the bottleneck "
            "(the link when uplink time grows, the edge when edge time grows).",
        )
    if study.kind == "run":
        rows = study.groups[0].cells[0].rows
        changing = timeline.changing_offloaders(rows)
        if changing:
            drawn = changing[: timeline.MAX_OFFLOADERS]
            left = f" (the first {len(drawn)} of {len(changing)})" if changing != drawn else ""
            names = ", ".join(f"`{n}`" for n in drawn)
            emit(
                timeline.timeline_figure(rows, drawn),
                "timeline.png",
                "Requests over time",
                f"Every completed request of {names}{left}, whose choice changes "
                "between requests: above, its latency at its send time, coloured by its "
                "choice (probes hollow); below, the device's uplink estimate (line) and the "
                "rate each upload achieved (bytes over uplink time, one-way delay included).",
            )
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
