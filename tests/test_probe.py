"""Link-fidelity probes and their judge.

The probes run as real processes on loopback (no Mininet, no root), as the
topology code runs them inside hosts; `fidelity` is tested on constructed numbers.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

from testbed.fidelity import judge as fidelity
from testbed.fidelity import probe, probe_packets
from testbed.fidelity.judge import (
    betainc,
    clopper_pearson,
    compare,
    loss_acceptance,
    measured_from_probes,
    summary_line,
)
from tests.helpers import LOCAL, ROOT

# ---------------------------------------------------------------- helpers


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.fidelity.probe", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_sink(*args: str) -> tuple[subprocess.Popen, int]:
    """Starts a server mode on a free port and waits for its READY line."""
    proc = start(*args, "--port", "0", "--bind", LOCAL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=10):
        proc.kill()
        pytest.fail(f"{args[0]} printed no READY line")
    line = proc.stdout.readline().split()
    assert line[0] == "READY", line
    return proc, int(line[1])


def finish(proc: subprocess.Popen, timeout: float = 15) -> tuple[int, dict]:
    """Waits for the process; returns its status and the JSON of its last line."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("probe process did not end by itself")
    lines = out.strip().splitlines()
    assert lines, f"no output; stderr: {err}"
    return proc.returncode, json.loads(lines[-1])


def run(*args: str, timeout: float = 15) -> tuple[int, dict]:
    return finish(start(*args), timeout)


def to_sink(mode: str, port: int, *args: str) -> list[str]:
    """The arguments of source `mode` sending to a sink on loopback port `port`."""
    return [mode, "--host", LOCAL, "--port", str(port), *args]


