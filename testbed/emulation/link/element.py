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
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import signal
import sys
import time

from testbed.emulation.link.impairments import Jitter, Loss, clamp_delay

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
        first_free = self.trace._count_before(max(0.0, (now - self.start) * 1e3))
        if first_free > self.index:  # the opportunity in use has passed: a fresh one
            self.index, self.left = first_free, self.capacity
        need = size
        while need > self.left:
            need -= self.left
            self.index, self.left = self.index + 1, self.capacity
        self.left -= need
        return self.time_of(self.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--rate-mbps", type=float, default=0.0, help="0: no serialization")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--jitter-distribution", default="normal")
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--loss-model", default="random")
    parser.add_argument("--loss-burst", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", help="Mahimahi trace: its opportunities replace the rate")
    parser.add_argument("--trace-start", type=float, help="CLOCK_MONOTONIC s of trace time 0")
    args = parser.parse_args(argv)

    from netfilterqueue import COPY_PACKET, NetfilterQueue

    seconds_per_byte = 8 / (args.rate_mbps * 1e6) if args.rate_mbps > 0 else 0.0
    delay = args.delay_ms / 1e3
    jitter = Jitter(args.jitter_ms / 1e3, args.jitter_distribution, random.Random(args.seed))
    loss = Loss(args.loss_pct, args.loss_model, args.loss_burst, random.Random(args.seed + 1))
    held: collections.deque = collections.deque()
    state = {"busy_until": 0.0, "released": 0.0, "running": True, "dropped": 0, "passed": 0}

    opportunities = TraceOpportunities(args.trace, args.trace_start) if args.trace else None

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
    queue.bind(args.queue, on_packet, max_len=10000, mode=COPY_PACKET, range=COPY_BYTES)
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
