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
import socket
import struct
import time
from dataclasses import dataclass

MAGIC = b"DCOD"
VERSION = 1
HEADER = struct.Struct("!4sBBHII")
MAX_PAYLOAD = 64 * 1024 * 1024  # larger than any input or feature map we ship
MAX_JSON = 1024 * 1024


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


class ConnectionClosed(Exception):
    """The peer closed the connection at a frame boundary (a clean end)."""


class TruncatedFrame(ProtocolError):
    """The peer closed the connection in the middle of a frame."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_FRAME, message)


@dataclass
class Frame:
    type: MessageType
    offloader: int
    request: int
    payload: bytes
    received_ns: int = 0  # CLOCK_MONOTONIC when the last byte arrived

    def json(self) -> dict:
        if len(self.payload) > MAX_JSON:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "JSON payload too large")
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


def _recv_exact(sock: socket.socket, n: int, started: bool) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0 and not started:
                raise ConnectionClosed()
            raise TruncatedFrame(f"connection closed after {got} of {n} bytes of a frame")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> Frame:
    kind, offloader, request, length = parse_header(_recv_exact(sock, HEADER.size, False))
    payload = _recv_exact(sock, length, True) if length else b""
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
