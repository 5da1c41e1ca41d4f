"""Link-fidelity probes: measure what an emulated link really does.

Emulators fail silently here (TCLink drops `delay`/`loss` without netem), so the
testbed measures each link instead of trusting its configuration. These modes run
as separate processes inside the Mininet hosts, started by the topology code:

    python -m testbed.fidelity.probe udp-sink   --port P [--duration S] [--timeout T] [--grace G]
    python -m testbed.fidelity.probe udp-source --host H --port P --count N --interval-ms I --size B
                                                [--start-at T]
    python -m testbed.fidelity.probe tcp-sink   --port P [--timeout T] [--max-seconds S]
    python -m testbed.fidelity.probe tcp-source --host H --port P --seconds S

Server modes print `READY <port>` as their first stdout line once listening
(`--port 0` picks a free port). Every mode prints one JSON object as its last
stdout line. Exit status: 0 measured, 1 error (the JSON has "error"), 2 bad
arguments, 128+signal when stopped by SIGTERM/SIGINT (the JSON holds what was
measured so far and "terminated": true).

One-way delay is measured directly: Mininet hosts share CLOCK_MONOTONIC, so the
sender's time.monotonic_ns() in the probe compares with the receiver's. The link's rate
is measured at the receiver too: udp-sink reports the rate at which a train arrived
("rate", `probe_packets.delivery_rate`), which is the bottleneck's when the train was
sent above it; tcp-sink reports goodput over the whole transfer and after TCP's ramp
("steady_goodput_mbps", over the second half of the transfer).

UDP probe datagram (big-endian), padded with zeros to the requested size:

    offset size  field
    0      4     magic b"DCPB"
    4      1     version (1)
    5      1     kind: 1 probe, 2 end marker
    6      2     reserved (0)
    8      4     train id (random per source run; the sink follows one train)
    12     4     sequence number (probe: 0..count-1; marker: count)
    16     4     count: probes in the train
    20     4     datagram length; must equal the received length
    24     8     sender's time.monotonic_ns() just before sending
"""

from __future__ import annotations

import argparse
import array
import contextlib
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from testbed.agents.protocol import set_congestion_control
from testbed.fidelity.probe_args import build_parser, emit
from testbed.fidelity.probe_packets import (
    HEADER,
    KIND_END,
    KIND_PROBE,
    MAX_DATAGRAM,
    decode_probe,
    delay_stats,
    delivery_rate,
    encode_probe,
    rounded,
    steady_rate,
)

END_MARKERS = 3  # the marker may be lost like any probe
END_MARKER_SPACING_S = 0.005
TCP_CHUNK = 256 * 1024
UDP_RCVBUF = 4 * 1024 * 1024  # so a burst is not dropped by the sink's own socket
# Linux socket option: a per-datagram counter of datagrams the socket dropped,
# so drops at the sink are not mistaken for link loss. Python has no constant.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
RATE_SKIP_FRACTION = 0.1  # head of a train left out of its rate: it met an idle link
STEADY_FROM = 0.5  # TCP goodput after its ramp: over the second half of the transfer
TCP_TIMELINE_NS = 1_000_000  # tcp-sink keeps one (time, bytes) point per ms
EXIT_OK, EXIT_ERROR = 0, 1


class Terminated(Exception):
    """SIGTERM/SIGINT arrived; unwinds a blocking call so partial results are printed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    _ignore_signals()  # a second signal must not interrupt printing the result
    raise Terminated(signum)


def _ignore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _leave_realtime() -> None:
    """Back to normal scheduling once measuring is done: the interpreter's exit takes
    milliseconds, and as a SCHED_FIFO task it would hold a core from the link elements
    and the sinks of trains still running (the probes start as realtime, see
    OffloadTopology.popen)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- sockets


def _addr(host: str, port: int, kind: socket.SocketKind, passive: bool = False):
    flags = socket.AI_PASSIVE if passive else 0
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=kind, flags=flags)[0]
    return family, sockaddr