def send_garbage(port: int) -> int:
    """Datagrams a sink must ignore; returns how many were sent."""
    h = probe_packets.HEADER
    good = bytearray(64)
    probe_packets.encode_probe(good, probe_packets.KIND_PROBE, 7, 0, 10, time.monotonic_ns())
    bad_magic = b"XXXX" + bytes(good[4:])
    bad_version = bytes(good[:4]) + b"\x09" + bytes(good[5:])
    truncated = bytes(good[:-1])  # length field says 64
    padded = bytes(good) + b"\x00"
    bad_kind = bytearray(good)
    bad_kind[5] = 9
    seq_past_count = bytearray(64)
    h.pack_into(
        seq_past_count, 0, probe_packets.MAGIC, 1, probe_packets.KIND_PROBE, 0, 7, 10, 10, 64, 0
    )
    huge_count = bytearray(64)
    h.pack_into(
        huge_count, 0, probe_packets.MAGIC, 1, probe_packets.KIND_PROBE, 0, 7, 0, 2**31, 64, 0
    )
    packets = [
        b"",
        b"hello",
        os.urandom(64),
        os.urandom(1400),
        bad_magic,
        bad_version,
        truncated,
        padded,
        bytes(bad_kind),
        bytes(seq_past_count),
        bytes(huge_count),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in packets:
            s.sendto(p, (LOCAL, port))
    return len(packets)


# ---------------------------------------------------------------- probe processes


def test_udp_train_on_loopback():
    sink, port = start_sink("udp-sink", "--timeout", "5", "--duration", "20", "--grace", "0.3")
    rc, sent = run(
        *to_sink("udp-source", port, "--count", "200", "--interval-ms", "2", "--size", "100")
    )
    assert rc == 0 and sent["sent"] == 200 and sent["send_errors"] == 0
    rc, got = finish(sink)
    assert rc == 0, got
    assert got["received"] == 200 and got["expected"] == 200
    assert got["loss_pct"] == 0.0
    assert got["end_marker"] is True and got["train"] == sent["train"]
    assert got["reordered"] == 0 and got["duplicates"] == 0 and got["ignored"] == 0
    d = got["delay_ms"]
    assert 0 <= d["min"] <= d["p5"] <= d["median"] <= d["p95"] <= d["max"]
    assert d["median"] < 5
    # scheduled from one start time: 199 intervals of 2 ms, not 199 x (2 ms + overhead)
    assert 0.35 < got["seconds"] < 1.0


def test_udp_source_starts_at_the_given_time_and_reports_its_span():
    """Trains started together begin at --start-at (CLOCK_MONOTONIC, shared by the
    hosts), not while another probe process is still starting."""
    sink, port = start_sink("udp-sink", "--timeout", "5", "--grace", "0.2")
    start_at = time.monotonic() + 0.6
    rc, sent = run(
        *to_sink("udp-source", port, "--count", "50", "--interval-ms", "2"),
        *("--start-at", f"{start_at:.6f}"),
    )
    assert rc == 0 and time.monotonic() >= start_at + 0.098
    assert 0.098 <= sent["seconds"] < 0.5  # 49 intervals of 2 ms
    rc, got = finish(sink)
    assert rc == 0 and got["received"] == 50
    first_delay_ms = got["delay_ms"]["min"]
    assert first_delay_ms < 50  # stamped when sent, after the wait


def test_udp_sink_ignores_foreign_datagrams():
    sink, port = start_sink("udp-sink", "--timeout", "5", "--grace", "0.2")
    garbage = send_garbage(port)
    rc, _ = run(
        *to_sink("udp-source", port, "--count", "20", "--interval-ms", "1", "--train", "42")
    )
    assert rc == 0
    rc, got = finish(sink)
    assert rc == 0, got
    assert got["train"] == 42
    assert got["received"] == 20 and got["expected"] == 20 and got["loss_pct"] == 0.0
    assert got["ignored"] >= garbage - 1  # the empty datagram may not be delivered


def test_udp_sink_reports_loss_from_marker_when_every_probe_is_lost():
    """Only the end marker arrives: that is 100% loss, not 'no traffic'."""
    sink, port = start_sink("udp-sink", "--timeout", "5", "--grace", "0.1")
    marker = bytearray(probe_packets.HEADER.size)
    probe_packets.encode_probe(marker, probe_packets.KIND_END, 5, 50, 50, time.monotonic_ns())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(marker, (LOCAL, port))
    rc, got = finish(sink)
    assert rc == 0, got
    assert got["received"] == 0 and got["expected"] == 50 and got["loss_pct"] == 100.0
    assert got["delay_ms"]["median"] is None


@pytest.mark.parametrize("garbage", [False, True])
def test_udp_sink_without_probes_exits_with_error(garbage):
    t0 = time.monotonic()
    sink, port = start_sink("udp-sink", "--timeout", "1")
    if garbage:
        send_garbage(port)  # foreign datagrams do not count as traffic
    rc, got = finish(sink, timeout=10)
    assert rc == 1
    assert "no probe" in got["error"] and got["received"] == 0
    assert time.monotonic() - t0 < 5


def test_udp_sink_stops_at_duration():
    """A source that would run for 10 s is cut off by the sink's --duration."""
    sink, port = start_sink("udp-sink", "--duration", "0.5", "--timeout", "5")
    source = start(*to_sink("udp-source", port, "--count", "1000", "--interval-ms", "10"))
    try:
        rc, got = finish(sink, timeout=10)
        assert rc == 0, got
        assert got["expected"] == 1000 and 20 < got["received"] < 100
        assert got["end_marker"] is False
    finally:
        source.send_signal(signal.SIGTERM)
        rc, sent = finish(source)
    assert rc == 128 + signal.SIGTERM and sent["terminated"] is True
    assert 0 < sent["sent"] < 1000


def test_tcp_goodput_on_loopback():
    sink, port = start_sink("tcp-sink", "--timeout", "5")
    rc, sent = run(*to_sink("tcp-source", port, "--seconds", "1"))
    assert rc == 0, sent
    rc, got = finish(sink)
    assert rc == 0, got
    assert got["bytes"] == sent["bytes_sent"] > 0
    assert 0.9 < got["seconds"] < 2.0
    assert got["goodput_mbps"] > 100
    assert 0.9 < sent["seconds"] < 1.5


def test_tcp_sink_without_connection_exits_with_error():
    t0 = time.monotonic()
    sink, _ = start_sink("tcp-sink", "--timeout", "1")
    rc, got = finish(sink, timeout=10)
    assert rc == 1 and "no connection" in got["error"] and got["bytes"] == 0
    assert time.monotonic() - t0 < 5


def test_tcp_sink_idle_connection_times_out():
    sink, port = start_sink("tcp-sink", "--timeout", "1")
    with socket.create_connection((LOCAL, port), timeout=5) as s:
        s.sendall(b"x" * 1000)
        rc, got = finish(sink, timeout=10)
    assert rc == 1 and "nothing received" in got["error"] and got["bytes"] == 1000


def test_tcp_source_without_sink_fails_fast():
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # bound, not listening: refused
    t0 = time.monotonic()
    rc, got = run(*to_sink("tcp-source", port, "--seconds", "1", "--connect-timeout", "0.5"))
    assert rc == 1 and "Refused" in got["error"]
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("mode", ["udp-sink", "tcp-sink"])
def test_sigterm_ends_a_sink_promptly(mode):
    sink, _ = start_sink(mode, "--timeout", "60")
    time.sleep(0.1)
    t0 = time.monotonic()
    sink.send_signal(signal.SIGTERM)
    rc, got = finish(sink, timeout=5)
    assert time.monotonic() - t0 < 2
    assert rc == 128 + signal.SIGTERM
    assert got["terminated"] is True and got["mode"] == mode


@pytest.mark.parametrize(
    "args",
    [
        to_sink("udp-source", 9, "--count", "5", "--interval-ms", "1", "--size", "31"),
        to_sink("udp-source", 9, "--count", "0", "--interval-ms", "1"),
        ["udp-sink", "--port", "70000"],
        to_sink("tcp-source", 9, "--seconds", "-1"),
        ["nonsense"],
    ],
)
def test_bad_arguments_end_with_a_json_error(args):
    rc, got = run(*args)
    assert rc == 2 and got["error"].startswith("bad arguments")


def test_probe_header_round_trip_and_rejections():
    buf = bytearray(100)
    probe_packets.encode_probe(buf, probe_packets.KIND_PROBE, 3, 4, 10, 123456789)
    assert probe_packets.decode_probe(bytes(buf)) == (probe_packets.KIND_PROBE, 3, 4, 10, 123456789)
    assert probe_packets.decode_probe(bytes(buf[:-1])) is None
    assert probe_packets.decode_probe(bytes(buf[:10])) is None
    end = bytearray(probe_packets.HEADER.size)
    probe_packets.encode_probe(end, probe_packets.KIND_END, 3, 10, 10, 1)
    assert probe_packets.decode_probe(memoryview(end))[0] == probe_packets.KIND_END
    probe_packets.encode_probe(
        end, probe_packets.KIND_END, 3, 9, 10, 1
    )  # a marker carries seq == count
    assert probe_packets.decode_probe(end) is None


def test_udp_sink_state_counts_reorder_duplicates_and_other_trains():
    sink = probe.UdpSink()
    buf = bytearray(64)
    for seq, train in [(0, 1), (2, 1), (1, 1), (2, 1), (3, 2), (4, 1)]:
        probe_packets.encode_probe(buf, probe_packets.KIND_PROBE, train, seq, 6, 1_000_000)
        sink.feed(memoryview(buf), 3_000_000)
    r = sink.result()
    assert r["received"] == 4 and r["expected"] == 6
    assert r["reordered"] == 1 and r["duplicates"] == 1 and r["ignored"] == 1
    assert math.isclose(r["loss_pct"], 100 * 2 / 6, abs_tol=1e-4)
    assert r["delay_ms"]["median"] == 2.0 and r["delay_ms"]["std"] == 0.0


def test_delay_stats_percentiles():
    stats = probe_packets.delay_stats([i * 1_000_000 for i in range(1, 102)])  # 1..101 ms
    assert stats["median"] == 51.0 and stats["p5"] == 6.0 and stats["p95"] == 96.0
    assert stats["mean"] == 51.0 and stats["min"] == 1.0 and stats["max"] == 101.0
    assert math.isclose(stats["std"], math.sqrt(101 * 102 / 12), abs_tol=1e-4)


# ---------------------------------------------------------------- binomial


def test_betainc_closed_forms():
    for x in (0.01, 0.3, 0.5, 0.77, 0.999):
        assert math.isclose(betainc(1, 7, x), 1 - (1 - x) ** 7, rel_tol=1e-12)
        assert math.isclose(betainc(4, 1, x), x**4, rel_tol=1e-12)
        # I_x(2, 2) = 3x^2 - 2x^3
        assert math.isclose(betainc(2, 2, x), 3 * x**2 - 2 * x**3, rel_tol=1e-12)
    assert betainc(3, 4, 0) == 0 and betainc(3, 4, 1) == 1


def test_binomial_tails_match_direct_sums():
    n, p = 40, 0.13
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    for k in (0, 1, 5, 12, 39, 40):
        assert math.isclose(fidelity.binom_cdf(k, n, p), math.fsum(pmf[: k + 1]), rel_tol=1e-10)
        assert math.isclose(fidelity.binom_sf(k, n, p), math.fsum(pmf[k:]), rel_tol=1e-10)


def test_clopper_pearson_known_values():
    # R: binom.test(5, 10)$conf.int
    lo, hi = clopper_pearson(5, 10, 0.95)
    assert math.isclose(lo, 0.187086, abs_tol=1e-6) and math.isclose(hi, 0.812914, abs_tol=1e-6)
    # k = 0 and k = n have closed forms
    assert clopper_pearson(0, 1000)[0] == 0.0
    assert math.isclose(clopper_pearson(0, 1000)[1], 1 - 0.005 ** (1 / 1000), rel_tol=1e-9)
    assert math.isclose(clopper_pearson(200, 200)[0], 0.005 ** (1 / 200), rel_tol=1e-9)
    # 1% loss of 1000 probes: 10 lost is inside, 30 lost is outside
    lo, hi = clopper_pearson(10, 1000)
    assert lo < 0.01 < hi
    lo, hi = clopper_pearson(30, 1000)
    assert not lo < 0.01 < hi


def test_loss_acceptance_agrees_with_clopper_pearson():
    assert loss_acceptance(0.0, 500) == (0, 0)
    assert loss_acceptance(1.0, 500) == (500, 500)
    for p, n in [(0.01, 1000), (0.05, 200), (0.3, 57)]:
        k_lo, k_hi = loss_acceptance(p, n)
        for k in {0, 1, n, *range(max(0, k_lo - 3), min(n, k_hi + 3) + 1)}:
            lo, hi = clopper_pearson(k, n)
            assert (k_lo <= k <= k_hi) == (lo <= p <= hi), (p, n, k)
    k_lo, k_hi = loss_acceptance(0.01, 1000)
    assert k_lo <= 10 <= k_hi < 30


# ---------------------------------------------------------------- compare

CONF = {"bandwidth_mbps": 1.0, "delay_ms": 20.0, "jitter_ms": 2.0, "loss_pct": 1.0}
# 64-byte probes at 1 Mbit/s: (64 + 42) * 8 bits = 0.848 ms on the wire; a rate train
# that loses 1% on the wire arrives at 0.99 Mbit/s
GOOD = {
    "bandwidth_mbps": 0.99,
    "tcp_goodput_mbps": 0.955,
    "delay_ms": 20.9,
    "jitter_ms": 2.1,
    "loss_pct": 1.0,
    "probes": 1000,
    "probe_bytes": 64,
    "rate_packets": 500,
}


def test_compare_passes_a_faithful_link():
    r = compare(CONF, GOOD, direction="uplink")
    assert r["ok"] is True and r["skipped"] == [] and r["not_judged"] == {}
    assert r["within_tolerance"] == dict.fromkeys(fidelity.KEYS, True)
    assert r["configured"]["bandwidth_mbps"] == 1.0  # as configured, also under loss
    assert math.isclose(r["expected"]["bandwidth_mbps"], 0.99)
    assert math.isclose(r["expected"]["tcp_goodput_mbps"], 0.956)
    assert math.isclose(r["expected"]["delay_ms"], 20.0 + 0.848 + 0.5)
    assert r["measured"]["lost"] == 10
    line = summary_line(r)
    assert line.startswith("uplink: rate 0.990/0.990 Mbit/s, TCP 0.955/0.956 Mbit/s, delay 20.90/")
    assert line.endswith(" OK")


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        # 0.99 expected; 12 of 505 lost is inside the 99% binomial range, then 5%
        ("bandwidth_mbps", 0.93, 0.92),  # 1 x (1 - 12/505) x 0.95 = 0.9274
        ("bandwidth_mbps", 1.04, 1.06),  # 1 x (1 - 0/505) x 1.05
        ("tcp_goodput_mbps", 0.92, 0.90),  # 5% of 0.956 is 0.0478
        ("tcp_goodput_mbps", 0.99, 1.01),
        ("delay_ms", 20.0, 19.8),  # ideal 20.848 - 1 ms
        ("delay_ms", 22.3, 22.4),  # ideal + 0.5 allowance + 1 ms = 22.348
        ("jitter_ms", 2.9, 3.1),  # max(1 ms, 25% of 2 ms)
        ("jitter_ms", 1.1, 0.9),
        ("loss_pct", 1.9, 3.0),  # at 1%, 3..19 lost of 1000 are inside
        ("loss_pct", 0.3, 0.2),
    ],
)
def test_compare_each_key_passes_and_fails(key, good, bad):
    ok = compare(CONF, {**GOOD, key: good})
    assert ok["within_tolerance"][key] is True and ok["ok"] is True
    fail = compare(CONF, {**GOOD, key: bad})
    assert fail["within_tolerance"][key] is False and fail["ok"] is False
    others = [k for k in fidelity.KEYS if k != key]
    assert all(fail["within_tolerance"][k] for k in others)
    assert summary_line(fail).endswith(f"FAIL ({fidelity.LABELS[key][0]})")


