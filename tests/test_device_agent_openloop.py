"""Open-loop (Poisson) arrivals and the multi-device start barrier of the device agent:
the schedule, the queueing arithmetic, timeouts and interruption against fake edges on
loopback, then the real edge agent on loopback, then (Mininet) a whole run."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.agents import device as device_agent
from testbed.agents.arrivals import poisson_offsets_ms, wait_barrier
from testbed.agents.contract import PHASES, RequestRecord
from testbed.agents.device import Requests, run_offloader
from testbed.agents.device_io import RecordWriter
from testbed.agents.protocol import (
    RESULT_STRUCT,
    ConnectionClosed,
    MessageType,
    ProtocolError,
    encode,
    encode_json,
    read_frame,
)
from testbed.offloaders.base import DeviceResult
from testbed.offloaders.link_estimate import LinkEstimate
from tests.helpers import start_edge
from tests.mininet_utils import ROOT, leftovers, needs_mininet

# ------------------------------------------------------------------------ the schedule


def test_schedule_is_seeded_and_reproducible():
    first = poisson_offsets_ms(50, 500, seed=3, offloader=0)
    assert first[0] == 0.0 and len(first) == 500
    assert np.all(np.diff(first) > 0)
    assert np.array_equal(first, poisson_offsets_ms(50, 500, seed=3, offloader=0))
    for other in (
        poisson_offsets_ms(50, 500, seed=4, offloader=0),
        poisson_offsets_ms(50, 500, seed=3, offloader=1),
        poisson_offsets_ms(50, 500, seed=3, offloader=0, device=1),  # devices independent
    ):
        assert not np.allclose(first, other)
    assert list(poisson_offsets_ms(50, 1, seed=3, offloader=0)) == [0.0]


@pytest.mark.parametrize("rate_hz", [4.0, 50.0, 2000.0])
def test_schedule_gaps_are_exponential_with_mean_one_over_rate(rate_hz):
    gaps = np.diff(poisson_offsets_ms(rate_hz, 20_001, seed=7, offloader=2))
    mean_ms = 1000.0 / rate_hz
    assert gaps.mean() == pytest.approx(mean_ms, rel=0.03)
    # exponential: standard deviation equal to the mean, median mean * ln 2
    assert gaps.std() == pytest.approx(mean_ms, rel=0.05)
    assert np.median(gaps) == pytest.approx(mean_ms * np.log(2), rel=0.05)


# ------------------------------------------------------------------------- the barrier


def test_barrier_holds_until_every_device_arrived(tmp_path):
    released = []

    def device(index):
        wait_barrier(tmp_path / "b", "0", index, 2, timeout_s=10)
        released.append((index, time.monotonic()))

    first = threading.Thread(target=device, args=(0,))
    first.start()
    time.sleep(0.3)
    assert released == [] and (tmp_path / "b" / "0.0").exists()  # waiting for device 1
    arrived = time.monotonic()
    second = threading.Thread(target=device, args=(1,))
    second.start()
    first.join(5)
    second.join(5)
    assert sorted(i for i, _ in released) == [0, 1]
    assert all(arrived <= t < arrived + 1 for _, t in released)
    # the next offloader's barrier is a new one
    with pytest.raises(TimeoutError, match=r"device\(s\) \[1\] of 2 did not arrive"):
        wait_barrier(tmp_path / "b", "1", 0, 2, timeout_s=0.1)


# ------------------------------------------------------------- fake device halves, edges


class SlowLocal:
    """A device half that takes `ms` and answers on the device."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def device(self, sample, timer):
        with timer.phase("device"):
            time.sleep(self.ms / 1000)
        return DeviceResult(prediction=int(sample))


class Sender:
    """A device half that offloads a fixed payload at once."""

    def device(self, sample, timer):
        return DeviceResult(payload=b"x" * 100)


