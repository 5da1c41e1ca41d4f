"""Competing traffic: what to start where, when, and how to read the results.

Pure planning, no processes: the topology code owns the hosts and the lifetimes,
and this module stays testable without Mininet. One `FlowPlan` per item of the
scenario's `traffic` list; the caller runs it like this:

1. at the start of the run, start `server_argv` on the host that *receives* the
   flow (`receiver_side`: the edge side for `up`, the device side for `down`) and
   wait until it is ready (`ready_line` on its stdout, or `ready_check_argv` run in
   the same host prints a line);
2. `start_s` seconds into the run, start `client_argv` on the other side's host;
   it stops by itself after `duration_s`;
3. at the end of the run, SIGTERM what is still running, the client before the
   server (both still print their JSON), and pass both stdouts to `plan.parse`.

`tcp_bulk` uses iperf3, one server and one port per traffic item, and ONE client
with `-P flows`: the streams are separate TCP connections with their own
congestion control, as separate clients would be, but they start together, share
one port and come back as one JSON with their sum. (An iperf3 server serves one
test at a time, so separate clients would need a server and a port each, and a
sum over N outputs.) `--one-off` lets the server exit once its test is done.
The UDP kinds use `testbed.emulation.traffic.gen` (its sink on the receiving side).
Rates are payload bits per second for both tools.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed import programs
from testbed.errors import TestbedError

DEFAULT_BASE_PORT = 5201
# cbr/onoff payload: near the MTU (1500 - 28) like bulk traffic, without fragments.
UDP_PACKET_BYTES = 1400
# The sink outlives its sender by this much, in case nobody stops it.
SINK_GRACE_S = 10.0
_KINDS = ("tcp_bulk", "udp_cbr", "udp_onoff", "poisson")
_PATTERN = {"udp_cbr": "cbr", "udp_onoff": "onoff", "poisson": "poisson"}


class TrafficError(TestbedError):
    """A traffic tool failed or printed something unusable; the message says which and why."""


@dataclass(frozen=True, eq=True)
class FlowPlan:
    """One competing flow: its window, the two command lines and where they run."""

    label: str  # unique in the run, e.g. "tcp_bulk_up_0"
    kind: str  # tcp_bulk | udp_cbr | udp_onoff | poisson
    direction: str  # up: device side -> edge side; down: the reverse
    start_s: float  # seconds after the run starts
    stop_s: float | None  # as in the scenario; None: until the end
    duration_s: float  # what the client is told to run (see plan_traffic)
    port: int
    receiver_ip: str
    server_argv: list[str] = field(hash=False)
    client_argv: list[str] = field(hash=False)
    ready_line: str | None  # the server prints this line once it listens
    ready_check_argv: list[str] = field(hash=False)  # prints a line once it listens
    spec: dict = field(hash=False, repr=False)  # the scenario's item, as given

    @property
    def receiver_side(self) -> str:
        return "edge" if self.direction == "up" else "device"

    @property
    def sender_side(self) -> str:
        return "device" if self.direction == "up" else "edge"

    @property
    def runs(self) -> bool:
        """False when the flow starts after the planned end of the run."""
        return self.duration_s > 0

    def parse(self, server_out: str, client_out: str | None = None) -> dict:
        """The flow's result from the two processes' stdout (client's may be None)."""
        meta = {"flow": self.label, "kind": self.kind, "direction": self.direction}
        if self.kind == "tcp_bulk":
            return _parse_tcp(server_out, client_out, meta)
        result = parse_trafficgen(server_out, **meta)
        if client_out:
            try:
                sent = json.loads(_last_line(client_out, "trafficgen send"))
                result["packets_sent"] = sent["packets_sent"]
                result["packets_skipped"] = sent.get("packets_skipped", 0)
            except (TrafficError, ValueError, KeyError, TypeError):
                pass  # the sink's numbers are the result; the sender's are extras
        return result


def plan_traffic(
    traffic: Sequence[Mapping],
    *,
    receiver_ip: str | Mapping[str, str],
    duration_s: float,
    seed: int = 1,
    base_port: int = DEFAULT_BASE_PORT,
    python: str = sys.executable,
    iperf3: str = "iperf3",
) -> list[FlowPlan]:
    """Plans for the scenario's resolved `traffic` list, in its order.

    `receiver_ip`: the address the senders aim at; one string for both directions,
    or {"up": IP of the edge-side receiver, "down": IP of the device-side one}.
    `duration_s`: the run's planned length. A flow runs from `start_s` to `stop_s`,
    or to `duration_s` when `stop_s` is None, never past `duration_s`; a flow that
    would start after it gets `duration_s == 0` (`runs` is False).
    Each flow gets port `base_port + index` and seed `seed * 1000 + index`, so
    flows of one scenario differ and reruns repeat.
    """
    plans = []
    for index, item in enumerate(traffic):
        kind = item.get("type")
        if kind not in _KINDS:
            raise ValueError(f"traffic[{index}].type: {kind!r}; allowed: {', '.join(_KINDS)}")
        direction = item.get("direction", "up")
        if direction not in ("up", "down"):
            raise ValueError(f"traffic[{index}].direction: {direction!r}; allowed: up, down")
        if isinstance(receiver_ip, str):
            ip = receiver_ip
        elif direction in receiver_ip:
            ip = receiver_ip[direction]
        else:
            raise ValueError(f"traffic[{index}] goes {direction}: receiver_ip has no {direction!r}")
        start = float(item.get("start_s", 0.0))
        stop = item.get("stop_s")
        end = duration_s if stop is None else min(float(stop), duration_s)
        length = max(0.0, end - start)
        port = base_port + index
        label = f"{kind}_{direction}_{index}"
        if kind == "tcp_bulk":
            server = [iperf3, "-s", "-p", str(port), "--one-off", "-J"]
            # -t takes whole seconds only
            client = [iperf3, "-c", ip, "-p", str(port), "-t", str(max(1, round(length)))]
            client += ["-P", str(int(item.get("flows", 1))), "-J"]
            ready_line, check = None, ["ss", "-H", "-ltn", "sport", "=", f":{port}"]
        else:
            gen = programs.command("trafficgen", python=python)
            server = [*gen, "sink", "--port", str(port), "--report-interval-s", "1"]
            server += ["--max-seconds", _num(start + length + SINK_GRACE_S)]
            client = [*gen, "send", "--host", ip, "--port", str(port)]
            client += ["--pattern", _PATTERN[kind], "--duration-s", _num(max(length, 0.001))]
            client += ["--seed", str(seed * 1000 + index)]
            client += _udp_args(kind, item)
            ready_line, check = f"READY {port}", ["ss", "-H", "-lun", "sport", "=", f":{port}"]
        plans.append(
            FlowPlan(
                label=label,
                kind=kind,
                direction=direction,
                start_s=start,
                stop_s=None if stop is None else float(stop),
                duration_s=length,
                port=port,
                receiver_ip=ip,
                server_argv=server,
                client_argv=client,
                ready_line=ready_line,
                ready_check_argv=check,
                spec=dict(item),
            )
        )
    return plans


def _num(x: float) -> str:
    return repr(round(float(x), 6))


def _udp_args(kind: str, item: Mapping) -> list[str]:
    if kind == "poisson":
        return [
            "--rate-hz",
            _num(item["rate_hz"]),
            "--train-packets",
            str(int(item.get("train_packets", 10))),
            "--packet-bytes",
            str(int(item.get("packet_bytes", 1000))),
        ]
    args = ["--rate-mbps", _num(item["rate_mbps"]), "--packet-bytes", str(UDP_PACKET_BYTES)]
    if kind == "udp_onoff":
        args += ["--on-s", _num(item["on_s"]), "--off-s", _num(item["off_s"])]
        args += ["--distribution", item.get("distribution", "exponential")]
    return args


# --- parsing ---------------------------------------------------------------------


def _last_line(text: str, tool: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise TrafficError(f"{tool} printed nothing (killed, or it failed to start?)")
    return lines[-1]


def _iperf3_doc(json_text: str) -> dict:
    try:
        doc = json.loads(json_text)
    except (TypeError, ValueError) as e:
        head = (json_text or "").strip()[:200] or "nothing"
        raise TrafficError(f"iperf3 output is not JSON ({e}): {head}") from None
    if not isinstance(doc, dict):
        raise TrafficError(f"iperf3 output is not a JSON object: {str(doc)[:200]}")
    return doc


def parse_iperf3(
    json_text: str,
    *,
    flow: str | None = None,
    kind: str = "tcp_bulk",
    direction: str | None = None,
    partial_ok: bool = False,
) -> dict:
    """Throughput as the receiver saw it (`end.sum_received`), retransmits as the sender counted.

    iperf3 reports failures inside its JSON (`"error"`), often with exit status 0,
    so an error raises TrafficError. With `partial_ok`, an interrupted test (SIGTERM
    at the end of a run) still yields what its `end` section holds; the client
    then lacks the receiver's numbers, the server has them.
    """
    doc = _iperf3_doc(json_text)
    error = doc.get("error")
    end = doc.get("end") or {}
    received, sent = end.get("sum_received"), end.get("sum_sent")
    if error and not (partial_ok and (received or sent)):
        raise TrafficError(f"iperf3 failed: {error}")
    if not received and not sent:
        raise TrafficError("iperf3 output has no end.sum_received or end.sum_sent")
    received, sent = received or {}, sent or {}
    return {
        "flow": flow,
        "kind": kind,
        "direction": direction,
        "throughput_mbps": float(received.get("bits_per_second", 0.0)) / 1e6,
        "bytes": int(received.get("bytes", 0)),
        "retransmits": sent.get("retransmits"),
        "seconds": float(received.get("seconds") or sent.get("seconds") or 0.0),
        "streams": len(end.get("streams") or ()),
        "error": error,
    }


# iperf3's error when a test is stopped by a signal (ours, at the end of the run):
# "interrupt - the server has terminated" / "interrupt - the client has terminated"
IPERF3_INTERRUPT = "interrupt - the "
ENDED, STOPPED, FAILED, NOT_RUN = "ended", "stopped at the run's end", "failed", "not run"


def with_status(result: dict, stopped_by_run: bool) -> dict:
    """`result` with its `status` for traffic.csv: `ended` (it finished by itself),
    `stopped at the run's end` (we stopped it when the requests were done: its planned
    end, so iperf3's "interrupt - ... has terminated" is no error and is dropped), or
    `failed` (any other error; it stays in `error`)."""
    error = str(result.get("error") or "")
    if stopped_by_run and error.startswith(IPERF3_INTERRUPT):
        return {**result, "status": STOPPED, "error": ""}
    if error:
        return {**result, "status": FAILED}
    return {**result, "status": STOPPED if stopped_by_run else ENDED}


def _parse_tcp(server_out: str, client_out: str | None, meta: dict) -> dict:
    """The client's JSON has both sides when its test completed. When it was cut
    short, the server's JSON has the bytes received, but iperf3 (3.12) times them
    over whole intervals only, so the rate uses the client's elapsed time."""
    client_error: TrafficError | None = None
    if client_out:
        try:
            return parse_iperf3(client_out, **meta)
        except TrafficError as e:
            client_error = e
    try:
        result = parse_iperf3(server_out, **meta, partial_ok=True)
    except TrafficError as e:
        raise TrafficError(
            f"{meta['flow']}: client: {client_error or 'no output'}; server: {e}"
        ) from None
    result["retransmits"] = None
    if client_out:
        with contextlib.suppress(TrafficError):
            client = parse_iperf3(client_out, **meta, partial_ok=True)
            result["retransmits"] = client["retransmits"]
            seconds = max(result["seconds"], client["seconds"])
            if seconds > 0:
                result["seconds"] = seconds
                result["throughput_mbps"] = result["bytes"] * 8 / seconds / 1e6
    return result


def parse_trafficgen(
    json_text: str, *, flow: str | None = None, kind: str = "udp", direction: str | None = None
) -> dict:
    """The sink's report (its last stdout line; a READY line before it is fine)."""
    line = _last_line(json_text, "trafficgen sink")
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        out: dict[str, Any] = {
            "flow": flow,
            "kind": kind,
            "direction": direction,
            "throughput_mbps": float(doc["throughput_mbps"]),
            "bytes": int(doc["bytes"]),
        }
    except (ValueError, KeyError, TypeError) as e:
        raise TrafficError(f"trafficgen sink output is unusable ({e}): {line[:200]}") from None
    out["packets"] = int(doc.get("packets", 0))
    out["lost_packets"] = int(doc.get("lost_packets", 0))
    out["per_second_mbps"] = list(doc.get("per_second_mbps", ()))
    if not math.isfinite(out["throughput_mbps"]):
        raise TrafficError(f"trafficgen sink reported a non-finite throughput: {line[:200]}")
    return out