def test_rate_check_fails_against_the_wrong_rate():
    """What a 3 Mbit/s link with 2% loss delivers passes at 3 Mbit/s and fails when the
    judge expects 4 or 2.5 Mbit/s: the rate check can fail."""
    measured = {**GOOD, "bandwidth_mbps": 2.93, "rate_packets": 170, "loss_pct": 2.0}
    conf = {**CONF, "bandwidth_mbps": 3.0, "loss_pct": 2.0}
    assert compare(conf, measured)["within_tolerance"]["bandwidth_mbps"] is True
    for wrong in (4.0, 2.5):
        r = compare({**conf, "bandwidth_mbps": wrong}, measured)
        assert r["within_tolerance"]["bandwidth_mbps"] is False and r["ok"] is False
        assert "FAIL (rate" in summary_line(r)


def test_rate_window_follows_where_loss_happens():
    """The userspace element drops after the wire (rate x (1 - loss) arrives); netem
    drops before its queue (the full rate arrives)."""
    conf = {**CONF, "bandwidth_mbps": 10.0, "loss_pct": 10.0}
    m = {
        **GOOD,
        "bandwidth_mbps": 9.0,
        "tcp_goodput_mbps": 9.5,
        "loss_pct": 10.0,
        "rate_packets": 900,
    }
    wire = compare(conf, m)
    assert math.isclose(wire["expected"]["bandwidth_mbps"], 9.0)
    assert wire["within_tolerance"]["bandwidth_mbps"] is True
    netem = compare(conf, m, loss_spends_rate=False)
    assert netem["expected"]["bandwidth_mbps"] == 10.0
    assert netem["within_tolerance"]["bandwidth_mbps"] is False
    assert compare(conf, {**m, "bandwidth_mbps": 10.1}, loss_spends_rate=False)["ok"]


