"""What the device agent reads and writes besides its job: its connection to the edge
agent (HELLO, the round trip, frames) and its records file (in request order)."""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections import deque

from testbed.agents.contract import RequestRecord
from testbed.agents.protocol import (
    HEADER,
    ConnectionClosed,
    MessageType,
    ProtocolError,
    TruncatedFrame,
    connect,
    decode_error,
    encode,
    encode_json,
    read_frame,
)

__all__ = ["Connection", "EdgeLost", "RecordWriter", "lost_reason"]


class EdgeLost(Exception):
    """The edge cannot be reached any more (refused, gone, HELLO refused): the agent
    stops, and the requests it did not start are recorded as `not_run`."""


def lost_reason(exc: BaseException, last_error: str = "") -> str:
    """One line saying why a connection to the edge ended, for a request's `error`:
    `edge connection lost: reset by peer`. `last_error`: the message of an ERROR frame
    the edge sent just before (it closes some connections after one)."""
    if isinstance(exc, ConnectionClosed):
        why = "closed by the edge"
    elif isinstance(exc, ConnectionResetError):
        why = "reset by peer"
    elif isinstance(exc, BrokenPipeError):
        why = "broken pipe (the edge closed it)"
    elif isinstance(exc, TruncatedFrame):
        why = f"closed mid-reply ({exc})"
    elif isinstance(exc, TimeoutError):
        why = "a reply stalled mid-frame (timed out)"
    elif isinstance(exc, ProtocolError):
        why = f"unreadable reply: {exc}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    after = f" after its ERROR: {last_error}" if last_error else ""
    return f"edge connection lost: {why}{after}"


class Connection:
    """One TCP connection to the edge, after a successful HELLO. It counts the bytes of
    its streams so far: where each request sits in them, so that a packet capture can
    attribute segments to requests (--capture)."""

    def __init__(self, host: str, port: int, hello: dict, timeout_s: float) -> None:
        self.sock = connect(host, port, timeout_s)
        self.local_port = self.sock.getsockname()[1]
        self.sent = self.received = 0
        self.receiver: threading.Thread | None = None
        self.last_error = ""  # an ERROR frame for no request in flight (lost_reason)
        try:
            self.send(encode_json(MessageType.HELLO, hello))
            reply = self.read()
        except BaseException:
            self.sock.close()
            raise
        if reply.type == MessageType.ERROR:
            self.sock.close()
            raise RuntimeError(f"edge refused HELLO: {decode_error(reply.payload)[1]}")
        self.described = reply.json()["offloaders"]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def read(self):
        frame = read_frame(self.sock)
        self.received += HEADER.size + len(frame.payload)
        return frame

    def rtt_ms(self, count: int) -> float:
        samples = []
        for i in range(count):
            start = time.monotonic_ns()
            self.send(encode(MessageType.PING, request=i))
            reply = self.read()
            samples.append((reply.received_ns - start) / 1e6)
        return statistics.median(samples)

    def close(self) -> None:
        """Never blocks for long: the BYE gets a second, then the socket is shut down,
        which also ends a receiver thread blocked on it."""
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self.sock.settimeout(1.0)
            self.sock.sendall(encode(MessageType.BYE))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class RecordWriter:
    """Measured requests' records, one JSON line each, in request order: a request that
    completes before an earlier one (a local-only one behind offloaded ones) waits for
    it. Warm-up requests are never announced, so never written."""

    def __init__(self, out) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._order: deque[int] = deque()
        self._expected: set[int] = set()
        self._done: dict[int, RequestRecord] = {}
        self.announced: set[int] = set()  # every request started: the rest were not run

    def expect(self, request: int) -> None:
        with self._lock:
            self._order.append(request)
            self._expected.add(request)
            self.announced.add(request)

    def expects(self, request: int) -> bool:
        with self._lock:
            return request in self._expected

    def complete(self, request: int, record: RequestRecord) -> None:
        with self._lock:
            if request not in self._expected:
                return
            self._done[request] = record
            while self._order and self._order[0] in self._done:
                self._write(self._order.popleft())

    def flush(self) -> None:
        """After an interruption: what completed, even behind a request that never will."""
        with self._lock:
            for request in [r for r in self._order if r in self._done]:
                self._order.remove(request)
                self._write(request)

    def _write(self, request: int) -> None:
        self._expected.discard(request)
        self.out.write(self._done.pop(request).to_json() + "\n")
