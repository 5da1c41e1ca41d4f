"""The report's text: its header, warnings and tables, as lists of Markdown lines.

Each section is a function of the `Study` alone, so a section can be checked without
rendering the rest; `report` puts them in order and adds the plots.
"""

from __future__ import annotations

import math

from testbed.results import hosts, records, stats
from testbed.results.compare import comparisons, fastest_within
from testbed.results.formatting import (
    count,
    device_order,
    estimate_text,
    fixed,
    ms,
    score_name,
    score_text,
    short_names,
    signed,
    value_text,
)
from testbed.results.load import Group, Study


def header(study: Study, title: str | None) -> list[str]:
    """The title, what was run (scenario, axes, cells, model, score, bound, environment)
    and any missing cells."""
    first = study.groups[0].cells[0] if study.groups else None
    scenario = first.scenario if first else {}
    env = first.environment if first else {}
    lines = [f"# {title or 'Results: ' + study.name}", ""]
    lines.append(f"- Scenario: `{study.name}`, from `{study.source or '?'}`")
    if study.kind == "sweep":
        if study.axes:
            axes = "; ".join(
                f"`{a}` = {', '.join(value_text(v, True) for v in vs)}"
                for a, vs in study.axes.items()
            )
        else:
            axes = "none"
        lines.append(f"- Axes: {axes}")
        lines.append(
            f"- Repeats: {study.repeats} per cell-group (their requests pooled, as in the "
            "sweep table the console prints)"
        )
        lines.append(f"- Cells: {study.done} done, {len(study.missing)} missing")
    else:
        lines.append("- A single run (no sweep axes)")
    model = scenario.get("model", "?")
    lines.append(f"- Model: `{model}`; score: {score_text(study.metric)}")
    lines.append(f"- Accuracy bound: {_bounds_text(study)}")
    if scenario:
        arrival = scenario.get("arrival", {}).get("process", "closed")
        lines.append(
            f"- Samples per offloader per cell: {scenario.get('samples', '?')}; arrivals: {arrival}"
        )
    if env:
        lines.append(f"- Environment (first cell): {_environment_text(env)}")
    cells = study.cells
    commits = {c.environment.get("commit") for c in cells if c.environment}
    if len(commits) > 1:
        lines.append(f"- **The cells ran from {len(commits)} different commits.**")
    lines += hosts.host_lines(study)  # a sweep on a cluster: which machines, and whether alike
    interrupted = [c.folder.name for c in cells if c.environment.get("interrupted")]
    if interrupted:
        lines.append(f"- **Interrupted (partial) runs:** {', '.join(interrupted)}")
    partial = [c for c in cells if c.environment.get("partial") and c.folder.name]
    if partial:
        named = "; ".join(
            f"{c.folder.name}: {c.partial}" if study.kind == "sweep" else c.partial for c in partial
        )
        lines.append(f"- **PARTIAL: not every planned request ran** ({named})")
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
        names = short_names(list(study.axes))
        for m in study.missing:
            values = ", ".join(f"{names[a]}={value_text(v, True)}" for a, v in m["values"].items())
            lines.append(f"| {m['id']} | {values or '-'} | {m['repeat']} | {m['status']} |")
        lines.append("")
    return lines


def _bounds_text(study: Study) -> str:
    """The scenario's max_drop_pp (all cells'), saying where it is the default."""
    cells = study.cells
    bounds = sorted({c.bound for c in cells})
    text = " / ".join(f"{b:g}" for b in bounds) or f"{records.DEFAULT_MAX_DROP_PP:g}"
    recorded = any("max_drop_pp" in c.scenario for c in cells)
    note = "" if recorded else "; the default: the run recorded none"
    return f"`max_drop_pp` = {text} (points of drop{note})"


def warnings_section(study: Study) -> list[str]:
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
            over = f"over in {len(broken)} of {len(study.groups)} cell-groups"
            where = f" in {study.label(worst)} ({over})"
        drops = {name: worst.offloaders[name].drop_pp}
        lines += records.bound_warnings(drops, worst.bound, worst.cells[0].configured, where)
    lines += _over_warnings(study) + _bimodal_warnings(study) + _stall_warnings(study)
    return ["## Warnings", "", *(f"- {line}" for line in lines), ""] if lines else []


