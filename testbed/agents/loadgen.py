"""N concurrent valid devices against an edge agent: each opens its own connection, says
HELLO and sends real payloads (its offloader's own device half on the plugin's test
samples) back to back; prints throughput and latency percentiles. For an edge's
capacity and limits (tests/test_edge_hostile.py), not a scenario: no link or device
emulation, so run it on loopback or a quiet network.

    python -m testbed.agents.loadgen --port 5000 --plugin fashion_cnn --devices 8 --requests 50
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from testbed.agents.protocol import MessageType, connect, decode_error, encode, encode_json
from testbed.agents.protocol import read_frame as read

__all__ = ["Load", "payloads", "run", "valid_request_ms"]


@dataclass
class Load:
    devices: int
    requests: int  # sent, all devices together
    ok: int
    errors: list[str]
    seconds: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


def payloads(plugin_name: str, offloader: str, params: dict, count: int = 8) -> list[bytes]:
    """The device half's payloads for the plugin's first `count` test samples."""
    from testbed import offloaders
    from testbed.models import plugins
    from testbed.offloaders.base import PhaseTimer

    plugin = plugins.get(plugin_name)
    model = plugin.load_model()
    device = offloaders.get(offloader)(plugin, model, **params)
    inputs = plugin.test_data().inputs[:count]
    out = [device.device(sample, PhaseTimer()).payload for sample in inputs]
    if any(p is None for p in out):
        raise ValueError(f"{offloader} answered locally: nothing to send to the edge")
    return [bytes(p) for p in out if p is not None]


class Device:
    """One connection that has said HELLO for one offloader."""

    def __init__(self, host: str, port: int, plugin: str, offloader: str, params: dict):
        self.sock = connect(host, port, timeout=30)
        spec = {"plugin": plugin, "offloaders": [{"name": offloader, "params": params}]}
        self.sock.sendall(encode_json(MessageType.HELLO, spec))
        reply = read(self.sock)
        if reply.type != MessageType.HELLO_OK:
            self.sock.close()
            raise ConnectionError(f"HELLO refused: {decode_error(reply.payload)[1]}")

    def request(self, payload: bytes, request: int) -> tuple[float, str | None]:
        """(milliseconds, None) for a RESULT, (ms, the error) otherwise."""
        start = time.perf_counter()
        self.sock.sendall(encode(MessageType.REQUEST, payload, request=request))
        reply = read(self.sock)
        ms = (time.perf_counter() - start) * 1e3
        if reply.type == MessageType.RESULT and reply.request == request:
            return ms, None
        return ms, decode_error(reply.payload)[1] if reply.type == MessageType.ERROR else "?"

    def ping(self) -> float:
        start = time.perf_counter()
        self.sock.sendall(encode(MessageType.PING, b"p"))
        if read(self.sock).type != MessageType.PONG:
            raise ConnectionError("PING not answered with PONG")
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        self.sock.close()


def run(
    host: str,
    port: int,
    plugin: str,
    offloader: str,
    params: dict,
    devices: int,
    requests: int,
    bodies: list[bytes],
) -> Load:
    """`devices` threads, each sending `requests` requests on its own connection."""
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(devices + 1)

    def one(index: int) -> None:
        try:
            device = Device(host, port, plugin, offloader, params)
        except (OSError, ConnectionError) as exc:
            with lock:
                errors.append(f"device {index}: {exc}")
            ready.wait()
            return
        ready.wait()
        try:
            for i in range(requests):
                ms, error = device.request(bodies[(index + i) % len(bodies)], i + 1)
                with lock:
                    (errors.append(error) if error else times.append(ms))
        except OSError as exc:
            with lock:
                errors.append(f"device {index}: {exc}")
        finally:
            device.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(devices)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(times) if times else np.asarray([np.nan])
    return Load(
        devices=devices,
        requests=devices * requests,
        ok=len(times),
        errors=errors,
        seconds=round(seconds, 3),
        throughput_rps=round(len(times) / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
        mean_ms=round(float(ms.mean()), 2),
    )


def valid_request_ms(device: Device, body: bytes, count: int) -> list[float]:
    """`count` requests of one valid device, each answered with a RESULT, in ms."""
    out = []
    for i in range(count):
        ms, error = device.request(body, i + 1)
        if error:
            raise AssertionError(f"a valid request was refused: {error}")
        out.append(ms)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plugin", default="fashion_cnn")
    parser.add_argument("--offloader", default="raw")
    parser.add_argument("--params", default="{}", help="the offloader's parameters, JSON")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per device")
    args = parser.parse_args(argv)
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        parser.error(f"--params is not JSON: {exc}")
    if args.devices < 1 or args.requests < 1:
        parser.error("--devices and --requests must be >= 1")
    bodies = payloads(args.plugin, args.offloader, params)
    load = run(
        args.host,
        args.port,
        args.plugin,
        args.offloader,
        params,
        args.devices,
        args.requests,
        bodies,
    )
    print(json.dumps(asdict(load), indent=1))
    return 0 if not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
