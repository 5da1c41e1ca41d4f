"""Read a run folder or a sweep folder into a `Study`: its cell-groups and each
offloader's pooled statistics in each.

A run folder is what `run_scenario.py SCENARIO --out DIR` writes; a sweep folder holds
`sweep.json` and one run folder per cell. Repeats of the same axis values are pooled
into one cell-group: statistics come from the pooled requests, so a repeat adds
requests rather than a point. What the run recorded (environment.json: the plugin's
metric, the accuracy bounds, the offloaders' roles) is read back, not guessed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from testbed.agents.contract import NOT_RUN, PHASES
from testbed.errors import ScenarioError
from testbed.results import records, roles, stats
from testbed.results.formatting import device_order, is_number, short_names, value_text

TEXT_COLUMNS = ("offloader", "status", "error", "choice", "device")
# the plugin's metric as environment.json records it -> the study's
RECORDED_METRICS = {
    "accuracy": "accuracy",
    "agreement": "agreement",
    "detection_agreement": "detection",
}


@dataclass
class Cell:
    """One run folder, parsed. `rows`: the requests that ran; `not_run`: those recorded as
    never started (the edge was lost), which enter no statistic."""

    folder: Path
    rows: list[dict]
    columns: list[str]
    summary: dict[str, dict]
    order: list[str]
    scenario: dict
    environment: dict
    not_run: list[dict] = field(default_factory=list)

    def not_run_count(self, label: str) -> int:
        """`label`'s planned requests that did not run: summary.csv's count (which also
        holds those an interruption left unrecorded), else the `not_run` rows."""
        recorded = (self.summary.get(label) or {}).get("not_run", math.nan)
        if math.isfinite(recorded):
            return int(recorded)
        return sum(r["offloader"] == label for r in self.not_run)

    @property
    def partial(self) -> str:
        """Why the run is partial ("" where it finished), as the runner recorded it."""
        env = self.environment
        if env.get("partial"):
            return str(env.get("partial_reason") or "partial")
        return "interrupted" if env.get("interrupted") else ""

    @property
    def bound(self) -> float:
        """The scenario's accuracy bound (points); the default where none was recorded."""
        recorded = (self.environment.get("bounds") or {}).get("max_drop_pp")
        value = self.scenario.get("max_drop_pp", recorded)
        return float(value) if is_number(value) else records.DEFAULT_MAX_DROP_PP

    @property
    def configured(self) -> dict[str, float]:
        """Label -> the bound each offloader was configured with (runner's record, else
        read back from the resolved scenario)."""
        recorded = (self.environment.get("bounds") or {}).get("offloaders")
        if isinstance(recorded, dict):
            return {k: float(v) for k, v in recorded.items() if is_number(v)}
        return records.configured_bounds(self.scenario.get("offloaders") or [])

    def role(self, label: str) -> str:
        """`proposed` or `baseline`, as the run recorded it (`testbed.results.roles`)."""
        return roles.role(label, self.environment.get("roles"))


