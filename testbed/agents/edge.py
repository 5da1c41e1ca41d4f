"""Edge agent: serves offloading requests over the wire protocol.

Run inside the edge host: `python -m testbed.agents.edge --port 5000 [--preload PLUGIN]`.
It prints `READY <port>` once listening. One thread per connection; a broken or
hostile client gets an ERROR frame and loses only its own connection.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import socketserver
import sys
import threading
import time

from testbed import offloaders
from testbed.agents.protocol import (
    TIMING_STRUCT,
    ConnectionClosed,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    encode_error,
    encode_json,
    read_frame,
    tune,
)
from testbed.errors import TestbedError
from testbed.models import plugins, predictions
from testbed.offloaders.base import PhaseTimer, warm_kernels

log = logging.getLogger("edge")
IDLE_TIMEOUT_S = 300.0


class ModelCache:
    """Loads each plugin's model once and shares it between connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple] = {}

    def get(self, name: str):
        with self._lock:
            if name not in self._models:
                plugin = plugins.get(name)
                self._models[name] = (plugin, plugin.load_model())
            return self._models[name]


class Session:
    """One device connection: its HELLO-configured offloaders and its frames."""

    def __init__(self, sock: socket.socket, models: ModelCache) -> None:
        self.sock = sock
        self.models = models
        self.offloaders: list = []

    def serve(self) -> None:
        while True:
            try:
                frame = read_frame(self.sock)
            except ConnectionClosed:
                return
            except ProtocolError as exc:
                log.warning("closing connection: %s", exc)
                self._send(encode_error(exc.code, str(exc)))
                return
            if frame.type == MessageType.BYE:
                return
            self._send(self.handle(frame))

    def handle(self, frame) -> bytes:
        try:
            if frame.type == MessageType.PING:
                return encode(MessageType.PONG, frame.payload, request=frame.request)
            if frame.type == MessageType.HELLO:
                return self.hello(frame)
            if frame.type == MessageType.REQUEST:
                return self.request(frame)
            return encode_error(
                ErrorCode.BAD_FRAME, f"unexpected {frame.type.name}", request=frame.request
            )
        except ProtocolError as exc:
            return encode_error(exc.code, str(exc), request=frame.request)
        except Exception as exc:  # never let one request take the server down
            log.exception("request %d failed", frame.request)
            return encode_error(
                ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", request=frame.request
            )

    def hello(self, frame) -> bytes:
        spec = frame.json()
        try:
            plugin, model = self.models.get(str(spec["plugin"]))
            built = []
            for item in spec["offloaders"]:
                name = str(item["name"])
                params = offloaders.validate_params(name, dict(item.get("params", {})))
                built.append(offloaders.get(name)(plugin, model, **params))
            for offloader in built:  # e.g. stage profiles, sent back in the reply
                offloader.prepare("edge")
        except (KeyError, TypeError, ValueError, TestbedError) as exc:
            return encode_error(ErrorCode.BAD_HELLO, f"bad HELLO: {type(exc).__name__}: {exc}")
        self.offloaders = built
        return encode_json(MessageType.HELLO_OK, {"offloaders": [o.describe() for o in built]})

    def request(self, frame) -> bytes:
        if not self.offloaders:
            raise ProtocolError(ErrorCode.NOT_READY, "REQUEST before HELLO")
        if frame.offloader >= len(self.offloaders):
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, f"no offloader #{frame.offloader}")
        timer = PhaseTimer()
        offloader = self.offloaders[frame.offloader]
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

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, models: ModelCache) -> None:
        self.models = models
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        tune(self.socket)  # accepted connections inherit the congestion control
        super().server_bind()


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        tune(self.request)
        self.request.settimeout(IDLE_TIMEOUT_S)
        try:
            Session(self.request, self.server.models).serve()
        except (TimeoutError, OSError) as exc:
            log.info("connection ended: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--preload", action="append", default=[], help="plugin to load at start")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge %(levelname)s %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = ModelCache()
    try:
        # a broken third-party offloader is named here, not met by a request later
        seconds = warm_kernels(offloaders.get(name) for name in offloaders.names())
        if seconds is not None:
            log.info("kernels ready in %.2f s", seconds)
        for name in args.preload:
            models.get(name)
    except TestbedError as exc:
        print(f"edge agent: {exc}", file=sys.stderr)
        return exc.exit_status
    server = Server((args.host, args.port), models)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
