"""The probes' datagrams, the statistics of their one-way delays and the rates their
arrivals show: pure functions, shared by the probe program (`probe.py`) and its tests,
with no sockets."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

__all__ = [
    "HEADER",
    "KIND_END",
    "KIND_PROBE",
    "MAGIC",
    "MAX_COUNT",
    "MAX_DATAGRAM",
    "VERSION",
    "WIRE_OVERHEAD",
    "decode_probe",
    "delay_stats",
    "delivery_rate",
    "encode_probe",
    "percentile",
    "rounded",
    "steady_rate",
]

MAGIC = b"DCPB"
VERSION = 1
KIND_PROBE = 1
KIND_END = 2
HEADER = struct.Struct("!4sBBHIIIIq")
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
MAX_COUNT = 1_000_000  # bounds the sink's per-probe memory (~20 MB of delays and arrivals)
WIRE_OVERHEAD = 42  # UDP 8 + IPv4 20 + Ethernet 14: what a shaper counts besides the payload


# ---------------------------------------------------------------- packets


def encode_probe(buf: bytearray, kind: int, train: int, seq: int, count: int, send_ns: int) -> None:
    """Writes the header in place so the source never allocates per packet."""
    HEADER.pack_into(buf, 0, MAGIC, VERSION, kind, 0, train, seq, count, len(buf), send_ns)


def decode_probe(data: bytes | memoryview) -> tuple[int, int, int, int, int] | None:
    """Returns (kind, train, seq, count, send_ns), or None for anything not ours."""
    if len(data) < HEADER.size:
        return None
    magic, version, kind, _, train, seq, count, length, send_ns = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or length != len(data):
        return None
    if not 1 <= count <= MAX_COUNT:
        return None
    if kind == KIND_PROBE and seq < count:
        return kind, train, seq, count, send_ns
    if kind == KIND_END and seq == count:
        return kind, train, seq, count, send_ns
    return None


# ---------------------------------------------------------------- statistics


def rounded(x: float | None, digits: int = 4) -> float | None:
    """A figure of a JSON report, rounded; None stays None."""
    return None if x is None else round(x, digits)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def delay_stats(delays_ns: Sequence[int]) -> dict:
    """Summary of one-way delays in ms; std is the sample std, used as jitter."""
    if not delays_ns:
        return dict.fromkeys(("median", "mean", "p5", "p95", "std", "min", "max"))
    ms = sorted(d / 1e6 for d in delays_ns)
    n = len(ms)
    mean = math.fsum(ms) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in ms) / (n - 1)) if n > 1 else 0.0
    return {
        "median": rounded(percentile(ms, 50)),
        "mean": rounded(mean),
        "p5": rounded(percentile(ms, 5)),
        "p95": rounded(percentile(ms, 95)),
        "std": rounded(std),
        "min": rounded(ms[0]),
        "max": rounded(ms[-1]),
    }


# ---------------------------------------------------------------- rates


def delivery_rate(arrivals_ns: Sequence[int], sizes: Sequence[int], skip: int = 0) -> dict:
    """The rate at which a bottleneck delivered a train, from the receiver's arrival times.

    A train sent above the link's rate keeps the bottleneck busy, so its packets leave
    it, and arrive, at the link's rate; the sender's bytes/duration would show only what
    was offered. The rate is the least-squares slope of the cumulative wire bits
    (payload + WIRE_OVERHEAD) against the arrival time, over the packets after the first
    `skip` (the head of the train meets an idle link and a token bucket's burst). A
    lost packet leaves a gap, so a lossy link shows rate x (1 - loss). Returns
    {"mbps", "packets", "seconds"}; mbps is None with fewer than 3 packets or no span.
    """
    times, bits = arrivals_ns[skip:], sizes[skip:]
    n = len(times)
    span = (times[-1] - times[0]) / 1e9 if n else 0.0
    if n < 3 or span <= 0:
        return {"mbps": None, "packets": n, "seconds": rounded(span, 6)}
    t0 = times[0]
    xs = [(t - t0) / 1e9 for t in times]
    ys, total = [], 0
    for size in bits:
        total += (size + WIRE_OVERHEAD) * 8
        ys.append(total)
    mean_x, mean_y = math.fsum(xs) / n, math.fsum(ys) / n
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    sxx = math.fsum((x - mean_x) ** 2 for x in xs)
    return {"mbps": rounded(sxy / sxx / 1e6), "packets": n, "seconds": rounded(span, 6)}


def steady_rate(times_ns: Sequence[int], totals: Sequence[int], from_fraction: float) -> dict:
    """Goodput after a ramp: the bytes received after `from_fraction` of the receive span,
    over the time they took. TCP spends its first round trips in slow start (or BBR's
    startup), so bytes/duration of a short transfer on a long path shows the ramp.
    `totals[i]` is the byte count after the read at `times_ns[i]`. Returns
    {"mbps", "from_s", "seconds"}; mbps is None without a span to measure."""
    if len(times_ns) < 2:
        return {"mbps": None, "from_s": None, "seconds": None}
    start = times_ns[0] + from_fraction * (times_ns[-1] - times_ns[0])
    k = next(i for i, t in enumerate(times_ns) if t >= start)
    seconds = (times_ns[-1] - times_ns[k]) / 1e9
    mbps = (totals[-1] - totals[k]) * 8 / seconds / 1e6 if seconds > 0 else None
    return {
        "mbps": rounded(mbps),
        "from_s": rounded((times_ns[k] - times_ns[0]) / 1e9, 6),
        "seconds": rounded(seconds, 6),
    }
