"""Which offloaders a run studies, and which it compares them with.

Each offloader class declares its role (`Offloader.role` in testbed/offloaders/base.py:
`proposed` for DeepCOD, `baseline` for the rest); the runner records them by label in
environment.json (`roles`). The report and summary.md compare every proposed offloader
with every baseline at matched accuracy. Read from the record, so the results package
never imports the offloaders (and torch) to know.
"""

from __future__ import annotations

PROPOSED = "proposed"
BASELINE = "baseline"
# Runs recorded before `roles` (every report committed before it) name no roles: there
# DeepCOD was the only proposed family, labelled `deepcod`, or `deepcod_<params>` where a
# scenario lists it twice (runner.offloader_labels).
LEGACY_PROPOSED_FAMILY = "deepcod"


def role(label: str, recorded: dict | None) -> str:
    """The role of the offloader labelled `label`: the run's record (`roles` in
    environment.json); for runs that recorded none, read from the label."""
    if isinstance(recorded, dict) and recorded:
        return PROPOSED if recorded.get(label) == PROPOSED else BASELINE
    family = LEGACY_PROPOSED_FAMILY
    return PROPOSED if label == family or label.startswith(family + "_") else BASELINE


def proposed(labels: list[str], recorded: dict | None) -> list[str]:
    """The labels whose role is `proposed`, in the order given."""
    return [label for label in labels if role(label, recorded) == PROPOSED]
