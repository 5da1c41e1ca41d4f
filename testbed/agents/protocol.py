"""The binary wire protocol between device and edge agents.

Every message is one frame: a fixed 16-byte header, then `length` payload bytes.

    offset size  field
    0      4     magic b"DCOD"
    4      1     version (1)
    5      1     message type (MessageType)
    6      2     offloader index (into the HELLO's offloader list)
    8      4     request id
    12     4     payload length, at most MAX_PAYLOAD

All integers are big-endian. Payloads are raw bytes, fixed structs or UTF-8 JSON;
nothing is ever unpickled. A frame with a bad header cannot be resynchronised,
so the edge answers it with an ERROR frame and closes that connection only.
"""

from __future__ import annotations

import enum
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAGIC = b"DCOD"
VERSION = 1
HEADER = struct.Struct("!4sBBHII")
MAX_PAYLOAD = 64 * 1024 * 1024  # larger than any input or feature map we ship
MAX_JSON = 1024 * 1024
MAX_JSON_DEPTH = 8  # a HELLO nests 3 deep (object, offloader list, params)


class MessageType(enum.IntEnum):
    HELLO = 1  # device -> edge: JSON {"plugin", "offloaders": [{"name", "params"}]}
    HELLO_OK = 2  # edge -> device: JSON {"offloaders": [describe()...]}
    REQUEST = 3  # device -> edge: the offloader's payload
    RESULT = 4  # edge -> device: TIMING_STRUCT, then the prediction (testbed.models.predictions)
    ERROR = 5  # either way: u16 code + UTF-8 message
    PING = 6  # device -> edge: echoed back as PONG, to measure the round trip
    PONG = 7
    BYE = 8


class ErrorCode(enum.IntEnum):
    BAD_FRAME = 1  # header unreadable; connection is closed after the ERROR
    BAD_PAYLOAD = 2  # the offloader rejected the payload; connection stays usable
    BAD_HELLO = 3
    NOT_READY = 4  # REQUEST before a successful HELLO
    INTERNAL = 5
    BUSY = 6  # refused for now (connection cap, memory budget); the connection is closed


# RESULT: edge monotonic ns when the request's last byte arrived, decode ms,
# edge compute ms, edge monotonic ns just before sending the result (TIMING_STRUCT),
# then the prediction as `testbed.models.predictions.encode` writes it for the plugin's task:
# for a classifier an int32, so that its whole RESULT payload is RESULT_STRUCT.
TIMING_STRUCT = struct.Struct("!qddq")
RESULT_STRUCT = struct.Struct("!qddqi")
ERROR_STRUCT = struct.Struct("!H")


class ProtocolError(Exception):
    """The peer sent something that breaks the protocol."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.request = 0  # the frame's request id where its header was read


class ConnectionClosed(Exception):
    """The peer closed the connection at a frame boundary (a clean end)."""


class TruncatedFrame(ProtocolError):
    """The peer closed the connection in the middle of a frame."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_FRAME, message)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(payload: bytes) -> int:
    """How deep a JSON text nests arrays and objects, counted without parsing it (the
    parser recurses, so a deep enough text is refused before it is parsed)."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', payload), np.uint8)
    steps = np.isin(bare, _OPENERS).astype(np.int32) - np.isin(bare, _CLOSERS)
    return int(np.cumsum(steps).max(initial=0))


_OPENERS = np.frombuffer(b"[{", np.uint8)
_CLOSERS = np.frombuffer(b"]}", np.uint8)


@dataclass
class Frame:
    type: MessageType
    offloader: int
    request: int
    payload: bytes
    received_ns: int = 0  # CLOCK_MONOTONIC when the last byte arrived

    def json(self, max_depth: int = MAX_JSON_DEPTH) -> dict:
        if len(self.payload) > MAX_JSON:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "JSON payload too large")
        depth = json_depth(self.payload)
        if depth > max_depth:
            raise ProtocolError(
                ErrorCode.BAD_PAYLOAD, f"JSON nested {depth} deep; at most {max_depth}"
            )
        try:
            value = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, f"payload is not UTF-8 JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "JSON payload is not an object")
        return value


def encode(type: MessageType, payload: bytes = b"", offloader: int = 0, request: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, int(type), offloader, request, len(payload)) + payload


def encode_json(type: MessageType, value: dict, **kw) -> bytes:
    return encode(type, json.dumps(value, separators=(",", ":")).encode(), **kw)


def encode_error(code: ErrorCode, message: str, request: int = 0) -> bytes:
    text = message.encode("utf-8", "replace")[:4000]
    return encode(MessageType.ERROR, ERROR_STRUCT.pack(int(code)) + text, request=request)


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < ERROR_STRUCT.size:
        return int(ErrorCode.INTERNAL), "malformed error frame"
    (code,) = ERROR_STRUCT.unpack_from(payload)
    return code, payload[ERROR_STRUCT.size :].decode("utf-8", "replace")


def parse_header(header: bytes) -> tuple[MessageType, int, int, int]:
    magic, version, kind, offloader, request, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"protocol version {version}, expected {VERSION}")
    try:
        kind = MessageType(kind)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown message type {kind}") from None
    if length > MAX_PAYLOAD:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload length {length} exceeds {MAX_PAYLOAD}")
    return kind, offloader, request, length


CHUNK = 64 * 1024  # a payload is read, stored and charged this much at a time


class Refused(ProtocolError):
    """The frame's header is valid but the receiver will not take it (too long for its
    message type or offloader, a budget spent). `drained`: its payload was read and
    dropped without being stored, so the stream is still in step and the connection may
    stay open; otherwise the connection must be closed after the ERROR answer."""

    def __init__(self, code: ErrorCode, message: str, drain: bool = False) -> None:
        super().__init__(code, message)
        self.drain = drain
        self.drained = False


class FrameTimeout(ProtocolError):
    """A frame that started did not complete within its deadline (a slow or stalled
    sender); the connection is closed after the ERROR answer."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_FRAME, message)


