"""Offloaders of a study against each other at matched accuracy.

A speedup is claimed only over an offloader that loses at least as much accuracy, so a
faster but less faithful offloader is never called better (`paired.versus`). Each
proposed offloader (its recorded role, `testbed.results.roles`) is compared with every
baseline; any offloader's fastest configuration is sought only among those within the
accuracy bound.
"""

from __future__ import annotations

import math

from testbed.results import paired, records
from testbed.results.load import Group, Study


def baselines(study: Study) -> list[str]:
    """The offloaders the proposed ones (`study.proposed`) are compared with: every other
    one, `local` and `raw` included."""
    return [name for name in study.offloaders if name not in study.proposed]


def comparisons(study: Study, label: str) -> list[dict[str, paired.Versus]]:
    """Per cell-group: `label` against every baseline at matched accuracy; a ratio
    (median(baseline) / median(label), paired by sample) only where the baseline loses
    at least as much accuracy."""
    key = "correct" if study.metric == "accuracy" else "agrees"
    out = []
    for group in study.groups:
        mine = group.offloaders.get(label)
        row = {}
        for name in baselines(study):
            other = group.offloaders.get(name)
            if mine is None or other is None:
                continue
            cells = [c.rows for c in group.cells]
            row[name] = paired.versus(cells, label, name, mine.drop_pp, other.drop_pp, key)
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
    index = records.fastest_within(points, math.inf)
    return None if index is None else study.groups[index]
