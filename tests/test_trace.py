"""Mahimahi traces: parsing, looping, rate schedules, the shipped traces, the player."""

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.emulation.link import trace as trace_mod
from testbed.emulation.link.trace import (
    Trace,
    TracePlayer,
    load_trace,
    opportunities_from_rates,
    parse_trace,
    write_trace,
)
from testbed.errors import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "scenarios" / "traces"
SHIPPED = ["lte.up", "lte.down", "step.up", "step.down", "outage.up", "outage.down"]


def absolute_times(opportunities, loops: int) -> np.ndarray:
    """Brute force: every delivery instant of the first `loops` loops, as Mahimahi plays."""
    period = opportunities[-1]
    return np.concatenate([np.asarray(opportunities) + k * period for k in range(loops)])


# ------------------------------------------------------------------------- parsing


def test_parses_blank_lines_crlf_spaces_and_shared_timestamps(tmp_path):
    path = tmp_path / "t.up"
    path.write_bytes(b"\n0\r\n 3 \n3\n\n3\n10\n\n")
    trace = load_trace(path)
    assert trace.opportunities.tolist() == [0, 3, 3, 3, 10]
    assert trace.period_ms == 10
    assert len(trace) == 5
    assert not trace.opportunities.flags.writeable
    assert trace.source == str(path)


def test_slow_path_parses_what_the_fast_path_does():
    text = "".join(f"{v}\n" for v in [1, 1, 2, 5, 5, 9])
    fast = parse_trace(text)
    slow = parse_trace(text + "\n\x0c\n")  # a form feed forces the line-by-line path
    assert fast.opportunities.tolist() == slow.opportunities.tolist()


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        ("", None, "empty trace"),
        ("\n \n\n", None, "empty trace"),
        ("1\nabc\n3\n", 2, "'abc' is not an integer"),
        ("1\n2.5\n3\n", 2, "'2.5' is not an integer"),
        ("1\n2 3\n", 2, "'2 3' is not an integer"),
        ("1\n-3\n5\n", 2, "negative timestamp -3"),
        ("5\n3\n", 2, "less than the one before it (5)"),
        ("5\n\n\n3\n7\n", 4, "less than the one before it (5)"),
        ("5\n3\nx\n", 2, "must not decrease"),  # the first problem in file order
        ("0\n0\n", 2, "last timestamp is 0"),
        ("0\n\n0\n\n\n", 3, "last timestamp is 0"),
        ("0\n0\nfoo\n", 3, "not an integer"),
        ("1\n100000000\n", 2, "beyond the limit"),
        ("1\n99999999999999999999999\n", 2, "beyond the limit"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, content, line, fragment):
    path = tmp_path / "bad.up"
    path.write_text(content)
    with pytest.raises(ScenarioError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message
    if line is not None:
        assert f": line {line}: " in message
    else:
        assert ": line " not in message


@pytest.mark.parametrize("tail", ["", "\n\x0c"])  # fast path and line-by-line path
def test_too_many_lines(tmp_path, monkeypatch, tail):
    monkeypatch.setattr(trace_mod, "MAX_LINES", 5)
    path = tmp_path / "long.up"
    path.write_text("\n".join(str(v) for v in range(1, 8)) + tail)
    with pytest.raises(ScenarioError, match=rf"^{path}: line 6: more than 5 timestamps"):
        load_trace(path)


def test_file_size_bound_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_mod, "MAX_FILE_BYTES", 10)
    path = tmp_path / "big.up"
    path.write_text("1\n" * 20)
    with pytest.raises(ScenarioError, match="40 bytes is too large"):
        load_trace(path)
    with pytest.raises(ScenarioError, match="no such trace file"):
        load_trace(tmp_path / "missing.up")
    with pytest.raises(ScenarioError, match="is a directory"):
        load_trace(tmp_path)


def test_write_then_load_round_trips(tmp_path):
    write_trace(tmp_path / "t", [0, 2, 2, 7])
    assert (tmp_path / "t").read_text() == "0\n2\n2\n7\n"
    assert load_trace(tmp_path / "t").opportunities.tolist() == [0, 2, 2, 7]


# ------------------------------------------------------------ looping and rates


