"""Edge agent: serves offloading requests over the wire protocol.

Run inside the edge host: `python -m testbed.agents.edge --port 5000 [--preload PLUGIN]
[--device cpu|cuda|auto]`. It prints `READY <port>` once listening, its preloaded models
placed on the device and warmed up (docs/edge.md). One thread per connection, under a cap; every
frame is judged from its header (type, length, the offloader's own bound) before its
payload is read, stored only as its bytes arrive and within a memory budget, and must
arrive within deadlines (`edge_limits.EdgeLimits`). A broken or hostile client gets an
ERROR frame and loses only its frame or its own connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from testbed import offloaders
from testbed.agents.edge_connections import Connection, Connections
from testbed.agents.edge_limits import EdgeLimits, add_arguments, from_args
from testbed.agents.log_budget import LogBudget
from testbed.agents.protocol import (
    TIMING_STRUCT,
    Budget,
    ConnectionClosed,
    ErrorCode,
    IdleTimeout,
    MessageType,
    ProtocolError,
    Refused,
    encode,
    encode_error,
    encode_json,
    read_frame,
    tune,
)
from testbed.errors import TestbedError
from testbed.models import plugins, predictions
from testbed.offloaders.base import (
    EDGE_DEVICES,
    EdgeDevice,
    PhaseTimer,
    resolve_edge_device,
    synchronize,
    to_edge,
    warm_kernels,
)

log = logging.getLogger("edge")
MODEL_WARMUP = 3  # passes of each model at load: CUDA's context, kernels and allocator


class ModelCache:
    """Loads each plugin's model once, on the edge's device (`EdgeDevice`), warmed up,
    and shares it between connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple] = {}

    def get(self, name: str):
        with self._lock:
            if name not in self._models:
                plugin = plugins.get(name)
                model = plugin.load_model().to(EdgeDevice.torch())
                warm_up(plugin, model)
                self._models[name] = (plugin, model)
            return self._models[name]


def warm_up(plugin, model, passes: int = MODEL_WARMUP) -> None:
    """A few passes of the whole model on a zero input, so that the first request pays
    neither the GPU's start (context, kernel loading, memory pool) nor the CPU's first-call
    allocations; each offloader's own networks are warmed by the device's unrecorded
    warm-up requests (runner.WARMUP_REQUESTS)."""
    import numpy as np
    import torch

    spec = plugin.input_spec
    x = np.full((1, *spec.shape), spec.low, dtype=spec.dtype)
    times = []
    with torch.inference_mode():
        for _ in range(passes):
            started = time.perf_counter()
            model(to_edge(plugin.to_tensor(x)))
            synchronize()
            times.append((time.perf_counter() - started) * 1e3)
    log.info(
        "%s on %s: warm-up passes %s ms",
        plugin.name,
        EdgeDevice.name,
        ", ".join(f"{t:.1f}" for t in times),
    )