def _over_warnings(study: Study) -> list[str]:
    """A line per offloader whose drop's whole 95% interval lies above its bound (the
    tighter of the scenario's and its configured one): not sampling noise."""
    lines = []
    for name in study.offloaders:
        over = [g for g in study.groups if g.over(name)]
        if not over:
            continue
        worst = max(over, key=lambda g: g.offloaders[name].drop_ci.low)
        e = worst.offloaders[name].drop_ci
        where = f" in {study.label(worst)} ({len(over)} of {len(study.groups)} cell-groups)"
        lines.append(
            f"**Bound broken beyond its interval:** {name} lost {e.value:.2f} "
            f"[{e.low:.1f}, {e.high:.1f}] accuracy points"
            f"{where if study.axes else ''}: even the interval's low end is above its bound "
            f"({worst.bound_of(name):g})."
        )
    return lines


def _bimodal_warnings(study: Study) -> list[str]:
    """A line per offloader and cell-group whose latencies have two modes
    (`stats.bimodal`): its median then describes neither; see the distributions."""
    lines = []
    for group in study.groups:
        for name, s in group.offloaders.items():
            flagged, d, share = stats.bimodal(s.totals)
            if flagged:
                where = f" in {study.label(group)}" if study.axes else ""
                lines.append(
                    f"**Bimodal latency:** {name}{where}: two modes (Ashman's D {d:.1f}, the "
                    f"smaller holds {100 * share:.0f}% of requests); the median describes "
                    "neither, see the latency distributions."
                )
    return lines


def _stall_warnings(study: Study) -> list[str]:
    """A line per offloader and cell-group with stalled requests (requests.csv
    `stalled`: longer than the run's `stall_ms`): something held them."""
    lines = []
    for group in study.groups:
        limits = group.cells[0].environment.get("stall_thresholds_ms") or {}
        for name, s in group.offloaders.items():
            if s.stalled:
                where = f" in {study.label(group)}" if study.axes else ""
                limit = limits.get(name)
                above = f" (`stall_ms`: {ms(limit)} ms)" if limit is not None else ""
                lines.append(
                    f"**Stalled requests:** {name}{where}: {s.stalled} of "
                    f"{s.n + s.failed} took longer than the stall threshold{above}, the "
                    f"longest {ms(s.slowest_stalled_ms)} ms: something held them (a "
                    "stopped edge, a stalled link); see `stalled` in requests.csv."
                )
    return lines


def _broken(group: Group, name: str) -> bool:
    drops = {name: group.offloaders[name].drop_pp}
    return bool(records.bound_warnings(drops, group.bound, group.cells[0].configured))


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
    edge = env.get("edge_device") or {}
    if edge.get("device"):
        gpu = edge.get("gpu")
        detail = f" ({gpu}, driver {edge.get('driver')}, CUDA {edge.get('torch_cuda')})"
        parts.append(f"edge on {edge['device']}" + (detail if gpu else ""))
    if "python" in env:
        parts.append(f"Python {env['python']}")
    if (env.get("packages") or {}).get("torch"):
        parts.append(f"torch {env['packages']['torch']}")
    return ", ".join(parts) or "not recorded"