def test_compare_jitter_tolerance_is_relative_for_large_jitter():
    conf = {**CONF, "jitter_ms": 10.0}
    assert compare(conf, {**GOOD, "jitter_ms": 12.4})["within_tolerance"]["jitter_ms"]
    assert not compare(conf, {**GOOD, "jitter_ms": 12.6})["within_tolerance"]["jitter_ms"]


@pytest.mark.parametrize(
    ("distribution", "std"), [("normal", 4.0), ("uniform", 4 / 3**0.5), ("pareto", 4 * 3**0.5)]
)
def test_jitter_is_written_as_configured_and_expected_as_its_std(distribution, std):
    conf = {**CONF, "jitter_ms": 4.0, "jitter_distribution": distribution}
    r = compare(conf, {**GOOD, "jitter_ms": std})
    assert r["configured"]["jitter_ms"] == 4.0
    assert r["configured"]["jitter_distribution"] == distribution
    assert math.isclose(r["expected"]["jitter_ms"], std)
    assert r["within_tolerance"]["jitter_ms"] is True
    with pytest.raises(ValueError, match="jitter_distribution"):
        compare({**conf, "jitter_distribution": "cauchy"}, GOOD)


def test_compare_zero_loss_link_must_lose_nothing():
    conf = {**CONF, "loss_pct": 0}
    assert compare(conf, {**GOOD, "loss_pct": 0.0, "lost": 0})["within_tolerance"]["loss_pct"]
    assert not compare(conf, {**GOOD, "loss_pct": 0.1, "lost": 1})["within_tolerance"]["loss_pct"]


