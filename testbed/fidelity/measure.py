"""The fidelity phase of a run: measure each direction of the emulated link with the
probes of testbed.fidelity.probe and compare with the configuration (testbed.fidelity.judge).

Three steps, each direction's probes at once where they need no reverse path:
1. sparse UDP trains give one-way delay (the hosts share CLOCK_MONOTONIC), its spread
   and loss, both directions at once;
2. UDP rate trains, sent at 1.25 x the rate (over 1 - loss), keep the bottleneck busy,
   so the receiver sees the link's own rate in their arrival times, under loss and at
   any bandwidth-delay product; both directions at once;
3. a TCP transfer per direction, one at a time so that each has the reverse path to
   itself, gives TCP's goodput after its ramp (judged where it says something about
   the link, see `tcp_not_judged`).
Probes run outside the hosts' CPU cgroups: a throttled sender would look like delay.
"""

from __future__ import annotations

import json
import math
import time

from testbed import programs
from testbed.emulation.link.trace import load_trace
from testbed.emulation.topology import stop_process, wait_ready
from testbed.errors import TestbedError
from testbed.fidelity import judge as fidelity
from testbed.fidelity.probe_packets import WIRE_OVERHEAD

PROBES = 100
PROBE_INTERVAL_MS = 10
PROBE_BYTES = 64
TCP_SECONDS = 1.0
UDP_PORT, RATE_PORT, TCP_PORT = 7100, 7300, 7200
DIRECTIONS = {"uplink": ("device", "edge"), "downlink": ("edge", "device")}
REVERSE = {"uplink": "downlink", "downlink": "uplink"}

RATE_SECONDS = 0.5  # sending time of a rate train
RATE_OVERDRIVE = 1.25  # a rate train's offered rate over what the link can deliver
RATE_SENT_MIN = 1.05  # below this share of the rate, the sender (not the link) set the pace
RATE_PACKETS = 150  # a train aims at this many packets, so slow links get smaller ones
RATE_MIN_BYTES, RATE_MAX_BYTES = 200, 1472  # payload: 1472 fills a 1500-byte MTU
# a probe process takes about 0.2 s to start (realtime, so it holds a core meanwhile):
# trains started together begin this long after their sources, not while one starts
SOURCE_STARTUP_S = 0.4
TCP_INITIAL_WINDOW = 10 * 1448
# ACKs of a full-rate transfer take about 2% of its rate back (a 66-byte ACK per two
# 1514-byte frames); a reverse path narrower than this share of the rate limits TCP
TCP_ACK_SHARE = 0.05
TCP_RAMP_RTTS = 4  # round trips beyond slow start's doublings: BBR's drain, a margin


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


def _udp_sinks(topo, directions, port: int, name: str) -> dict:
    """A udp-sink per direction at its receiver, each listening (READY) on return."""
    sinks = {}
    for i, direction in enumerate(directions):
        sinks[direction] = _probe(
            topo,
            getattr(topo, DIRECTIONS[direction][1]),
            "udp-sink",
            *("--port", str(port + i), "--timeout", "30", "--grace", "0.3"),
            log=f"probe-{name}-sink-{direction}.log",
        )
        wait_ready(sinks[direction], f"udp sink ({name}, {direction})", 60)
    return sinks


def _trains(topo, sinks: dict, plans: dict[str, tuple], port: int, name: str) -> dict:
    """A UDP train per direction of `plans` ({direction: (count, interval_ms, size)}) to
    the `sinks` of `_udp_sinks(topo, plans, port, name)`, all starting together once
    every source is up; {direction: {"sink": its report, "source": its report}}."""
    sources = {}
    start_at = f"{time.monotonic() + SOURCE_STARTUP_S:.6f}"
    for i, (direction, (count, interval_ms, size)) in enumerate(plans.items()):
        sender, receiver = (getattr(topo, h) for h in DIRECTIONS[direction])
        sources[direction] = _probe(
            topo,
            sender,
            "udp-source",
            *("--host", receiver.IP(), "--port", str(port + i), "--count", str(count)),
            *("--interval-ms", f"{interval_ms:.6f}", "--size", str(size), "--train", str(i + 1)),
            *("--start-at", start_at),
            log=f"probe-{name}-source-{direction}.log",
        )
    return {
        direction: {
            "source": _result(sources[direction], f"udp source ({name}, {direction})", 60),
            "sink": _result(sinks[direction], f"udp sink ({name}, {direction})", 60),
        }
        for direction in plans
    }


def udp_trains(
    topo, count: int = PROBES, interval_ms: float = PROBE_INTERVAL_MS, size: int = PROBE_BYTES
) -> dict[str, dict]:
    """One sparse UDP probe train per direction, both at once; the sinks' reports."""
    sinks = _udp_sinks(topo, DIRECTIONS, UDP_PORT, "udp")
    plans = dict.fromkeys(DIRECTIONS, (count, interval_ms, size))
    return {d: r["sink"] for d, r in _trains(topo, sinks, plans, UDP_PORT, "udp").items()}


