"""The report's "Setting" section: what the requests ran under, as each run recorded it.

The network per direction (bandwidth, delay, jitter, loss, queue, or the trace that
drove it), the device and edge CPU limits, the competing traffic and how each flow
ended, the link check's verdict per direction (fidelity.json) and every warning the run
recorded (environment.json). Old runs lack some of these: the section says "not
recorded" rather than guessing. In a sweep the first cell's setting is shown and the
swept axes override it; verdicts and warnings are gathered over all cells.
"""

from __future__ import annotations

import json
from pathlib import Path

from testbed.results.formatting import value_text
from testbed.results.load import Cell, Study

NOT_RECORDED = "not recorded"
# traffic.csv's `status` words (written by testbed.emulation.traffic.plan.with_status;
# results import no emulation, so the reader spells them again)
ENDED, STOPPED, FAILED = "ended", "stopped at the run's end", "failed"
# runs before `status`: iperf3's error when our stop at the end of the run interrupted it
IPERF3_INTERRUPT = "interrupt - the "
DIRECTIONS = ("uplink", "downlink")
# fidelity.json's per-direction fields the verdict names
FIDELITY_FIELDS = ("bandwidth_mbps", "tcp_goodput_mbps", "delay_ms", "jitter_ms", "loss_pct")


def setting_section(study: Study) -> list[str]:
    """The section's Markdown lines; nothing without a finished cell."""
    cells = study.cells
    if not cells:
        return []
    first = cells[0]
    lines = ["## Setting", ""]
    if study.axes:
        swept = ", ".join(f"`{a}`" for a in study.axes)
        lines += [f"The first cell's setting; the swept axes ({swept}) vary it.", ""]
    network = first.scenario.get("network")
    for direction in DIRECTIONS:
        lines.append(f"- {direction.capitalize()}: {link_text(network, direction)}")
    lines.append(f"- CPU: {cpu_text(first.scenario)}")
    lines += traffic_lines(first)
    lines += fidelity_lines(cells)
    lines += recorded_warnings(cells)
    return [*lines, ""]


def link_text(network, direction: str) -> str:
    """`1 Mbit/s, delay 20 ms, jitter 0 ms (normal), loss 0% (random), queue 100 packets`,
    or the trace that drove the direction."""
    if not isinstance(network, dict):
        return NOT_RECORDED
    trace = (network.get("trace") or {}) if isinstance(network.get("trace"), dict) else {}
    link = network.get(direction)
    parts = []
    if trace.get(direction):
        parts.append(f"trace `{value_text(trace[direction])}` (bandwidth over time)")
    if isinstance(link, dict):
        if "bandwidth_mbps" in link and not trace.get(direction):
            parts.append(f"{value_text(link['bandwidth_mbps'])} Mbit/s")
        if "delay_ms" in link:
            parts.append(f"delay {value_text(link['delay_ms'])} ms")
        if "jitter_ms" in link:
            shape = link.get("jitter_distribution")
            parts.append(f"jitter {value_text(link['jitter_ms'])} ms" + _paren(shape))
        if "loss_pct" in link:
            model = link.get("loss_model")
            parts.append(f"loss {value_text(link['loss_pct'])}%" + _paren(model))
        if "queue_packets" in link:
            parts.append(f"queue {value_text(link['queue_packets'])} packets")
    return ", ".join(parts) or NOT_RECORDED


def _paren(text) -> str:
    return f" ({text})" if text else ""


def cpu_text(scenario: dict) -> str:
    """The device's and the edge's CPU limits (a share of one core), and how many devices."""

    def cpu(role: str) -> str:
        spec = scenario.get(role)
        value = spec.get("cpu") if isinstance(spec, dict) else None
        return NOT_RECORDED if value is None else f"{value_text(value)} of a core"

    devices = scenario.get("devices")
    count = f" ({devices} device host{'s' * (devices != 1)})" if isinstance(devices, int) else ""
    return f"device {cpu('device')}{count}; edge {cpu('edge')}"


def traffic_lines(cell: Cell) -> list[str]:
    """The competing flows as planned (the scenario) and as they went (environment.json)."""
    planned = cell.scenario.get("traffic")
    achieved = cell.environment.get("traffic")
    if planned is None and achieved is None:
        return [f"- Competing traffic: {NOT_RECORDED}"]
    if not planned and not achieved:
        return ["- Competing traffic: none"]
    lines = ["- Competing traffic:"]
    for item in planned or []:
        if isinstance(item, dict):
            spec = ", ".join(
                f"{k} {'the run' + chr(39) + 's end' if v is None else value_text(v)}"
                for k, v in item.items()
            )
            lines.append(f"  - planned: {spec}")
    for flow in achieved or []:
        if isinstance(flow, dict):
            lines.append(f"  - {flow.get('flow', '?')}: {flow_text(flow)}")
    return lines


