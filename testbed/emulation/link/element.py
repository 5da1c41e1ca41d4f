"""Userspace link element: holds each packet arriving at a host for its
serialization time at the link rate plus the one-way propagation delay.

It reads packets from an NFQUEUE at the receiving host's PREROUTING hook and gives
each verdict later (deferred verdicts), in arrival order, like a wire would:

    start   = max(arrival, previous finish)        # the link sends one frame at a time
    finish  = start + frame_bytes * 8 / rate
    release = max(previous release, finish + delay + jitter)   # a wire keeps order
    lost with probability loss (random or Gilbert-Elliott): dropped, not released

Keeping order means jitter larger than the packet spacing raises the mean delay of
back-to-back packets (as on a real FIFO path); sparse packets see the configured
distribution.

HTB on the forwarding hop upstream already paces the flow at the rate, so this
element's backlog stays a frame or two; it contributes the last frame's
serialization time that a token bucket cannot (an idle bucket passes a packet at
once), so a 800-byte message at 1 Mbit/s takes 6.9 ms as on a real link.

Run inside a host's network namespace, outside its CPU cgroup:
`python -m testbed.emulation.link.element --queue N --rate-mbps R --delay-ms D`; prints READY.
Its options are the link's settings (settings.py) and its own (`ElementConfig`); the
backend builds them with `arguments(config)`.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import signal
import sys
import time
from dataclasses import dataclass

from testbed.emulation.link.impairments import Jitter, Loss, clamp_delay
from testbed.emulation.link.settings import (
    LinkSpec,
    add_arguments,
    argv_of,
    from_arguments,
    setting,
)

ETHERNET_HEADER = 14  # HTB counts it; the IP total length does not include it
COPY_BYTES = 64  # only the IP header is needed


class TraceOpportunities:
    """Mahimahi's link: each trace line is a chance to deliver 1500 bytes; packets are
    delivered, in order, at the opportunity that carries their last byte."""

    def __init__(self, path: str, start: float) -> None:
        from testbed.emulation.link.trace import PACKET_BYTES, load_trace

        self.trace, self.start, self.capacity = load_trace(path), start, PACKET_BYTES
        self.index, self.left = -1, 0  # the opportunity in use and its bytes left

    def time_of(self, index: int) -> float:
        loops, i = divmod(index, len(self.trace))
        ms = loops * self.trace.period_ms + int(self.trace.opportunities[i])
        return self.start + ms / 1e3

    def deliver(self, now: float, size: int) -> float:
        first_free = self.trace.count_before(max(0.0, (now - self.start) * 1e3))
        if first_free > self.index:  # the opportunity in use has passed: a fresh one
            self.index, self.left = first_free, self.capacity
        need = size
        while need > self.left:
            need -= self.left
            self.index, self.left = self.index + 1, self.capacity
        self.left -= need
        return self.time_of(self.index)


@dataclass(frozen=True, kw_only=True)
class ElementConfig:
    """What one element is started with: its place (the NFQUEUE of its iptables rule,
    its seed, the trace it follows) and the settings of the link direction it emulates.
    Its argv and its parser are both derived from these declarations (settings.py)."""

    queue: int = setting(kind=int, flag="--queue", help="NFQUEUE number of its iptables rule")
    seed: int = setting(1, flag="--seed", help="jitter's seed; loss takes seed + 1")
    trace: str | None = setting(
        None, kind=str, flag="--trace", help="Mahimahi trace: its opportunities replace the rate"
    )
    trace_start: float | None = setting(
        None, kind=float, flag="--trace-start", help="CLOCK_MONOTONIC s of trace time 0"
    )
    link: LinkSpec


def arguments(config: ElementConfig) -> list[str]:
    """The element's command-line arguments for `config` (`parse_args` reads them back)."""
    return [*argv_of(config), *argv_of(config.link)]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser, ElementConfig)
    add_arguments(parser, LinkSpec)
    return parser


def parse_args(argv: list[str] | None = None) -> ElementConfig:
    options = parser()
    namespace = options.parse_args(argv)
    if namespace.trace is not None and namespace.trace_start is None:
        options.error("--trace needs --trace-start")
    return from_arguments(ElementConfig, namespace, link=from_arguments(LinkSpec, namespace))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    link = config.link

    from netfilterqueue import COPY_PACKET, NetfilterQueue

    rate = link.bandwidth_mbps or 0.0  # None: a trace's opportunities pace the packets
    seconds_per_byte = 8 / (rate * 1e6) if rate > 0 else 0.0
    delay = link.delay_ms / 1e3
    jitter = Jitter(link.jitter_ms / 1e3, link.jitter_distribution, random.Random(config.seed))
    loss = Loss(
        link.loss_pct, link.loss_model, link.loss_burst_packets, random.Random(config.seed + 1)
    )
    held: collections.deque = collections.deque()
    state = {"busy_until": 0.0, "released": 0.0, "running": True, "dropped": 0, "passed": 0}

    opportunities = None
    if config.trace is not None and config.trace_start is not None:  # parse_args: both or none
        opportunities = TraceOpportunities(config.trace, config.trace_start)

    def on_packet(packet) -> None:
        now = time.monotonic()
        header = packet.get_payload()
        ip_bytes = ((header[2] << 8) | header[3]) if len(header) >= 4 else 1500
        if opportunities is not None:
            state["busy_until"] = opportunities.deliver(now, ip_bytes)
        else:
            start = max(now, state["busy_until"])
            state["busy_until"] = start + (ip_bytes + ETHERNET_HEADER) * seconds_per_byte
        if loss.lost():  # it used the wire all the same
            state["dropped"] += 1
            packet.drop()
            return
        release = max(state["released"], state["busy_until"] + clamp_delay(delay + jitter.sample()))
        state["released"] = release
        state["passed"] += 1
        held.append((release, packet))

    def stop(*_) -> None:
        state["running"] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue = NetfilterQueue()
    queue.bind(config.queue, on_packet, max_len=10000, mode=COPY_PACKET, range=COPY_BYTES)
    fd = queue.get_fd()
    print("READY", flush=True)
    try:
        while state["running"]:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.2
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
    finally:
        while held:  # let nothing in flight be lost on shutdown
            held.popleft()[1].accept()
        queue.unbind()
        print(f"passed {state['passed']} dropped {state['dropped']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
