"""Competing traffic: the real generator, sink and iperf3 on loopback, and the plans.

Loopback has no bottleneck, so what the sink measures is what the sender paced.
Rates stay modest: the machines are small and shared.
"""

from __future__ import annotations

import itertools
import json
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.emulation.traffic.gen import PARETO_SHAPE, onoff_schedule, onoff_times, poisson_times
from testbed.emulation.traffic.plan import (
    FlowPlan,
    TrafficError,
    parse_iperf3,
    parse_trafficgen,
    plan_traffic,
)

ROOT = Path(__file__).resolve().parent.parent
GEN = [sys.executable, "-m", "testbed.emulation.traffic.gen"]
LO = "127.0.0.1"


def _popen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read_line(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no output within {timeout_s} s from {proc.args}"
    return proc.stdout.readline().strip()


def _start_sink(*extra: str) -> tuple[subprocess.Popen, int]:
    sink = _popen([*GEN, "sink", "--port", "0", "--report-interval-s", "1", *extra])
    line = _read_line(sink)
    assert line.startswith("READY "), line
    return sink, int(line.split()[1])


def _stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> tuple[str, float]:
    """SIGTERM, then its stdout and how long it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return out, time.monotonic() - t0


def _send(port: int, *args: str) -> dict:
    done = subprocess.run(
        [*GEN, "send", "--host", LO, "--port", str(port), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(*send_args: str) -> tuple[dict, dict]:
    """Run one sender against a fresh sink; (sender JSON, sink JSON)."""
    sink, port = _start_sink("--max-seconds", "60")
    try:
        sent = _send(port, *send_args)
        time.sleep(0.3)  # loopback delivers at once; leave the sink a moment to read
        out, _ = _stop(sink)
    finally:
        sink.kill()
        sink.wait()
    return sent, json.loads(out.strip().splitlines()[-1])


# --- schedules -------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["exponential", "pareto"])
def test_period_means_match_configuration(distribution):
    n = 200_000
    pairs = list(itertools.islice(onoff_schedule(0.5, 2.0, distribution, seed=11), n))
    on = [p[0] for p in pairs]
    off = [p[1] for p in pairs]
    # Pareto(1.5) has infinite variance: its sample mean converges slowly, hence 5%
    tol = 0.02 if distribution == "exponential" else 0.05
    assert statistics.fmean(on) == pytest.approx(0.5, rel=tol)
    assert statistics.fmean(off) == pytest.approx(2.0, rel=tol)
    if distribution == "pareto":  # the median pins the shape: scale * 2 ** (1 / shape)
        scale = 0.5 * (PARETO_SHAPE - 1) / PARETO_SHAPE
        assert statistics.median(on) == pytest.approx(scale * 2 ** (1 / PARETO_SHAPE), rel=0.02)
        assert min(on) >= scale
    else:  # exponential: the standard deviation equals the mean
        assert statistics.pstdev(on) == pytest.approx(0.5, rel=0.03)


def test_same_seed_same_schedule():
    def first(seed, dist="pareto"):
        return list(itertools.islice(onoff_schedule(1.0, 1.0, dist, seed), 50))

    assert first(7) == first(7)
    assert first(7) != first(8)
    assert first(7, "exponential") != first(7)
    poisson = list(itertools.islice(poisson_times(50, 10, seed=3), 50))
    assert poisson == list(itertools.islice(poisson_times(50, 10, seed=3), 50))


def test_onoff_times_keep_the_on_share_of_packets():
    periods = [(0.25, 0.5), (0.001, 1.0), (0.75, 0.25)] + [(1.0, 1.0)] * 10
    times = list(itertools.takewhile(lambda t: t[0] < 2.0, onoff_times(0.01, iter(periods))))
    # ON time before 2.0 s: 0.25 + 0.001 + 0.249 (the third period starts at 1.751 s)
    assert len(times) == pytest.approx(50, abs=1)
    offsets = [t for t, _ in times]
    assert offsets == sorted(offsets)
    assert not any(0.25 <= t < 0.75 for t in offsets)  # the first OFF is silent


def test_poisson_mean_gap():
    gaps = [t for t, _ in itertools.islice(poisson_times(50, 10, seed=5), 20_000)]
    assert gaps[-1] / len(gaps) == pytest.approx(1 / 50, rel=0.03)


# --- generator and sink on loopback -------------------------------------------------


def test_cbr_rate_measured_by_sink():
    sent, got = _measure(
        "--pattern", "cbr", "--rate-mbps", "5", "--packet-bytes", "1000", "--duration-s", "2"
    )
    print("cbr", sent, {k: v for k, v in got.items() if k != "per_second_mbps"})
    assert got["throughput_mbps"] == pytest.approx(5.0, rel=0.05)
    assert sent["seconds"] == pytest.approx(2.0, abs=0.2)
    assert got["packets"] == sent["packets_sent"] > 0
    assert got["bytes"] == sent["bytes_sent"] == 1000 * sent["packets_sent"]
    assert got["lost_packets"] == 0
    assert len(got["per_second_mbps"]) == 2


def test_onoff_mean_and_variation():
    sent, got = _measure(
        "--pattern",
        "onoff",
        "--rate-mbps",
        "8",
        "--on-s",
        "0.5",
        "--off-s",
        "0.5",
        "--distribution",
        "exponential",
        "--packet-bytes",
        "1000",
        "--duration-s",
        "4",
        "--seed",
        "3",
    )
    mean = got["bytes"] * 8 / 4.0 / 1e6
    per_s = got["per_second_mbps"]
    print("onoff", mean, per_s, sent)
    assert 2.5 <= mean <= 5.5
    assert got["bytes"] == sent["bytes_sent"]
    assert max(per_s) - min(per_s) > 1.0, per_s
    assert max(per_s) <= 8.0 * 1.1


def test_poisson_trains():
    sent, got = _measure(
        "--pattern",
        "poisson",
        "--rate-hz",
        "50",
        "--train-packets",
        "10",
        "--packet-bytes",
        "1000",
        "--duration-s",
        "3",
        "--seed",
        "4",
    )
    mean = got["bytes"] * 8 / 3.0 / 1e6
    print("poisson", mean, sent)
    assert 3.0 <= mean <= 5.0
    assert sent["packets_sent"] % 10 == 0  # whole trains


def test_sigterm_ends_sender_and_sink_with_json():
    sink, port = _start_sink()  # no --max-seconds: only a signal ends it
    send = _popen(
        [
            *GEN,
            "send",
            "--host",
            LO,
            "--port",
            str(port),
            "--pattern",
            "onoff",
            "--rate-mbps",
            "2",
            "--on-s",
            "0.3",
            "--off-s",
            "5",
            "--duration-s",
            "60",
        ]
    )
    try:
        time.sleep(1.0)
        out, took = _stop(send)
        sent = json.loads(out.strip().splitlines()[-1])
        assert took < 1.0
        assert sent["interrupted"] and 0.8 < sent["seconds"] < 2.0
        out, took = _stop(sink)
        got = json.loads(out.strip().splitlines()[-1])
        assert took < 1.0
        assert got["interrupted"] and got["packets"] == sent["packets_sent"]
    finally:
        for p in (send, sink):
            p.kill()
            p.wait()


def test_sink_max_seconds_without_traffic():
    sink, _ = _start_sink("--max-seconds", "0.5")
    out, _ = sink.communicate(timeout=5)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["bytes"] == 0 and got["throughput_mbps"] == 0.0 and got["first_s"] is None
    assert not got["interrupted"]


def test_send_rejects_missing_pattern_arguments():
    done = subprocess.run(
        [
            *GEN,
            "send",
            "--host",
            LO,
            "--port",
            "9",
            "--pattern",
            "onoff",
            "--rate-mbps",
            "1",
            "--duration-s",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--on-s" in done.stderr and "--off-s" in done.stderr


# --- plans ---------------------------------------------------------------------------

TRAFFIC = (
    {"type": "tcp_bulk", "flows": 2, "direction": "up", "start_s": 0.0, "stop_s": None},
    {
        "type": "udp_onoff",
        "rate_mbps": 0.5,
        "on_s": 1.0,
        "off_s": 1.0,
        "distribution": "pareto",
        "direction": "down",
        "start_s": 5.0,
        "stop_s": 20.0,
    },
    {
        "type": "poisson",
        "rate_hz": 3.0,
        "train_packets": 10,
        "packet_bytes": 1000,
        "direction": "up",
        "start_s": 2.0,
        "stop_s": 500.0,
    },
    {"type": "udp_cbr", "rate_mbps": 1.0, "direction": "up", "start_s": 70.0, "stop_s": None},
)


def test_plan_windows_ports_and_sides():
    plans = plan_traffic(
        TRAFFIC, receiver_ip={"up": "10.0.0.2", "down": "10.0.0.1"}, duration_s=60, seed=2
    )
    assert [p.label for p in plans] == [
        "tcp_bulk_up_0",
        "udp_onoff_down_1",
        "poisson_up_2",
        "udp_cbr_up_3",
    ]
    assert len({p.port for p in plans}) == 4
    assert [p.duration_s for p in plans] == [60.0, 15.0, 58.0, 0.0]
    assert [p.runs for p in plans] == [True, True, True, False]
    assert [p.start_s for p in plans] == [0.0, 5.0, 2.0, 70.0]
    assert plans[1].stop_s == 20.0 and plans[0].stop_s is None
    assert (plans[0].receiver_side, plans[0].sender_side) == ("edge", "device")
    assert (plans[1].receiver_side, plans[1].sender_side) == ("device", "edge")
    assert plans[1].receiver_ip == "10.0.0.1" and plans[0].receiver_ip == "10.0.0.2"

    tcp = plans[0]
    assert tcp.server_argv[:2] == ["iperf3", "-s"] and "--one-off" in tcp.server_argv
    c = tcp.client_argv
    assert c[c.index("-c") + 1] == "10.0.0.2" and c[c.index("-P") + 1] == "2"
    assert c[c.index("-t") + 1] == "60" and c[c.index("-p") + 1] == str(tcp.port)
    assert tcp.ready_line is None and f":{tcp.port}" in tcp.ready_check_argv

    onoff = plans[1]
    assert onoff.server_argv[0] == onoff.client_argv[0] == sys.executable
    c = onoff.client_argv
    assert c[c.index("--pattern") + 1] == "onoff" and c[c.index("--distribution") + 1] == "pareto"
    assert float(c[c.index("--duration-s") + 1]) == 15.0
    assert c[c.index("--seed") + 1] == str(2 * 1000 + 1)
    s = onoff.server_argv
    assert float(s[s.index("--max-seconds") + 1]) > 20.0  # outlives its sender
    assert onoff.ready_line == f"READY {onoff.port}"
    c = plans[2].client_argv
    assert c[c.index("--rate-hz") + 1] == "3.0" and c[c.index("--train-packets") + 1] == "10"


def test_plan_needs_receiver_for_each_direction():
    with pytest.raises(ValueError, match="down"):
        plan_traffic(TRAFFIC, receiver_ip={"up": "10.0.0.2"}, duration_s=60)
    assert plan_traffic((), receiver_ip=LO, duration_s=1) == []


def _run_plan(plan: FlowPlan, client_extra=(), stop_client_after_s=None) -> dict:
    """What the topology code does, on loopback: server, readiness, client, parse."""
    server = _popen(plan.server_argv)
    client = None
    try:
        if plan.ready_line:
            assert _read_line(server) == plan.ready_line
        else:
            deadline = time.monotonic() + 10
            while not subprocess.run(plan.ready_check_argv, capture_output=True).stdout.strip():
                assert time.monotonic() < deadline, "iperf3 server never listened"
                time.sleep(0.05)
        client = _popen([*plan.client_argv, *client_extra])
        if stop_client_after_s is None:
            client_out, _ = client.communicate(timeout=plan.duration_s + 20)
        else:
            time.sleep(stop_client_after_s)
            client.send_signal(signal.SIGTERM)
            client_out, _ = client.communicate(timeout=10)
        time.sleep(0.3)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server_out, _ = server.communicate(timeout=10)
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
    return plan.parse(server_out, client_out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        return s.getsockname()[1]


needs_iperf3 = pytest.mark.skipif(
    shutil.which("iperf3") is None or shutil.which("ss") is None,
    reason="iperf3 or ss (iproute2) is not installed",
)


@needs_iperf3
def test_iperf3_plan_on_loopback():
    (plan,) = plan_traffic(
        [{"type": "tcp_bulk", "flows": 2}],
        receiver_ip=LO,
        duration_s=2,
        base_port=_free_port(),
    )
    # -b caps each stream: unbounded loopback TCP would take both cores of the machine
    result = _run_plan(plan, client_extra=["-b", "20M"])
    print("iperf3", result)
    assert result["flow"] == "tcp_bulk_up_0" and result["kind"] == "tcp_bulk"
    assert result["throughput_mbps"] > 0 and result["bytes"] > 0
    assert result["streams"] == 2 and isinstance(result["retransmits"], int)
    assert result["throughput_mbps"] == pytest.approx(40, rel=0.25)


@needs_iperf3
def test_iperf3_client_stopped_early_reports_server_side():
    (plan,) = plan_traffic(
        [{"type": "tcp_bulk"}], receiver_ip=LO, duration_s=10, base_port=_free_port()
    )
    result = _run_plan(plan, client_extra=["-b", "10M"], stop_client_after_s=1.5)
    print("iperf3 interrupted", result)
    assert result["bytes"] > 0 and result["error"]  # the interruption stays visible
    # timed by the client's elapsed time, not iperf3's last whole interval
    assert result["seconds"] == pytest.approx(1.5, abs=0.3)
    assert result["throughput_mbps"] == pytest.approx(10, rel=0.25)


def test_udp_plan_on_loopback():
    (plan,) = plan_traffic(
        [{"type": "udp_cbr", "rate_mbps": 2.0, "direction": "down", "stop_s": 1.5}],
        receiver_ip=LO,
        duration_s=30,
        base_port=_free_port(),
    )
    result = _run_plan(plan)
    print("udp plan", result)
    assert result["flow"] == "udp_cbr_down_0" and result["direction"] == "down"
    assert result["throughput_mbps"] == pytest.approx(2.0, rel=0.1)
    assert result["packets_sent"] == result["packets"] > 0
    assert "retransmits" not in result


# --- parsing -------------------------------------------------------------------------


def test_parse_iperf3_error_raises():
    text = json.dumps(
        {"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server"}
    )
    with pytest.raises(TrafficError, match="unable to connect"):
        parse_iperf3(text)
    with pytest.raises(TrafficError, match="not JSON"):
        parse_iperf3("iperf3: error - unable to connect")
    with pytest.raises(TrafficError, match="unable to connect"):
        parse_iperf3(text, partial_ok=True)  # nothing to salvage


def test_parse_iperf3_sums():
    doc = {
        "end": {
            "streams": [{}, {}],
            "sum_sent": {"bytes": 2_000_000, "bits_per_second": 8.2e6, "retransmits": 3},
            "sum_received": {"bytes": 1_900_000, "bits_per_second": 8.0e6},
        }
    }
    got = parse_iperf3(json.dumps(doc), flow="f", direction="up")
    assert got["throughput_mbps"] == 8.0 and got["bytes"] == 1_900_000
    assert got["retransmits"] == 3 and got["streams"] == 2 and got["flow"] == "f"


def test_parse_trafficgen_errors():
    with pytest.raises(TrafficError, match="printed nothing"):
        parse_trafficgen("")
    with pytest.raises(TrafficError, match="unusable"):
        parse_trafficgen("READY 5201\n")
    got = parse_trafficgen('READY 1\n{"bytes": 10, "throughput_mbps": 1.5}\n', flow="x")
    assert got["bytes"] == 10 and got["throughput_mbps"] == 1.5 and got["flow"] == "x"


def test_a_flow_stopped_at_the_runs_end_ended_rather_than_failed():
    """We stop a flow without stop_s when the requests are done: iperf3 then says
    "interrupt - the server has terminated", which is its planned end, not an error."""
    from testbed.emulation.traffic.plan import with_status

    message = "interrupt - the server has terminated"
    interrupted = {"flow": "f", "throughput_mbps": 0.9, "error": message}
    got = with_status(interrupted, stopped_by_run=True)
    assert got["status"] == "stopped at the run's end" and got["error"] == ""
    assert got["throughput_mbps"] == 0.9
    # the same message from a flow nobody stopped is a failure, and says so
    assert with_status(interrupted, stopped_by_run=False)["status"] == "failed"
    refused = {"flow": "f", "error": "unable to connect to server"}
    got = with_status(refused, stopped_by_run=True)
    assert got["status"] == "failed" and got["error"] == "unable to connect to server"
    assert with_status({"flow": "f", "error": None}, stopped_by_run=False)["status"] == "ended"
    from testbed.results.records import TRAFFIC_COLUMNS

    assert "status" in TRAFFIC_COLUMNS
