"""The wire protocol, and the edge agent's resilience to broken or hostile clients.

The edge agent runs as a real process on loopback; no Mininet is needed here.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

from testbed.agents import protocol
from testbed.agents.protocol import (
    HEADER,
    MAX_PAYLOAD,
    RESULT_STRUCT,
    ErrorCode,
    MessageType,
    ProtocolError,
    decode_error,
    encode,
    encode_json,
    read_frame,
)
from tests.helpers import start_edge


def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    return a, b


@pytest.mark.parametrize("size", [0, 1, 784, 70_000])
def test_round_trip(size):
    a, b = pair()
    payload = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    a.sendall(encode(MessageType.REQUEST, payload, offloader=3, request=77))
    frame = read_frame(b)
    assert (frame.type, frame.offloader, frame.request, frame.payload) == (
        MessageType.REQUEST,
        3,
        77,
        payload,
    )
    assert frame.received_ns > 0


def test_header_layout_is_16_bytes_big_endian():
    data = encode(MessageType.PING, b"ab", offloader=1, request=2)
    assert data[:4] == b"DCOD" and len(data) == 16 + 2
    assert struct.unpack("!I", data[8:12])[0] == 2 and struct.unpack("!I", data[12:16])[0] == 2


def test_truncated_frame_raises():
    a, b = pair()
    a.sendall(encode(MessageType.REQUEST, b"x" * 100)[:50])
    a.close()
    with pytest.raises(protocol.TruncatedFrame):
        read_frame(b)


def test_clean_close_at_frame_boundary():
    a, b = pair()
    a.close()
    with pytest.raises(protocol.ConnectionClosed):
        read_frame(b)


@pytest.mark.parametrize(
    "header, message",
    [
        (HEADER.pack(b"XXXX", 1, 3, 0, 0, 0), "bad magic"),
        (HEADER.pack(b"DCOD", 9, 3, 0, 0, 0), "version 9"),
        (HEADER.pack(b"DCOD", 1, 200, 0, 0, 0), "unknown message type 200"),
        (HEADER.pack(b"DCOD", 1, 3, 0, 0, MAX_PAYLOAD + 1), "exceeds"),
    ],
)
def test_bad_headers_rejected_before_reading_payload(header, message):
    a, b = pair()
    a.sendall(header)
    with pytest.raises(ProtocolError, match=message):
        read_frame(b)


def test_encode_refuses_oversized_payload():
    with pytest.raises(ValueError):
        encode(MessageType.REQUEST, b"\0" * (MAX_PAYLOAD + 1))


def test_json_payload_must_be_an_object():
    frame = protocol.Frame(MessageType.HELLO, 0, 0, b"[1, 2]")
    with pytest.raises(ProtocolError):
        frame.json()
    frame = protocol.Frame(MessageType.HELLO, 0, 0, b"\xff\xfe")
    with pytest.raises(ProtocolError):
        frame.json()


# -- the edge agent as a real process --------------------------------------------------


@pytest.fixture(scope="module")
def edge():
    proc, port = start_edge(stderr=subprocess.PIPE)
    yield port
    proc.terminate()
    proc.wait(10)
    assert proc.returncode == 0, "the edge agent must stop cleanly on SIGTERM"


def client(port: int) -> socket.socket:
    sock = protocol.connect("127.0.0.1", port, timeout=10)
    return sock


def hello(sock, offloaders=({"name": "raw", "params": {}},)):
    sock.sendall(
        encode_json(MessageType.HELLO, {"plugin": "fashion_cnn", "offloaders": offloaders})
    )
    return read_frame(sock)


def request(sock, payload: bytes, request_id: int = 1):
    sock.sendall(encode(MessageType.REQUEST, payload, offloader=0, request=request_id))
    return read_frame(sock)


def assert_serves(port: int) -> None:
    """A fresh client gets a correct prediction: the edge survived what came before."""
    from testbed.models import plugins

    plugin = plugins.get("fashion_cnn")
    data = plugin.test_data()
    model = plugin.load_model()
    import torch

    with torch.inference_mode():
        expected = int(model(plugin.to_tensor(data.inputs[:1])).argmax(1)[0])
    with client(port) as sock:
        assert hello(sock).type == MessageType.HELLO_OK
        reply = request(sock, data.inputs[0].tobytes(), 5)
        assert reply.type == MessageType.RESULT and reply.request == 5
        *_, prediction = RESULT_STRUCT.unpack(reply.payload)
        assert prediction == expected


def test_edge_serves_a_request(edge):
    assert_serves(edge)


def test_edge_ping(edge):
    with client(edge) as sock:
        sock.sendall(encode(MessageType.PING, b"abc", request=9))
        reply = read_frame(sock)
        assert (reply.type, reply.request, reply.payload) == (MessageType.PONG, 9, b"abc")


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # wrong magic
        HEADER.pack(b"DCOD", 1, 3, 0, 1, MAX_PAYLOAD + 1),  # oversized
        HEADER.pack(b"DCOD", 7, 3, 0, 1, 10),  # wrong version
    ],
)
def test_edge_answers_bad_frame_with_error_then_closes(edge, garbage):
    with client(edge) as sock:
        sock.sendall(garbage)
        reply = read_frame(sock)
        assert reply.type == MessageType.ERROR
        assert decode_error(reply.payload)[0] == ErrorCode.BAD_FRAME
        with pytest.raises(protocol.ConnectionClosed):
            read_frame(sock)
    assert_serves(edge)


def test_edge_survives_truncated_frame(edge):
    with client(edge) as sock:
        sock.sendall(encode(MessageType.REQUEST, b"x" * 1000)[:300])
    assert_serves(edge)


def test_bad_payload_gets_error_and_connection_stays_usable(edge):
    with client(edge) as sock:
        assert hello(sock).type == MessageType.HELLO_OK
        reply = request(sock, b"too short", 3)
        assert reply.type == MessageType.ERROR and reply.request == 3
        code, text = decode_error(reply.payload)
        assert code == ErrorCode.BAD_PAYLOAD and "784" in text
        reply = request(sock, bytes(784), 4)
        assert reply.type == MessageType.RESULT and reply.request == 4


def test_request_before_hello_and_bad_hello(edge):
    with client(edge) as sock:
        reply = request(sock, bytes(784))
        assert decode_error(reply.payload)[0] == ErrorCode.NOT_READY
        reply = hello(sock, offloaders=[{"name": "no_such_offloader"}])
        assert decode_error(reply.payload)[0] == ErrorCode.BAD_HELLO
        sock.sendall(encode(MessageType.HELLO, b"\x80\x81 not json"))
        assert read_frame(sock).type == MessageType.ERROR
        sock.sendall(encode_json(MessageType.HELLO, {"plugin": "nope", "offloaders": []}))
        code, text = decode_error(read_frame(sock).payload)
        assert code == ErrorCode.BAD_HELLO and "nope" in text
    assert_serves(edge)


def test_edge_never_unpickles(edge):
    import pickle

    with client(edge) as sock:
        evil = pickle.dumps({"plugin": "fashion_cnn"})
        sock.sendall(encode(MessageType.HELLO, evil))
        assert read_frame(sock).type == MessageType.ERROR
    assert json.loads(encode_json(MessageType.HELLO, {"a": 1})[16:]) == {"a": 1}


# -- reading frames against limits ------------------------------------------------------


def test_a_claimed_length_costs_nothing_until_its_bytes_arrive():
    """The budget is charged as bytes arrive: a header claiming 60 MiB followed by 1 KiB
    holds 1 KiB, and the truncated frame gives it back."""
    a, b = pair()
    budget = protocol.Budget(1024 * 1024)
    a.sendall(HEADER.pack(b"DCOD", 1, 3, 0, 1, 60 * 1024 * 1024) + bytes(1024))
    held = []

    def admit(kind, offloader, length):
        held.append(length)

    def read() -> None:
        with pytest.raises(protocol.TruncatedFrame):
            read_frame(b, admit=admit, budget=budget)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    assert budget.used == 1024  # only what arrived
    a.close()
    reader.join(5)
    assert budget.used == 0 and held[0] == 60 * 1024 * 1024


def test_budget_refuses_beyond_its_limit():
    a, b = pair()
    budget = protocol.Budget(100 * 1024)
    a.sendall(encode(MessageType.REQUEST, bytes(200 * 1024)))
    with pytest.raises(protocol.Refused) as refused:
        read_frame(b, budget=budget)
    assert refused.value.code == ErrorCode.BUSY and budget.used == 0


def test_refused_frame_is_drained_and_the_stream_stays_in_step():
    a, b = pair()

    def admit(kind, offloader, length):
        if kind == MessageType.REQUEST:
            raise protocol.Refused(ErrorCode.NOT_READY, "no", drain=True)

    a.sendall(encode(MessageType.REQUEST, bytes(5000)) + encode(MessageType.PING, b"hi"))
    with pytest.raises(protocol.Refused) as refused:
        read_frame(b, admit=admit)
    assert refused.value.drained
    assert read_frame(b, admit=admit).payload == b"hi"


def test_frame_and_idle_deadlines():
    a, b = pair()
    with pytest.raises(protocol.IdleTimeout):
        read_frame(b, idle_s=0.2, frame_s=0.5)
    a.sendall(encode(MessageType.PING, b"12345678")[:20])  # a frame that never completes
    start = time.monotonic()
    with pytest.raises(protocol.FrameTimeout):
        read_frame(b, idle_s=5, frame_s=0.5)
    assert 0.4 < time.monotonic() - start < 2


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": "[[[{{"}]}', 3),
        (b"7", 0),
        (b'"\\"["', 0),
        (b"[" * 9999, 9999),
    ],
)
def test_json_depth_without_parsing(text, depth):
    assert protocol.json_depth(text) == depth


def test_deep_json_refused_before_parsing():
    frame = protocol.Frame(MessageType.HELLO, 0, 0, b"[" * 60_000 + b"]" * 60_000)
    with pytest.raises(ProtocolError, match="nested 60000 deep"):
        frame.json()


def test_edge_limits_table_in_the_design_doc():
    """docs/design.md lists every limit of the edge agent with its default."""
    from testbed.agents.edge_limits import markdown_rows
    from tests.helpers import ROOT

    design = (ROOT / "docs" / "design.md").read_text()
    for row in markdown_rows():
        assert row in design, f"docs/design.md lacks: {row}"


def test_edge_refuses_frames_from_their_header(edge):
    """A HELLO or REQUEST longer than its limit is refused before its payload is read;
    within the drain limit the connection stays usable."""
    with client(edge) as sock:
        sock.sendall(HEADER.pack(b"DCOD", 1, 1, 0, 1, 10 * 1024 * 1024))  # HELLO, 10 MiB
        code, text = decode_error(read_frame(sock).payload)
        assert code == ErrorCode.BAD_HELLO and "at most" in text
        with pytest.raises(protocol.ConnectionClosed):
            read_frame(sock)
    with client(edge) as sock:
        assert hello(sock).type == MessageType.HELLO_OK
        reply = request(sock, bytes(784 + 1000))
        code, text = decode_error(reply.payload)
        assert code == ErrorCode.BAD_PAYLOAD and "at most" in text
        assert request(sock, bytes(784), 2).type == MessageType.RESULT  # drained: in step
        sock.sendall(encode(MessageType.RESULT, b"x"))
        assert decode_error(read_frame(sock).payload)[0] == ErrorCode.BAD_FRAME


def test_hello_limits(edge):
    with client(edge) as sock:
        many = [{"name": "raw"}] * 33
        code, text = decode_error(hello(sock, offloaders=many).payload)
        assert code == ErrorCode.BAD_HELLO and "at most 32" in text
        sock.sendall(encode(MessageType.HELLO, b"[" * 20_000 + b"]" * 20_000))
        code, text = decode_error(read_frame(sock).payload)
        assert code == ErrorCode.BAD_HELLO and "deep" in text
        sock.sendall(encode_json(MessageType.HELLO, {"plugin": "mobilenet_v2", "offloaders": []}))
        code, text = decode_error(read_frame(sock).payload)
        assert code == ErrorCode.BAD_HELLO and "serves fashion_cnn" in text


def test_a_refused_frame_is_answered_with_its_request_id(edge):
    with client(edge) as sock:
        assert hello(sock).type == MessageType.HELLO_OK
        reply = request(sock, bytes(785), 77)
        assert reply.type == MessageType.ERROR and reply.request == 77
