"""Sweeps: a scenario in which any scalar value may be a list, expanded into a grid.

    network: {uplink: {bandwidth_mbps: [0.25, 1, 4], delay_ms: 20}}
    devices: [1, 2, 4]
    repeats: 3

gives 3 x 3 cells, each run 3 times with seeds seed, seed + 1, seed + 2. Lists are
found by walking the data beside the schema, so a list only counts where the schema
wants one value (`offloaders`, `expect` and `traffic` stay lists of their own).
Every cell is validated before anything starts; testbed.experiment.sweep runs them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.config.scenario import Scenario, parse_scenario
from testbed.config.schema import TOP, Arrival, Offloaders
from testbed.config.validation import ListOf, Nullable, Record, Tagged, join
from testbed.config.yaml_source import read_yaml, read_yaml_documents
from testbed.errors import ScenarioError


@dataclass(frozen=True)
class Cell:
    index: int  # position in the grid; repeats of one grid point share it
    values: dict[str, Any]  # axis (key path) -> this cell's value, as written
    repeat: int
    scenario: Scenario

    @property
    def dirname(self) -> str:
        parts = [f"{axis_name(axis)}{_slug(value)}" for axis, value in self.values.items()]
        return "-".join([f"c{self.index:03d}", *parts, f"r{self.repeat}"])

    @property
    def label(self) -> str:
        parts = [f"{axis_name(axis)}={value_text(value)}" for axis, value in self.values.items()]
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
        cells = tuple(
            dataclasses.replace(c, scenario=dataclasses.replace(c.scenario, samples=samples))
            for c in self.cells
        )
        return dataclasses.replace(self, cells=cells)


def find_axes(data: Any) -> dict[str, list]:
    """Key path -> list, for every list where the schema wants a single value."""
    found: dict[str, list] = {}
    if isinstance(data, dict):
        _walk(data, TOP, "", found)
    return found


def _walk(value: Any, check: Any, at: str, found: dict[str, list]) -> None:
    if isinstance(check, Nullable):
        if value is None:
            return
        check = check.inner
    if isinstance(check, Arrival) and isinstance(value, dict):
        check = check.tagged
    if isinstance(check, Tagged):
        kind = value.get(check.tag) if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in check.records:
            return  # the schema reports it
        check = check.records[kind]
    if isinstance(check, Record):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in check.fields:
                    _walk(item, check.fields[key].check, join(at, key), found)
        return
    if isinstance(check, ListOf):
        if isinstance(value, list) and isinstance(check.item, Record | Tagged):
            for i, item in enumerate(value):
                _walk(item, check.item, f"{at}[{i}]", found)
        return
    if isinstance(check, Offloaders):
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
        base = parse_scenario(cell_data, source, lines)  # also checks `repeats`
        for repeat in range(base.repeats):
            seeded = dict(cell_data, seed=base.seed + repeat)
            scenario = base if repeat == 0 else parse_scenario(seeded, source, lines)
            cells.append(Cell(index, dict(zip(axes, combo, strict=True)), repeat, scenario))
    name = cells[0].scenario.name
    return Sweep(name, source.absolute(), axes, cells[0].scenario.repeats, tuple(cells))


def load_sweep(path: str | Path) -> Sweep:
    data, lines = read_yaml(path)
    return expand(data, Path(path), lines)


def load_sweeps(path: str | Path) -> list[Sweep]:
    """Every `---` document of the file, each a scenario or a sweep; their names must
    differ (each gets OUT/<name>/)."""
    sweeps: list[Sweep] = []
    for i, (data, lines) in enumerate(read_yaml_documents(path)):
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


def axis_name(path: str) -> str:
    """An axis's short name: the last key of its path (`bandwidth_mbps`, `traffic0`)."""
    return re.sub(r"\[(\d+)\]", r"\1", path.rsplit(".", 1)[-1])


def value_text(value: Any) -> str:
    """A cell's value on an axis as a label or CSV field shows it."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _slug(value: Any) -> str:
    text = Path(value).stem if isinstance(value, str) and "/" in value else value_text(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)[:24]