@dataclass
class OffloaderStats:
    """One offloader in one cell-group: latencies of its completed requests, pooled."""

    name: str
    totals: np.ndarray
    failed: int  # ran and failed (error, timeout)
    median: stats.Estimate
    p95: float
    mean_bytes_up: float
    score: float  # fraction, mean over the group's cells (summary.csv)
    drop_pp: float  # mean over the group's cells (summary.csv)
    score_ci: stats.Estimate  # Wilson interval of the pooled requests' score
    agreement: float  # share of pooled requests agreeing with the unmodified model
    phases: dict[str, np.ndarray]
    per_device: dict[str, np.ndarray] = field(default_factory=dict)
    drop_ci: stats.Estimate = stats.NAN  # the drop (points) with its interval (`_drop_ci`)
    not_run: int = 0  # planned but never started
    stalled: int = 0  # ran longer than the run's stall threshold (requests.csv `stalled`)
    slowest_stalled_ms: float = math.nan

    @property
    def std(self) -> float:
        return stats.std(self.totals)

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
        return self.cells[0].bound if self.cells else records.DEFAULT_MAX_DROP_PP

    def within(self, name: str) -> bool:
        s = self.offloaders.get(name)
        return s is not None and records.within(s.drop_pp, self.bound)

    def bound_of(self, name: str) -> float:
        """The tighter of the scenario's bound and the one `name` was configured with."""
        configured = self.cells[0].configured if self.cells else {}
        return min(self.bound, configured.get(name, math.inf))

    def over(self, name: str) -> bool:
        """Whether `name`'s drop breaks its bound beyond the drop's interval."""
        s = self.offloaders.get(name)
        return s is not None and records.over(s.drop_ci, self.bound_of(name))


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
    proposed: list[str] = field(default_factory=list)  # labels whose role is `proposed`

    @property
    def cells(self) -> list[Cell]:
        return [c for g in self.groups for c in g.cells]

    def label(self, group: Group, full: bool = False) -> str:
        """`bandwidth_mbps=0.25, devices=1`; `all requests` without axes."""
        if not self.axes:
            return "all requests"
        names = short_names(list(self.axes))
        return ", ".join(f"{names[a]}={value_text(group.values.get(a), full)}" for a in self.axes)


def load_study(folder: Path) -> Study:
    """Read a run or sweep folder and compute every cell-group's statistics."""
    folder = Path(folder)
    if (folder / "sweep.json").is_file():
        study = _load_sweep(folder)
    elif (folder / "requests.csv").is_file():
        cell = read_run(folder)
        study = Study(
            folder=folder,
            kind="run",
            name=str(cell.scenario.get("name") or folder.name),
            source=" ".join(map(str, cell.environment.get("command") or [])) or str(folder),
            axes={},
            repeats=1,
            groups=[Group({}, [cell])],
            missing=[],
            offloaders=[],
            metric="accuracy",
            phases=[],
            done=1,
        )
    else:
        raise ScenarioError(
            f"{folder}: neither a run folder (no requests.csv) nor a sweep folder "
            "(no sweep.json); give the folder that run_scenario.py --out or a sweep wrote"
        )
    cells = study.cells
    study.offloaders = _offloader_order(cells)
    study.metric = study_metric(cells)
    study.proposed = [
        n for n in study.offloaders if any(c.role(n) == roles.PROPOSED for c in cells)
    ]
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
    parsed = [_parse_row(row) for row in raw_rows]
    rows = records.ran(parsed)
    summary, order = {}, []
    summary_path = folder / "summary.csv"
    if summary_path.is_file():
        with summary_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                name = row.get("offloader", "")
                summary[name] = {
                    k: (v if k in ("offloader", "choice") else stats.number(v))
                    for k, v in row.items()
                }
                order.append(name)
    return Cell(
        folder=folder,
        rows=rows,
        columns=columns,
        summary=summary,
        order=order,
        scenario=_read_mapping(folder / "resolved_scenario.yaml", yaml.safe_load, yaml.YAMLError),
        environment=_read_mapping(folder / "environment.json", json.loads, json.JSONDecodeError),
        not_run=[r for r in parsed if r.get("status") == NOT_RUN],
    )


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
            "id": str(entry.get("id", index)),
            "values": values,
            "repeat": entry.get("repeat", 0),
            "status": str(entry.get("status", "?")),
        }
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
        folder=folder,
        kind="sweep",
        name=str(sweep.get("name") or folder.name),
        source=str(sweep.get("source", "")),
        axes=axes,
        repeats=repeats,
        groups=ordered,
        missing=missing,
        offloaders=[],
        metric="accuracy",
        phases=[],
        done=done,
    )


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
        drop_pp = _mean([c.summary[name].get("accuracy_drop_pp") for c in present])
        score_ci = _score_ci(rows, study.metric, score)
        stalled = [r["total_ms"] for r in rows if r.get("stalled") == 1]
        out[name] = OffloaderStats(
            name=name,
            totals=totals,
            failed=len(rows) - len(ok),
            median=stats.median_ci(totals),
            p95=stats.percentile(totals, 95),
            mean_bytes_up=float(np.mean(bytes_up)) if bytes_up.size else math.nan,
            score=score,
            drop_pp=drop_pp,
            score_ci=score_ci,
            drop_ci=_drop_ci(present, name, drop_pp, score_ci),
            agreement=_agreement(rows, present, name, study.metric, score),
            phases=phases,
            per_device={
                d: stats.finite(v)
                for d, v in sorted(per_device.items(), key=lambda item: device_order(item[0]))
            },
            not_run=sum(c.not_run_count(name) for c in group.cells),
            stalled=len(stalled),
            slowest_stalled_ms=max(stalled, default=math.nan),
        )
    return out


