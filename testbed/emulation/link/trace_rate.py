"""A bottleneck's HTB following a trace's rate (either backend, with `network.trace`).

The element (or netem) delivers packets at the trace's own opportunities; HTB only
keeps the queue at the bottleneck, so it follows a smoothed rate (50 ms bins) with a
floor: HTB charges a packet sent at a tiny rate as a long debt that outlasts the rate
change (0 in a 10 ms bin of a 1 Mbit/s trace would stall the link for a second and a
half).
"""

from __future__ import annotations

import subprocess

from testbed.cleanup import Teardown, stop_process
from testbed.emulation.link.htb import htb_rate_change
from testbed.emulation.link.trace import Trace, TracePlayer

BIN_MS = 50
FLOOR_MBPS = 0.2


def htb_rate(rate_mbps: float) -> float:
    """The rate HTB is set to for a trace rate (never under the floor)."""
    return max(rate_mbps, FLOOR_MBPS)


def first_rate(trace: Trace) -> float:
    """The rate HTB starts with, at trace time 0."""
    return htb_rate(trace.rate_at(0, BIN_MS))


def follow(port: str, trace: Trace, start: float, teardown: Teardown, what: str) -> TracePlayer:
    """Play `trace` on the HTB of `port` from CLOCK_MONOTONIC `start`, through one
    long-lived `tc -batch` process (a `tc` per change would cost a core); both stop
    at teardown."""
    tc = subprocess.Popen(
        ["tc", "-force", "-batch", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    commands = tc.stdin
    assert commands is not None  # stdin=PIPE

    def set_rate(rate_mbps: float) -> None:
        commands.write(" ".join(htb_rate_change(port, htb_rate(rate_mbps))[1:]) + "\n")
        commands.flush()

    def stop() -> None:
        player.stop()
        stop_process(tc)

    player = TracePlayer(trace, set_rate, start, bin_ms=BIN_MS).start()
    teardown.add(f"{what} trace player", stop)
    return player