def rate_plan(rate_mbps: float, loss_pct: float, seconds: float = RATE_SECONDS) -> tuple:
    """(count, interval_ms, size) of a train that keeps a `rate_mbps` link busy for
    `seconds`: offered at RATE_OVERDRIVE x the rate over (1 - loss), so that the link
    stays busy also where loss comes before the queue (netem), in packets small
    enough that a slow link still delivers about RATE_PACKETS of them."""
    budget = rate_mbps * 1e6 * seconds / 8 / RATE_PACKETS - WIRE_OVERHEAD
    size = int(min(RATE_MAX_BYTES, max(RATE_MIN_BYTES, budget)))
    offered = rate_mbps * RATE_OVERDRIVE / (1 - loss_pct / 100)
    interval_ms = (size + WIRE_OVERHEAD) * 8 / (offered * 1e3)
    return math.ceil(seconds * 1e3 / interval_ms), interval_ms, size


def sent_mbps(source: dict, size: int) -> float | None:
    """The rate a udp-source really sent at, in wire Mbit/s."""
    seconds, sent = source.get("seconds"), source.get("sent") or 0
    return sent * (size + WIRE_OVERHEAD) * 8 / seconds / 1e6 if seconds else None


def _tcp_sink(topo, direction: str):
    """A tcp-sink at the direction's receiver, listening (READY) on return."""
    sink = _probe(
        topo,
        getattr(topo, DIRECTIONS[direction][1]),
        "tcp-sink",
        *("--port", str(TCP_PORT), "--timeout", "30"),
        log=f"probe-tcp-sink-{direction}.log",
    )
    wait_ready(sink, f"tcp sink ({direction})", 60)
    return sink


def tcp_goodput(topo, direction: str, seconds: float = TCP_SECONDS, sink=None) -> dict:
    """A bulk TCP transfer in one direction (to `sink`, else a new `_tcp_sink`); the
    sink's report (goodput_mbps over the whole transfer, steady_goodput_mbps after the
    ramp)."""
    sink = sink or _tcp_sink(topo, direction)
    sender, receiver = (getattr(topo, h) for h in DIRECTIONS[direction])
    source = _probe(
        topo,
        sender,
        "tcp-source",
        *("--host", receiver.IP(), "--port", str(TCP_PORT), "--seconds", str(seconds)),
        log=f"probe-tcp-source-{direction}.log",
    )
    _result(source, f"tcp source ({direction})", 120)
    return _result(sink, f"tcp sink ({direction})", 120)


def tcp_ramp_s(rate_mbps: float, rtt_ms: float) -> float:
    """About how long TCP takes to fill a path: slow start's doublings from the initial
    window to the bandwidth-delay product, and a few round trips more."""
    bdp = rate_mbps * 1e6 / 8 * rtt_ms / 1e3
    doublings = math.log2(max(bdp / TCP_INITIAL_WINDOW, 1.0))
    return (doublings + TCP_RAMP_RTTS) * rtt_ms / 1e3


def tcp_not_judged(link, reverse, rtt_ms: float, tcp: dict) -> str | None:
    """Why TCP's goodput over `link` says nothing about it (None: it does, judge it);
    `reverse` is the other direction, which carries TCP's ACKs."""
    if link.bandwidth_mbps is None:
        return "a trace sets the rate"
    if link.loss_pct > 0:
        return "under loss TCP's goodput is its congestion control's, not the link's"
    if reverse.bandwidth_mbps is not None and reverse.bandwidth_mbps < (
        TCP_ACK_SHARE * link.bandwidth_mbps
    ):
        return f"the reverse path ({reverse.bandwidth_mbps:g} Mbit/s) limits TCP's ACKs"
    ramp = tcp_ramp_s(link.bandwidth_mbps, rtt_ms)
    steady_from = tcp.get("steady_from_s")
    if steady_from is not None and ramp > steady_from:
        return f"TCP's ramp (about {ramp:.1f} s) outlasts the unmeasured first half"
    return None


def rate_not_judged(link, plan: tuple | None, train: dict | None) -> str | None:
    """Why the rate train cannot show the link's rate (None: it can)."""
    if plan is None or train is None:
        return "a trace sets the rate (it varies over time)"
    sent = sent_mbps(train["source"], plan[2])
    needed = RATE_SENT_MIN * link.bandwidth_mbps / (1 - link.loss_pct / 100)
    if sent is not None and sent < needed:
        return f"the probe sent only {sent:.3g} Mbit/s, not above the link's rate"
    return None


def configured_of(link) -> dict:
    """The direction's settings as the scenario set them (None only where it did not)."""
    return {
        "bandwidth_mbps": link.bandwidth_mbps,
        "delay_ms": link.delay_ms,
        "jitter_ms": link.jitter_ms,
        "jitter_distribution": link.jitter_distribution,
        "loss_pct": link.loss_pct,
    }


