"""The machines a sweep's cells ran on (environment.json: `host`, `cpu_model`, `kernel`),
for the report's header: a sweep on a cluster (testbed.experiment.cluster) may spread the
repeats of one grid point over machines, and their requests are pooled, so a difference
in CPU or kernel inside a cell-group is named, not averaged away silently."""

from __future__ import annotations

from collections import Counter

from testbed.results.load import Study

MACHINE_KEYS = (("cpu_model", "CPU model"), ("kernel", "kernel"))


def host_lines(study: Study) -> list[str]:
    """Report bullets: the hosts with their cell counts, then a warning per cell-group
    whose cells differ in CPU model or kernel. None for a run or cells without `host`."""
    if study.kind != "sweep":
        return []
    counts = Counter(c.environment.get("host") for c in study.cells if c.environment.get("host"))
    if not counts:
        return []
    listed = ", ".join(
        f"`{h}` ({n} cell{'s' if n != 1 else ''})" for h, n in sorted(counts.items())
    )
    lines = [f"- Hosts: {listed}"]
    for group in study.groups:
        for key, name in MACHINE_KEYS:
            seen: dict[str, set[str]] = {}
            for cell in group.cells:
                value = cell.environment.get(key)
                if value is not None:
                    seen.setdefault(str(value), set()).add(str(cell.environment.get("host", "?")))
            if len(seen) > 1:
                which = "; ".join(
                    f"{v} on {', '.join(f'`{h}`' for h in sorted(hs))}"
                    for v, hs in sorted(seen.items())
                )
                lines.append(
                    f"- **Pooled cells ran on differing machines** in {study.label(group)}: "
                    f"{name} {which}; their requests are pooled as if one machine ran them."
                )
    return lines