class FakeEdge:
    """A real TCP server on loopback that answers HELLO, then each request after
    `delays[request]` seconds (never, for None; `default` for the rest)."""

    def __init__(self, delays=None, default=0.0) -> None:
        self.delays, self.default = delays or {}, default
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[int] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                while True:
                    frame = read_frame(conn)
                    if frame.type == MessageType.HELLO:
                        offloaders = [{} for _ in frame.json()["offloaders"]]
                        conn.sendall(encode_json(MessageType.HELLO_OK, {"offloaders": offloaders}))
                    elif frame.type == MessageType.PING:
                        conn.sendall(encode(MessageType.PONG, request=frame.request))
                    elif frame.type == MessageType.REQUEST:
                        self.requests.append(frame.request)
                        delay = self.delays.get(frame.request, self.default)
                        if delay is not None:
                            threading.Timer(delay, self._reply, (conn, frame)).start()
                    else:
                        return
            except (ConnectionClosed, ProtocolError, OSError):
                return

    @staticmethod
    def _reply(conn, frame):
        result = RESULT_STRUCT.pack(frame.received_ns, 0.0, 0.0, time.monotonic_ns(), 7)
        with contextlib.suppress(OSError):
            conn.sendall(encode(MessageType.RESULT, result, frame.offloader, frame.request))

    def close(self):
        self.server.close()


def make_requests(tmp_path, port=0, timeout_s=5.0):
    out = open(tmp_path / "records.jsonl", "a", buffering=1)  # noqa: SIM115
    hello = {"plugin": "fake", "offloaders": [{"name": "fake", "params": {}}]}
    writer = RecordWriter(out)
    return Requests("127.0.0.1", port, hello, timeout_s, writer, LinkEstimate()), out


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def identity(request: int) -> dict:
    """What run_offloader gives `issue` of request `request`: who and what it is."""
    return {"offloader": "f", "device": 0, "request": request, "sample": 0, "label": 0}


def record(request: int) -> RequestRecord:
    phases = dict.fromkeys(["intended_ms", *PHASES, "total_ms"], 0.0)
    return RequestRecord(
        **identity(request),
        **phases,
        bytes_up=0,
        bytes_down=0,
        est_uplink_mbps=None,
        prediction=-1,
        status="ok",
        error="",
    )


def run_fake(tmp_path, offloader, offsets, samples=10, **kw):
    requests, out = make_requests(tmp_path, **kw)
    try:
        ids = list(range(samples))  # inputs, sample indices and labels alike
        tags = {"offloader": "f", "device": 0}
        last = run_offloader(requests, offloader, 0, ids, ids, ids, 1, offsets, tags)
    finally:
        requests.close()
        out.close()
    assert last == samples
    return read_lines(tmp_path / "records.jsonl")


# ------------------------------------------------------------------- queueing arithmetic


def test_queue_ms_grows_when_the_device_half_is_slower_than_the_arrivals(tmp_path):
    """5 ms of device work per request, one request intended every millisecond: request
    k cannot start before 5k ms, so it is at least 4k ms late, and its latency counts
    that wait."""
    records = run_fake(tmp_path, SlowLocal(5.0), np.arange(10) * 1.0)
    assert [r["request"] for r in records] == list(range(1, 11))
    assert [r["intended_ms"] for r in records] == pytest.approx(list(range(10)), abs=1e-3)
    for k, r in enumerate(records):
        assert r["status"] == "ok" and r["prediction"] == k and r["device"] == 0
        assert r["queue_ms"] >= 4 * k - 0.01
        assert r["total_ms"] >= r["queue_ms"] + 5.0 - 0.01
        assert r["total_ms"] == pytest.approx(r["queue_ms"] + r["device_ms"], abs=1.0)
    assert records[-1]["queue_ms"] < 4 * 9 + 25  # bounded: the device was never idle


def test_queue_ms_near_zero_when_the_device_keeps_up(tmp_path):
    records = run_fake(tmp_path, SlowLocal(1.0), np.arange(10) * 30.0)
    assert statistics.median(r["queue_ms"] for r in records) < 3.0
    assert all(r["queue_ms"] >= 0 for r in records)


def test_closed_loop_has_zero_queue_and_its_actual_starts(tmp_path):
    records = run_fake(tmp_path, SlowLocal(3.0), None, samples=5)
    assert [r["queue_ms"] for r in records] == [0.0] * 5
    starts = [r["intended_ms"] for r in records]
    assert starts[0] == 0.0 and all(b - a >= 3.0 for a, b in itertools.pairwise(starts))


def test_writer_keeps_request_order_and_skips_warmups(tmp_path):
    with open(tmp_path / "w.jsonl", "w", buffering=1) as out:
        writer = RecordWriter(out)
        for request in (2, 3, 4):
            writer.expect(request)
        writer.complete(1, record(1))  # a warm-up: never announced
        writer.complete(3, record(3))
        assert (tmp_path / "w.jsonl").read_text() == ""  # 3 waits for 2
        writer.complete(2, record(2))
        writer.flush()
    assert [r["request"] for r in read_lines(tmp_path / "w.jsonl")] == [2, 3]


