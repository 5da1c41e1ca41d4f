"""Sweeps: a scenario in which any scalar value may be a list, expanded into a grid.

    network: {uplink: {bandwidth_mbps: [0.25, 1, 4], delay_ms: 20}}
    devices: [1, 2, 4]
    repeats: 3

gives 3 x 3 cells, each run 3 times with seeds seed, seed + 1, seed + 2. Lists are
found by walking the data beside the schema, so a list only counts where the schema
wants one value (`offloaders`, `expect` and `traffic` stay lists of their own).
Every cell is validated before anything starts. Each cell is a whole run in its own
folder (one topology, torn down before the next); a finished cell leaves
`cell.json`, so a re-run into the same folder skips it (resume after Ctrl-C).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.config import scenario as schema
from testbed.errors import EnvironmentMissing, ScenarioError, TestbedError
from testbed.results.records import SUMMARY_COLUMNS, write_csv

CELL_FILE = "cell.json"
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Cell:
    index: int  # position in the grid; repeats of one grid point share it
    values: dict[str, Any]  # axis (key path) -> this cell's value, as written
    repeat: int
    scenario: schema.Scenario

    @property
    def dirname(self) -> str:
        parts = [f"{_leaf(axis)}{_slug(value)}" for axis, value in self.values.items()]
        return "-".join([f"c{self.index:03d}", *parts, f"r{self.repeat}"])

    @property
    def label(self) -> str:
        parts = [f"{_leaf(axis)}={_show(value)}" for axis, value in self.values.items()]
        return " ".join([*parts, f"repeat {self.repeat}"])

    def digest(self) -> str:
        """What the cell's results depend on: a changed scenario is run again."""
        text = yaml.safe_dump(self.scenario.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sweep:
    name: str
    source: Path
    axes: dict[str, list]  # key path -> its values, in the file's order
    repeats: int
    cells: tuple[Cell, ...]

    @property
    def is_grid(self) -> bool:
        """More than one run: a single run keeps the plain results folder."""
        return len(self.cells) > 1

    def with_samples(self, samples: int) -> Sweep:
        import dataclasses

        cells = tuple(
            dataclasses.replace(c, scenario=dataclasses.replace(c.scenario, samples=samples))
            for c in self.cells
        )
        return dataclasses.replace(self, cells=cells)


@dataclass
class SweepResult:
    out_dir: Path
    summary: list[dict]  # one row per cell and offloader, with the axes' values
    gate_failures: list[str] = field(default_factory=list)
    failed_cells: list[str] = field(default_factory=list)
    skipped: int = 0


# ------------------------------------------------------------------- expansion


def find_axes(data: Any) -> dict[str, list]:
    """Key path -> list, for every list where the schema wants a single value."""
    found: dict[str, list] = {}
    if isinstance(data, dict):
        _walk(data, schema._TOP, "", found)
    return found


def _walk(value: Any, check: Any, at: str, found: dict[str, list]) -> None:
    if isinstance(check, schema._Nullable):
        if value is None:
            return
        check = check.inner
    if isinstance(check, schema._Arrival) and isinstance(value, dict):
        check = check.tagged
    if isinstance(check, schema._Tagged):
        kind = value.get(check.tag) if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in check.records:
            return  # the schema reports it
        check = check.records[kind]
    if isinstance(check, schema._Record):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in check.fields:
                    _walk(item, check.fields[key].check, schema._join(at, key), found)
        return
    if isinstance(check, schema._ListOf):
        if isinstance(value, list) and isinstance(check.item, schema._Record | schema._Tagged):
            for i, item in enumerate(value):
                _walk(item, check.item, f"{at}[{i}]", found)
        return
    if isinstance(check, schema._Offloaders):
        return
    if isinstance(value, list):
        found[at] = value


def _set(data: dict, path: str, value: Any) -> None:
    keys: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        keys.append(int(index) if index else name)
    node = data
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


def expand(data: Any, source: Path, lines: dict[str, int] | None = None) -> Sweep:
    """Validate every cell of the grid (ScenarioError names the axis, value and line)."""
    lines = lines or {}
    axes = find_axes(data)
    for path, values in axes.items():
        line = lines.get(path)
        where = f"{source}:{line}" if line else f"{source}"
        if not values:
            raise ScenarioError(
                f"{where}: {path}: an empty list; allowed: a value or a list of values"
            )
        shown = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(shown)) != len(shown):
            raise ScenarioError(
                f"{where}: {path}: {values} repeats a value; allowed: distinct values"
            )
    if "repeats" in axes:
        raise ScenarioError(f"{source}: repeats: a list; allowed: one integer >= 1")
    cells: list[Cell] = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        cell_data = copy.deepcopy(data)
        for path, value in zip(axes, combo, strict=True):
            _set(cell_data, path, copy.deepcopy(value))
        base = schema.parse_scenario(cell_data, source, lines)  # also checks `repeats`
        for repeat in range(base.repeats):
            seeded = dict(cell_data, seed=base.seed + repeat)
            scenario = base if repeat == 0 else schema.parse_scenario(seeded, source, lines)
            cells.append(Cell(index, dict(zip(axes, combo, strict=True)), repeat, scenario))
    name = cells[0].scenario.name
    return Sweep(name, source.absolute(), axes, cells[0].scenario.repeats, tuple(cells))


