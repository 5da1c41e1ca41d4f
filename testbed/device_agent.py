"""Device agent: runs the scenario's requests against the edge agent.

Run inside the device host: `python -m testbed.device_agent JOB.json`. The job
file (written by the runner) names the plugin, offloaders, sample indices, edge
address and output files. Each request becomes one JSON line in the records
file, flushed at once so the runner can show progress and nothing is lost if the
run is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path

from testbed import offloaders, plugins
from testbed.bandwidth import LinkEstimate
from testbed.offloaders.base import PhaseTimer, warm_kernels
from testbed.protocol import (
    HEADER,
    RESULT_STRUCT,
    MessageType,
    ProtocolError,
    connect,
    decode_error,
    encode,
    encode_json,
    read_frame,
)

log = logging.getLogger("device")


class EdgeLink:
    """The device's connection to the edge, re-established after a timeout."""

    def __init__(self, host: str, port: int, hello: dict, timeout_s: float) -> None:
        self.host, self.port, self.hello_spec, self.timeout_s = host, port, hello, timeout_s
        self.sock: socket.socket | None = None
        self.described: list = []
        # bytes of this connection's streams so far: where each request sits in the TCP
        # streams, so a packet capture can attribute segments to requests (--capture)
        self.sent = self.received = 0
        self.local_port = 0

    def open(self) -> None:
        self.close()
        self.sock = connect(self.host, self.port, self.timeout_s)
        self.local_port = self.sock.getsockname()[1]
        self.sent = self.received = 0
        self._send(encode_json(MessageType.HELLO, self.hello_spec))
        reply = self._read()
        if reply.type == MessageType.ERROR:
            raise RuntimeError(f"edge refused HELLO: {decode_error(reply.payload)[1]}")
        self.described = reply.json()["offloaders"]

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(encode(MessageType.BYE))
            self.sock.close()
            self.sock = None

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _read(self):
        frame = read_frame(self.sock)
        self.received += HEADER.size + len(frame.payload)
        return frame

    def rtt_ms(self, count: int) -> float:
        samples = []
        for i in range(count):
            start = time.monotonic_ns()
            self._send(encode(MessageType.PING, request=i))
            reply = self._read()
            samples.append((reply.received_ns - start) / 1e6)
        return statistics.median(samples)

    def exchange(self, frame: bytes, request: int):
        """Send one request; return (send_ns, reply frame) of the matching reply."""
        send_ns = time.monotonic_ns()
        self._send(frame)
        while True:
            reply = self._read()
            if reply.request == request:
                return send_ns, reply


def run_request(
    link: EdgeLink, offloader, index: int, request: int, sample, estimate: LinkEstimate
) -> dict:
    record = {"device_ms": 0.0, "encode_ms": 0.0, "uplink_ms": 0.0, "decode_ms": 0.0}
    record.update({"edge_ms": 0.0, "downlink_ms": 0.0, "bytes_up": 0, "bytes_down": 0})
    record["est_uplink_mbps"] = estimate.uplink_mbps  # what the device believed, before
    timer = PhaseTimer()
    start = time.monotonic_ns()
    result = offloader.device(sample, timer)
    record["choice"] = json.dumps(result.choice, sort_keys=True) if result.choice else ""
    record["device_ms"] = timer.ms.get("device", 0.0)
    record["encode_ms"] = timer.ms.get("encode", 0.0)
    prediction, status, error = result.prediction, "ok", ""
    if result.payload is not None:
        frame = encode(MessageType.REQUEST, result.payload, offloader=index, request=request)
        record["stream"] = [link.local_port, link.sent, link.received]
        try:
            send_ns, reply = link.exchange(frame, request)
        except TimeoutError:
            status, error = "timeout", f"no reply within {link.timeout_s} s"
            link.open()  # a late reply must not be taken for the next request's
        else:
            record["bytes_up"] = len(frame)
            record["bytes_down"] = HEADER.size + len(reply.payload)
            if reply.type == MessageType.RESULT and len(reply.payload) == RESULT_STRUCT.size:
                recv_ns, decode_ms, edge_ms, sent_ns, prediction = RESULT_STRUCT.unpack(
                    reply.payload
                )
                record["uplink_ms"] = (recv_ns - send_ns) / 1e6
                estimate.observe_upload(len(frame), record["uplink_ms"])
                record["decode_ms"] = decode_ms
                record["edge_ms"] = edge_ms
                record["downlink_ms"] = (reply.received_ns - sent_ns) / 1e6
            else:
                status, error = "error", decode_error(reply.payload)[1]
    record["total_ms"] = (time.monotonic_ns() - start) / 1e6
    record.update(prediction=-1 if prediction is None else int(prediction), status=status)
    record["error"] = error
    return record


def wait_for_limit(loaded: Path, cgroup: str, timeout_s: float = 60.0) -> None:
    """Say that loading is done, then wait until the runner has moved this process into
    the host's CPU cgroup: profiling and requests must run under the device's share."""
    loaded.write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while f"/{cgroup}" not in Path("/proc/self/cgroup").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not moved into the CPU cgroup {cgroup!r} in {timeout_s:.0f} s")
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s device %(levelname)s %(message)s")
    job = json.loads(args.job.read_text())

    import torch

    torch.set_num_threads(job["threads"])
    plugin = plugins.get(job["plugin"])
    model = plugin.load_model()
    data = plugin.test_data()
    built = [offloaders.get(o["name"])(plugin, model, **o["params"]) for o in job["offloaders"]]
    kernels_s = warm_kernels(type(o) for o in built)
    if job.get("cgroup"):
        wait_for_limit(Path(job["loaded"]), job["cgroup"])
    started = time.monotonic()
    for offloader in built:  # profiling on this (CPU-limited) host; calibration is cached
        offloader.prepare("device")
    prepare_s = time.monotonic() - started
    hello = {"plugin": job["plugin"], "offloaders": job["offloaders"]}
    link = EdgeLink(job["edge_host"], job["edge_port"], hello, job["timeout_s"])
    link.open()
    estimate = LinkEstimate()
    estimate.observe_rtt(link.rtt_ms(job["pings"]))
    for offloader, edge_half in zip(built, link.described, strict=True):
        offloader.connect(edge_half, estimate)
    meta = {"rtt_ms": estimate.rtt_ms, "offloaders": link.described,
            "device_offloaders": [o.describe() for o in built],
            "device_kernel_warmup_s": kernels_s, "device_prepare_s": prepare_s}  # fmt: skip
    Path(job["meta"]).write_text(json.dumps(meta))

    request = 0
    with open(job["records"], "a", buffering=1) as out:
        for index, (spec, offloader) in enumerate(zip(job["offloaders"], built, strict=True)):
            for _ in range(job["warmup"]):  # first calls pay allocation and JIT costs
                request += 1
                first = data.inputs[job["samples"][0]]
                run_request(link, offloader, index, request, first, estimate)
            for sample in job["samples"]:
                request += 1
                try:
                    record = run_request(
                        link, offloader, index, request, data.inputs[sample], estimate
                    )
                except (ProtocolError, OSError, RuntimeError) as exc:
                    record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                    link.open()
                record.update(offloader=spec["label"], request=request, sample=int(sample))
                record["label"] = int(data.labels[sample])
                out.write(json.dumps(record) + "\n")
    link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