def flow_status(flow: dict) -> tuple[str, str]:
    """(status, error) of a flow; a run older than `status` gets it from `error`, where
    iperf3's interrupt is our stop at the end of the run: an end, not an error."""
    error = str(flow.get("error") or "")
    status = flow.get("status")
    if status:
        return str(status), error
    if error.startswith(IPERF3_INTERRUPT):
        return STOPPED, ""
    return (FAILED, error) if error else (ENDED, "")


def flow_text(flow: dict) -> str:
    """`0.891 Mbit/s, stopped at the run's end`, or `..., failed: why`."""
    rate = flow.get("throughput_mbps")
    text = f"{rate:.3f} Mbit/s" if isinstance(rate, int | float) else "no throughput"
    status, error = flow_status(flow)
    return f"{text}, {status}" + (f": {error}" if error else "")


def fidelity_lines(cells: list[Cell]) -> list[str]:
    """The link check's verdict per direction (fidelity.json), over all cells."""
    reports = [_read_json(c.folder / "fidelity.json") for c in cells]
    if not any(reports):
        return [f"- Link check (fidelity.json): {NOT_RECORDED}"]
    lines = ["- Link check (fidelity.json, measured against expected):"]
    for direction in DIRECTIONS:
        results: list[tuple[Cell, dict]] = [
            (c, r[direction])
            for c, r in zip(cells, reports, strict=True)
            if isinstance(r.get(direction), dict)
        ]
        if not results:
            lines.append(f"  - {direction}: {NOT_RECORDED}")
            continue
        off = [(c, d) for c, d in results if not d.get("ok", False)]
        note = _not_judged(d for _, d in results)
        if not off:
            where = f" in all {len(results)} cells" if len(results) > 1 else ""
            lines.append(f"  - {direction}: OK{where}{note}")
            continue
        names = "; ".join(f"{c.folder.name}: {_off_fields(d)}" for c, d in off[:5])
        more = f" (+{len(off) - 5} more)" if len(off) > 5 else ""
        lines.append(
            f"  - {direction}: **off its configuration in {len(off)} of {len(results)} "
            f"cell{'s' * (len(results) > 1)}**{note}: {names}{more}"
        )
    return lines


def _not_judged(directions) -> str:
    """ " (key not judged: why; ...)" over the cells, their reasons where recorded
    (`not_judged`), the names alone in older files (`skipped`)."""
    reasons: dict[str, str] = {}
    for d in directions:
        for key in d.get("skipped") or []:
            reasons.setdefault(key, "")
        for key, why in (d.get("not_judged") or {}).items():
            reasons[key] = str(why)
    if not reasons:
        return ""
    parts = [f"{key} not judged{': ' + why if why else ''}" for key, why in sorted(reasons.items())]
    return f" ({'; '.join(parts)})"


def _off_fields(direction: dict) -> str:
    judged = direction.get("within_tolerance") or {}
    measured = direction.get("measured") or {}
    expected = direction.get("expected") or {}
    off = [
        f"{k} {measured.get(k, '?')} vs {expected.get(k, '?')}"
        for k in FIDELITY_FIELDS
        if judged.get(k) is False
    ]
    return ", ".join(off) or "off"


def recorded_warnings(cells: list[Cell]) -> list[str]:
    """Every warning a run recorded in environment.json: its own `warnings`, link
    fidelity lines not OK, cleanup failures, traffic flows that failed, interruptions."""
    found: list[str] = []
    several = len(cells) > 1
    for cell in cells:
        env = cell.environment
        where = f"{cell.folder.name}: " if several else ""
        if not env:
            found.append(f"{where}environment.json {NOT_RECORDED}")
            continue
        found += [f"{where}{w}" for w in env.get("warnings") or [] if isinstance(w, str)]
        for line in env.get("fidelity") or []:
            if isinstance(line, str) and not line.rstrip().endswith("OK"):
                found.append(f"{where}link off its configuration: {line}")
        for failure in env.get("cleanup_failures") or []:
            found.append(f"{where}cleanup failed: {failure}")
        for flow in env.get("traffic") or []:
            if isinstance(flow, dict) and flow_status(flow)[0] == FAILED:
                found.append(f"{where}competing flow {flow.get('flow', '?')} {flow_text(flow)}")
        if env.get("partial"):
            why = env.get("partial_reason") or "interrupted"
            found.append(f"{where}the run did not finish: its results are partial ({why})")
        elif env.get("interrupted"):
            found.append(f"{where}the run was interrupted: its results are partial")
    if not found:
        return ["- Warnings the runs recorded: none"]
    return ["- Warnings the runs recorded:", *(f"  - {w}" for w in found)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