def _score_ci(rows: list[dict], metric: str, score: float) -> stats.Estimate:
    """Wilson interval of the pooled requests' score (failed ones count as wrong); NaN
    where requests.csv lacks the score's column."""
    key = "correct" if metric == "accuracy" else "agrees"
    values = _column(rows, key)
    if values.size == 0 or values.size < len(rows):
        return stats.Estimate(score, math.nan, math.nan)
    return stats.wilson(float(values.sum()), values.size)


def _drop_ci(
    present: list[Cell], name: str, drop_pp: float, score_ci: stats.Estimate
) -> stats.Estimate:
    """The drop's interval: a single run's own (summary.csv's `drop_lo_pp`/`drop_hi_pp`,
    paired with the unsplit model per request); for pooled repeats, or runs older than
    those columns, the pooled score's Wilson interval mirrored, the reference fixed
    (`records.fixed_reference_drop`)."""
    if len(present) == 1:
        row = present[0].summary[name]
        low, high = row.get("drop_lo_pp", math.nan), row.get("drop_hi_pp", math.nan)
        if math.isfinite(low) and math.isfinite(high):
            return stats.Estimate(drop_pp, low, high)
    return records.fixed_reference_drop(drop_pp, score_ci)


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


def study_metric(cells: list[Cell]) -> str:
    """The plugin's metric as the runner recorded it (`metric` in environment.json).

    Runs from before it was recorded (the committed faces, feature_codecs, devices and
    paper reports) get it from their requests: box counts (`tp`) are a detector's
    (detection agreement); requests without labels can only be scored on agreement with
    the unsplit model; the rest were classifiers scored on accuracy."""
    for cell in cells:
        recorded = RECORDED_METRICS.get(str(cell.environment.get("metric")))
        if recorded:
            return recorded
    rows = [r for c in cells for r in c.rows]
    if any(math.isfinite(r.get("tp", math.nan)) for r in rows):
        return "detection"
    if rows and all(not r.get("label", -1) >= 0 for r in rows):
        return "agreement"
    return "accuracy"


# ---------------------------------------------------------------------------- helpers


def _parse_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if key is None:
            continue  # a line with more fields than the header
        out[key] = (value or "") if key in TEXT_COLUMNS else stats.number(value)
    return out


def _read_mapping(path: Path, parse, error: type[Exception]) -> dict:
    """A run's YAML or JSON mapping; empty where the file is missing, unreadable or holds
    something else (a run cut short still loads)."""
    try:
        data = parse(path.read_text())
    except (OSError, UnicodeDecodeError, error):
        return {}
    return data if isinstance(data, dict) else {}


def _column(rows: list[dict], key: str) -> np.ndarray:
    return stats.finite([r.get(key, math.nan) for r in rows])


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


def _axis_order(values: dict, axes: dict) -> tuple:
    key = []
    for axis, listed in axes.items():
        value = values.get(axis)
        key.append(listed.index(value) if value in listed else len(listed))
        key.append(json.dumps(value))
    return tuple(key)
