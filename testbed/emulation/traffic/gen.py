"""UDP competing traffic: a paced sender and a measuring sink, one process per flow.

    python -m testbed.emulation.traffic.gen sink --port P [--report-interval-s 1] [--max-seconds S]
    python -m testbed.emulation.traffic.gen send --host H --port P --pattern cbr|onoff|poisson ...

Separate processes (not threads of the runner) so that they run inside the Mininet
hosts on either side of the bottleneck; `testbed.emulation.traffic.plan` builds their command
lines and parses what they print. Both print one JSON object as their last stdout
line, also when stopped by SIGTERM/SIGINT, so a run that ends early still reports.

Rates are UDP payload bits per second (as iperf3's `-b`), the quantity the sink
measures; the wire carries 28 bytes of IP/UDP headers more per packet. Each
payload starts with a big-endian 64-bit sequence number so the sink can count
losses. Times are CLOCK_MONOTONIC, which all Mininet hosts share.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

PARETO_SHAPE = 1.5
# A late sender sends at most this many packets (trains for poisson) back to back
# and skips older slots, so a stall shows as a gap rather than a burst. At high
# rates the window is at least MIN_LAG_S, about the timer resolution of Python.
MAX_BURST = 4
MIN_LAG_S = 0.001
_SEQ = struct.Struct(">Q")
_RCVBUF_BYTES = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python lacks the name


# --- schedules (pure, seeded; tested directly) -----------------------------------


def draw_period(mean_s: float, distribution: str, rng: random.Random) -> float:
    """One ON or OFF length; Pareto is scaled so its mean equals `mean_s` like the exponential."""
    if distribution == "exponential":
        return rng.expovariate(1.0 / mean_s)
    if distribution == "pareto":
        scale = mean_s * (PARETO_SHAPE - 1.0) / PARETO_SHAPE
        return scale * rng.paretovariate(PARETO_SHAPE)
    raise ValueError(f"distribution must be exponential or pareto, not {distribution!r}")


def onoff_schedule(
    on_s: float, off_s: float, distribution: str, seed: int
) -> Iterator[tuple[float, float]]:
    """Endless (on, off) period lengths, starting with ON; the same seed gives the same run."""
    rng = random.Random(seed)
    while True:
        on = draw_period(on_s, distribution, rng)
        off = draw_period(off_s, distribution, rng)
        yield on, off


def cbr_times(interval_s: float) -> Iterator[tuple[float, int]]:
    """(offset, packets) slots; computed from the start, so pacing never drifts."""
    k = 0
    while True:
        yield k * interval_s, 1
        k += 1


def onoff_times(
    interval_s: float, periods: Iterator[tuple[float, float]]
) -> Iterator[tuple[float, int]]:
    """CBR on a clock that only runs while ON.

    Short ON periods then carry their exact share of packets (a period shorter
    than one interval may carry none), so the mean rate is rate x on/(on+off).
    """
    real = 0.0  # start of the current ON period
    virt = 0.0  # ON time before it
    k = 0
    for on, off in periods:
        end = virt + on
        while k * interval_s < end:
            yield real + (k * interval_s - virt), 1
            k += 1
        virt = end
        real += on + off


def poisson_times(rate_hz: float, train_packets: int, seed: int) -> Iterator[tuple[float, int]]:
    """Trains of back-to-back packets at Poisson arrival times (mean gap 1/rate_hz)."""
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(rate_hz)
        yield t, train_packets


# --- signals ---------------------------------------------------------------------


class _Stop:
    """SIGTERM/SIGINT as a flag plus a wakeup fd, so waits end at once without
    raising from inside the send/receive bookkeeping."""

    def __init__(self) -> None:
        self.set = False
        self._r, w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.set = True

    @property
    def fd(self) -> int:
        return self._r

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`; True if a stop signal came."""
        if not self.set and timeout_s > 0:
            select.select([self._r], [], [], timeout_s)
        return self.set


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- sender ----------------------------------------------------------------------


def _schedule(args) -> tuple[Iterator[tuple[float, int]], float]:
    """The (offset, packets) stream and the lag after which a slot is skipped."""
    if args.pattern == "poisson":
        times = poisson_times(args.rate_hz, args.train_packets, args.seed)
        return times, max(MAX_BURST / args.rate_hz, MIN_LAG_S)
    interval = args.packet_bytes * 8 / (args.rate_mbps * 1e6)
    max_lag = max(MAX_BURST * interval, MIN_LAG_S)
    if args.pattern == "cbr":
        return cbr_times(interval), max_lag
    periods = onoff_schedule(args.on_s, args.off_s, args.distribution, args.seed)
    return onoff_times(interval, periods), max_lag