def test_compare_tolerance_overrides_and_typos():
    tight = compare(CONF, {**GOOD, "bandwidth_mbps": 0.96}, {"bandwidth_rel": 0.01})
    assert tight["within_tolerance"]["bandwidth_mbps"] is False
    with pytest.raises(ValueError, match="unknown tolerance"):
        compare(CONF, GOOD, {"bandwith_rel": 0.1})


def test_compare_says_why_it_cannot_judge():
    # no configured rate (a trace sets it): neither rate nor TCP; no probe count: no loss
    r = compare({"delay_ms": 5}, {"bandwidth_mbps": 900.0, "delay_ms": 5.2, "jitter_ms": 0.1})
    assert r["not_judged"] == {
        "bandwidth_mbps": "no rate configured",
        "tcp_goodput_mbps": "no rate configured",
        "loss_pct": "no probe counts",
    }
    assert r["skipped"] == list(r["not_judged"])
    assert r["ok"] is True and math.isclose(r["expected"]["delay_ms"], 5.5)
    line = summary_line(r, "downlink")
    assert "rate 900.0/- Mbit/s (not judged: no rate configured)" in line
    # the measurement's own reason wins, and a measured value is still reported
    why = {"tcp_goodput_mbps": "under loss TCP's goodput is its congestion control's"}
    r = compare(CONF, {**GOOD, "tcp_goodput_mbps": 0.5, "not_judged": why})
    assert r["ok"] is True and r["not_judged"] == why
    assert r["measured"]["tcp_goodput_mbps"] == 0.5
    assert "tcp_goodput_mbps" not in r["within_tolerance"]
    nothing = compare(CONF, {})
    assert nothing["ok"] is False and nothing["within_tolerance"] == {}
    assert set(nothing["not_judged"]) == set(fidelity.KEYS)


