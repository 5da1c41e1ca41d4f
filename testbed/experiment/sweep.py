"""Running a sweep (its grid of cells comes from testbed.config.sweep), and its
combined summary.

Each cell is a whole run in its own folder (one topology, torn down before the next);
a finished cell leaves `cell.json`, so a re-run into the same folder skips it (resume
after Ctrl-C). With a cluster (testbed.experiment.cluster) the cells run as Ray tasks,
one per machine, and their folders come back here: the bookkeeping is the same.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from testbed.config.sweep import Cell, Sweep, value_text
from testbed.errors import EnvironmentMissing, ScenarioError, TestbedError
from testbed.results.records import SUMMARY_COLUMNS, write_csv

CELL_FILE = "cell.json"
SWEEP_FILE = "sweep.json"


@dataclass
class SweepResult:
    out_dir: Path
    summary: list[dict]  # one row per cell and offloader, with the axes' values
    gate_failures: list[str] = field(default_factory=list)
    failed_cells: list[str] = field(default_factory=list)
    skipped: int = 0


# ------------------------------------------------------------------------ running


def finished(cell_dir: Path, cell: Cell) -> bool:
    try:
        state = json.loads((cell_dir / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return state.get("status") == "done" and state.get("digest") == cell.digest()


def run_sweep(
    sweep: Sweep, out: Path, progress: bool = True, cluster=None, **run_options
) -> SweepResult:
    """Run every unfinished cell in turn; one progress bar for the whole sweep. With a
    connected `cluster` (testbed.experiment.cluster.Cluster), on its emulation slots."""
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
        print(
            f"{sweep.name}: {result.skipped} of {len(sweep.cells)} cells already done "
            f"in {out}, skipped",
            file=sys.stderr,
        )
    _write_state(out, sweep, status)
    if cluster is not None:
        _run_on_cluster(sweep, todo, out, status, result, progress, run_options)
        return _finish(out, sweep, result)
    total = sum(c.scenario.samples * len(c.scenario.offloaders) * c.scenario.devices for c in todo)
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
                if run.partial:  # its results are kept in its folder, marked partial
                    raise TestbedError(f"the run did not finish: {run.partial}")
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
    return _finish(out, sweep, result)


def _finish(out: Path, sweep: Sweep, result: SweepResult) -> SweepResult:
    result.summary = combined_summary(out, sweep)
    for cell in sweep.cells:
        state = _read_cell(out / "cells" / cell.dirname)
        for gate in state.get("gate_failures", []):
            result.gate_failures.append(f"[{cell.dirname}] {gate}")
    return result


def _run_on_cluster(
    sweep: Sweep, todo: list[Cell], out: Path, status: dict, result: SweepResult, progress, options
) -> None:
    """The unfinished cells as Ray tasks; each folder that comes back replaces the
    cell's, with the cell.json and sweep.json of a local sweep (and the host it ran on)."""
    from tqdm import tqdm

    from testbed.experiment import cluster

    with tqdm(total=len(todo), unit="cell", desc=sweep.name, disable=not progress) as bar:

        def say(text: str) -> None:
            bar.write(text, file=sys.stderr)

        def finish(cell: Cell, outcome, attempts: int) -> None:
            cell_dir = out / "cells" / cell.dirname
            if cell_dir.exists():
                shutil.rmtree(cell_dir)
            error = outcome.error
            if outcome.folder:
                try:
                    cluster.unpack_folder(outcome.folder, cell_dir)
                except TestbedError as exc:
                    error = str(exc)
                    shutil.rmtree(cell_dir, ignore_errors=True)
                    outcome.status = "failed"
            where = {"host": outcome.host, "attempts": attempts}
            if outcome.status == "done":
                status[cell.dirname] = "done"
                gates = list(outcome.gate_failures)
                _write_cell(cell_dir, cell, "done", gate_failures=gates, **where)
                say(f"cell {cell.dirname} done on {outcome.host} in {outcome.seconds:.0f} s")
            else:
                status[cell.dirname] = "failed"
                result.failed_cells.append(f"{cell.dirname}: {error}")
                _write_cell(cell_dir, cell, "failed", error=error, **where)
                say(f"cell {cell.dirname} failed: {error}")
            _write_state(out, sweep, status)
            bar.update(1)

        for cell in todo:
            status[cell.dirname] = "queued"
        _write_state(out, sweep, status)
        try:
            cluster.run_cells(todo, options, finish, say)
        except BaseException:
            for cell in todo:
                if status[cell.dirname] in ("queued", "running"):
                    status[cell.dirname] = "interrupted"
            raise
        finally:
            _write_state(out, sweep, status)


def _read_cell(cell_dir: Path) -> dict:
    try:
        return json.loads((cell_dir / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cell(cell_dir: Path, cell: Cell, status: str, **extra) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "status": status,
        "digest": cell.digest(),
        "values": cell.values,
        "repeat": cell.repeat,
        "seed": cell.scenario.seed,
        **extra,
    }
    (cell_dir / CELL_FILE).write_text(json.dumps(state, indent=1, default=str))


def _write_state(out: Path, sweep: Sweep, status: dict) -> None:
    """sweep.json: the grid and where each cell stands (the report's input)."""
    cells = [
        {
            "id": f"c{c.index:03d}",
            "dir": f"cells/{c.dirname}",
            "values": c.values,
            "repeat": c.repeat,
            "seed": c.scenario.seed,
            "status": status[c.dirname],
        }
        for c in sweep.cells
    ]
    state = {
        "name": sweep.name,
        "source": str(sweep.source),
        "repeats": sweep.repeats,
        "axes": sweep.axes,
        "cells": cells,
    }
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
                rows.append(
                    {
                        **{a: value_text(v) for a, v in cell.values.items()},
                        "repeat": cell.repeat,
                        "seed": cell.scenario.seed,
                        **row,
                    }
                )
    columns = [*sweep.axes, "repeat", "seed", *SUMMARY_COLUMNS]
    write_csv(out / "summary.csv", rows, columns)
    return rows


SWEEP_TABLE_TITLE = (
    "median latency (ms) per grid point [95% CI] (mean drop pp): the repeats' requests "
    "pooled, as report.md computes it"
)


def sweep_table(out: Path) -> str:
    """Median latency per grid point and offloader, with its bootstrap interval and mean
    accuracy drop beside it (a latency means little without the accuracy it cost).
    Computed as report.md computes it (`testbed.results.load`): the repeats' requests
    pooled, not a median of their medians, so the console and the report agree."""
    from testbed.results.formatting import estimate_text, short_names, value_text
    from testbed.results.load import load_study

    study = load_study(out)
    names = short_names(list(study.axes))
    head = [names[a] for a in study.axes]
    head += [f"{label} median ms [95% CI] (drop pp)" for label in study.offloaders]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in study.groups:
        cells = [value_text(group.values.get(a)) for a in study.axes]
        for label in study.offloaders:
            s = group.offloaders.get(label)
            if s is None or not s.n:
                cells.append("-")
                continue
            drop = f" ({s.drop_pp:+.2f})" if s.drop_pp == s.drop_pp else ""  # NaN: unknown
            cells.append(f"{estimate_text(s.median)}{drop}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
