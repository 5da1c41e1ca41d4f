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

Outages: a bin with no opportunity has rate 0.0. HTB cannot be set to rate 0, so a
consumer driving HTB should substitute `OUTAGE_RATE_MBPS` (8 kbit/s: one full frame
every 1.5 s, which leaks about one frame per second of outage) or hold packets itself.
The emulator of this testbed replays the schedule with `TracePlayer`; see docs/traces.md.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from testbed.errors import ScenarioError

PACKET_BYTES = 1500  # one delivery opportunity (Mahimahi's MTU-sized packet)
PACKET_BITS = PACKET_BYTES * 8
MAX_LINES = 10_000_000  # ~80 Mbit/s for 10 minutes; larger files are surely a mistake
MAX_FILE_BYTES = 200_000_000  # refuse before reading it all (a line takes >= 2 bytes)
MAX_PERIOD_MS = 86_400_000  # one day: a longer period would make huge schedules
OUTAGE_RATE_MBPS = 0.008  # what a consumer that cannot set rate 0 (HTB) should use

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
        shorter when bin_ms does not divide the period. Below 12/bin_ms*1000 kbit/s
        (1.2 Mbit/s for 10 ms bins) a bin holds less than one packet, so bins alternate
        between 0 and a higher rate; the mean over longer windows is exact."""
        bin_ms = _positive_int(bin_ms, "bin_ms")
        cached = self._schedules.get(bin_ms)
        if cached is not None:
            return cached[0].copy(), cached[1].copy()
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
        return starts.copy(), rates.copy()

    def rate_at(self, t_ms: float, bin_ms: int = 10) -> float:
        """Rate (Mbit/s) of the steady-state bin containing t, looping."""
        starts, rates = self._schedules.get(bin_ms) or self.rate_schedule(bin_ms)
        phase = float(t_ms) % self.period_ms
        return float(rates[int(phase // bin_ms)])

    def bytes_between(self, t0_ms: float, t1_ms: float) -> int:
        """Bytes deliverable at opportunities in [t0, t1), exactly as Mahimahi loops the
        file from t = 0; for fidelity checks of an emulated link against the trace."""
        if not (0 <= t0_ms <= t1_ms) or not math.isfinite(t1_ms):
            raise ValueError(f"need 0 <= t0_ms <= t1_ms < inf, got {t0_ms}, {t1_ms}")
        return (self._count_before(t1_ms) - self._count_before(t0_ms)) * PACKET_BYTES

    def _count_before(self, t_ms: float) -> int:
        """Opportunities at absolute times o + k*T (k >= 0) strictly before t."""
        if t_ms <= 0:
            return 0
        loops, phase = divmod(float(t_ms), self.period_ms)
        loops = int(loops)
        n = len(self)
        # loops 0..loops-1 are complete; the current loop contributes its o < phase.
        # The lines at T of the previous loop land at loops*T, not before it when phase == 0
        # ... which the count of complete loops already includes only if phase > 0:
        before = loops * n + int(np.searchsorted(self.opportunities, phase, side="left"))
        if loops >= 1 and phase == 0:
            before -= int(np.count_nonzero(self.opportunities == self.period_ms))
        return before


def load_trace(path: str | os.PathLike) -> Trace:
    """Parse a Mahimahi trace; every error names the file and, where it has one, the line."""
    source = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ScenarioError(
                f"{source}: {size} bytes is too large for a trace (limit {MAX_FILE_BYTES})"
            )
        with open(path, encoding="ascii", errors="replace", newline=None) as file:
            text = file.read()
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such trace file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a trace file") from None
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_trace(text, source)


def parse_trace(text: str, source: str = "<trace>") -> Trace:
    """Parse trace text; `source` names it in errors. Well-formed files take numpy's
    fast path (10 million lines in about a second); anything else is walked line by line
    to name the first bad line."""
    if _ONLY_INTEGERS.fullmatch(text) and not _TOO_LONG.search(text):
        values = np.fromstring(text, dtype=np.int64, sep=" ")
        problem = _first_problem(values)
        if problem is None:
            return Trace(values, source)
        index, message = problem
        raise ScenarioError(f"{source}: line {_line_of_token(text, index)}: {message}")
    values_list: list[int] = []
    for number, line in enumerate(text.split("\n"), 1):
        token = line.strip()
        if not token:
            continue
        if not _INTEGER.fullmatch(token):
            raise ScenarioError(
                f"{source}: line {number}: {token[:40]!r} is not an integer millisecond timestamp"
            )
        values_list.append(min(int(token), MAX_PERIOD_MS + 1))
        problem = _first_problem(np.array(values_list[-2:], dtype=np.int64), final=False)
        if problem is not None or len(values_list) > MAX_LINES:
            message = problem[1] if problem else f"more than {MAX_LINES} timestamps"
            raise ScenarioError(f"{source}: line {number}: {message}")
    problem = _first_problem(np.array(values_list, dtype=np.int64))
    if problem is not None:  # empty, or the last is 0: the line is the last non-blank one
        raise ScenarioError(f"{source}: line {_line_of_token(text, problem[0])}: {problem[1]}")
    return Trace(values_list, source)


_ONLY_INTEGERS = re.compile(r"[0-9 \t\r\n]*")  # and no line with two numbers: see _TOO_LONG
_TOO_LONG = re.compile(r"[0-9]{10}|[0-9][ \t\r]+[0-9]")  # beyond int64 care, or two per line


def _first_problem(values: np.ndarray, final: bool = True) -> tuple[int, str] | None:
    """(index of the first bad timestamp, why), checking in file order."""
    if values.size == 0:
        return (-1, "empty trace (no timestamps)") if final else None
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
        return first, (
            f"timestamp {value} is less than the one before it ({int(values[first - 1])}); "
            "timestamps must not decrease"
        )
    if final and values[-1] == 0:
        return values.size - 1, "the last timestamp is 0; it is the loop's period and must be > 0"
    return None


def _line_of_token(text: str, index: int) -> int:
    """Line number of the index-th non-blank line (-1: the end of the text)."""
    lines = text.split("\n")
    if index < 0:
        return len(lines)
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
    """Turn piecewise-constant rates into Mahimahi timestamps 1..sum(durations).

    Packets are spread evenly by carrying the fractional packet from one millisecond
    to the next (integer arithmetic in millibits: exact and platform-independent). The
    carry starts at the value that makes the last packet complete at the very end, so
    the last timestamp, which Mahimahi takes as the period, is the schedule's length:
    the period holds ceil(total bits / 12000) packets, within one packet of the rate.
    Rates are rounded to whole bit/s. The last segment must have a positive rate.
    """
    durations = np.asarray(durations_ms)
    rates = np.asarray(rates_mbps, dtype=np.float64)
    if durations.shape != rates.shape or durations.ndim != 1 or durations.size == 0:
        raise ValueError("durations_ms and rates_mbps must be 1-d, non-empty, of equal length")
    if not np.all(durations == np.round(durations)) or np.any(durations <= 0):
        raise ValueError("durations_ms must be positive whole milliseconds")
    if not np.all(np.isfinite(rates)) or np.any(rates < 0):
        raise ValueError("rates_mbps must be finite and >= 0")
    if rates[-1] * 1e6 < 0.5:
        raise ValueError("the last segment needs a positive rate: its end is the period")
    durations = durations.astype(np.int64)
    millibits_per_ms = np.repeat(np.round(rates * 1e6).astype(np.int64), durations)
    per_packet = PACKET_BITS * 1000
    total = int(millibits_per_ms.sum())
    carry = -total % per_packet
    completed = (carry + np.cumsum(millibits_per_ms)) // per_packet  # by the end of each ms
    per_ms = np.diff(completed, prepend=0)
    return np.repeat(np.arange(1, millibits_per_ms.size + 1, dtype=np.int64), per_ms)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive whole number of ms, got {value!r}")
    return int(value)


class TracePlayer:
    """Calls `set_rate(rate_mbps)` at each bin boundary where the trace's rate changes.

    Each deadline is `start_time + (loop * period + bin start) / 1000`, computed from
    the start rather than accumulated, so slow callbacks or late wake-ups never drift
    the schedule. A player that wakes after later changes have already passed applies
    only the latest one (counted in `skipped`). Started late (start_time in the past),
    it applies the current bin's rate at once and continues on schedule.

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
        return self.start_time + (loop * self.period_ms + self.change_starts_ms[index]) / 1e3

    def run_until(self, stop_event) -> None:
        """Play until stop_event (anything with wait(timeout) and is_set()) is set."""
        starts = self.change_starts_ms
        n = starts.size
        elapsed_ms = (self.clock() - self.start_time) * 1e3
        if elapsed_ms <= 0:
            loop, index = 0, 0
        else:
            loop, phase = divmod(elapsed_ms, self.period_ms)
            loop, index = int(loop), int(np.searchsorted(starts, phase, side="right")) - 1
        applied: float | None = None
        while True:
            delay = self.deadline(loop, index) - self.clock()
            if delay > 0 and stop_event.wait(delay):
                return
            if stop_event.is_set():
                return
            now = self.clock()
            while True:  # skip changes whose successors are already due
                next_loop, next_index = (loop + 1, 0) if index + 1 == n else (loop, index + 1)
                if self.deadline(next_loop, next_index) > now:
                    break
                if self.change_rates_mbps[next_index] != self.change_rates_mbps[index]:
                    self.skipped += 1
                loop, index = next_loop, next_index
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