def test_measured_from_probe_output_feeds_compare():
    udp = {
        "received": 990,
        "expected": 1000,
        "loss_pct": 1.0,
        "delay_ms": {"median": 20.9, "mean": 21.0, "p5": 18, "p95": 24, "std": 2.0},
    }
    tcp = {"bytes": 1_195_000, "goodput_mbps": 0.9, "steady_goodput_mbps": 0.956}
    rate = {"received": 500, "rate": {"mbps": 0.99, "packets": 450, "seconds": 2.0}}
    m = measured_from_probes(udp, tcp, probe_bytes=64, rate_sink=rate)
    assert m["lost"] == 10 and m["probes"] == 1000 and m["delay_ms"] == 20.9
    assert m["bandwidth_mbps"] == 0.99 and m["rate_packets"] == 450
    assert m["tcp_goodput_mbps"] == 0.956  # after the ramp, not the whole transfer's
    assert compare(CONF, m)["ok"] is True
    failed = measured_from_probes(
        {"error": "no probe received within 20 s", "expected": 0},
        {"error": "no connection", "goodput_mbps": None},
        64,
        {"error": "no probe received within 20 s"},
    )
    r = compare(CONF, failed)
    assert r["not_judged"]["tcp_goodput_mbps"] == "TCP probe failed: no connection"
    assert r["not_judged"]["bandwidth_mbps"].startswith("rate probe failed: no probe")
    assert r["not_judged"]["delay_ms"].startswith("delay probe failed")
    assert r["ok"] is False