def test_constant_12_mbps_trace():
    trace = Trace(np.arange(1, 1001))  # one packet every ms
    assert trace.period_ms == 1000
    assert trace.mean_rate_mbps() == pytest.approx(12.0)
    starts, rates = trace.rate_schedule(10)
    assert starts.tolist() == list(range(0, 1000, 10))
    assert np.all(rates == 12.0)
    assert trace.rate_at(123.4) == 12.0
    assert trace.bytes_between(500, 1500) == 1000 * 1500
    assert trace.bytes_between(1000, 2000) == 1000 * 1500
    # Mahimahi's first loop has nothing at t = 0 (no earlier loop put its 1000 there)
    assert trace.bytes_between(0, 1000) == 999 * 1500


def test_a_file_ending_in_1000_repeats_every_1000_ms():
    trace = parse_trace("1000\n")
    assert trace.mean_rate_mbps() == pytest.approx(0.012)
    assert trace.bytes_between(0, 1000) == 0
    assert trace.bytes_between(0, 1001) == 1500
    for k in range(1, 5):
        assert trace.bytes_between(k * 1000, k * 1000 + 1) == 1500
        assert trace.bytes_between(k * 1000 + 1, (k + 1) * 1000) == 0


def test_bytes_between_across_the_loop_boundary():
    trace = Trace([0, 0, 3, 10])  # instants 0,0,3,10 | 10,10,13,20 | 20,20,23,30 ...
    assert trace.bytes_between(8, 13) == 3 * 1500  # T of loop 0 and 0,0 of loop 1
    assert trace.bytes_between(8, 14) == 4 * 1500
    assert trace.bytes_between(10, 10) == 0
    assert trace.bytes_between(9.5, 10.5) == 3 * 1500
    assert trace.bytes_between(0, 1) == 2 * 1500
    with pytest.raises(ValueError):
        trace.bytes_between(5, 4)
    with pytest.raises(ValueError):
        trace.bytes_between(-1, 4)


def test_bytes_between_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(30):
        opportunities = np.sort(rng.integers(0, 50, size=rng.integers(1, 40)))
        opportunities[-1] = max(opportunities[-1], 1)
        trace = Trace(opportunities)
        instants = absolute_times(opportunities, 12)
        for _ in range(20):
            t0, t1 = np.sort(rng.uniform(0, 8 * trace.period_ms, size=2))
            t0, t1 = (round(t0), round(t1)) if rng.random() < 0.5 else (t0, t1)
            expected = np.count_nonzero((instants >= t0) & (instants < t1))
            assert trace.bytes_between(t0, t1) == expected * 1500, (opportunities, t0, t1)


def test_rate_schedule_is_the_steady_state_and_the_last_bin_may_be_short():
    trace = Trace([0, 2, 2, 14, 21, 25])  # period 25: bins [0,10) [10,20) [20,25)
    starts, rates = trace.rate_schedule(10)
    assert starts.tolist() == [0, 10, 20]
    # bin 0: 0, 2, 2 and the 25 of the previous loop; bin 2 lasts 5 ms
    assert rates.tolist() == pytest.approx([4 * 12000 / 10e3, 12000 / 10e3, 12000 / 5e3])
    for loop in (1, 2, 5):
        for start, rate in zip(starts, rates, strict=True):
            end = min(start + 10, 25)
            got = (
                trace.bytes_between(loop * 25 + start, loop * 25 + end) * 8 / ((end - start) * 1e3)
            )
            assert got == pytest.approx(rate)
    assert trace.rate_at(22) == trace.rate_at(22 + 3 * 25) == rates[2]
    assert trace.rate_at(-3) == rates[2]
    assert trace.mean_rate_mbps() == pytest.approx(6 * 12000 / 25e3)
    with pytest.raises(ValueError):
        trace.rate_schedule(0)
    with pytest.raises(ValueError):
        trace.rate_schedule(2.5)


def test_outage_is_zero_rate():
    trace = Trace(opportunities_from_rates([50, 30, 20], [12, 0, 12]))
    _, rates = trace.rate_schedule(10)
    assert rates.tolist() == [12.0] * 5 + [0.0] * 3 + [12.0] * 2
    assert trace.bytes_between(150, 180) == 0


def test_schedule_is_not_writable_through_a_copy():
    trace = Trace([1, 5, 10])
    _, rates = trace.rate_schedule(5)
    rates[:] = -1
    assert np.all(trace.rate_schedule(5)[1] >= 0)


def test_trace_constructor_checks():
    for bad in ([], [3, 2], [-1, 4], [0, 0]):
        with pytest.raises(ValueError):
            Trace(bad)


# ------------------------------------------------------------ rates -> opportunities


