"""What the edge agent allows one device and all of them together: declared once here,
with their defaults, and turned into the agent's command-line options and the limits
table of docs/design.md ("Limits"), which a test compares with this declaration.

Why each exists: the edge serves untrusted network input on one process, so every
resource a peer can make it spend (connections, threads, memory for frames, time) is
bounded, and a peer that goes over a bound loses only its own frame or connection.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

__all__ = ["EdgeLimits", "add_arguments", "from_args", "markdown_rows"]

KIB = 1024
MIB = 1024 * KIB


def _limit(default, help: str, unit: str = ""):
    return field(default=default, metadata={"help": help, "unit": unit})


@dataclass(frozen=True)
class EdgeLimits:
    max_connections: int = _limit(
        256,
        "open connections; at the cap a new one evicts the connection that has gone longest "
        "without completing a frame (and is not being served), else it is refused (BUSY)",
    )
    memory_budget: int = _limit(
        64 * MIB,
        "payload bytes of frames received and not yet handled, all connections together; "
        "beyond it a frame is refused (BUSY) and its connection closed",
        "bytes",
    )
    frame_s: float = _limit(
        60.0, "a frame must arrive whole within this time of its first byte", "s"
    )
    idle_s: float = _limit(300.0, "a connection with no frame started for this long is closed", "s")
    send_s: float = _limit(
        30.0, "a reply not sent within this time closes the connection (it is out of step)", "s"
    )
    backlog: int = _limit(
        1024, "listen backlog: connections the kernel holds before the agent accepts them"
    )
    max_hello: int = _limit(64 * KIB, "HELLO payload (BAD_HELLO beyond it)", "bytes")
    max_offloaders: int = _limit(32, "offloaders one HELLO may name (BAD_HELLO beyond it)")
    max_ping: int = _limit(64, "PING payload (echoed back)", "bytes")
    drain: int = _limit(
        1 * MIB,
        "a refused frame up to this long is read and dropped (never stored) so that its "
        "connection stays usable; a longer one closes the connection",
        "bytes",
    )


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per limit, named after its field, default and help from the field."""
    group = parser.add_argument_group("limits (docs/design.md, Limits)")
    for f in fields(EdgeLimits):
        unit = f" ({f.metadata['unit']})" if f.metadata["unit"] else ""
        group.add_argument(
            _option(f.name),
            dest=f.name,
            type=type(f.default),
            default=f.default,
            metavar="N",
            help=f"{f.metadata['help']}{unit}; default {f.default}",
        )


def from_args(args: argparse.Namespace) -> EdgeLimits:
    values = {f.name: getattr(args, f.name) for f in fields(EdgeLimits)}
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{_option(name)} must be > 0, got {value}")
    return EdgeLimits(**values)


def markdown_rows() -> list[str]:
    """The agent's rows of the limits table in docs/design.md."""
    rows = []
    for f in fields(EdgeLimits):
        unit = f" {f.metadata['unit']}" if f.metadata["unit"] else ""
        rows.append(
            f"| edge agent `{_option(f.name)}` | {f.default}{unit} | {f.metadata['help']} |"
        )
    return rows
