"""The probes' datagrams and the statistics of their one-way delays: pure functions,
shared by the probe program (`probe.py`) and its tests, with no sockets."""

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
    "decode_probe",
    "delay_stats",
    "encode_probe",
    "percentile",
    "rounded",
]

MAGIC = b"DCPB"
VERSION = 1
KIND_PROBE = 1
KIND_END = 2
HEADER = struct.Struct("!4sBBHIIIIq")
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
MAX_COUNT = 1_000_000  # bounds the sink's per-probe memory (~8 MB of delays)


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