def test_opportunities_from_rates_constant_12():
    assert opportunities_from_rates([1000], [12.0]).tolist() == list(range(1, 1001))


def test_opportunities_from_rates_keep_segments_and_the_long_run_rate():
    rng = np.random.default_rng(3)
    for _ in range(20):
        durations = rng.integers(1, 400, size=rng.integers(1, 8))
        rates = np.round(rng.uniform(0, 30, size=durations.size), 3)
        rates[0] = max(rates[0], 0.1)
        opportunities = opportunities_from_rates(durations, rates)
        trace = Trace(opportunities)
        period = int(durations.sum())
        assert trace.period_ms == period
        packets = (durations * rates * 1e3 / 12000).sum()
        assert abs(len(trace) - packets) <= 1
        edges = np.concatenate([[0], np.cumsum(durations)])
        phases = opportunities % period
        for a, b, rate in zip(edges[:-1], edges[1:], rates, strict=True):
            inside = np.count_nonzero((phases >= a) & (phases < b))
            assert abs(inside - (b - a) * rate * 1e3 / 12000) <= 1.0 + 1e-9


def test_opportunities_from_rates_rejects():
    with pytest.raises(ValueError, match="first segment"):
        opportunities_from_rates([10, 10], [0.0, 5.0])
    with pytest.raises(ValueError):
        opportunities_from_rates([10, 0], [1.0, 5.0])
    with pytest.raises(ValueError):
        opportunities_from_rates([10], [-1.0])
    with pytest.raises(ValueError):
        opportunities_from_rates([10, 5], [1.0])


# ---------------------------------------------------------------- shipped traces


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_traces_load_and_are_small(name):
    trace = load_trace(TRACES / name)
    assert (TRACES / name).stat().st_size < 500_000
    assert 0.5 < trace.mean_rate_mbps() < 20


def test_step_trace():
    up, down = load_trace(TRACES / "step.up"), load_trace(TRACES / "step.down")
    assert up.period_ms == down.period_ms == 20_000
    t = 20_000  # a steady-state loop
    assert up.bytes_between(t, t + 10_000) * 8 / 10e6 == pytest.approx(10.0, abs=0.01)
    assert up.bytes_between(t + 10_000, t + 20_000) * 8 / 10e6 == pytest.approx(0.5, abs=0.01)
    _, per_second = up.rate_schedule(1000)
    assert per_second[:10] == pytest.approx([10.0] * 10, abs=0.02)
    assert per_second[10:] == pytest.approx([0.5] * 10, abs=0.02)
    assert down.rate_schedule(1000)[1] == pytest.approx([10.0] * 20, abs=0.02)


@pytest.mark.parametrize("name, rate", [("outage.up", 2.0), ("outage.down", 5.0)])
def test_outage_trace(name, rate):
    trace = load_trace(TRACES / name)
    assert trace.period_ms == 10_000
    starts, rates = trace.rate_schedule(10)
    outage = (starts >= 8000) & (starts < 10_000)
    assert np.all(rates[outage] == 0.0)
    assert np.all(rates[~outage] > 0.0)
    assert trace.bytes_between(8000 + 10_000, 20_000) == 0
    assert trace.bytes_between(10_000, 18_000) * 8 / 8e6 == pytest.approx(rate, abs=0.01)


def test_lte_traces_fluctuate_within_bounds():
    up, down = load_trace(TRACES / "lte.up"), load_trace(TRACES / "lte.down")
    assert up.period_ms == down.period_ms == 60_000
    assert up.mean_rate_mbps() < down.mean_rate_mbps()
    for trace, high in ((up, 10), (down, 20)):
        _, per_100ms = trace.rate_schedule(100)
        assert per_100ms.min() >= 0.35  # 0.5 Mbit/s, give or take a packet per 100 ms
        assert per_100ms.max() <= high + 0.2
        assert per_100ms.max() > 3 * np.percentile(per_100ms, 10)  # it does fluctuate


def test_generator_is_deterministic_and_matches_the_shipped_files(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_traces.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SHIPPED)
    for name in SHIPPED:
        assert (tmp_path / name).read_bytes() == (TRACES / name).read_bytes(), name


# ------------------------------------------------------------------ TracePlayer


class FakeTime:
    """A clock and an event whose waits overshoot by `late` seconds, like a real sleep."""

    def __init__(self, until: float, late: float = 0.0007) -> None:
        self.now, self.until, self.late = 100.0, until, late

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.now += timeout + self.late
        return self.now >= self.until

    def is_set(self) -> bool:
        return self.now >= self.until