def test_summary_reports_the_median_queue_and_gates_may_use_it():
    from testbed.config import gates
    from testbed.results import records as results

    records = [
        {
            "offloader": "raw",
            "request": i,
            "sample": i,
            "total_ms": 10.0 + q,
            "queue_ms": q,
            "status": "ok",
            "prediction": 1,
            "label": 1,
            "bytes_up": 800,
        }
        for i, q in enumerate([0.0, 2.0, 40.0])
    ]
    rows = results.complete_records(records, {i: 1 for i in range(3)})
    (summary,) = results.summarize(rows, ["raw"], 1.0, "accuracy")
    assert summary["p50_queue_ms"] == 2.0
    assert "queue_ms" in results.REQUEST_COLUMNS and "p50_queue_ms" in results.SUMMARY_COLUMNS
    assert gates.evaluate("raw.p50_queue_ms < 5", {"raw": summary})[0]
    assert not gates.evaluate("raw.p50_queue_ms < 1", {"raw": summary})[0]


# --------------------------------------------------------- pipelining, timeouts, errors


def test_requests_are_pipelined_and_replies_matched_by_id(tmp_path):
    """Each reply comes 200 ms after its request; 5 requests 10 ms apart finish in
    about 250 ms, not 1 s: the device did not wait for replies."""
    edge = FakeEdge(default=0.2)
    try:
        started = time.monotonic()
        records = run_fake(tmp_path, Sender(), np.arange(5) * 10.0, samples=5, port=edge.port)
        took = time.monotonic() - started
    finally:
        edge.close()
    assert took < 0.6, took
    assert [r["status"] for r in records] == ["ok"] * 5
    assert [r["prediction"] for r in records] == [7] * 5
    assert all(200 <= r["total_ms"] < 400 for r in records), [r["total_ms"] for r in records]
    assert all(r["bytes_up"] == 116 and r["bytes_down"] == 16 + RESULT_STRUCT.size for r in records)


def test_only_uploads_sent_with_nothing_outstanding_feed_the_estimate(tmp_path):
    """Five requests pipelined (only the first found the connection idle), then one
    more after all replies: two uploads measure the link alone."""
    edge = FakeEdge(default=0.2)
    requests, out = make_requests(tmp_path, port=edge.port)
    requests.estimate = LinkEstimate(min_transfer_ms=-1.0)  # keep even tiny uploads
    try:
        for request in range(1, 6):
            requests.issue(Sender(), 0, request, 0, {})
            time.sleep(0.01)
        requests.wait_idle()
        requests.issue(Sender(), 0, 6, 0, {})
        requests.wait_idle()
        requests._feed_estimate()
    finally:
        requests.close()
        out.close()
        edge.close()
    assert len(requests.estimate._samples) == 2