def measure(topo) -> dict:
    """fidelity.json's content: per direction configured, measured, expected, ok."""
    network = topo.scenario.network
    links = {direction: getattr(network, direction) for direction in DIRECTIONS}
    plans = {
        direction: rate_plan(link.bandwidth_mbps, link.loss_pct)
        for direction, link in links.items()
        if link.bandwidth_mbps is not None
    }
    # every listener first, so that no process starts up during a train
    udp_sinks = _udp_sinks(topo, DIRECTIONS, UDP_PORT, "udp")
    rate_sinks = _udp_sinks(topo, plans, RATE_PORT, "rate")
    tcp_sinks = {direction: _tcp_sink(topo, direction) for direction in DIRECTIONS}
    plan = (PROBES, PROBE_INTERVAL_MS, PROBE_BYTES)
    trains = _trains(topo, udp_sinks, dict.fromkeys(DIRECTIONS, plan), UDP_PORT, "udp")
    udp = {direction: train["sink"] for direction, train in trains.items()}
    rates = _trains(topo, rate_sinks, plans, RATE_PORT, "rate")
    tcp = {d: tcp_goodput(topo, d, sink=sink) for d, sink in tcp_sinks.items()}
    netem = getattr(topo.backend, "name", "") == "netem"
    report = {}
    for direction in DIRECTIONS:
        raw = {"udp": udp[direction], "rate": rates.get(direction), "tcp": tcp[direction]}
        report[direction] = _judge(network, direction, plans.get(direction), raw, netem)
        report[direction]["raw"] = raw
    return report


def _judge(network, direction: str, plan: tuple | None, raw: dict, netem: bool) -> dict:
    """One direction's verdict from its probes' reports (`raw`: udp, rate, tcp)."""
    link, reverse = getattr(network, direction), getattr(network, REVERSE[direction])
    train, tcp = raw["rate"], raw["tcp"]
    measured = fidelity.measured_from_probes(
        raw["udp"], tcp, PROBE_BYTES, train["sink"] if train else None
    )
    rtt_ms = link.delay_ms + reverse.delay_ms
    why = measured.setdefault("not_judged", {})
    trace = load_trace(network.trace[direction]) if network.trace else None
    for key, reason in (
        ("bandwidth_mbps", rate_not_judged(link, plan, train)),
        ("tcp_goodput_mbps", tcp_not_judged(link, reverse, rtt_ms, tcp)),
        ("jitter_ms", trace_jitter_not_judged(trace)),
    ):
        if reason is not None:
            why.setdefault(key, reason)
    return fidelity.compare(
        configured_of(link),
        measured,
        _trace_tolerance(network, direction),
        direction=direction,
        loss_spends_rate=not netem,  # netem drops before its queue, the element after
    )


def opportunity_wait_ms(trace) -> tuple[float, float]:
    """Mean and std of the wait from a random instant to the trace's next delivery
    opportunity over one period (a packet sent then waits that long before it can
    leave): for gaps g, E[W] = sum g^2 / 2T and E[W^2] = sum g^3 / 3T."""
    import numpy as np

    folded = np.unique(np.asarray(trace.opportunities, dtype=np.float64) % trace.period_ms)
    gaps = np.diff(np.append(folded, folded[0] + trace.period_ms))
    total = float(gaps.sum())
    mean = float((gaps**2).sum()) / (2 * total)
    second = float((gaps**3).sum()) / (3 * total)
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def trace_jitter_not_judged(trace) -> str | None:
    """Why the delay's spread says nothing about the emulation (None: judge it). A
    recorded trace's own bursts and outages spread the delay far beyond the tolerance
    (a cellular recording: tens to hundreds of ms), so the spread is the trace's, not
    an emulation fault; evenly spaced traces stay judged."""
    if trace is None:
        return None
    spacing_ms = trace.period_ms / len(trace)
    _, wait_std = opportunity_wait_ms(trace)
    if wait_std <= 1.0 + spacing_ms:
        return None
    return (
        f"the trace's own delivery gaps spread the delay (std of the wait for an "
        f"opportunity {wait_std:.0f} ms over its period)"
    )


def _trace_tolerance(network, direction: str) -> dict | None:
    """A trace's rate varies: probes wait for a delivery opportunity, so its spacing
    (a bursty recording: the mean wait for an opportunity) widens the delay window above
    the configured delay, and its spacing the jitter window."""
    if not network.trace:
        return None
    trace = load_trace(network.trace[direction])
    spacing_ms = trace.period_ms / len(trace)
    wait_ms = spacing_ms
    if trace_jitter_not_judged(trace) is not None:
        # a bursty recording: a probe waits for the next opportunity, on average this
        # long over the period (the lower bound, the delay itself, stays as tight)
        wait_ms = max(spacing_ms, opportunity_wait_ms(trace)[0])
    return {"processing_ms": 0.5 + wait_ms, "jitter_ms": 1.0 + spacing_ms}


def summary_lines(report: dict) -> list[str]:
    return [fidelity.summary_line(result, direction) for direction, result in report.items()]