def steps_trace() -> Trace:
    # four 30 ms steps a loop of 120 ms: 12, 24, 6 and 36 Mbit/s
    return Trace(opportunities_from_rates([30, 30, 30, 30], [12, 24, 6, 36]))


def test_player_keeps_to_the_schedule_without_drift():
    clock = FakeTime(until=100.0 + 12.0)  # 100 loops
    calls = []

    def set_rate(rate):
        calls.append((clock.now, rate))
        clock.now += 0.004  # a slow `tc` command

    player = TracePlayer(steps_trace(), set_rate, start_time=100.0, clock=clock)
    player.run_until(clock)
    assert len(calls) == 400
    assert [rate for _, rate in calls[:5]] == [12.0, 24.0, 6.0, 36.0, 12.0]
    for i, (at, _) in enumerate(calls):
        deadline = 100.0 + i * 0.030
        assert at - deadline == pytest.approx(0.0007 if i else 0.0, abs=1e-9)  # no drift
    assert player.calls == 400 and player.skipped == 0


def test_player_never_applies_a_change_early():
    class EarlyTime(FakeTime):
        def wait(self, timeout):  # wakes 0.2 ms early whenever it can
            self.now += timeout - 0.0002 if timeout > 0.001 else timeout
            return self.now >= self.until

    clock = EarlyTime(until=100.0 + 1.2)
    calls = []
    player = TracePlayer(steps_trace(), lambda r: calls.append((clock.now, r)), 100.0, clock=clock)
    player.run_until(clock)
    assert len(calls) == 40
    for i, (at, rate) in enumerate(calls):
        assert at >= 100.0 + i * 0.030
        assert rate == [12.0, 24.0, 6.0, 36.0][i % 4]


def test_player_skips_changes_it_woke_too_late_for():
    clock = FakeTime(until=100.0 + 0.2)
    calls = []

    def set_rate(rate):
        calls.append((round(clock.now - 100.0, 4), rate))
        if len(calls) == 1:
            clock.now += 0.065  # stalled past the next change and into the one after

    player = TracePlayer(steps_trace(), set_rate, start_time=100.0, clock=clock)
    player.run_until(clock)
    assert calls[:3] == [(0.0, 12.0), (0.065, 6.0), (0.0907, 36.0)]
    assert player.skipped == 1


def test_player_started_late_applies_the_current_rate_at_once():
    clock = FakeTime(until=100.0 + 0.1)
    calls = []
    start = 100.0 - 2 * 0.120 - 0.040  # 2 loops and 40 ms ago: inside the 24 Mbit/s step
    player = TracePlayer(
        steps_trace(), lambda r: calls.append((clock.now, r)), start_time=start, clock=clock
    )
    player.run_until(clock)
    assert calls[0] == (100.0, 24.0)
    assert calls[1][1] == 6.0
    assert calls[1][0] == pytest.approx(start + 2 * 0.120 + 0.060 + 0.0007)


def test_player_only_calls_on_changes():
    trace = Trace(np.arange(1, 1001))  # constant: one call in the first second
    clock = FakeTime(until=100.0 + 3.5)
    calls = []
    TracePlayer(trace, calls.append, start_time=100.0, clock=clock).run_until(clock)
    assert calls == [12.0]


def test_player_in_real_time():
    trace = steps_trace()
    calls = []
    start = time.monotonic() + 0.02
    player = TracePlayer(trace, lambda r: calls.append((time.monotonic(), r)), start_time=start)
    with player:
        time.sleep(0.62)
    assert len(calls) >= 15
    errors = []
    for at, rate in calls:
        loop, index = player.position(at)
        assert rate == player.change_rates_mbps[index]
        errors.append(at - player.deadline(loop, index))
    assert min(errors) >= 0
    assert statistics.median(errors) < 0.002, errors
    assert player.max_late_ms == pytest.approx(max(errors) * 1e3, abs=0.5)


def test_player_stops_promptly_and_reraises_callback_errors():
    player = TracePlayer(Trace(np.arange(1, 10_001)), lambda r: None).start()  # constant, 10 s
    time.sleep(0.05)
    began = time.monotonic()
    player.stop()
    assert time.monotonic() - began < 0.5

    failed = threading.Event()

    def set_rate(rate):
        failed.set()
        raise RuntimeError("tc failed")

    player = TracePlayer(Trace([1, 10]), set_rate).start()
    assert failed.wait(2)
    with pytest.raises(RuntimeError, match="tc failed"):
        player.stop()


