"""The probe program's command line: its modes and their checked arguments (a usage
error prints one JSON line, as every probe result does, and exits 2)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from testbed.fidelity.probe_packets import HEADER, MAX_COUNT, MAX_DATAGRAM

__all__ = ["EXIT_USAGE", "ProbeParser", "build_parser", "emit"]

EXIT_USAGE = 2


def emit(obj: dict) -> None:
    """One JSON line on stdout: how every probe reports, errors included."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- command line


class ProbeParser(argparse.ArgumentParser):
    """Bad arguments still end with a JSON line, as callers parse the last line."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        emit({"error": f"bad arguments: {message}"})
        sys.exit(EXIT_USAGE)


def _positive(x: str) -> float:
    v = float(x)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {x}")
    return v


def _non_negative(x: str) -> float:
    v = float(x)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {x}")
    return v


def _port(x: str) -> int:
    v = int(x)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {x}")
    return v


def _bounded_int(lo: int, hi: int):
    def parse(x: str) -> int:
        v = int(x)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {x}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ProbeParser(
        prog="python -m testbed.fidelity.probe",
        description="Link-fidelity probes: measure what an emulated link really does.",
    )
    modes = parser.add_subparsers(dest="mode", required=True, parser_class=ProbeParser)

    p = modes.add_parser("udp-sink", help="receive a probe train; report delay and loss")
    p.add_argument("--port", type=_port, required=True, help="0 picks a free port")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--duration", type=_positive, default=60.0, help="s after the first probe")
    p.add_argument(
        "--timeout", type=_positive, default=10.0, help="s to wait for the first probe, or idle"
    )
    p.add_argument("--grace", type=_non_negative, default=0.5, help="s after the end marker")

    p = modes.add_parser("udp-source", help="send a probe train at fixed intervals")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--count", type=_bounded_int(1, MAX_COUNT), required=True)
    p.add_argument("--interval-ms", type=_non_negative, required=True)
    p.add_argument("--size", type=_bounded_int(HEADER.size, MAX_DATAGRAM), default=64)
    p.add_argument("--train", type=_bounded_int(0, 2**32 - 1), default=None)
    p.add_argument(
        "--start-at",
        type=_non_negative,
        default=None,
        help="CLOCK_MONOTONIC s to send the first probe at (hosts share the clock), so "
        "that trains started together begin after every probe process is up",
    )

    p = modes.add_parser("tcp-sink", help="receive one TCP stream; report goodput")
    p.add_argument("--port", type=_port, required=True, help="0 picks a free port")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument(
        "--timeout", type=_positive, default=10.0, help="s to wait for the connection, or idle"
    )
    p.add_argument("--max-seconds", type=_positive, default=600.0)

    p = modes.add_parser("tcp-source", help="send as fast as possible for a while")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--seconds", type=_positive, required=True)
    p.add_argument("--connect-timeout", type=_positive, default=10.0)
    p.add_argument(
        "--drain-timeout", type=_positive, default=60.0, help="s to wait for the sink to finish"
    )
    return parser
