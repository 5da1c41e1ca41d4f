"""The emulated link measured against its configuration, on real Mininet hosts with
the userspace backend (this kernel has no netem): goodput, one-way delay, jitter,
loss, queue limits and competing traffic."""

from __future__ import annotations

import contextlib
import threading

import pytest

from testbed.config.scenario import parse_scenario
from testbed.emulation.topology import OffloadTopology
from testbed.fidelity import judge as fidelity
from testbed.fidelity import measure
from tests.mininet_utils import leftovers, needs_mininet

pytestmark = [needs_mininet, pytest.mark.mininet]
FRAME_BITS = 1514 * 8


def _netem_here() -> bool:
    """netem in a throw-away namespace (gone when the command ends)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    return subprocess.run(probe, capture_output=True).returncode == 0


NETEM = _netem_here()
BACKENDS = [
    "userspace",
    pytest.param("netem", marks=pytest.mark.skipif(not NETEM, reason="this kernel has no netem")),
]


@contextlib.contextmanager
def topology(tmp_path, uplink: dict, downlink: dict | None = None, traffic=(), backend="userspace"):
    data = {
        "model": "fashion_cnn",
        "network": {"uplink": uplink, "downlink": downlink or uplink, "backend": backend},
        "traffic": list(traffic),
    }
    topo = OffloadTopology(parse_scenario(data, tmp_path / "link.yaml"), tmp_path)
    try:
        topo.start()
        yield topo
    finally:
        assert topo.stop() == []
        assert leftovers(topo.prefix) == []


def serialization_ms(payload_bytes: int, rate_mbps: float) -> float:
    return (payload_bytes + 42) * 8 / (rate_mbps * 1e3)  # UDP/IP/Ethernet headers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", [1, 10, 50])
def test_goodput_is_0956_of_the_rate(tmp_path, rate, backend):
    with topology(tmp_path, {"bandwidth_mbps": rate}, backend=backend) as topo:
        report = measure.tcp_goodput(topo, "uplink", seconds=3 if rate < 10 else 2)
    assert report["goodput_mbps"] == pytest.approx(0.956 * rate, rel=0.05), report


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("delay", [10, 100])
def test_one_way_delay_within_1ms(tmp_path, delay, backend):
    with topology(tmp_path, {"bandwidth_mbps": 10, "delay_ms": delay}, backend=backend) as topo:
        trains = measure.udp_trains(topo, count=100, interval_ms=10)
    for direction, report in trains.items():
        expected = delay + serialization_ms(64, 10)
        assert report["received"] == 100, (direction, report)
        assert report["delay_ms"]["median"] == pytest.approx(expected, abs=1.0), direction


@pytest.mark.parametrize("distribution, std_per_ms", [("normal", 1.0), ("uniform", 3**-0.5)])
def test_jitter_spread(tmp_path, distribution, std_per_ms):
    link = {
        "bandwidth_mbps": 10,
        "delay_ms": 30,
        "jitter_ms": 4,
        "jitter_distribution": distribution,
    }
    with topology(tmp_path, link) as topo:
        report = measure.udp_trains(topo, count=200, interval_ms=25)["uplink"]
    assert report["delay_ms"]["std"] == pytest.approx(4 * std_per_ms, rel=0.25), report
    assert report["delay_ms"]["median"] == pytest.approx(30 + serialization_ms(64, 10), abs=1.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_pct", [1, 5])
def test_loss_inside_binomial_99_interval(tmp_path, loss_pct, backend):
    with topology(tmp_path, {"bandwidth_mbps": 10, "loss_pct": loss_pct}, backend=backend) as topo:
        report = measure.udp_trains(topo, count=2000, interval_ms=1)["uplink"]
    lost = report["expected"] - report["received"]
    low, high = fidelity.loss_acceptance(loss_pct / 100, report["expected"], 0.99)
    assert report["expected"] == 2000 and low <= lost <= high, (lost, low, high)


def test_queue_limit_bounds_the_queueing_delay(tmp_path):
    """A bulk flow keeps the 10-packet queue full: probes wait at most 10 frames."""
    link = {"bandwidth_mbps": 1, "queue_packets": 10}
    with topology(tmp_path, link) as topo:
        bulk = threading.Thread(target=measure.tcp_goodput, args=(topo, "uplink", 5))
        bulk.start()
        try:
            threading.Event().wait(1.5)  # let the flow fill the queue
            delays = measure.udp_trains(topo, count=40, interval_ms=25)["uplink"]["delay_ms"]
        finally:
            bulk.join()
    # ten queued frames, HTB's two-frame bucket, the frame on the wire, and slack
    bound = (10 + 2 + 1) * FRAME_BITS / 1e3 + 5
    assert delays["max"] <= bound, delays
    assert delays["median"] >= 4 * FRAME_BITS / 1e3, delays  # the queue was really in use


def test_competing_bulk_flows_take_their_fair_share(tmp_path):
    """Two bulk flows from the traffic host and one from the device share 3 Mbit/s:
    each gets about a third (the arithmetic of fair sharing)."""
    rate = 3
    with topology(
        tmp_path,
        {"bandwidth_mbps": rate, "delay_ms": 5},
        traffic=[{"type": "tcp_bulk", "flows": 2}],
    ) as topo:
        from testbed.emulation.traffic.run import TrafficRun

        traffic = TrafficRun(topo)
        traffic.start()
        try:
            threading.Event().wait(2)
            device = measure.tcp_goodput(topo, "uplink", seconds=6)
        finally:
            flows = traffic.stop()
    share = device["goodput_mbps"] / (0.956 * rate)
    assert 0.15 <= share <= 0.5, (device, flows)  # 1/3 each, give or take TCP dynamics
    assert flows[0]["throughput_mbps"] > 0.5 * 0.956 * rate, flows  # the other two thirds


def test_delivery_follows_a_bandwidth_trace(tmp_path):
    """A UDP flood through a trace of 6 Mbit/s for 2 s then 2 Mbit/s for 2 s: the bytes
    delivered in each second follow the trace within 10 %."""
    import json
    import sys

    from testbed.emulation.link.trace import load_trace, opportunities_from_rates, write_trace
    from testbed.emulation.topology import wait_ready

    write_trace(tmp_path / "t.up", opportunities_from_rates([2000, 2000], [6, 2]))
    write_trace(tmp_path / "t.down", opportunities_from_rates([4000], [10]))
    trace = load_trace(tmp_path / "t.up")
    data = {
        "model": "fashion_cnn",
        "network": {
            "trace": {"uplink": "t.up", "downlink": "t.down"},
            "uplink": {},
            "downlink": {},
            "backend": "userspace",
        },
    }
    topo = OffloadTopology(parse_scenario(data, tmp_path / "trace.yaml"), tmp_path)
    try:
        topo.start()
        sink = topo.popen(
            topo.edge,
            [
                sys.executable,
                "-m",
                "testbed.emulation.traffic.gen",
                "sink",
                "--port",
                "9000",
                "--max-seconds",
                "30",
            ],
            "sink.log",
            limited=False,
        )
        wait_ready(sink, "sink", 60)
        sender = topo.popen(
            topo.device,
            [
                sys.executable,
                "-m",
                "testbed.emulation.traffic.gen",
                "send",
                "--host",
                topo.edge.IP(),
                "--port",
                "9000",
                "--pattern",
                "cbr",
                "--rate-mbps",
                "8",
                "--packet-bytes",
                "1472",
                "--duration-s",
                "6.5",
                "--seed",
                "1",
            ],
            "send.log",
            limited=False,
        )
        sender.communicate(timeout=60)
        threading.Event().wait(1)
        sink.terminate()
        report = json.loads(sink.communicate(timeout=30)[0].decode().strip().splitlines()[-1])
    finally:
        assert topo.stop() == []
        assert leftovers(topo.prefix) == []
    start_ms = (report["first_s"] - topo.trace_start) * 1e3
    checked = 0
    for i, measured in enumerate(report["per_second_mbps"][:6]):
        t0 = start_ms + i * 1000
        expected = trace.bytes_between(t0, t0 + 1000) / 1500 * 1472 * 8 / 1e6
        assert measured == pytest.approx(expected, rel=0.10), (i, measured, expected)
        checked += 1
    assert checked == 6
