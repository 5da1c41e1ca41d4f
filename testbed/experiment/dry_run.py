"""`run_scenario.py --check`: everything a run checks before it starts, and what it would
run, without root and without starting a host, a link or an agent.

Per cell of every document (a sweep's grid included): its gates, traces, plugin (its
declaration and trained weights), every offloader built as the runner builds it (so a
missing DeepCOD or BottleNet network is found) and its sample count. Calibration caches
are not needed: a run measures what is missing. Each plugin and offloader configuration is
checked once, however many cells share it.

The duration is a rough estimate, per cell (`estimate_s`):

    SETUP_S + FIDELITY_S (unless --skip-fidelity)
    + per offloader: (WARMUP_REQUESTS + samples) x devices x REQUEST_FLOOR_S
                     + the same requests' transfer time: the raw input's bytes at the
                       uplink rate (0 for `local`; an upper bound for the coding
                       offloaders; left out under a trace) plus one round trip each

taking the longer of that and samples / rate_hz for open-loop arrivals. It leaves out
compute on a slow device, competing traffic and data preparation: expect the real run to
differ, often by a factor of two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed import offloaders
from testbed.config.sweep import Cell, Sweep
from testbed.emulation.link.trace import load_trace
from testbed.errors import ScenarioError, TestbedError
from testbed.experiment.runner import (
    WARMUP_REQUESTS,
    check_gates,
    choose_samples,
    offloader_labels,
)
from testbed.models import plugins
from testbed.models.plugin_api import check_plugin
from testbed.offloaders.base import resolve_edge_device

SETUP_S = 30.0  # hosts, links, agents importing torch, kernels loaded
FIDELITY_S = 10.0  # probes and a TCP goodput per direction (testbed.fidelity.measure)
REQUEST_FLOOR_S = 0.01  # a request's compute and framing, however small


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    labels: list[str]
    input_bytes: int
    estimate_s: float


class _Checked:
    """What was already checked, so that cells sharing a plugin or offloader load it once."""

    def __init__(self) -> None:
        self.plugins: dict[str, tuple] = {}  # name -> (plugin, model)
        self.counts: dict[tuple, int] = {}  # (plugin, test_data) -> test samples
        self.offloaders: set[tuple] = set()

    def plugin(self, name: str):
        if name not in self.plugins:
            plugin = plugins.get(name)
            check_plugin(plugin)
            self.plugins[name] = (plugin, plugin.load_model())
        return self.plugins[name]


def check(sweeps: list[Sweep], fidelity: bool = True) -> list[list[CellPlan]]:
    """Check every cell as the runner would before starting anything; raises the runner's
    ScenarioError or PluginError (exit 2), prefixed with the cell where a sweep has several."""
    checked = _Checked()
    plans = []
    for sweep in sweeps:
        cells = []
        for cell in sweep.cells:
            try:
                cells.append(_check_cell(cell, checked, fidelity))
            except ScenarioError as exc:
                if not sweep.is_grid:
                    raise
                raise type(exc)(_in_cell(str(exc), cell)) from None
        plans.append(cells)
    return plans


def _in_cell(message: str, cell: Cell) -> str:
    """A cell's error names the file (and line, where the message has it) and the cell."""
    source = str(cell.scenario.source)
    if message.startswith(source):
        return f"{message} (cell {cell.label})"
    return f"{source}: cell {cell.label}: {message}"


def _check_cell(cell: Cell, checked: _Checked, fidelity: bool) -> CellPlan:
    scenario = cell.scenario
    labels = offloader_labels(scenario.offloaders)
    check_gates(scenario, labels)
    for path in (scenario.network.trace or {}).values():
        load_trace(path)
    try:  # `edge: {device: cuda}` where there is none: the run's exit 3, told now
        resolve_edge_device(scenario.edge.device)
    except TestbedError as exc:
        raise type(exc)(f"{scenario.source}: {exc}") from None
    plugin, model = checked.plugin(scenario.model)
    for spec in scenario.offloaders:
        key = (scenario.model, spec.name, repr(sorted(spec.params.items())))
        if key not in checked.offloaders:
            offloaders.get(spec.name)(plugin, model, **spec.params)  # finds missing artefacts
            checked.offloaders.add(key)
    data_key = (scenario.model, scenario.test_data)
    if data_key not in checked.counts:
        checked.counts[data_key] = len(plugins.test_data(plugin, scenario.test_data))
    choose_samples(scenario, checked.counts[data_key])
    spec = plugin.input_spec
    input_bytes = int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
    return CellPlan(cell, labels, input_bytes, estimate_s(cell, input_bytes, fidelity))


def estimate_s(cell: Cell, input_bytes: int, fidelity: bool = True) -> float:
    """The rough duration of one cell (the module's docstring gives the model)."""
    s = cell.scenario
    rtt_s = (s.network.uplink.delay_ms + s.network.downlink.delay_ms) / 1000
    rate = s.network.uplink.bandwidth_mbps if s.network.trace is None else None
    total = SETUP_S + (FIDELITY_S if fidelity else 0.0)
    requests = (WARMUP_REQUESTS + s.samples) * s.devices
    for spec in s.offloaders:
        sent = 0 if spec.name == "local" else input_bytes
        transfer = sent * 8 / (rate * 1e6) + rtt_s if rate and sent else rtt_s if sent else 0.0
        closed = requests * (REQUEST_FLOOR_S + transfer)
        if s.arrival.get("process") == "poisson":
            closed = max(closed, s.samples / s.arrival["rate_hz"])
        total += closed
    return total


def network_text(cell: Cell) -> str:
    """The cell's network in one line: rates, delays, loss or traces, and traffic."""
    net = cell.scenario.network

    def link(spec) -> str:
        rate = "trace" if spec.bandwidth_mbps is None else f"{spec.bandwidth_mbps:g} Mbit/s"
        loss = f", {spec.loss_pct:g} % loss" if spec.loss_pct else ""
        return f"{rate}, {spec.delay_ms:g} ms{loss}"

    text = f"up {link(net.uplink)}; down {link(net.downlink)}"
    if net.trace:
        text += "; traces " + ", ".join(f"{k}={v.name}" for k, v in net.trace.items())
    traffic = cell.scenario.traffic
    return text + (f"; {len(traffic)} competing flows" if traffic else "")


def describe(sweeps: list[Sweep], plans: list[list[CellPlan]]) -> str:
    """What would run, cell by cell, and the rough total."""
    lines = []
    total = 0.0
    for sweep, cells in zip(sweeps, plans, strict=True):
        lines.append(f"{sweep.name}: {len(cells)} run{'s' if len(cells) != 1 else ''}")
        for plan in cells:
            s = plan.cell.scenario
            name = plan.cell.label if sweep.is_grid else s.name
            lines.append(
                f"  {name}: model {s.model}, {s.samples} samples x {len(plan.labels)} "
                f"offloaders ({', '.join(plan.labels)}), {s.devices} device(s), seed {s.seed}"
            )
            lines.append(f"    network: {network_text(plan.cell)}; about {_time(plan.estimate_s)}")
            total += plan.estimate_s
    lines.append(
        f"would run in about {_time(total)} (a rough estimate: see testbed/experiment/dry_run.py)"
    )
    return "\n".join(lines)


def _time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