# ---------------------------------------------------------------- udp-sink


class UdpSink:
    """Follows one train of probes and summarises its delay, loss and order."""

    def __init__(self) -> None:
        self.train: int | None = None
        self.count = 0
        self.seen = bytearray()  # one byte per sequence number, allocated once per train
        self.delays = array.array("q")
        self.arrivals = array.array("q")  # receive times and sizes of the probes, in order
        self.sizes = array.array("l")
        self.max_seq = -1
        self.reordered = 0
        self.duplicates = 0
        self.ignored = 0  # foreign or malformed datagrams, and other trains
        self.end_marker = False
        self.socket_drops = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def feed(self, data: memoryview, recv_ns: int) -> bool:
        """Returns whether the datagram belonged to the followed train."""
        decoded = decode_probe(data)
        if decoded is None:
            self.ignored += 1
            return False
        kind, train, seq, count, send_ns = decoded
        if self.train is None:
            # lock on a marker too, so a train whose probes were all lost reads 100% loss
            self.train, self.count = train, count
            self.seen = bytearray(count)
        elif train != self.train or count != self.count:
            self.ignored += 1
            return False
        if kind == KIND_END:
            self.end_marker = True
            return True
        if self.seen[seq]:
            self.duplicates += 1
            return True
        self.seen[seq] = 1
        self.delays.append(recv_ns - send_ns)
        self.arrivals.append(recv_ns)
        self.sizes.append(len(data))
        if seq < self.max_seq:
            self.reordered += 1  # arrived after a later-sent probe
        else:
            self.max_seq = seq
        if self.first_ns is None:
            self.first_ns = recv_ns
        self.last_ns = recv_ns
        return True

    def result(self) -> dict:
        received = len(self.delays)
        expected = self.count if self.train is not None else self.max_seq + 1
        loss = 100.0 * (expected - received) / expected if expected else None
        first, last = self.first_ns, self.last_ns
        span = (last - first) / 1e9 if first is not None and last is not None else None
        return {
            "received": received,
            "expected": expected,
            "loss_pct": rounded(loss),
            "delay_ms": delay_stats(self.delays),
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "socket_drops": self.socket_drops,
            "end_marker": self.end_marker,
            "train": self.train,
            "seconds": rounded(span, 6),
            "rate": self.rate(),
        }

    def rate(self) -> dict:
        """The train's arrival rate in wire Mbit/s, its head left out."""
        skip = max(2, int(len(self.arrivals) * RATE_SKIP_FRACTION))
        return {**delivery_rate(self.arrivals, self.sizes, skip), "skipped_first": skip}


def _drops(ancdata: list) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return struct.unpack("=I", data[:4])[0]
    return None


def udp_sink(args: argparse.Namespace, out: dict) -> int:
    family, sockaddr = _addr(args.bind, args.port, socket.SOCK_DGRAM, passive=True)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sink = UdpSink()
    out["partial"] = sink.result
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        with contextlib.suppress(OSError):  # not Linux: sink drops go unreported
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.bind(sockaddr)
        _ready(sock.getsockname()[1])
        buf = bytearray(MAX_DATAGRAM + 1)  # +1: an oversized datagram fails the length check
        view = memoryview(buf)
        cmsg_size = socket.CMSG_SPACE(4)
        started = time.monotonic()
        first = last_valid = end_seen = None
        while True:
            now = time.monotonic()
            if first is None:
                deadline = started + args.timeout
            else:
                deadline = min(first + args.duration, last_valid + args.timeout)
                if end_seen is not None:
                    deadline = min(deadline, end_seen + args.grace)
            if now >= deadline:
                break
            sock.settimeout(deadline - now)
            try:
                n, ancdata, _, _ = sock.recvmsg_into([view], cmsg_size)
            except TimeoutError:
                continue
            recv_ns = time.monotonic_ns()
            drops = _drops(ancdata)
            if drops is not None:
                sink.socket_drops = drops
            if sink.feed(view[:n], recv_ns):
                last_valid = recv_ns / 1e9
                if first is None:
                    first = last_valid
                if sink.end_marker and end_seen is None:
                    end_seen = last_valid
    finally:
        sock.close()
    out.update(sink.result())
    out.pop("partial")
    if sink.train is None:
        out["error"] = f"no probe received within {args.timeout:g} s"
        return EXIT_ERROR
    return EXIT_OK