def test_timeouts_give_one_record_each_and_late_replies_are_dropped(tmp_path):
    """Request 2 never gets a reply and request 3's comes after the timeout: each
    still gets exactly one record, and request 3's late reply is not taken for 4's."""
    edge = FakeEdge(delays={2: None, 3: 0.6}, default=0.01)
    try:
        records = run_fake(
            tmp_path, Sender(), np.arange(5) * 150.0, samples=5, port=edge.port, timeout_s=0.3
        )
    finally:
        edge.close()
    assert [r["request"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["status"] for r in records] == ["ok", "timeout", "timeout", "ok", "ok"]
    assert records[1]["error"] == "no reply within 0.3 s"
    assert 300 <= records[1]["total_ms"] < 600
    assert records[3]["total_ms"] < 150  # not the late reply of request 3
    assert edge.connections == 1  # ids match replies: no reconnect needed


def test_a_lost_connection_fails_what_is_in_flight_and_the_next_request_reconnects(tmp_path):
    edge = FakeEdge(delays={1: None})
    requests, out = make_requests(tmp_path, port=edge.port)
    try:
        requests.writer.expect(1)
        requests.issue(Sender(), 0, 1, 0, identity(1))
        conn = requests.conn
        while not edge.requests:
            time.sleep(0.01)
        conn.sock.shutdown(socket.SHUT_RDWR)  # the connection dies under request 1
        requests.wait_idle()
        requests.writer.expect(2)
        requests.issue(Sender(), 0, 2, 0, identity(2))
        requests.wait_idle()
        assert requests.conn is not conn and edge.connections == 2
    finally:
        requests.close()
        out.close()
        edge.close()
    first, second = read_lines(tmp_path / "records.jsonl")
    assert first["status"] == "error" and second["status"] == "ok"


# ----------------------------------------------------------------- the real agents


@pytest.fixture(scope="module")
def edge():
    proc, port = start_edge()
    yield port
    proc.terminate()
    proc.wait(10)


def write_job(folder: Path, port: int, arrival, samples=60, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = {
        "plugin": "fashion_cnn",
        "offloaders": [{"name": n, "params": {}, "label": n} for n in ("raw", "local")],
        "samples": list(range(100, 100 + samples)),
        "edge_host": "127.0.0.1",
        "edge_port": port,
        "timeout_s": 20,
        "threads": 1,
        "warmup": 2,
        "pings": 3,
        "arrival": arrival,
        "seed": 11,
        "records": str(folder / "records.jsonl"),
        "meta": str(folder / "meta.json"),
        **extra,
    }
    (folder / "job.json").write_text(json.dumps(job))
    return folder / "job.json"


def by_offloader(records):
    return {name: [r for r in records if r["offloader"] == name] for name in ("raw", "local")}


def thirds(values):
    n = len(values) // 3
    return statistics.mean(values[:n]), statistics.mean(values[-n:])


def test_light_poisson_load_on_loopback(tmp_path, edge):
    """50 Hz: both offloaders keep up, so requests start on time; the intended times are
    the seeded schedule."""
    job = write_job(tmp_path, edge, {"process": "poisson", "rate_hz": 50})
    assert device_agent.main([str(job)]) == 0
    records = read_lines(tmp_path / "records.jsonl")
    assert len(records) == 120
    assert [r["request"] for r in records] == sorted(r["request"] for r in records)
    assert json.loads((tmp_path / "meta.json").read_text())["arrival"]["rate_hz"] == 50
    for index, (name, mine) in enumerate(by_offloader(records).items()):
        assert len(mine) == 60 and {r["status"] for r in mine} == {"ok"}, name
        assert [r["sample"] for r in mine] == list(range(100, 160))
        expected = poisson_offsets_ms(50, 60, seed=11, offloader=index, device=0)
        assert [r["intended_ms"] for r in mine] == pytest.approx(list(expected), abs=1e-3)
        queue = [r["queue_ms"] for r in mine]
        assert statistics.median(queue) < 2.0, (name, queue)
        assert all(r["total_ms"] >= r["queue_ms"] + r["device_ms"] for r in mine)
        print(
            f"light {name}: achieved {59 / (mine[-1]['intended_ms'] / 1000):.1f} Hz, "
            f"queue_ms p50 {statistics.median(queue):.3f}"
        )
    raw = by_offloader(records)["raw"]
    assert all(r["uplink_ms"] > 0 and r["edge_ms"] > 0 for r in raw)
    assert all(r["bytes_up"] == 16 + 784 for r in raw)


def test_overload_on_loopback_queues_and_latency_grows(tmp_path, edge):
    """5000 Hz, far above what either side serves (about 1 ms per request each): local
    requests wait for the device (queue_ms grows), raw ones for the edge (total_ms
    grows while the device keeps starting them nearly on time)."""
    job = write_job(tmp_path, edge, {"process": "poisson", "rate_hz": 5000}, samples=80)
    assert device_agent.main([str(job)]) == 0
    records = by_offloader(read_lines(tmp_path / "records.jsonl"))
    for index, (name, mine) in enumerate(records.items()):
        assert len(mine) == 80 and {r["status"] for r in mine} == {"ok"}, name
        expected = poisson_offsets_ms(5000, 80, seed=11, offloader=index, device=0)
        assert [r["intended_ms"] for r in mine] == pytest.approx(list(expected), abs=1e-3)
        assert all(r["total_ms"] >= r["queue_ms"] for r in mine)
        early, late = thirds([r["total_ms"] for r in mine])
        assert late > early + 10, (name, early, late)
        print(
            f"overload {name}: queue_ms p50 "
            f"{statistics.median(r['queue_ms'] for r in mine):.2f}, total_ms first third "
            f"{early:.1f}, last third {late:.1f}"
        )
    early, late = thirds([r["queue_ms"] for r in records["local"]])
    assert late > early + 10, (early, late)
    local = records["local"]
    assert all(b["queue_ms"] >= a["queue_ms"] - 2 for a, b in itertools.pairwise(local))


def test_closed_loop_job_without_the_new_keys(tmp_path, edge):
    """A job file from before open loop (no arrival, seed, device keys) runs closed."""
    job = write_job(tmp_path, edge, None, samples=10)
    data = json.loads(job.read_text())
    for key in ("arrival", "seed"):
        del data[key]
    job.write_text(json.dumps(data))
    assert device_agent.main([str(job)]) == 0
    records = read_lines(tmp_path / "records.jsonl")
    assert len(records) == 20 and {r["status"] for r in records} == {"ok"}
    assert all(r["queue_ms"] == 0.0 and r["device"] == 0 for r in records)


def agent(job: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.agents.device", str(job)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate, timeout_s: float, proc=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc is None or proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.slow
def test_two_device_processes_start_each_offloader_together(tmp_path, edge):
    barrier = tmp_path / "barrier"
    arrival = {"process": "poisson", "rate_hz": 100}
    extra = {"devices": 2, "barrier": str(barrier)}
    jobs = [
        write_job(tmp_path / f"d{i}", edge, arrival, samples=20, device_index=i, **extra)
        for i in range(2)
    ]
    first = agent(jobs[0])
    second = None
    try:
        wait_for(lambda: (barrier / "0.0").exists(), 120, first)
        time.sleep(1.0)
        assert count_lines(tmp_path / "d0" / "records.jsonl") == 0  # held at the barrier
        second = agent(jobs[1])
        assert first.wait(120) == 0, first.stderr.read().decode()
        assert second.wait(120) == 0, second.stderr.read().decode()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(p.name for p in barrier.iterdir()) == ["0.0", "0.1", "1.0", "1.1"]
    schedules = []
    for i in range(2):
        records = read_lines(tmp_path / f"d{i}" / "records.jsonl")
        assert len(records) == 40 and {r["device"] for r in records} == {i}
        assert {r["status"] for r in records} == {"ok"}
        schedules.append([r["intended_ms"] for r in records])
    assert schedules[0] != schedules[1]  # independent arrivals


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_agent_exits_promptly_with_requests_in_flight(tmp_path, sig, status):
    """An edge that never answers: the agent is stopped with requests in flight and a
    reply thread blocked on the socket, and must exit within seconds."""
    edge = FakeEdge(default=None)
    try:
        job = write_job(tmp_path, edge.port, {"process": "poisson", "rate_hz": 50}, samples=500)
        data = json.loads(job.read_text())
        data["warmup"] = 0  # a warm-up would wait for its reply (the timeout) first
        job.write_text(json.dumps(data))
        proc = agent(job)
        try:
            wait_for(lambda: len(edge.requests) >= 5, 120, proc)
            proc.send_signal(sig)
            assert proc.wait(5) == status, proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        edge.close()
    assert count_lines(tmp_path / "records.jsonl") == 0  # nothing was answered


# ------------------------------------------------------------------- through Mininet


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_poisson_run_through_mininet(tmp_path):
    """The runner passes the arrival and seed to the agent: a light open-loop run of
    ci_fashion on its 1 Mbit/s link, with the seeded schedule in requests.csv."""
    import csv

    import yaml

    from testbed.config.scenario import load_scenario
    from testbed.experiment import runner

    data = yaml.safe_load((ROOT / "scenarios" / "ci_fashion.yaml").read_text())
    data.update(samples=20, arrival={"process": "poisson", "rate_hz": 10})
    path = tmp_path / "poisson.yaml"
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    result = runner.run(scenario, tmp_path / "out", progress=False, fidelity=False)
    assert result.gate_failures == []
    with open(tmp_path / "out" / "requests.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    for index, name in enumerate(("local", "raw")):
        mine = [r for r in rows if r["offloader"] == name]
        expected = poisson_offsets_ms(10, 20, seed=scenario.seed, offloader=index)
        got = [float(r["intended_ms"]) for r in mine]
        assert got == pytest.approx(list(expected), abs=1e-3), name
        assert statistics.median(float(r["queue_ms"]) for r in mine) < 5
        assert {r["device"] for r in mine} == {"0"}
    with open(tmp_path / "out" / "summary.csv") as handle:
        summary = {r["offloader"]: r for r in csv.DictReader(handle)}
    assert float(summary["raw"]["p50_queue_ms"]) < 5
    prefix = json.loads((tmp_path / "out" / "environment.json").read_text())["run_prefix"]
    assert leftovers(prefix) == []
