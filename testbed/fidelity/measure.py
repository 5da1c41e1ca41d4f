"""The fidelity phase of a run: measure each direction of the emulated link with the
probes of testbed.fidelity.probe and compare with the configuration (testbed.fidelity.judge).

UDP trains give one-way delay (the hosts share CLOCK_MONOTONIC), its spread and loss,
both directions at once (UDP needs no reverse path); then a TCP transfer per
direction gives goodput, one at a time so that each has the reverse path to itself.
Probes run outside the hosts' CPU cgroups: a throttled sender would look like delay.
"""

from __future__ import annotations

import json

from testbed import programs
from testbed.emulation.link.trace import load_trace
from testbed.emulation.topology import stop_process, wait_ready
from testbed.errors import TestbedError
from testbed.fidelity import judge as fidelity

PROBES = 100
PROBE_INTERVAL_MS = 10
PROBE_BYTES = 64
TCP_SECONDS = 1.5
DIRECTIONS = {"uplink": ("device", "edge"), "downlink": ("edge", "device")}
# standard deviation of the delay per unit of `jitter_ms`, by distribution (see
# link/impairments.py: normal sigma = j, uniform +-j, Pareto shape 3 with mean excess j)
JITTER_STD = {"normal": 1.0, "uniform": 1 / 3**0.5, "pareto": 3**0.5}


def _result(proc, what: str, timeout_s: float) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except Exception:
        stop_process(proc)
        raise TestbedError(f"fidelity probe {what} did not finish in {timeout_s:.0f} s") from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {"error": "no output"}
    except json.JSONDecodeError:
        return {"error": f"unreadable output: {lines[-1][:200]}"}


def _probe(topo, host, mode: str, *args: str, log: str):
    command = programs.command("probe", mode, *args)
    return topo.popen(host, command, log, limited=False, realtime=True)


def udp_trains(
    topo, count: int = PROBES, interval_ms: float = PROBE_INTERVAL_MS, size: int = PROBE_BYTES
) -> dict[str, dict]:
    """One UDP probe train per direction, both at once; the sinks' reports."""
    sinks, sources = {}, {}
    for i, (direction, (_, receiver)) in enumerate(DIRECTIONS.items()):
        sink = _probe(
            topo,
            getattr(topo, receiver),
            "udp-sink",
            "--port",
            str(7100 + i),
            "--timeout",
            "20",
            log=f"probe-udp-sink-{direction}.log",
        )
        wait_ready(sink, f"udp sink ({direction})", 60)
        sinks[direction] = sink
    for i, (direction, (sender, receiver)) in enumerate(DIRECTIONS.items()):
        sources[direction] = _probe(
            topo,
            getattr(topo, sender),
            "udp-source",
            "--host",
            getattr(topo, receiver).IP(),
            "--port",
            str(7100 + i),
            "--count",
            str(count),
            "--interval-ms",
            str(interval_ms),
            "--size",
            str(size),
            "--train",
            str(i + 1),
            log=f"probe-udp-source-{direction}.log",
        )
    results = {}
    for direction in DIRECTIONS:
        _result(sources[direction], f"udp source ({direction})", 60)
        results[direction] = _result(sinks[direction], f"udp sink ({direction})", 60)
    return results


def tcp_goodput(topo, direction: str, seconds: float = TCP_SECONDS) -> dict:
    """A bulk TCP transfer in one direction; the sink's report (goodput_mbps)."""
    sender, receiver = DIRECTIONS[direction]
    sink = _probe(
        topo,
        getattr(topo, receiver),
        "tcp-sink",
        "--port",
        "7200",
        "--timeout",
        "30",
        log=f"probe-tcp-sink-{direction}.log",
    )
    wait_ready(sink, f"tcp sink ({direction})", 60)
    source = _probe(
        topo,
        getattr(topo, sender),
        "tcp-source",
        "--host",
        getattr(topo, receiver).IP(),
        "--port",
        "7200",
        "--seconds",
        str(seconds),
        log=f"probe-tcp-source-{direction}.log",
    )
    _result(source, f"tcp source ({direction})", 120)
    return _result(sink, f"tcp sink ({direction})", 120)


def measure(topo) -> dict:
    """fidelity.json's content: per direction configured, measured, expected, ok."""
    udp = udp_trains(topo)
    report = {}
    for direction in DIRECTIONS:
        link = getattr(topo.scenario.network, direction)
        tcp = tcp_goodput(topo, direction)
        configured = {
            # TCP's goodput under loss depends on TCP, not only on the link: not judged
            "bandwidth_mbps": link.bandwidth_mbps if link.loss_pct == 0 else None,
            "delay_ms": link.delay_ms,
            "jitter_ms": link.jitter_ms * JITTER_STD[link.jitter_distribution],
            "loss_pct": link.loss_pct,
        }
        measured = fidelity.measured_from_probes(udp[direction], tcp, PROBE_BYTES)
        tolerance = None
        if topo.scenario.network.trace:  # the rate varies; probes wait for an opportunity
            trace = load_trace(topo.scenario.network.trace[direction])
            spacing_ms = trace.period_ms / len(trace)
            tolerance = {"processing_ms": 0.5 + spacing_ms, "jitter_ms": 1.0 + spacing_ms}
        report[direction] = fidelity.compare(configured, measured, tolerance, direction=direction)
        report[direction]["raw"] = {"udp": udp[direction], "tcp": tcp}
    return report


def summary_lines(report: dict) -> list[str]:
    return [fidelity.summary_line(result, direction) for direction, result in report.items()]