class IdleTimeout(Exception):
    """No frame started within the idle deadline."""


class Budget:
    """Payload bytes held by frames that arrived and are not yet handled, across every
    connection of an agent: `take` refuses beyond the limit, so memory is spent only on
    bytes that arrived and never beyond the budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise Refused(
                    ErrorCode.BUSY,
                    f"the edge holds {self.used} bytes of unhandled frames; its memory "
                    f"budget is {self.limit}: try again later",
                )
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


# the largest payload a frame may claim given its header: raise Refused to refuse it
Admit = Callable[[MessageType, int, int], None]


class _Reader:
    """Reads one frame from a socket against an idle deadline (until its first byte) and
    a frame deadline (from its first byte to its last); None leaves the socket's own
    timeout in force, as the device agent wants."""

    def __init__(self, sock: socket.socket, idle_s: float | None, frame_s: float | None):
        self.sock = sock
        self.frame_s = frame_s
        self.deadline: float | None = None
        if idle_s is not None:
            sock.settimeout(idle_s)

    def started(self) -> None:
        if self.frame_s is not None:
            self.deadline = time.monotonic() + self.frame_s

    def recv(self, n: int) -> bytes:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise FrameTimeout(f"frame not complete within {self.frame_s:g} s")
            self.sock.settimeout(left)
        try:
            return self.sock.recv(n)
        except TimeoutError:
            if self.deadline is None and self.frame_s is not None:
                raise IdleTimeout() from None
            if self.deadline is not None:
                raise FrameTimeout(f"frame not complete within {self.frame_s:g} s") from None
            raise

    def exact(self, n: int, started: bool, store: bool = True, budget: Budget | None = None):
        """n bytes (b"" when not stored), read CHUNK at a time: a claimed length costs
        nothing until its bytes arrive."""
        buf = bytearray()
        got = 0
        try:
            while got < n:
                chunk = self.recv(min(n - got, CHUNK))
                if not chunk:
                    if got == 0 and not started:
                        raise ConnectionClosed()
                    raise TruncatedFrame(f"connection closed after {got} of {n} bytes of a frame")
                if not started:
                    started = True
                    self.started()
                got += len(chunk)
                if store:
                    if budget is not None:
                        budget.take(len(chunk))
                    buf += chunk
        except BaseException:
            if budget is not None:
                budget.give(len(buf))
            raise
        return bytes(buf)


def read_frame(
    sock: socket.socket,
    *,
    admit: Admit | None = None,
    budget: Budget | None = None,
    idle_s: float | None = None,
    frame_s: float | None = None,
) -> Frame:
    """One frame. `admit(type, offloader, length)` judges the header before a payload byte
    is read; a `Refused` with `drain` has its payload read and dropped (never stored),
    within the frame deadline. Stored payload bytes are taken from `budget` as they
    arrive; the caller gives `len(frame.payload)` back once the frame is handled."""
    reader = _Reader(sock, idle_s, frame_s)
    kind, offloader, request, length = parse_header(reader.exact(HEADER.size, False))
    try:
        if admit is not None:
            try:
                admit(kind, offloader, length)
            except Refused as refused:
                if refused.drain and length:
                    reader.exact(length, True, store=False)
                refused.drained = refused.drain
                raise
        payload = reader.exact(length, True, budget=budget) if length else b""
    except ProtocolError as exc:  # answered with the request's id, so the device can match it
        exc.request = request
        raise
    return Frame(kind, offloader, request, payload, time.monotonic_ns())


CC_ENV = "DEEPCOD_TCP_CC"  # set by the topology: the scenario's congestion control


def set_congestion_control(sock: socket.socket) -> socket.socket:
    """The scenario's congestion control, where the namespace default could not be set
    (see OffloadTopology); every TCP socket the testbed opens in a host calls this."""
    algorithm = os.environ.get(CC_ENV)
    if algorithm:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())
    return sock


def tune(sock: socket.socket) -> socket.socket:
    """TCP_NODELAY (requests are single writes) and the congestion control."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return set_congestion_control(sock)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Congestion control is chosen before the handshake, as it must be."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tune(sock)
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