# ---------------------------------------------------------------- rates from arrivals


def arrivals(rate_mbps: float, sizes: list[int], t0_ns: int = 5_000_000) -> list[int]:
    """Arrival times of back-to-back packets leaving a `rate_mbps` bottleneck."""
    times, t = [], float(t0_ns)
    for size in sizes:
        t += (size + probe_packets.WIRE_OVERHEAD) * 8 / (rate_mbps * 1e6) * 1e9
        times.append(round(t))
    return times


def test_delivery_rate_of_a_busy_bottleneck():
    sizes = [1472] * 200
    r = probe_packets.delivery_rate(arrivals(3.0, sizes), sizes, skip=20)
    assert math.isclose(r["mbps"], 3.0, rel_tol=1e-4) and r["packets"] == 180


def test_delivery_rate_under_loss_is_rate_times_delivered_share():
    """Every 50th packet lost on the wire (2%): its slot passes, nothing arrives."""
    sizes = [1000] * 1000
    times = arrivals(8.0, sizes)
    kept = [i for i in range(1000) if i % 50 != 7]
    r = probe_packets.delivery_rate([times[i] for i in kept], [sizes[i] for i in kept], skip=10)
    assert math.isclose(r["mbps"], 8.0 * 0.98, rel_tol=0.002)


def test_delivery_rate_ignores_the_head_of_the_train():
    """A token bucket's burst lets the first packets through at once: left out, they
    do not count; counted, they would bend the rate."""
    sizes = [1472] * 100
    times = arrivals(2.0, sizes)
    for i in range(3):  # a burst: the first three arrive together
        times[i] = times[0]
    assert math.isclose(
        probe_packets.delivery_rate(times, sizes, skip=3)["mbps"], 2.0, rel_tol=1e-4
    )
    assert probe_packets.delivery_rate(times, sizes, skip=0)["mbps"] != pytest.approx(2.0, 1e-4)


def test_delivery_rate_without_enough_packets():
    assert probe_packets.delivery_rate([1, 2], [100, 100])["mbps"] is None
    assert probe_packets.delivery_rate([5, 5, 5], [100] * 3)["mbps"] is None
    assert probe_packets.delivery_rate([], [])["packets"] == 0


def test_steady_rate_leaves_out_the_ramp():
    """A transfer that ramps up for 0.5 s, then runs at 8 Mbit/s: whole-transfer goodput
    shows the ramp, the second half shows the link."""
    times = [i * 10_000_000 for i in range(101)]  # a read every 10 ms for 1 s
    totals, total = [], 0
    for i in range(101):
        total += 10_000 if i >= 50 else 10_000 * i // 50  # 8 Mbit/s = 10 kB per 10 ms
        totals.append(total)
    r = probe_packets.steady_rate(times, totals, 0.5)
    assert math.isclose(r["mbps"], 8.0) and r["from_s"] == 0.5 and r["seconds"] == 0.5
    whole = (totals[-1] - totals[0]) * 8 / 1.0 / 1e6
    assert whole < 6.5
    assert probe_packets.steady_rate([1], [10], 0.5)["mbps"] is None


def test_udp_sink_reports_the_arrival_rate():
    sink = probe.UdpSink()
    buf = bytearray(1000)
    times = arrivals(4.0, [1000] * 100)
    for seq, t in enumerate(times):
        probe_packets.encode_probe(buf, probe_packets.KIND_PROBE, 1, seq, 100, t - 1_000_000)
        sink.feed(memoryview(buf), t)
    rate = sink.result()["rate"]
    assert math.isclose(rate["mbps"], 4.0, rel_tol=1e-4)
    assert rate["skipped_first"] == 10 and rate["packets"] == 90