# ------------------------------------------------------------ gzip and real traces

CELLULAR = TRACES / "cellular"


def test_gzip_traces_load_like_plain_ones_and_errors_name_the_file(tmp_path):
    import gzip

    text = b"\n0\r\n 3 \n3\n\n3\n10\n"
    path = tmp_path / "t.up.gz"
    path.write_bytes(gzip.compress(text))
    assert load_trace(path).opportunities.tolist() == [0, 3, 3, 3, 10]
    path.write_bytes(gzip.compress(b"1\n5\n3\n"))
    with pytest.raises(ScenarioError, match=rf"^{path}: line 3: .*less than"):
        load_trace(path)
    for damaged in (b"not gzip at all", gzip.compress(b"1\n2\n" * 100)[:-12]):
        path.write_bytes(damaged)
        with pytest.raises(ScenarioError, match=rf"^{path}: not a readable gzip file"):
            load_trace(path)
    plain = tmp_path / "plain.up"  # the name decides: a plain file is read as text
    plain.write_bytes(text)
    assert len(load_trace(plain)) == 5


def test_a_gzip_bomb_is_refused_while_streaming(tmp_path, monkeypatch):
    """The limit applies to the decompressed text, and reading stops at it: 256 MB of
    text in a small file is refused after about MAX_FILE_BYTES, never held whole."""
    import gzip

    path = tmp_path / "bomb.up.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        block = b"1\n" * (1 << 19)  # 1 MB
        for _ in range(256):
            out.write(block)
    assert path.stat().st_size < 2_000_000
    monkeypatch.setattr(trace_mod, "MAX_FILE_BYTES", 20_000_000)
    read = []

    class Counting(gzip.GzipFile):
        def read(self, size=-1):
            assert size > 0  # never "all of it"
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(trace_mod.gzip, "GzipFile", Counting)
    with pytest.raises(ScenarioError, match="decompresses to more than 20000000 bytes"):
        load_trace(path)
    assert 20_000_000 < sum(read) <= 20_000_000 + (1 << 20)


def cellular_table() -> dict[str, tuple[str, str, str]]:
    """The README's rows: trace -> (uplink mean, downlink mean, durations)."""
    rows = {}
    for line in (CELLULAR / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    return rows


def test_cellular_traces_are_committed_compressed_with_their_figures():
    table = cellular_table()
    assert sorted(table) == [
        "ATT-LTE-driving-2016",
        "TMobile-LTE-short",
        "Verizon-EVDO-driving",
        "Verizon-LTE-short",
    ]
    assert (CELLULAR / "SOURCE-README.txt").read_text().count("Winstein") == 1
    for name, (up_text, down_text, durations) in table.items():
        up = load_trace(CELLULAR / f"{name}.up.gz")
        down = load_trace(CELLULAR / f"{name}.down.gz")
        assert up_text == f"{up.mean_rate_mbps():.3f} Mbit/s"
        assert down_text == f"{down.mean_rate_mbps():.3f} Mbit/s"
        assert durations == f"{up.period_ms / 1000:.1f} s / {down.period_ms / 1000:.1f} s"
    total = sum(p.stat().st_size for p in CELLULAR.glob("*.gz"))
    assert total < 1_000_000  # 4 MB of text


def test_cellular_import_is_deterministic(tmp_path):
    """The importer on a small source folder: a .gz per trace, byte-identical when run
    again, the source note copied, and a bad trace refused with its line."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "x.up").write_text("1\n1\n5\n")
    (source / "x.down").write_text("2\n4\n")
    (source / "SOURCE-README.txt").write_text("from Winstein et al.\n")
    script = [sys.executable, str(ROOT / "scripts" / "import_cellular_traces.py"), str(source)]
    made = []
    for out in (tmp_path / "a", tmp_path / "b"):
        proc = subprocess.run([*script, "--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "| `x` | 7.200 Mbit/s | 6.000 Mbit/s | 0.0 s / 0.0 s |" in proc.stdout
        made.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert made[0] == made[1]
    assert sorted(made[0]) == ["SOURCE-README.txt", "x.down.gz", "x.up.gz"]
    assert load_trace(tmp_path / "a" / "x.up.gz").opportunities.tolist() == [1, 1, 5]
    (source / "x.up").write_text("5\n1\n")
    proc = subprocess.run([*script, "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 2 and "x.up: line 2:" in proc.stderr
    assert "Traceback" not in proc.stderr