def run_send(args) -> dict:
    stop = _Stop()
    family, kind, proto, _, addr = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_DGRAM)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    payload = bytearray(args.packet_bytes)
    times, max_lag = _schedule(args)
    sent = skipped = errors = seq = 0
    start = time.monotonic()
    end = start + args.duration_s
    for offset, count in times:
        due = start + offset
        if due >= end:
            stop.wait(end - time.monotonic())  # keep the promised lifetime
            break
        now = time.monotonic()
        if due > now:
            if stop.wait(due - now):
                break
        elif now - due > max_lag:
            skipped += count
            continue
        if stop.set:
            break
        for _ in range(count):
            _SEQ.pack_into(payload, 0, seq)
            seq += 1
            try:
                sock.sendto(payload, addr)
                sent += 1
            except OSError as e:  # a full qdisc or an ICMP error from a missing sink
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.EPERM):
                    raise
                errors += 1
    stopped = time.monotonic()
    sock.close()
    return {
        "packets_sent": sent,
        "bytes_sent": sent * args.packet_bytes,
        "seconds": stopped - start,
        "packets_skipped": skipped,
        "send_errors": errors,
        "pattern": args.pattern,
        "start_s": start,
        "interrupted": stop.set,
    }


# --- sink ------------------------------------------------------------------------


def run_sink(args, ready_out=sys.stdout) -> dict:
    stop = _Stop()
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:  # root (as in Mininet) may exceed net.core.rmem_max: fewer drops on a stall
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF_BYTES)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_BYTES)
    sock.bind((args.bind, args.port))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    ready_out.write(f"READY {port}\n")
    ready_out.flush()

    interval = args.report_interval_s
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else math.inf
    buf = bytearray(65536)
    total = packets = 0
    first: float | None = None
    last = 0.0
    bins: list[int] = []
    seq_lo, seq_hi, seq_n = math.inf, -1, 0

    def drain() -> None:
        nonlocal total, packets, first, last, seq_lo, seq_hi, seq_n
        while True:
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            if first is None:
                first = now
            last = now
            total += n
            packets += 1
            b = int((now - first) / interval)
            if b >= len(bins):
                bins.extend([0] * (b + 1 - len(bins)))
            bins[b] += n
            if n >= _SEQ.size:
                s = _SEQ.unpack_from(buf)[0]
                seq_lo, seq_hi, seq_n = min(seq_lo, s), max(seq_hi, s), seq_n + 1

    while not stop.set:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([sock.fileno(), stop.fd], [], [], min(left, 3600.0))
        if sock.fileno() in readable:
            drain()
    drain()  # what already arrived still counts
    sock.close()

    span = (last - first) if first is not None else 0.0
    per_second = [b * 8 / interval / 1e6 for b in bins[:-1]]
    if bins:  # the last bin is partial: rate over its covered part, if it covers enough
        covered = span - (len(bins) - 1) * interval
        if covered >= interval / 2:
            per_second.append(bins[-1] * 8 / covered / 1e6)
    return {
        "bytes": total,
        "packets": packets,
        "first_s": first,
        "last_s": last,
        "throughput_mbps": total * 8 / span / 1e6 if span > 0 else 0.0,
        "per_second_mbps": per_second,
        "report_interval_s": interval,
        "lost_packets": max(0, seq_hi - seq_lo + 1 - seq_n) if seq_n else 0,
        "port": port,
        "interrupted": stop.set,
    }


# --- command line ----------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.emulation.traffic.gen", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)

    s = sub.add_parser("sink", help="receive UDP and report throughput")
    s.add_argument("--port", type=int, required=True, help="0 picks a free port (see READY)")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--report-interval-s", type=_positive, default=1.0)
    s.add_argument("--max-seconds", type=_positive, default=None)

    t = sub.add_parser("send", help="send paced UDP")
    t.add_argument("--host", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--pattern", choices=("cbr", "onoff", "poisson"), required=True)
    t.add_argument("--rate-mbps", type=_positive, help="cbr and onoff (rate while on)")
    t.add_argument("--packet-bytes", type=int, default=1400)
    t.add_argument("--on-s", type=_positive)
    t.add_argument("--off-s", type=_positive)
    t.add_argument("--distribution", choices=("exponential", "pareto"), default="exponential")
    t.add_argument("--rate-hz", type=_positive, help="poisson: trains per second")
    t.add_argument("--train-packets", type=int, default=10)
    t.add_argument("--duration-s", type=_positive, required=True)
    t.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.mode == "sink":
        _emit(run_sink(args))
        return 0
    needs = {
        "cbr": ("rate_mbps",),
        "onoff": ("rate_mbps", "on_s", "off_s"),
        "poisson": ("rate_hz",),
    }
    missing = [n for n in needs[args.pattern] if getattr(args, n) is None]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        parser.error(f"--pattern {args.pattern} needs {flags}")
    if not _SEQ.size <= args.packet_bytes <= 65507:
        parser.error(f"--packet-bytes must be {_SEQ.size} to 65507, got {args.packet_bytes}")
    if args.train_packets < 1:
        parser.error(f"--train-packets must be >= 1, got {args.train_packets}")
    _emit(run_send(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
