"""Device agent: runs the scenario's requests against the edge agent.

Run inside the device host: `python -m testbed.agents.device JOB.json`. The job
file (a `contract.DeviceJob`, written by the runner) names the plugin, offloaders,
sample indices, edge address, arrival process and output files. Each measured request
becomes one `contract.RequestRecord`, a JSON line in the records file, in request order,
flushed at once so the runner can show progress and nothing is lost if the run is
interrupted.

Arrivals. Closed loop (`{"process": "closed"}`): one request at a time, the next
starts when the previous one has its reply. Open loop (`{"process": "poisson",
"rate_hz": R}`): each offloader's requests have intended start times drawn as a
Poisson process (`arrivals`: seeded, so a run's schedule is reproducible;
`intended_ms` records it). The device half still runs serially on this thread (the
device has one CPU), but nobody waits for a reply before the next request: payloads
are pipelined on the connection and a receiver thread completes them from the
replies' request ids.

Latency is timed from the intended start, not from when the device got round to the
request, so a device or edge that falls behind shows in `total_ms` (no coordinated
omission); `queue_ms` is how late the device started the request (0 in closed loop).

A lost edge. A connection that breaks fails the requests in flight on it (`error`, the
reason in one line); the agent then reconnects once. When that fails too (the edge was
killed, its host is gone, it refuses HELLO), the edge is lost: every request not yet
started, of this offloader and the later ones, is recorded as `not_run` with the reason,
and the agent exits with status 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testbed import offloaders
from testbed.agents.arrivals import poisson_offsets_ms, wait_barrier
from testbed.agents.contract import (
    NOT_RUN,
    PHASES,
    ContractError,
    DeviceJob,
    DeviceMeta,
    RequestRecord,
)
from testbed.agents.device_io import Connection, EdgeLost, RecordWriter, lost_reason
from testbed.agents.protocol import (
    HEADER,
    TIMING_STRUCT,
    ConnectionClosed,
    MessageType,
    ProtocolError,
    decode_error,
    encode,
)
from testbed.cleanup import Terminated, honour_sigint, sigterm_raises
from testbed.models import plugins, predictions
from testbed.offloaders.base import DeviceClock, PhaseTimer, warm_kernels
from testbed.offloaders.link_estimate import LinkEstimate

log = logging.getLogger("device")
POLL_S = 0.05  # how often the receiver looks for requests past their timeout
# A reply's arrival is stamped by the receiver thread once it holds the GIL; Python's
# default switch interval (5 ms) could hold it back that long behind the device half.
SWITCH_INTERVAL_S = 0.0005


@dataclass
class InFlight:
    """An offloaded request between its send and its reply (or timeout)."""

    request: int
    record: dict  # the RequestRecord's fields so far
    intended_ns: int
    conn: Connection
    nbytes: int
    clean: bool  # sent with nothing else outstanding on the connection
    send_ns: int = 0
    deadline_ns: int = 0


class Requests:
    """Issues requests: the device half on the calling thread, serially; payloads sent
    on one connection without waiting for earlier replies, which a receiver thread
    matches by request id. Every request ends in exactly one record (ok, error or
    timeout) handed to the writer."""

    def __init__(
        self,
        host: str,
        port: int,
        hello: dict,
        timeout_s: float,
        writer: RecordWriter,
        estimate: LinkEstimate,
        plugin=None,
    ) -> None:
        """`plugin` says how its predictions travel and are recorded (None: a classifier)."""
        self.address, self.hello, self.timeout_s = (host, port), hello, timeout_s
        self.writer, self.estimate, self.plugin = writer, estimate, plugin
        self.cond = threading.Condition()
        self.inflight: dict[int, InFlight] = {}
        self.uploads: list[tuple[int, float]] = []  # for the estimate, fed on this thread
        self.conn: Connection | None = None
        self.broken = self.closed = False
        # taken out of `inflight` by the receiver, their records not yet handed to the
        # writer: wait_idle waits for them too, so that close() never drops one
        self.finishing = 0
        self.lost = ""  # why the last connection broke (lost_reason), for EdgeLost

    def open(self) -> Connection:
        """A new connection after its HELLO; EdgeLost where the edge cannot be reached."""
        host, port = self.address
        try:
            conn = Connection(host, port, self.hello, self.timeout_s)
        except (OSError, ConnectionClosed, ProtocolError) as exc:
            raise EdgeLost(f"cannot reach the edge at {host}:{port}: {_why(exc)}") from None
        except RuntimeError as exc:  # the edge refused the HELLO
            raise EdgeLost(str(exc)) from None
        with self.cond:
            self.conn, self.broken = conn, False
            self.lost = ""
        return conn

    def ensure_edge(self) -> None:
        """Reconnect once after a broken connection; EdgeLost, saying what broke it and
        why reconnecting failed, where the edge is gone."""
        with self.cond:
            broken, lost = self.broken, self.lost
        if not broken:
            return
        try:
            self._connection()
        except EdgeLost as exc:
            raise EdgeLost(f"{lost}; {exc}" if lost else str(exc)) from None

    def wait_until(self, deadline_ns: int) -> None:
        """Sleep until `deadline_ns` (an open-loop start), reconnecting at once should the
        connection break meanwhile, so that a lost edge is found without delay."""
        while True:
            left_ns = deadline_ns - time.monotonic_ns()
            if left_ns <= 0:
                return
            with self.cond:
                if not self.broken:
                    self.cond.wait(left_ns / 1e9)
            self.ensure_edge()

    def close(self) -> None:
        """The end, or an interruption: requests still in flight have no outcome and
        get no record (the run is partial); those completed are all written."""
        with self.cond:
            self.closed = True
            self.inflight.clear()
        self.writer.flush()
        if self.conn is not None:
            self.conn.close()

    def issue(
        self,
        offloader,
        index: int,
        request: int,
        sample,
        tags: dict,
        intended_ns: int | None = None,
        origin_ns: int | None = None,
    ) -> int:
        """Run request `request` now, `queue_ms` after `intended_ns` (None: now, closed
        loop); `intended_ms` is counted from `origin_ns` (None: from this request).
        Returns the intended time used."""
        self._feed_estimate()
        start = time.monotonic_ns()
        intended_ns = start if intended_ns is None else intended_ns
        origin_ns = intended_ns if origin_ns is None else origin_ns
        record = dict(
            tags,
            intended_ms=(intended_ns - origin_ns) / 1e6,
            queue_ms=max(0, start - intended_ns) / 1e6,
            device_ms=0.0,
            encode_ms=0.0,
            uplink_ms=0.0,
            decode_ms=0.0,
            edge_ms=0.0,
            downlink_ms=0.0,
            bytes_up=0,
            bytes_down=0,
        )
        record["est_uplink_mbps"] = self.estimate.uplink_mbps  # what the device believed
        timer = PhaseTimer()
        try:
            result = offloader.device(sample, timer)
        except RuntimeError as exc:
            record["total_ms"] = (time.monotonic_ns() - intended_ns) / 1e6
            self._finish(request, record, None, "error", f"{type(exc).__name__}: {exc}")
            return intended_ns
        record["choice"] = json.dumps(result.choice, sort_keys=True) if result.choice else ""
        record["device_ms"] = timer.ms.get("device", 0.0)
        record["encode_ms"] = timer.ms.get("encode", 0.0)
        if result.payload is None:  # answered on the device
            record["total_ms"] = (time.monotonic_ns() - intended_ns) / 1e6
            self._finish(request, record, result.prediction, "ok", "")
            return intended_ns
        frame = encode(MessageType.REQUEST, result.payload, offloader=index, request=request)
        try:
            conn = self._connection()
        except EdgeLost as exc:  # its device half ran: it failed, it is not `not_run`
            record["total_ms"] = (time.monotonic_ns() - intended_ns) / 1e6
            self._finish(request, record, None, "error", str(exc))
            raise
        with self.cond:
            flight = InFlight(request, record, intended_ns, conn, len(frame), not self.inflight)
            record["stream"] = [conn.local_port, conn.sent, conn.received]
            flight.send_ns = time.monotonic_ns()
            flight.deadline_ns = flight.send_ns + int(self.timeout_s * 1e9)
            self.inflight[request] = flight
        try:
            conn.send(frame)  # a full socket buffer blocks here: the device waits, queue_ms
        except OSError as exc:
            self._broke(conn, lost_reason(exc, conn.last_error))
        return intended_ns

    def wait_idle(self) -> None:
        """Until every request sent has its reply or has timed out."""
        with self.cond:
            while self.inflight or self.finishing:
                self.cond.wait(POLL_S)
                self._expire(time.monotonic_ns())
                for conn in {f.conn for f in self.inflight.values()}:
                    if conn.receiver is None or not conn.receiver.is_alive():
                        self._broke(conn, "edge connection lost: its reader ended")

    def _connection(self) -> Connection:
        """The live connection, reopened after a failure (an error here ends the agent);
        its receiver starts once the synchronous exchanges (HELLO, pings) are done."""
        if self.conn is None or self.broken:
            if self.conn is not None:
                self.conn.close()
            self.open()
        conn = self.conn
        if conn is None:
            raise RuntimeError("open() left no connection")
        if conn.receiver is None:
            conn.receiver = threading.Thread(
                target=self._receive, args=(conn,), name="replies", daemon=True
            )
            conn.receiver.start()
        return conn

    def _receive(self, conn: Connection) -> None:
        try:
            while True:
                readable, _, _ = select.select([conn.sock], [], [], POLL_S)
                self._expire(time.monotonic_ns())
                if readable:
                    offset = conn.received
                    self._reply(conn, conn.read(), offset)
        except (ConnectionClosed, ProtocolError, OSError, ValueError) as exc:
            why = lost_reason(exc, conn.last_error)  # ValueError: closed by us (close())
        self._broke(conn, why)

    def _reply(self, conn: Connection, reply, offset: int) -> None:
        with self.cond:
            flight = self.inflight.get(reply.request)
            if flight is None or flight.conn is not conn:
                if reply.type == MessageType.ERROR:  # for no request: about the connection
                    conn.last_error = decode_error(reply.payload)[1]
                    log.warning("the edge sent ERROR: %s", conn.last_error)
                else:
                    log.info("dropped a reply to request %d (timed out before)", reply.request)
                return
            del self.inflight[reply.request]
            self.finishing += 1
        record = flight.record
        record["bytes_up"] = flight.nbytes
        record["bytes_down"] = HEADER.size + len(reply.payload)
        record["stream"][2] = offset  # where the reply starts in the edge's stream
        prediction, status, error = None, "ok", ""
        if reply.type == MessageType.RESULT:
            try:
                prediction = self._result_prediction(reply.payload)
            except ValueError as exc:
                status, error = "error", f"bad RESULT: {exc}"
        if reply.type == MessageType.RESULT and status == "ok":
            recv_ns, decode_ms, edge_ms, sent_ns = TIMING_STRUCT.unpack_from(reply.payload)
            # The edge stamps a frame's last byte when it reads it, after answering the
            # connection's earlier frames; so with others outstanding, uplink_ms includes
            # waiting behind them. Only an upload sent with nothing outstanding measures
            # the link alone, and only such uploads feed the estimate.
            record["uplink_ms"] = (recv_ns - flight.send_ns) / 1e6
            if flight.clean:
                with self.cond:
                    self.uploads.append((flight.nbytes, record["uplink_ms"]))
            record["decode_ms"] = decode_ms
            record["edge_ms"] = edge_ms
            record["downlink_ms"] = (reply.received_ns - sent_ns) / 1e6
        elif reply.type == MessageType.ERROR:
            status, error = "error", decode_error(reply.payload)[1]
        elif reply.type != MessageType.RESULT:
            status, error = "error", f"unexpected {reply.type.name} reply"
        record["total_ms"] = (reply.received_ns - flight.intended_ns) / 1e6
        self._finish(flight.request, record, prediction, status, error, taken=True)

    def _result_prediction(self, payload: bytes):
        """The prediction a RESULT carries after its timings; ValueError if malformed."""
        if len(payload) < TIMING_STRUCT.size:
            raise ValueError(
                f"{len(payload)} bytes, shorter than its {TIMING_STRUCT.size}-byte timings"
            )
        return predictions.decode(self.plugin, payload[TIMING_STRUCT.size :])

    def _expire(self, now_ns: int) -> None:
        with self.cond:
            late = [f for f in self.inflight.values() if f.deadline_ns <= now_ns]
            for flight in late:
                del self.inflight[flight.request]
            self.finishing += len(late)
        for flight in late:
            flight.record["total_ms"] = (now_ns - flight.intended_ns) / 1e6
            message = f"no reply within {self.timeout_s} s"
            self._finish(flight.request, flight.record, None, "timeout", message, taken=True)

    def _broke(self, conn: Connection, why: str) -> None:
        """Fail what is in flight on `conn`; the next send opens a new connection."""
        with self.cond:
            lost = [f for f in self.inflight.values() if f.conn is conn]
            for flight in lost:
                del self.inflight[flight.request]
            self.finishing += len(lost)
            if conn is self.conn:
                self.broken, self.lost = True, why
        if lost:
            log.warning("connection lost with %d request(s) in flight: %s", len(lost), why)
        for flight in lost:
            flight.record["total_ms"] = (time.monotonic_ns() - flight.intended_ns) / 1e6
            self._finish(flight.request, flight.record, None, "error", why, taken=True)
        conn.close()
        with self.cond:
            self.cond.notify_all()  # wakes wait_until: reconnect, or find the edge lost

    def _finish(
        self, request: int, record: dict, prediction, status: str, error: str, taken=False
    ) -> None:
        """Hand the request's record to the writer; `taken`: by the receiver, counted in
        `finishing` until here."""
        try:
            if self.writer.expects(request) and not self.closed:  # warm-ups are never written
                recorded = (
                    -1 if prediction is None else predictions.to_record(self.plugin, prediction)
                )
                final = dict(record, prediction=recorded, status=status, error=error)
                self.writer.complete(request, RequestRecord.from_dict(final))
        finally:
            with self.cond:
                self.finishing -= taken
                self.cond.notify_all()

    def _feed_estimate(self) -> None:
        with self.cond:
            uploads, self.uploads = self.uploads, []
        for nbytes, uplink_ms in uploads:
            self.estimate.observe_upload(nbytes, uplink_ms)


def run_offloader(
    requests: Requests,
    offloader,
    index: int,
    inputs,
    samples: Sequence[int],
    labels,
    first_request: int,
    offsets_ms: np.ndarray | None,
    tags: dict,
) -> int:
    """One offloader's measured requests: closed loop when `offsets_ms` is None, else
    request k intended at offsets_ms[k] after now (started then, or as soon as the
    device is free). Returns the last request id used."""
    request = first_request - 1
    origin_ns = None if offsets_ms is None else time.monotonic_ns()
    for k, sample in enumerate(samples):
        request += 1
        intended_ns = None
        if offsets_ms is not None:
            intended_ns = origin_ns + round(offsets_ms[k] * 1e6)
            requests.wait_until(intended_ns)
        requests.ensure_edge()  # EdgeLost: this request and the rest are not run
        requests.writer.expect(request)
        record = dict(tags, request=request, sample=int(sample), label=int(labels[sample]))
        intended_ns = requests.issue(
            offloader, index, request, inputs[sample], record, intended_ns, origin_ns
        )
        if offsets_ms is None:
            origin_ns = intended_ns if origin_ns is None else origin_ns
            requests.wait_idle()
    requests.wait_idle()
    return request


def first_request(job: DeviceJob, index: int) -> int:
    """The id of offloader `index`'s first measured request: each offloader's warm-ups,
    then its samples, take ids in turn from 1."""
    return index * (job.warmup + len(job.samples)) + job.warmup + 1


def not_run_records(job: DeviceJob, labels, started: set[int], why: str) -> list[RequestRecord]:
    """A `not_run` record for every measured request of the job not in `started`; its
    intended start where the open-loop schedule fixed one, else none."""
    out = []
    rate_hz = job.arrival.open_rate_hz
    for index, spec in enumerate(job.offloaders):
        offsets = None
        if rate_hz is not None:
            offsets = poisson_offsets_ms(
                rate_hz, len(job.samples), job.seed, index, job.device_index
            )
        first = first_request(job, index)
        for k, sample in enumerate(job.samples):
            if first + k in started:
                continue
            fields = {
                "offloader": spec.label,
                "device": job.device_index,
                "request": first + k,
                "sample": sample,
                "label": int(labels[sample]),
                "intended_ms": None if offsets is None else float(offsets[k]),
                **dict.fromkeys(PHASES, 0.0),  # no time spent in any phase
                "bytes_up": 0,
                "bytes_down": 0,
                "est_uplink_mbps": None,
                "total_ms": None,
                "prediction": -1,
                "status": NOT_RUN,
                "error": f"not run: {why}",
            }
            out.append(RequestRecord.from_dict(fields))
    return out


def _why(exc: BaseException) -> str:
    """An error of connecting in a few words: `connection refused`."""
    if isinstance(exc, ConnectionClosed):
        return "the edge closed the connection"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"


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
    honour_sigint()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s device %(levelname)s %(message)s")
    try:
        job = DeviceJob.read(args.job)
    except ContractError as exc:
        print(f"device agent: {exc}", file=sys.stderr)
        return exc.exit_status

    import torch

    torch.set_num_threads(job.threads)
    plugin = plugins.get(job.plugin)
    model = plugin.load_model()
    data = plugins.test_data(plugin, None if job.test_data is None else Path(job.test_data))
    built = [offloaders.get(o.name)(plugin, model, **o.params) for o in job.offloaders]
    kernels_s = warm_kernels(type(o) for o in built)
    if job.cgroup is not None and job.loaded is not None:
        wait_for_limit(Path(job.loaded), job.cgroup)
    # from here on, device work runs at the device's speed (profiling included)
    DeviceClock.set(job.dilate_share, job.threads)
    started = time.monotonic()
    for offloader in built:  # profiling on this (CPU-limited) host; calibration is cached
        offloader.prepare("device")
    prepare_s = time.monotonic() - started
    estimate = LinkEstimate()
    switch_interval = sys.getswitchinterval()
    lost = ""
    with open(job.records, "a", buffering=1) as out, sigterm_raises():
        requests = Requests(
            job.edge_host,
            job.edge_port,
            job.hello(),
            job.timeout_s,
            RecordWriter(out),
            estimate,
            plugin,
        )
        try:
            start(requests, job, built, kernels_s, prepare_s)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            run_job(requests, job, built, data)
        except EdgeLost as exc:
            lost = str(exc)
        except (KeyboardInterrupt, Terminated) as exc:
            log.warning("interrupted: %s", type(exc).__name__)
            return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
        finally:
            sys.setswitchinterval(switch_interval)
            requests.close()
        if not lost:
            return 0
        missing = not_run_records(job, data.labels, requests.writer.announced, lost)
        for record in missing:
            out.write(record.to_json() + "\n")
    print(f"device agent: {lost}; {len(missing)} requests not run", file=sys.stderr)
    return 1


def start(requests: Requests, job: DeviceJob, built: list, kernels_s, prepare_s: float) -> None:
    """Connect, measure the round trip, hand each offloader its edge half's description
    and write the DeviceMeta; EdgeLost where the edge cannot be reached."""
    conn = requests.open()
    try:
        requests.estimate.observe_rtt(conn.rtt_ms(job.pings))
    except (OSError, ConnectionClosed, ProtocolError) as exc:
        raise EdgeLost(f"{lost_reason(exc)} (measuring the round trip)") from None
    for offloader, edge_half in zip(built, conn.described, strict=True):
        offloader.connect(edge_half, requests.estimate)
    DeviceMeta(
        rtt_ms=requests.estimate.rtt_ms,
        offloaders=tuple(conn.described),
        device_offloaders=tuple(o.describe() for o in built),
        device_kernel_warmup_s=kernels_s,
        device_prepare_s=prepare_s,
        arrival=job.arrival,
        device_index=job.device_index,
    ).write(job.meta)


def run_job(requests: Requests, job: DeviceJob, built: list, data) -> None:
    """Every offloader's warm-ups (not recorded) and measured requests, in turn."""
    rate_hz, device = job.arrival.open_rate_hz, job.device_index
    for index, (spec, offloader) in enumerate(zip(job.offloaders, built, strict=True)):
        first = job.samples[0]
        for request in range(first_request(job, index) - job.warmup, first_request(job, index)):
            tags = {"offloader": spec.label, "request": request}  # first calls pay JIT costs
            requests.issue(offloader, index, request, data.inputs[first], tags)
            requests.wait_idle()
        if job.barrier is not None:  # every device starts this offloader together
            timeout_s = job.timeout_s * 4 + 60
            try:
                wait_barrier(job.barrier, str(index), device, job.devices, timeout_s)
            except TimeoutError as exc:  # another device stopped (lost the edge, most likely)
                raise EdgeLost(str(exc)) from None
        offsets = None
        if rate_hz is not None:
            offsets = poisson_offsets_ms(rate_hz, len(job.samples), job.seed, index, device)
        tags = {"offloader": spec.label, "device": device}
        run_offloader(
            requests,
            offloader,
            index,
            data.inputs,
            job.samples,
            data.labels,
            first_request(job, index),
            offsets,
            tags,
        )


if __name__ == "__main__":
    sys.exit(main())
