"""Mahimahi packet-delivery traces: parse, query, and replay them as a rate schedule.

Format (Mahimahi's `mm-link`): one line per delivery opportunity of one 1500-byte
packet, each an integer millisecond timestamp; timestamps never decrease and several
lines may share one (several packets in that millisecond). Blank lines are ignored.

Looping, as Mahimahi does it: the period is the last timestamp T (> 0). Opportunity
`o` of the file recurs at `o + k*T` for k = 0, 1, 2, ... So a file whose last line is
1000 repeats every 1000 ms, and the lines 1..1000 give one packet every millisecond
forever (12 Mbit/s). A line equal to T and a line 0 of the next loop fall on the same
instant. `bytes_between` counts exactly this (nothing before t = 0). `rate_schedule`
describes a steady-state period, folding each timestamp into [0, T) (T falls on 0);
it differs from the very first loop only in its first bin, which in Mahimahi lacks
the packets the file places at T (no earlier loop put them there).

Outages: a bin with no opportunity has rate 0.0, and so, at rates under 12/bin_ms
Mbit/s, are some bins between sparse packets. HTB cannot be set to rate 0, so a
consumer driving HTB substitutes a tiny rate (`testbed.emulation.link.htb.rate_bits` clamps to
8 kbit/s: one full frame per 1.5 s, so about one frame leaks per 1.5 s of outage) or
holds packets itself; whatever serializes at the current rate must not divide by 0.
The emulator of this testbed replays the schedule with `TracePlayer`; see docs/traces.md.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from testbed.errors import ScenarioError, reading

PACKET_BYTES = 1500  # one delivery opportunity (Mahimahi's MTU-sized packet)
PACKET_BITS = PACKET_BYTES * 8
MAX_LINES = 10_000_000  # ~80 Mbit/s for 10 minutes; larger files are surely a mistake
MAX_FILE_BYTES = 100_000_000  # refuse before reading it all: 10 bytes a line is plenty
MAX_PERIOD_MS = 86_400_000  # one day: a longer period would make huge schedules

_INTEGER = re.compile(r"-?[0-9]+")


class Trace:
    """A looping Mahimahi trace. `opportunities` is read-only (int64 ms, sorted)."""

    __slots__ = ("_schedules", "opportunities", "period_ms", "source")

    def __init__(self, opportunities_ms, source: str = "<trace>") -> None:
        opportunities = np.array(opportunities_ms, dtype=np.int64).reshape(-1)
        if opportunities.size == 0:
            raise ValueError(f"{source}: a trace needs at least one opportunity")
        if opportunities[0] < 0 or np.any(np.diff(opportunities) < 0):
            raise ValueError(f"{source}: timestamps must be >= 0 and non-decreasing")
        if opportunities[-1] <= 0 or opportunities[-1] > MAX_PERIOD_MS:
            raise ValueError(
                f"{source}: the last timestamp (the period) must be 1..{MAX_PERIOD_MS}"
            )
        opportunities.setflags(write=False)
        self.opportunities = opportunities
        self.period_ms = int(opportunities[-1])
        self.source = source
        self._schedules: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.opportunities.size)

    def __repr__(self) -> str:
        return (
            f"Trace({self.source!r}, {len(self)} opportunities, period {self.period_ms} ms, "
            f"{self.mean_rate_mbps():.3f} Mbit/s)"
        )

    def mean_rate_mbps(self) -> float:
        return len(self) * PACKET_BITS / (self.period_ms * 1e3)

    def rate_schedule(self, bin_ms: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Rate over consecutive bins of one steady-state period, for a shaper that can
        only follow a rate (HTB): `starts_ms[i]` is where bin i begins; the last bin is
        shorter when bin_ms does not divide the period. Below 12/bin_ms Mbit/s
        (1.2 Mbit/s for 10 ms bins) a bin holds less than one packet, so bins alternate
        between 0 and a higher rate; the mean over longer windows is exact."""
        starts, rates = self._schedule(bin_ms)
        return starts.copy(), rates.copy()

    def _schedule(self, bin_ms: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._schedules.get(bin_ms)
        if cached is not None:
            return cached
        bin_ms = _positive_int(bin_ms, "bin_ms")
        period = self.period_ms
        phases = self.opportunities % period  # the line at T falls on the next loop's 0
        n_bins = -(-period // bin_ms)
        counts = np.bincount(phases // bin_ms, minlength=n_bins)
        starts = np.arange(n_bins, dtype=np.int64) * bin_ms
        durations = np.minimum(starts + bin_ms, period) - starts
        rates = counts * PACKET_BITS / (durations * 1e3)
        starts.setflags(write=False)
        rates.setflags(write=False)
        self._schedules[bin_ms] = (starts, rates)
        return starts, rates

    def rate_at(self, t_ms: float, bin_ms: int = 10) -> float:
        """Rate (Mbit/s) of the steady-state bin containing t, looping."""
        _, rates = self._schedule(bin_ms)
        phase = float(t_ms) % self.period_ms
        return float(rates[min(int(phase // bin_ms), rates.size - 1)])  # float % can give T

    def bytes_between(self, t0_ms: float, t1_ms: float) -> int:
        """Bytes deliverable at opportunities in [t0, t1), exactly as Mahimahi loops the
        file from t = 0; for fidelity checks of an emulated link against the trace."""
        if not (0 <= t0_ms <= t1_ms) or not math.isfinite(t1_ms):
            raise ValueError(f"need 0 <= t0_ms <= t1_ms < inf, got {t0_ms}, {t1_ms}")
        return (self.count_before(t1_ms) - self.count_before(t0_ms)) * PACKET_BYTES

    def count_before(self, t_ms: float) -> int:
        """Opportunities at absolute times o + k*T (k >= 0) strictly before t."""
        if t_ms <= 0:
            return 0
        loops, phase = divmod(float(t_ms), self.period_ms)
        loops = int(loops)
        # Loops before `loops` are complete by t, except that the lines at T of the
        # previous loop land exactly at t when phase == 0 (not strictly before it).
        before = loops * len(self) + int(np.searchsorted(self.opportunities, phase, side="left"))
        if loops >= 1 and phase == 0:
            before -= int(np.count_nonzero(self.opportunities == self.period_ms))
        return before


def load_trace(path: str | os.PathLike) -> Trace:
    """Parse a Mahimahi trace; every error names the file and, where it has one, the line.
    A name ending in `.gz` is read through gzip, streamed: the size limit applies to the
    decompressed text and reading stops past it, so a small bomb never fills memory."""
    source = str(path)
    with reading(source, "trace file"), open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError(
                f"{source}: {size} bytes is too large for a trace (limit {MAX_FILE_BYTES})"
            )
        data = _gunzip(file, source) if source.endswith(".gz") else file.read()
    text = data.decode("ascii", errors="replace").replace("\r\n", "\n")
    return parse_trace(text, source)


def _gunzip(file, source: str) -> bytes:
    """The decompressed bytes of a gzip file, read in 1 MB pieces and refused as soon as
    they pass MAX_FILE_BYTES; a damaged file is a ScenarioError."""
    chunks, total = [], 0
    try:
        with gzip.GzipFile(fileobj=file, mode="rb") as unzipped:
            while chunk := unzipped.read(1 << 20):
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise ScenarioError(
                        f"{source}: decompresses to more than {MAX_FILE_BYTES} bytes, too "
                        f"large for a trace (limit {MAX_FILE_BYTES})"
                    )
                chunks.append(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ScenarioError(f"{source}: not a readable gzip file ({exc})") from None
    return b"".join(chunks)


def parse_trace(text: str, source: str = "<trace>") -> Trace:
    """Parse trace text; `source` names it in errors. Well-formed files take numpy's
    fast path (10 million lines in about a second); anything else is walked line by line
    to name the first bad line."""
    if not text.strip():
        raise ScenarioError(f"{source}: empty trace (no timestamps)")
    if _ONLY_INTEGERS.fullmatch(text) and not _TOO_LONG.search(text):
        parsed = np.fromstring(text, dtype=np.int64, sep=" ")
        problem = _first_problem(parsed)
        if problem is None:
            return Trace(parsed, source)
        index, message = problem
        raise ScenarioError(f"{source}: line {_line_of_token(text, index)}: {message}")
    values: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        token = line.strip()
        if not token:
            continue
        if not _INTEGER.fullmatch(token):
            why = f"{token[:40]!r} is not an integer millisecond timestamp"
        elif int(token) < 0:
            why = f"negative timestamp {token[:40]}"
        elif int(token) > MAX_PERIOD_MS:
            why = f"timestamp beyond the limit of {MAX_PERIOD_MS} ms (one day)"
        elif values and int(token) < values[-1]:
            why = f"timestamp {token} is less than the one before it ({values[-1]}); {_ORDER}"
        elif len(values) == MAX_LINES:
            why = f"more than {MAX_LINES} timestamps"
        else:
            values.append(int(token))
            continue
        raise ScenarioError(f"{source}: line {number}: {why}")
    if values[-1] == 0:
        raise ScenarioError(f"{source}: line {_line_of_token(text, -1)}: {_ZERO}")
    return Trace(values, source)


_ORDER = "timestamps must not decrease"
_ZERO = "the last timestamp is 0; it is the loop's period and must be > 0"
_ONLY_INTEGERS = re.compile(r"[0-9 \t\r\n]*")  # and no line with two numbers: see _TOO_LONG
_TOO_LONG = re.compile(r"[0-9]{10}|[0-9][ \t\r]+[0-9]")  # beyond int64 care, or two per line


def _first_problem(values: np.ndarray) -> tuple[int, str] | None:
    """(index of the first bad timestamp, why), in file order; -1: the last line."""
    if values.size > MAX_LINES:
        return MAX_LINES, f"more than {MAX_LINES} timestamps"
    bad = np.flatnonzero((values < 0) | (values > MAX_PERIOD_MS))
    decreasing = np.flatnonzero(np.diff(values) < 0) + 1
    first = min([*bad[:1].tolist(), *decreasing[:1].tolist()], default=None)
    if first is not None:
        value = int(values[first])
        if value < 0:
            return first, f"negative timestamp {value}"
        if value > MAX_PERIOD_MS:
            return first, f"timestamp beyond the limit of {MAX_PERIOD_MS} ms (one day)"
        return (
            first,
            f"timestamp {value} is less than the one before it ({int(values[first - 1])}); {_ORDER}",
        )
    if values[-1] == 0:
        return -1, _ZERO
    return None


def _line_of_token(text: str, index: int) -> int:
    """Line number of the index-th non-blank line (-1: the last one)."""
    lines = text.split("\n")
    if index < 0:
        return max(n for n, line in enumerate(lines, 1) if line.strip())
    seen = -1
    for number, line in enumerate(lines, 1):
        if line.strip():
            seen += 1
            if seen == index:
                return number
    return len(lines)


def write_trace(path: str | os.PathLike, opportunities_ms) -> None:
    values = np.asarray(opportunities_ms, dtype=np.int64)
    Path(path).write_text("".join(f"{v}\n" for v in values.tolist()), encoding="ascii")


def opportunities_from_rates(durations_ms, rates_mbps) -> np.ndarray:
    """Turn piecewise-constant rates into Mahimahi timestamps, period sum(durations).

    A packet completed during millisecond i (the interval [i, i+1)) gets timestamp i,
    so a segment [a, b) of the schedule owns exactly the timestamps a..b-1 and bins of
    `rate_schedule` line up with segments. Packets are spread evenly by carrying the
    fractional packet from one millisecond to the next, in integer millibits (exact,
    platform-independent); the carry starts so that a packet completes in millisecond
    0, and those are written as T = sum(durations) instead: the same instant of the
    loop (T is the next loop's 0) and it makes the last timestamp, which Mahimahi takes
    as the period, T. The period holds floor((carry + bits) / 12000) packets: the mean
    rate is exact within one packet per period. Rates are rounded to whole bit/s; the
    first segment must have a positive rate.
    """
    durations = np.asarray(durations_ms)
    rates = np.asarray(rates_mbps, dtype=np.float64)
    if durations.shape != rates.shape or durations.ndim != 1 or durations.size == 0:
        raise ValueError("durations_ms and rates_mbps must be 1-d, non-empty, of equal length")
    if not np.all(durations == np.round(durations)) or np.any(durations <= 0):
        raise ValueError("durations_ms must be positive whole milliseconds")
    if not np.all(np.isfinite(rates)) or np.any(rates < 0):
        raise ValueError("rates_mbps must be finite and >= 0")
    millibits_per_ms = np.repeat(np.round(rates * 1e6).astype(np.int64), durations.astype(np.int64))
    if millibits_per_ms[0] == 0:
        raise ValueError("the first segment needs a rate >= 1 bit/s (its start is the loop's)")
    per_packet = PACKET_BITS * 1000
    carry = -int(millibits_per_ms[0]) % per_packet  # a packet completes in millisecond 0
    completed = (carry + np.cumsum(millibits_per_ms)) // per_packet  # by the end of each ms
    per_ms = np.diff(completed, prepend=0)
    period = millibits_per_ms.size
    at_zero, per_ms[0] = int(per_ms[0]), 0
    timestamps = np.repeat(np.arange(period, dtype=np.int64), per_ms)
    return np.concatenate([timestamps, np.full(at_zero, period, dtype=np.int64)])


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive whole number of ms, got {value!r}")
    return int(value)


class TracePlayer:
    """Calls `set_rate(rate_mbps)` at each bin boundary where the trace's rate changes.

    Each deadline is `start_time + (loop * period + bin start) / 1000`, computed from
    the start rather than accumulated, so slow callbacks or late wake-ups never drift
    the schedule. A player that wakes after later changes have already passed applies
    only the latest one (`skipped` counts the deadlines passed over); started late
    (start_time in the past), it applies the current bin's rate at once. `calls` and
    `max_late_ms` let a run report how closely the rate followed the trace.

    `start()`/`stop()` run it in a daemon thread; `run_until(event)` runs it in the
    caller's thread. An exception from `set_rate` ends playback and is re-raised by
    `stop()`, so a failed `tc` command cannot silently freeze the rate.
    """

    def __init__(
        self,
        trace: Trace,
        set_rate: Callable[[float], object],
        start_time: float | None = None,
        *,
        bin_ms: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        starts, rates = trace.rate_schedule(bin_ms)
        keep = np.ones(rates.size, dtype=bool)
        keep[1:] = rates[1:] != rates[:-1]
        self.change_starts_ms = starts[keep]  # always begins with bin 0
        self.change_rates_mbps = rates[keep]
        self.period_ms = trace.period_ms
        self.set_rate = set_rate
        self.clock = clock
        self.start_time = clock() if start_time is None else float(start_time)
        self.calls = 0
        self.skipped = 0
        self.max_late_ms = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deadline(self, loop: int, index: int) -> float:
        """Clock time of change `index` in loop `loop` (from the start: no drift)."""
        return self.start_time + (loop * self.period_ms + self.change_starts_ms[index]) / 1e3

    def position(self, now: float) -> tuple[int, int]:
        """(loop, change index) in force at clock time `now`; (0, 0) before the start."""
        elapsed_ms = (now - self.start_time) * 1e3
        if elapsed_ms <= 0:
            return 0, 0
        loop, phase = divmod(elapsed_ms, self.period_ms)
        index = int(np.searchsorted(self.change_starts_ms, phase, side="right")) - 1
        return int(loop), max(index, 0)

    def run_until(self, stop_event) -> None:
        """Play until stop_event (anything with wait(timeout) and is_set()) is set."""
        n = self.change_starts_ms.size
        loop, index = self.position(self.clock())
        applied: float | None = None
        while True:
            delay = self.deadline(loop, index) - self.clock()
            if delay > 0:
                if stop_event.wait(delay):
                    return
                continue  # a wait can end a hair early: never apply a change before its time
            if stop_event.is_set():
                return
            now = self.clock()
            later = max((loop, index), self.position(now))  # woke after later changes?
            self.skipped += (later[0] - loop) * n + later[1] - index
            loop, index = later
            rate = float(self.change_rates_mbps[index])
            if rate != applied:
                self.max_late_ms = max(self.max_late_ms, (now - self.deadline(loop, index)) * 1e3)
                self.set_rate(rate)
                self.calls += 1
                applied = rate
            loop, index = (loop + 1, 0) if index + 1 == n else (loop, index + 1)

    def start(self) -> TracePlayer:
        if self._thread is not None:
            raise RuntimeError("TracePlayer already started")
        self._thread = threading.Thread(target=self._run, name="trace-player", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.run_until(self._stop)
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("TracePlayer did not stop")
        if self.error is not None:
            raise self.error

    def __enter__(self) -> TracePlayer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
