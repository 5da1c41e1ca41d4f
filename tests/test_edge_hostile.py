"""The edge agent under hostile load, on loopback: each attack runs while a valid device
pings and sends requests, and must leave the agent's memory within its budget, the
device's PING answered within 1 s and its requests within twice their unloaded time
(plus 10 ms: these machines are shared and a request here takes about a millisecond),
and the attacker answered or cut off, not served at the device's expense.

The agent is a real process (`tests.helpers.start_edge`) with short deadlines and a
small connection cap so that each attack runs in seconds; the same code paths serve
the defaults (docs/design.md, "Limits").
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from testbed.agents import loadgen
from testbed.agents.protocol import (
    HEADER,
    MAGIC,
    VERSION,
    ErrorCode,
    MessageType,
    decode_error,
    encode,
    encode_json,
    read_frame,
)
from tests.helpers import start_edge

CAP = 48  # connections
FRAME_S = 2.0
SEND_S = 2.0
RSS_GROWTH_MB = 200
PING_S = 1.0
PLUGIN = "fashion_cnn"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Edge:
    proc: object
    port: int
    pid: int
    rss0: float = 0.0
    request_ms: float = 0.0  # unloaded median
    bodies: dict[str, list[bytes]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def edge():
    proc, port = start_edge(
        None,
        "--max-connections",
        str(CAP),
        "--frame-s",
        str(FRAME_S),
        "--send-s",
        str(SEND_S),
        "--idle-s",
        "30",
        "--memory-budget",
        str(32 * 1024 * 1024),
    )
    e = Edge(proc, port, proc.pid)
    e.bodies["raw"] = loadgen.payloads(PLUGIN, "raw", {})
    device = loadgen.Device("127.0.0.1", port, PLUGIN, "raw", {})
    loadgen.valid_request_ms(device, e.bodies["raw"][0], 20)  # warm
    e.request_ms = float(np.median(loadgen.valid_request_ms(device, e.bodies["raw"][0], 30)))
    device.close()
    e.rss0 = rss_mb(e.pid)
    yield e
    proc.terminate()
    proc.wait(10)
    assert proc.returncode == 0, "the edge agent must stop cleanly on SIGTERM"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def hello(sock: socket.socket, name: str, params: dict | None = None):
    spec = {"plugin": PLUGIN, "offloaders": [{"name": name, "params": params or {}}]}
    sock.sendall(encode_json(MessageType.HELLO, spec))
    return read_frame(sock)


def header(kind: MessageType, length: int, offloader: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, int(kind), offloader, 1, length)


def answer(sock: socket.socket) -> str:
    """What the edge said: an error code's name, another type's name, or how it ended."""
    try:
        frame = read_frame(sock)
    except Exception as exc:  # reset, closed, timed out
        return type(exc).__name__
    if frame.type == MessageType.ERROR:
        return ErrorCode(decode_error(frame.payload)[0]).name
    return frame.type.name


@dataclass
class Attack:
    outcomes: list[str] = field(default_factory=list)
    frames: int = 0  # hostile frames or connections sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, outcome: str) -> None:
        with self.lock:
            self.outcomes.append(outcome)
            self.frames += 1


@dataclass
class Measured:
    pings_ms: list[float]
    requests_ms: list[float]
    rss_peak_mb: float
    attack_cpu_s: float


def _attack_process(attack: str, port: int, stop, ready, results) -> None:
    record = Attack()
    ready.set()
    globals()[attack](port, stop, record)
    results.put((record.frames, record.outcomes))


def under_attack(edge: Edge, attack: Callable[[int, threading.Event, Attack], None]):
    """Run `attack` in its own process (as an attacker on another machine would: not
    sharing the valid device's interpreter) while a valid device connects, pings and
    requests."""
    context = multiprocessing.get_context("spawn")
    stop, ready, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(
        target=_attack_process, args=(attack.__name__, edge.port, stop, ready, results)
    )
    peak = [rss_mb(edge.pid)]
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mb(edge.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    attacker.start()
    assert ready.wait(60), "the attacker did not start"
    cpu0 = cpu_s(edge.pid)
    sampler.start()
    time.sleep(1.0)  # the attack is under way
    pings, requests = [], []
    try:
        device = loadgen.Device("127.0.0.1", edge.port, PLUGIN, "raw", {})
        for i in range(10):
            pings.append(device.ping())
            ms, error = device.request(edge.bodies["raw"][i % 8], i + 1)
            assert error is None, f"a valid request was refused during the attack: {error}"
            requests.append(ms)
            time.sleep(0.05)
        device.close()
    finally:
        time.sleep(0.5)
        stop.set()
        frames, outcomes = results.get(timeout=30)
        attacker.join(15)
        sampling.set()
        sampler.join(5)
    record = Attack(outcomes, frames)
    return record, Measured(pings, requests, peak[0], cpu_s(edge.pid) - cpu0)


def check(edge: Edge, measured: Measured, record: Attack | None = None) -> None:
    growth = measured.rss_peak_mb - edge.rss0
    frames = max(record.frames, 1) if record else 1
    print(  # the figures docs/design.md quotes (pytest -s)
        f"\n  RSS +{growth:.0f} MB, PING max {max(measured.pings_ms):.1f} ms, request median "
        f"{np.median(measured.requests_ms):.2f} ms (unloaded {edge.request_ms:.2f}), "
        f"edge CPU {measured.attack_cpu_s:.2f} s for {frames} hostile frames/connections"
    )
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB"
    assert max(measured.pings_ms) < PING_S * 1e3, f"PING took {max(measured.pings_ms):.0f} ms"
    loaded = float(np.median(measured.requests_ms))
    bound = 2 * edge.request_ms + 10
    assert loaded <= bound, f"valid request {loaded:.1f} ms; unloaded {edge.request_ms:.1f} ms"
    assert edge.proc.poll() is None, "the edge agent died"


# ---------------------------------------------------------------------------- attacks


def claimed_lengths(port, stop, record):
    """Headers that claim 60 MiB payloads (HELLO, a REQUEST before and after HELLO),
    then nothing: each must be refused from its header, with no memory spent on it."""
    while not stop.is_set():
        socks = []
        for i in range(20):
            try:
                sock = connect(port)
                if i % 3 == 2:
                    hello(sock, "raw")
                kind = MessageType.HELLO if i % 3 == 0 else MessageType.REQUEST
                sock.sendall(header(kind, 60 * 1024 * 1024))
                socks.append(sock)
            except OSError as exc:
                record.saw(type(exc).__name__)
        for sock in socks:
            record.saw(answer(sock))
            sock.close()


def slowloris(port, stop, record):
    """More connections than the cap, each sending a header a byte at a time."""
    socks = []
    for _ in range(CAP + 20):
        with contextlib.suppress(OSError):
            sock = connect(port)
            sock.sendall(MAGIC[:1])
            socks.append(sock)
    record.frames = len(socks)
    while not stop.is_set():
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"C")
        stop.wait(0.5)
    for sock in socks:
        sock.settimeout(0.2)
        record.outcomes.append(answer(sock))
        sock.close()


def jpeg_with_comments(extra: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    segment = b"\xff\xfe" + struct.pack(">H", 65535) + b"x" * 65533
    return jpeg[:2] + segment * (extra // len(segment)) + jpeg[2:]


def image_bombs(port, stop, record):
    """A 28x28 JPEG behind megabytes of COM markers, and one just within the bound."""
    big = jpeg_with_comments(4 * 1024 * 1024)
    while not stop.is_set():
        with contextlib.suppress(OSError), connect(port) as sock:
            assert hello(sock, "jpeg", {"quality": 90}).type == MessageType.HELLO_OK
            # refused from its header: the connection may close under the rest of it
            with contextlib.suppress(OSError):
                sock.sendall(encode(MessageType.REQUEST, big, request=1))
            record.saw(answer(sock))


def hello_bombs(port, stop, record):
    """A HELLO naming 1,000 offloaders, one nested 50,000 deep, one too long to read."""
    many = {"plugin": PLUGIN, "offloaders": [{"name": "raw"}] * 1000}
    deep = b"[" * 50_000 + b"]" * 50_000
    while not stop.is_set():
        for payload in (json.dumps(many).encode(), deep, b"[" * 200_000):
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(encode(MessageType.HELLO, payload))
                record.saw(answer(sock))


def entropy_bombs(port, stop, record):
    """Legal entropy blobs far larger than DeepCOD's measurements: 16 M symbols (2 MB)
    refused from the header; 30 K symbols (within the frame bound) refused before
    decoding by their shape."""
    from kernels import entropy

    huge = entropy.encode(np.zeros((1, 256, 256, 256), np.uint8))
    small = entropy.encode(np.zeros((1, 4, 7, 1000), np.uint8))
    while not stop.is_set():
        with contextlib.suppress(OSError), connect(port) as sock:
            assert hello(sock, "deepcod", {"ratio": 0.25}).type == MessageType.HELLO_OK
            sock.sendall(encode(MessageType.REQUEST, small, request=1))
            record.saw(answer(sock))
            sock.sendall(encode(MessageType.REQUEST, huge, request=2))
            record.saw(answer(sock))


def bad_numbers(port, stop, record):
    """Float features with NaN/Inf (neurosurgeon), a coded payload with scale 3e38 (jalad)."""
    from testbed.models import plugins
    from testbed.offloaders.split import feature_shape, pack_coded, pack_features

    plugin = plugins.get(PLUGIN)
    shape = feature_shape(plugin, 1)
    nan = np.full(shape, np.nan, np.float32)
    coded = bytearray(pack_coded(1, 4, np.ones(shape, np.float32)))
    struct.pack_into("<f", coded, 2, 3e38)
    while not stop.is_set():
        with contextlib.suppress(OSError), connect(port) as sock:
            assert hello(sock, "neurosurgeon").type == MessageType.HELLO_OK
            sock.sendall(encode(MessageType.REQUEST, pack_features(1, nan), request=1))
            record.saw(answer(sock))
        with contextlib.suppress(OSError), connect(port) as sock:
            assert hello(sock, "jalad").type == MessageType.HELLO_OK
            sock.sendall(encode(MessageType.REQUEST, bytes(coded), request=1))
            record.saw(answer(sock))


def never_reads(port, stop, record):
    """PINGs sent without ever reading the PONGs, on a tiny receive window: the edge's
    send times out and it must close that connection, not block on it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    ping = encode(MessageType.PING, b"x" * 64)
    sent = 0
    with contextlib.suppress(OSError):
        while not stop.is_set() and sent < 200_000:
            sock.sendall(ping * 100)
            sent += 100
    record.frames = sent
    record.outcomes.append("closed by the edge" if sent < 200_000 else "kept")
    sock.close()


# ------------------------------------------------------------------------------ tests


def test_unloaded_baseline(edge):
    assert 0 < edge.request_ms < 100, edge.request_ms


def test_claimed_lengths_cost_nothing(edge):
    record, measured = under_attack(edge, claimed_lengths)
    check(edge, measured, record)
    assert record.frames >= 20
    assert set(record.outcomes) <= {"BAD_HELLO", "NOT_READY", "BAD_PAYLOAD"}, record.outcomes


def test_slowloris_beyond_the_cap(edge):
    record, measured = under_attack(edge, slowloris)
    check(edge, measured, record)
    assert record.frames > CAP
    # every stalled connection was cut: at the cap (evicted) or at its frame deadline
    assert set(record.outcomes) <= {
        "ConnectionClosed",
        "TruncatedFrame",
        "BAD_FRAME",
        "ConnectionResetError",
    }, record.outcomes


@pytest.mark.parametrize(
    "attack, answers, frames",
    [
        (image_bombs, {"BAD_PAYLOAD"}, 3),
        (hello_bombs, {"BAD_HELLO"}, 3),
        (entropy_bombs, {"BAD_PAYLOAD"}, 2),
        (bad_numbers, {"BAD_PAYLOAD"}, 2),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_bombs_are_refused_cheaply(edge, attack, answers, frames):
    """Each hostile frame is answered with its refusal, for under 0.3 s of the agent's CPU."""
    record, measured = under_attack(edge, attack)
    check(edge, measured, record)
    assert record.frames >= frames and set(record.outcomes) == answers, record.outcomes
    assert measured.attack_cpu_s / record.frames < 0.3


def test_a_peer_that_never_reads_is_closed(edge):
    record, measured = under_attack(edge, never_reads)
    check(edge, measured, record)
    assert record.outcomes == ["closed by the edge"], (record.outcomes, record.frames)


def test_a_frame_must_arrive_within_its_deadline(edge):
    with connect(edge.port) as sock:
        sock.sendall(header(MessageType.PING, 8))
        start = time.monotonic()
        reply = answer(sock)
        took = time.monotonic() - start
    assert reply == "BAD_FRAME" and FRAME_S - 0.5 < took < FRAME_S + 2, (reply, took)


def test_concurrent_valid_devices(edge):
    """N valid devices at once: all answered; throughput and p99 reported."""
    load = loadgen.run("127.0.0.1", edge.port, PLUGIN, "raw", {}, 16, 25, edge.bodies["raw"])
    print(f"\n16 devices x 25 requests: {load}")
    assert not load.errors and load.ok == 400
    assert load.throughput_rps > 50, load