def latency_tables(study: Study) -> list[str]:
    """A table per cell-group: each offloader's latency, bytes, score, drop and failures."""
    if not study.groups:
        return ["No cell finished: nothing to report.", ""]
    score = score_name(study.metric)
    both = study.metric == "accuracy"  # otherwise the score is the agreement
    lines = ["## Latency per cell-group" if study.axes else "## Latency", ""]
    head = ["offloader", "n", "median ms [95% CI]", "mean ms", "std ms", "p95 ms"]
    head += ["mean bytes up", f"{score} % [95% CI]", *(["agreement %"] * both)]
    head += ["drop pp [95% CI]", "within bound"]
    head += ["failed"]
    counts = any(s.not_run or s.stalled for g in study.groups for s in g.offloaders.values())
    if counts:  # only where there is something to count: older reports keep their bytes
        head += ["not run", "stalled"]
    for group in study.groups:
        if study.axes:
            size = len(group.cells)
            lines += [f"### {study.label(group, full=True)} ({size} cell{'s' * (size > 1)})", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, s in group.offloaders.items():
            cells = [
                name,
                str(s.n),
                estimate_text(s.median),
                ms(s.mean),
                ms(s.std),
                ms(s.p95),
                count(s.mean_bytes_up),
                _share_text(s.score, s.score_ci),
                *([fixed(100 * s.agreement, 1)] * both),
                _drop_text(s.drop_ci),
                _yes(s.drop_pp, group.within(name), group.over(name)),
                str(s.failed),
                *([str(s.not_run), str(s.stalled)] if counts else []),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _device_table(group)
    return lines


def _share_text(value: float, ci: stats.Estimate) -> str:
    """`95.0 [76.4, 99.1]` (percent); the bare value where no interval was possible."""
    if not math.isfinite(ci.low):
        return fixed(100 * value, 1)
    return f"{fixed(100 * value, 1)} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def _drop_text(e: stats.Estimate) -> str:
    """`+0.50 [-1.2, 2.3]` (points); the bare drop where no interval was possible."""
    if not math.isfinite(e.low):
        return signed(e.value)
    return f"{signed(e.value)} [{e.low:.1f}, {e.high:.1f}]"


def _yes(drop: float, within: bool, over: bool = False) -> str:
    if not math.isfinite(drop):
        return "-"
    return "yes" if within else ("NO: over beyond its CI" if over else "no")


def _device_table(group: Group) -> list[str]:
    devices = sorted({d for s in group.offloaders.values() for d in s.per_device}, key=device_order)
    if len(devices) < 2:
        return []
    head = ["offloader", *(f"device {d}" for d in devices)]
    lines = ["Median end-to-end ms per device host:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in group.offloaders.items():
        cells = [ms(stats.percentile(s.per_device.get(d, []), 50)) for d in devices]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return [*lines, ""]


def matched_section(study: Study) -> list[str]:
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
            f"{n} ({group.offloaders[n].drop_pp:.2f}, 95% CI "
            f"[{group.offloaders[n].drop_ci.low:.1f}, {group.offloaders[n].drop_ci.high:.1f}])"
            for n in group.offloaders
            if n not in inside and math.isfinite(group.offloaders[n].drop_pp)
        ]
        lines.append(f"- Within the bound ({group.bound:g} points): {', '.join(inside) or 'none'}")
        lines.append(f"- Over it (drop in points): {', '.join(outside) or 'none'}")
        return [*lines, ""]
    lines += ["Each offloader's fastest cell-group (configuration) within the bound:", ""]
    head = [
        "offloader",
        "fastest within the bound",
        "median ms [95% CI]",
        "drop pp [95% CI]",
        "within the bound in",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in study.offloaders:
        ran = [g for g in study.groups if name in g.offloaders]
        within_in = f"{sum(g.within(name) for g in ran)} of {len(ran)} cell-groups"
        best = fastest_within(study, name)
        if best is None:
            lines.append(f"| {name} | none within the bound | - | - | {within_in} |")
            continue
        s = best.offloaders[name]
        cells = [name, study.label(best, full=True), estimate_text(s.median), _drop_text(s.drop_ci)]
        lines.append("| " + " | ".join([*cells, within_in]) + " |")
    return [*lines, ""]


def speedup_section(study: Study) -> list[str]:
    """Each proposed offloader (DeepCOD) against every baseline at matched accuracy."""
    labels = study.proposed
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
    head += ["speedup [95% CI]", "verdict", "score diff pp [95% CI] (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, row in zip(study.groups, rows, strict=True):
        for name, v in row.items():
            drops = f"{fixed(v.other_drop_pp, 2)} vs {fixed(v.drop_pp, 2)}"
            cells = [study.label(group, full=True), name, drops, v.ratio_text(), v.verdict()]
            cells.append(v.score_diff_text())
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