def load_sweep(path: str | Path) -> Sweep:
    data, lines = schema.read_yaml(path)
    return expand(data, Path(path), lines)


def load_sweeps(path: str | Path) -> list[Sweep]:
    """Every `---` document of the file, each a scenario or a sweep; their names must
    differ (each gets OUT/<name>/)."""
    sweeps: list[Sweep] = []
    for i, (data, lines) in enumerate(schema.read_yaml_documents(path)):
        try:
            sweep = expand(data, Path(path), lines)
        except ScenarioError as exc:
            if i == 0:
                raise
            raise ScenarioError(f"document {i + 1}: {exc}") from None
        if any(s.name == sweep.name for s in sweeps):
            raise ScenarioError(
                f"{path}: document {i + 1}: name {sweep.name!r} is taken by an earlier "
                "document; allowed: a distinct `name` per document"
            )
        sweeps.append(sweep)
    return sweeps


# ------------------------------------------------------------------------ running


def finished(cell_dir: Path, cell: Cell) -> bool:
    try:
        state = json.loads((cell_dir / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return state.get("status") == "done" and state.get("digest") == cell.digest()


def run_sweep(sweep: Sweep, out: Path, progress: bool = True, **run_options) -> SweepResult:
    """Run every unfinished cell in turn; one progress bar for the whole sweep."""
    from tqdm import tqdm

    from testbed.experiment import runner

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_scenario.yaml").write_bytes(sweep.source.read_bytes())
    status = {
        c.dirname: "done" if finished(out / "cells" / c.dirname, c) else "pending"
        for c in sweep.cells
    }
    todo = [c for c in sweep.cells if status[c.dirname] != "done"]
    result = SweepResult(out, [], skipped=len(sweep.cells) - len(todo))
    if result.skipped:
        print(f"{sweep.name}: {result.skipped} of {len(sweep.cells)} cells already done "
              f"in {out}, skipped", file=sys.stderr)  # fmt: skip
    total = sum(c.scenario.samples * len(c.scenario.offloaders) * c.scenario.devices for c in todo)
    _write_state(out, sweep, status)
    with tqdm(total=total, unit="req", desc=sweep.name, disable=not progress) as bar:
        for cell in todo:
            cell_dir = out / "cells" / cell.dirname
            if cell_dir.exists():  # a cell cut short earlier: start it afresh
                shutil.rmtree(cell_dir)
            bar.set_postfix_str(
                f"{cell.index + 1}/{len(sweep.cells) // sweep.repeats} {cell.label}"
            )
            status[cell.dirname] = "running"
            try:
                run = runner.run(cell.scenario, cell_dir, progress=progress, bar=bar, **run_options)
            except (ScenarioError, EnvironmentMissing):
                status[cell.dirname] = "failed"
                raise
            except TestbedError as exc:  # this cell only; the others may still be fine
                status[cell.dirname] = "failed"
                result.failed_cells.append(f"{cell.dirname}: {exc}")
                _write_cell(cell_dir, cell, "failed", error=str(exc))
                bar.write(f"cell {cell.dirname} failed: {exc}")
                continue
            except BaseException:
                status[cell.dirname] = "interrupted"
                raise
            finally:
                _write_state(out, sweep, status)
            status[cell.dirname] = "done"
            _write_cell(cell_dir, cell, "done", gate_failures=run.gate_failures)
            _write_state(out, sweep, status)
    result.summary = combined_summary(out, sweep)
    for cell in sweep.cells:
        state = _read_cell(out / "cells" / cell.dirname)
        for gate in state.get("gate_failures", []):
            result.gate_failures.append(f"[{cell.dirname}] {gate}")
    return result


def _read_cell(cell_dir: Path) -> dict:
    try:
        return json.loads((cell_dir / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cell(cell_dir: Path, cell: Cell, status: str, **extra) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    state = {"status": status, "digest": cell.digest(), "values": cell.values,
             "repeat": cell.repeat, "seed": cell.scenario.seed, **extra}  # fmt: skip
    (cell_dir / CELL_FILE).write_text(json.dumps(state, indent=1, default=str))


def _write_state(out: Path, sweep: Sweep, status: dict) -> None:
    """sweep.json: the grid and where each cell stands (the report's input)."""
    cells = [
        {"id": f"c{c.index:03d}", "dir": f"cells/{c.dirname}", "values": c.values,
         "repeat": c.repeat, "seed": c.scenario.seed, "status": status[c.dirname]}
        for c in sweep.cells
    ]  # fmt: skip
    state = {"name": sweep.name, "source": str(sweep.source), "repeats": sweep.repeats,
             "axes": sweep.axes, "cells": cells}  # fmt: skip
    tmp = out / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(out / SWEEP_FILE)


def combined_summary(out: Path, sweep: Sweep) -> list[dict]:
    """Every finished cell's summary rows with its axes, repeat and seed, in one CSV."""
    rows = []
    for cell in sweep.cells:
        path = out / "cells" / cell.dirname / "summary.csv"
        if not finished(path.parent, cell):
            continue
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({**{a: _show(v) for a, v in cell.values.items()},
                             "repeat": cell.repeat, "seed": cell.scenario.seed, **row})  # fmt: skip
    columns = [*sweep.axes, "repeat", "seed", *SUMMARY_COLUMNS]
    write_csv(out / "summary.csv", rows, columns)
    return rows


def _leaf(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r"\1", path.rsplit(".", 1)[-1])


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _slug(value: Any) -> str:
    text = Path(value).stem if isinstance(value, str) and "/" in value else _show(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)[:24]


def sweep_table(rows: list[dict], sweep: Sweep) -> str:
    """Median latency per grid point (median over repeats) and offloader, with its mean
    accuracy drop beside it: a latency means little without the accuracy it cost."""
    labels: list[str] = []
    points: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        if row["offloader"] not in labels:
            labels.append(row["offloader"])
        key = tuple(row[a] for a in sweep.axes)
        value = (float(row["p50_ms"]), _float(row.get("accuracy_drop_pp", "")))
        points.setdefault(key, {}).setdefault(row["offloader"], []).append(value)
    head = [_leaf(a) for a in sweep.axes] + [f"{label} p50 ms (drop pp)" for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by_label in points.items():
        cells = [*key]
        for label in labels:
            values = by_label.get(label, [])
            if not values:
                cells.append("-")
                continue
            drops = [d for _, d in values if d == d]  # NaN: not recorded
            drop = f" ({sum(drops) / len(drops):+.2f})" if drops else ""
            cells.append(f"{_median(sorted(v for v, _ in values)):.1f}{drop}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _median(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
