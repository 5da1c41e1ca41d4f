"""A lost edge, seen from the device agent: a real TCP server on loopback answers a few
requests, then resets or closes the connection (after an ERROR frame, or not) and stops
listening. The request in flight is an error with its reason in one line, every request
not started is `not_run`, and the agent exits 1 with one line and no traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from testbed.agents import device as device_agent
from testbed.agents.device_io import EdgeLost
from testbed.agents.protocol import (
    RESULT_STRUCT,
    ConnectionClosed,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    encode_error,
    encode_json,
    read_frame,
)
from tests.mininet_utils import ROOT
from tests.test_device_agent_openloop import Sender, make_requests, read_lines, write_job


class DyingEdge:
    """Answers HELLO, PING and its first `answer` REQUESTs at once; on the next REQUEST
    it stops listening (a reconnect is refused) and ends the connection: `reset` (RST),
    `close` (FIN) or `error` (an ERROR frame for no request, then FIN)."""

    def __init__(self, answer: int, how: str) -> None:
        self.answer, self.how = answer, how
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[int] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(ConnectionClosed, ProtocolError, OSError):
            while True:
                frame = read_frame(conn)
                if frame.type == MessageType.HELLO:
                    described = [{} for _ in frame.json()["offloaders"]]
                    conn.sendall(encode_json(MessageType.HELLO_OK, {"offloaders": described}))
                elif frame.type == MessageType.PING:
                    conn.sendall(encode(MessageType.PONG, request=frame.request))
                elif frame.type == MessageType.REQUEST:
                    self.requests.append(frame.request)
                    if len(self.requests) > self.answer:
                        self._die(conn)
                        return
                    result = RESULT_STRUCT.pack(frame.received_ns, 0.0, 0.0, time.monotonic_ns(), 7)
                    conn.sendall(encode(MessageType.RESULT, result, frame.offloader, frame.request))

    def _die(self, conn: socket.socket) -> None:
        self.close()
        if self.how == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.how == "error":
            conn.sendall(encode_error(ErrorCode.BUSY, "over its memory budget"))
        if self.how != "reset":
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()

    def close(self) -> None:
        """Stop listening: shut down first, which also wakes the blocked accept()."""
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def run_until_lost(tmp_path, edge: DyingEdge, offsets=None, samples: int = 6):
    """Closed (or open) loop requests until the edge is lost: the EdgeLost and records."""
    requests, out = make_requests(tmp_path, port=edge.port, timeout_s=5.0)
    ids = list(range(samples))
    try:
        with pytest.raises(EdgeLost) as lost:
            device_agent.run_offloader(
                requests, Sender(), 0, ids, ids, ids, 1, offsets, {"offloader": "f", "device": 0}
            )
    finally:
        requests.close()
        out.close()
        edge.close()
    return str(lost.value), read_lines(tmp_path / "records.jsonl"), requests.writer.announced


@pytest.mark.parametrize(
    "how, reason",
    [
        ("reset", "edge connection lost: reset by peer"),
        ("close", "edge connection lost: closed by the edge"),
        ("error", "edge connection lost: closed by the edge after its ERROR: over its memory"),
    ],
)
def test_the_request_in_flight_is_an_error_and_the_rest_are_not_started(tmp_path, how, reason):
    lost, records, announced = run_until_lost(tmp_path, DyingEdge(3, how))
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "error"]
    assert records[3]["error"].startswith(reason), records[3]["error"]
    assert "\n" not in records[3]["error"]
    assert lost.startswith(reason) and "connection refused" in lost, lost
    assert announced == {1, 2, 3, 4}  # request 5 was never started


def test_open_loop_finds_the_lost_edge_without_waiting_for_the_next_start(tmp_path):
    """The 5th request is due 20 s after the first: the lost edge is found at once."""
    started = time.monotonic()
    offsets = np.array([0.0, 10.0, 20.0, 30.0, 20_000.0, 20_010.0])
    lost, records, _ = run_until_lost(tmp_path, DyingEdge(3, "reset"), offsets)
    assert time.monotonic() - started < 5
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "error"]
    assert "reset by peer" in lost


def test_not_run_records_cover_every_request_not_started(tmp_path):
    job = write_job(tmp_path, 1, {"process": "poisson", "rate_hz": 10}, samples=4)
    parsed = device_agent.DeviceJob.read(job)  # raw then local, 2 warm-ups each
    labels = np.arange(200) % 10
    records = device_agent.not_run_records(parsed, labels, {3, 4}, "edge gone")
    assert [r.request for r in records] == [5, 6, 9, 10, 11, 12]
    assert [r.offloader for r in records] == ["raw"] * 2 + ["local"] * 4
    assert {r.status for r in records} == {"not_run"} and records[0].total_ms is None
    assert records[0].error == "not run: edge gone" and records[0].label == 102 % 10
    expected = device_agent.poisson_offsets_ms(10, 4, 11, 1)
    assert [r.intended_ms for r in records[2:]] == pytest.approx(list(expected))


def test_the_agent_records_what_it_lost_and_exits_1_with_one_line(tmp_path):
    """The whole agent (a process): raw then local, 10 samples each, one warm-up; the
    edge answers the warm-up and 3 requests and resets the 4th."""
    edge = DyingEdge(4, "reset")
    try:
        job = write_job(tmp_path, edge.port, {"process": "closed"}, samples=10)
        data = json.loads(job.read_text())
        data["warmup"] = 1
        job.write_text(json.dumps(data))
        proc = subprocess.run(
            [sys.executable, "-m", "testbed.agents.device", str(job)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        edge.close()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("device agent: edge connection lost: reset by peer; cannot reach")
    assert last.endswith("; 16 requests not run"), last
    records = read_lines(tmp_path / "records.jsonl")
    assert [r["request"] for r in records] == [*range(2, 12), *range(13, 23)]
    assert [r["status"] for r in records] == ["ok"] * 3 + ["error"] + ["not_run"] * 16
    assert records[3]["error"] == "edge connection lost: reset by peer"
    assert all(r["total_ms"] is None for r in records[4:])
    assert {r["offloader"] for r in records[10:]} == {"local"}


def test_an_edge_never_reached_leaves_every_request_not_run(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed on leaving: nobody listens there
    job = write_job(tmp_path, port, {"process": "closed"}, samples=5)
    assert device_agent.main([str(job)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"device agent: cannot reach the edge at 127.0.0.1:{port}: connection refused; "
        "10 requests not run"
    )
    records = read_lines(tmp_path / "records.jsonl")
    assert len(records) == 10 and {r["status"] for r in records} == {"not_run"}
    assert not (tmp_path / "meta.json").exists()