class Session:
    """One device connection: its HELLO-configured offloaders and its frames."""

    def __init__(self, sock: socket.socket, agent: Agent, entry: Connection) -> None:
        self.sock = sock
        self.agent = agent
        self.limits = agent.limits
        self.entry = entry
        self.offloaders: list = []
        self.max_payloads: list[int] = []

    def serve(self) -> None:
        limits = self.limits
        while True:
            try:
                frame = read_frame(
                    self.sock,
                    admit=self.admit,
                    budget=self.agent.budget,
                    idle_s=limits.idle_s,
                    frame_s=limits.frame_s,
                )
            except (ConnectionClosed, IdleTimeout):
                return
            except Refused as exc:
                log.warning("refused a frame: %s", exc)
                answer = encode_error(exc.code, str(exc), request=exc.request)
                if not self._send(answer) or not exc.drained:
                    return
                continue
            except ProtocolError as exc:
                log.warning("closing connection: %s", exc)
                self._send(encode_error(exc.code, str(exc), request=exc.request))
                return
            self.entry.completed_frame()
            try:
                if frame.type == MessageType.BYE:
                    return
                reply = self.handle(frame)
            finally:
                self.agent.budget.give(len(frame.payload))
            sent = self._send(reply)
            self.entry.answered()
            if not sent:
                return

    def admit(self, kind: MessageType, offloader: int, length: int) -> None:
        """A frame's header judged before a byte of its payload is read: a device sends
        HELLO, REQUEST, PING and BYE, each no longer than its limit."""
        limits = self.limits
        drain = length <= limits.drain
        if kind == MessageType.HELLO and length > limits.max_hello:
            raise Refused(
                ErrorCode.BAD_HELLO, f"HELLO of {length} bytes; at most {limits.max_hello}", drain
            )
        if kind == MessageType.PING and length > limits.max_ping:
            raise Refused(
                ErrorCode.BAD_FRAME, f"PING of {length} bytes; at most {limits.max_ping}", drain
            )
        if kind == MessageType.BYE and length:
            raise Refused(ErrorCode.BAD_FRAME, "BYE with a payload", drain)
        if kind == MessageType.REQUEST:
            if not self.offloaders:
                raise Refused(ErrorCode.NOT_READY, "REQUEST before HELLO", drain)
            if offloader >= len(self.offloaders):
                raise Refused(ErrorCode.BAD_PAYLOAD, f"no offloader #{offloader}", drain)
            limit = self.max_payloads[offloader]
            if length > limit:
                name = self.offloaders[offloader].name
                raise Refused(
                    ErrorCode.BAD_PAYLOAD,
                    f"{name} payload of {length} bytes; it accepts at most {limit}",
                    drain,
                )
        if kind not in DEVICE_SENDS:
            raise Refused(ErrorCode.BAD_FRAME, f"a device does not send {kind.name}")

    def handle(self, frame) -> bytes:
        try:
            if frame.type == MessageType.PING:
                return encode(MessageType.PONG, frame.payload, request=frame.request)
            if frame.type == MessageType.HELLO:
                return self.hello(frame)
            return self.request(frame)
        except ProtocolError as exc:
            return encode_error(exc.code, str(exc), request=frame.request)
        except Exception as exc:  # never let one request take the server down
            log.exception("request %d failed", frame.request)
            return encode_error(
                ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", request=frame.request
            )

    def hello(self, frame) -> bytes:
        try:
            spec = frame.json()
            plugin_name, items = self.agent.check_hello(spec)
            plugin, model = self.agent.models.get(plugin_name)
            built = [
                self.agent.offloaders.get(plugin, model, str(item["name"]), item.get("params", {}))
                for item in items
            ]
            max_payloads = [int(offloader.max_payload()) for offloader in built]
        except (KeyError, TypeError, ValueError, TestbedError, ProtocolError) as exc:
            return encode_error(ErrorCode.BAD_HELLO, f"bad HELLO: {type(exc).__name__}: {exc}")
        self.offloaders, self.max_payloads = built, max_payloads
        return encode_json(MessageType.HELLO_OK, {"offloaders": [o.describe() for o in built]})

    def request(self, frame) -> bytes:
        timer = PhaseTimer()
        offloader = self.offloaders[frame.offloader]  # admit() checked the index
        try:
            prediction = offloader.edge(frame.payload, timer)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, str(exc)) from exc
        encoded = predictions.encode(offloader.plugin, prediction)
        result = TIMING_STRUCT.pack(
            frame.received_ns,
            timer.ms.get("decode", 0.0),
            timer.ms.get("edge", 0.0),
            time.monotonic_ns(),
        )
        return encode(MessageType.RESULT, result + encoded, frame.offloader, frame.request)

    def _send(self, data: bytes) -> bool:
        """False when the reply could not be sent whole: the peer would read the next one
        from inside this frame, so the connection is closed."""
        try:
            self.sock.settimeout(self.limits.send_s)
            self.sock.sendall(data)
        except OSError as exc:
            log.info("closing connection: reply not sent (%s)", exc)
            return False
        return True


DEVICE_SENDS = frozenset(
    {MessageType.HELLO, MessageType.REQUEST, MessageType.PING, MessageType.BYE}
)