# ---------------------------------------------------------------- udp-source


def _sleep_until(target_ns: int) -> None:
    delta = target_ns - time.monotonic_ns()
    if delta > 0:
        time.sleep(delta / 1e9)


def udp_source(args: argparse.Namespace, out: dict) -> int:
    family, sockaddr = _addr(args.host, args.port, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    train = args.train if args.train is not None else int.from_bytes(os.urandom(4), "big")
    state = {"sent": 0, "send_errors": 0, "late_max_ms": 0.0, "seconds": 0.0}
    out["partial"] = lambda: {**state, "train": train}
    buf = bytearray(args.size)
    interval_ns = round(args.interval_ms * 1e6)
    try:
        if args.start_at is not None:
            _sleep_until(round(args.start_at * 1e9))
        # scheduled from one start time: a late send does not shift the ones after it
        start = time.monotonic_ns()
        for seq in range(args.count):
            target = start + seq * interval_ns
            _sleep_until(target)
            now = time.monotonic_ns()
            state["late_max_ms"] = max(state["late_max_ms"], (now - target) / 1e6)
            encode_probe(buf, KIND_PROBE, train, seq, args.count, time.monotonic_ns())
            try:
                sock.sendto(buf, sockaddr)
                state["sent"] += 1
            except OSError:
                state["send_errors"] += 1  # e.g. ENOBUFS; the sink counts it as lost
            state["seconds"] = (time.monotonic_ns() - start) / 1e9  # what a rate was sent in
        marker = bytearray(HEADER.size)
        end = start + args.count * interval_ns
        for i in range(END_MARKERS):
            _sleep_until(end + round(i * END_MARKER_SPACING_S * 1e9))
            encode_probe(marker, KIND_END, train, args.count, args.count, time.monotonic_ns())
            try:
                sock.sendto(marker, sockaddr)
            except OSError:
                state["send_errors"] += 1
    finally:
        sock.close()
    out.pop("partial")
    out.update(
        state,
        train=train,
        late_max_ms=rounded(state["late_max_ms"]),
        seconds=rounded(state["seconds"], 6),
    )
    return EXIT_OK


# ---------------------------------------------------------------- tcp-sink


def tcp_sink(args: argparse.Namespace, out: dict) -> int:
    family, sockaddr = _addr(args.bind, args.port, socket.SOCK_STREAM, passive=True)
    listener = set_congestion_control(socket.socket(family, socket.SOCK_STREAM))
    state: dict[str, Any] = {"bytes": 0, "first_ns": None, "last_ns": None, "first_chunk": 0}
    reads, totals = array.array("q"), array.array("q")  # each read's time and bytes so far

    def result() -> dict:
        first, last = state["first_ns"], state["last_ns"]
        seconds = (last - first) / 1e9 if first is not None else None
        # the first read's bytes arrived before the clock started, so they do not count
        goodput = (state["bytes"] - state["first_chunk"]) * 8 / seconds / 1e6 if seconds else None
        steady = steady_rate(reads, totals, STEADY_FROM)
        return {
            "bytes": state["bytes"],
            "seconds": rounded(seconds, 6),
            "goodput_mbps": rounded(goodput),
            "steady_goodput_mbps": steady["mbps"],
            "steady_from_s": steady["from_s"],
        }

    out["partial"] = result
    conn = None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(sockaddr)
        listener.listen(1)
        _ready(listener.getsockname()[1])
        listener.settimeout(args.timeout)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            out.pop("partial")
            out.update(result(), error=f"no connection within {args.timeout:g} s")
            return EXIT_ERROR
        finally:
            listener.close()
        stop = time.monotonic() + args.max_seconds
        buf = bytearray(TCP_CHUNK)
        error = None
        while True:
            remaining = stop - time.monotonic()
            if remaining <= 0:
                error = f"still receiving after {args.max_seconds:g} s"
                break
            conn.settimeout(min(args.timeout, remaining))
            try:
                n = conn.recv_into(buf)
            except TimeoutError:
                if args.timeout < remaining:
                    error = f"nothing received for {args.timeout:g} s"
                    break
                continue  # the max-seconds check above reports it
            now = time.monotonic_ns()
            if n == 0:
                break
            if state["first_ns"] is None:
                state["first_ns"], state["first_chunk"] = now, n
            state["last_ns"] = now
            state["bytes"] += n
            if len(reads) >= 2 and now - reads[-2] < TCP_TIMELINE_NS:
                reads[-1], totals[-1] = now, state["bytes"]  # thinned: bounded memory
            else:
                reads.append(now)
                totals.append(state["bytes"])
        if error is None and state["bytes"] == 0:
            error = "connection closed without data"
    finally:
        listener.close()
        if conn is not None:
            conn.close()  # tells tcp-source that everything was read
    out.pop("partial")
    out.update(result())
    if error:
        out["error"] = error
        return EXIT_ERROR
    return EXIT_OK


# ---------------------------------------------------------------- tcp-source


def _connect(family: int, sockaddr: tuple, timeout: float) -> socket.socket:
    """Retries refused connections: the sink may still be starting."""
    deadline = time.monotonic() + timeout
    while True:
        sock = set_congestion_control(socket.socket(family, socket.SOCK_STREAM))
        remaining = deadline - time.monotonic()
        sock.settimeout(max(remaining, 0.001))
        try:
            sock.connect(sockaddr)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if deadline - time.monotonic() <= 0.1:
                raise
            time.sleep(0.1)
        except BaseException:
            sock.close()
            raise


def tcp_source(args: argparse.Namespace, out: dict) -> int:
    family, sockaddr = _addr(args.host, args.port, socket.SOCK_STREAM)
    state = {"bytes_sent": 0}
    out["partial"] = lambda: dict(state)
    sock = _connect(family, sockaddr, args.connect_timeout)
    try:
        view = memoryview(bytes(TCP_CHUNK))
        started = time.monotonic()
        stop = started + args.seconds
        # send(), not sendall(): a timed-out sendall cannot say how much it sent,
        # and one large sendall on a slow link would overrun the deadline
        while (remaining := stop - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                state["bytes_sent"] += sock.send(view)
            except TimeoutError:
                break
        sending = time.monotonic() - started
        sock.shutdown(socket.SHUT_WR)
        # wait for the sink to close: then it has read every byte we counted
        sock.settimeout(args.drain_timeout)
        drained = True
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            drained = False
    finally:
        sock.close()
    out.pop("partial")
    out.update(
        state,
        seconds=rounded(sending, 6),
        drain_seconds=rounded(time.monotonic() - started - sending, 6),
    )
    if not drained:
        out["error"] = f"sink did not close within {args.drain_timeout:g} s of the end"
        return EXIT_ERROR
    return EXIT_OK


MODES = {
    "udp-sink": udp_sink,
    "udp-source": udp_source,
    "tcp-sink": tcp_sink,
    "tcp-source": tcp_source,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: dict = {"mode": args.mode}
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        code = MODES[args.mode](args, out)
    except Terminated as stop:
        partial = out.pop("partial", None)
        if partial is not None:
            out.update(partial())
        out.update(terminated=True, error=f"stopped by signal {stop.signum}")
        code = 128 + stop.signum
    except OSError as exc:
        _ignore_signals()
        partial = out.pop("partial", None)
        if partial is not None:
            out.update(partial())
        out["error"] = f"{type(exc).__name__}: {exc}"
        code = EXIT_ERROR
    _ignore_signals()
    _leave_realtime()
    emit(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