class OffloaderCache:
    """Edge halves built once per (plugin, offloader, parameters) and shared between
    connections (an edge half keeps no per-request state: docs/offloaders.md), so a HELLO
    costs a lookup, not a construction and a profile; the least recently used beyond
    `size` are dropped, so varied parameters cannot grow it without bound."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._built: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, plugin, model, name: str, params: Any):
        if not isinstance(params, dict):
            raise ValueError(f"offloader {name!r}: params must be an object")
        params = offloaders.validate_params(name, dict(params))
        key = (plugin.name, name, json.dumps(params, sort_keys=True, default=str))
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        offloader = offloaders.get(name)(plugin, model, **params)
        offloader.place(EdgeDevice.torch())  # its own networks; the model is placed already
        offloader.prepare("edge")  # e.g. stage profiles, sent back in the reply
        with self._lock:
            self._built[key] = offloader
            while len(self._built) > self.size:
                self._built.popitem(last=False)
        return offloader


class Agent:
    """What every connection shares: the models, the limits, the memory budget for
    frames, the open connections and the plugins this edge serves."""

    def __init__(self, limits: EdgeLimits, serves: tuple[str, ...] = ()) -> None:
        self.limits = limits
        self.models = ModelCache()
        self.offloaders = OffloaderCache()
        self.budget = Budget(limits.memory_budget)
        self.connections = Connections(limits.max_connections)
        self.serves = serves  # empty: any installed plugin

    def check_hello(self, spec: dict) -> tuple[str, list]:
        """(plugin name, offloader items) of a HELLO within the limits; ValueError else."""
        plugin = spec["plugin"]
        items = spec["offloaders"]
        if not isinstance(plugin, str) or not isinstance(items, list):
            raise ValueError('"plugin" must be a string and "offloaders" a list')
        if self.serves and plugin not in self.serves:
            raise ValueError(f"this edge serves {', '.join(self.serves)}, not {plugin!r}")
        if len(items) > self.limits.max_offloaders:
            raise ValueError(
                f"{len(items)} offloaders; at most {self.limits.max_offloaders} in one HELLO"
            )
        if not all(isinstance(item, dict) for item in items):
            raise ValueError("each offloader must be an object")
        return plugin, items


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, agent: Agent) -> None:
        self.agent = agent
        self.entries: dict[int, Connection] = {}
        self.request_queue_size = agent.limits.backlog  # listen() in server_activate
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        tune(self.socket)  # accepted connections inherit the congestion control
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        """Under the connection cap a thread serves it; over it, a BUSY answer and close."""
        entry = self.agent.connections.admit(request, f"{client_address[0]}:{client_address[1]}")
        if entry is None:
            log.warning(
                "refused %s: all %d connections busy", client_address, len(self.agent.connections)
            )
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(
                    encode_error(ErrorCode.BUSY, "the edge is at its connection cap; try later")
                )
            self.shutdown_request(request)
            return
        self.entries[id(request)] = entry  # the handler's thread takes it
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started: nothing must stay counted
            self.entries.pop(id(request), None)
            self.agent.connections.remove(entry)
            raise


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        agent = self.server.agent
        entry = self.server.entries.pop(id(self.request))
        tune(self.request)
        try:
            Session(self.request, agent, entry).serve()
        except OSError as exc:
            log.info("connection ended: %s", exc)
        except Exception:  # a bug must end this connection only, and say where
            log.exception("connection failed")
        finally:
            agent.connections.remove(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        help="plugin to load at start; given, the edge serves these plugins only",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--device",
        choices=EDGE_DEVICES,
        default="cpu",
        help="where the edge halves run (auto: cuda where a GPU is usable, else cpu)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        limits = from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge %(levelname)s %(message)s")
    log.addFilter(LogBudget())
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    agent = Agent(limits, serves=tuple(args.preload))
    try:
        EdgeDevice.set(resolve_edge_device(args.device))
        log.info("edge halves run on %s", _describe_device())
        # a broken third-party offloader is named here, not met by a request later
        seconds = warm_kernels(offloaders.get(name) for name in offloaders.names())
        if seconds is not None:
            log.info("kernels ready in %.2f s", seconds)
        for name in args.preload:
            agent.models.get(name)
    except TestbedError as exc:
        print(f"edge agent: {exc}", file=sys.stderr)
        return exc.exit_status
    server = Server((args.host, args.port), agent)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _describe_device() -> str:
    import torch

    if EdgeDevice.name != "cuda":
        return EdgeDevice.name
    return f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"


if __name__ == "__main__":
    sys.exit(main())
