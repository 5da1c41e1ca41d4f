"""Every program the testbed starts inside an emulated host, in one table.

Each is a module with `main(argv) -> int`, run as `python -m MODULE ARGS...` in the
host's network namespace (Mininet's `popen`). Library code builds their command lines
with `command()`, never with a module-name string of its own, so this table is the
whole list of what runs on a host.
"""

from __future__ import annotations

import sys

__all__ = ["PROGRAMS", "command"]

PROGRAMS: dict[str, str] = {
    "device-agent": "testbed.agents.device",  # runs the requests (agents/contract.py's job)
    "edge-agent": "testbed.agents.edge",  # serves them
    "link-element": "testbed.emulation.link.element",  # holds packets: delay, jitter, loss
    "trafficgen": "testbed.emulation.traffic.gen",  # competing UDP traffic: sender, sink
    "probe": "testbed.fidelity.probe",  # measures a link: UDP/TCP sources and sinks
    "capture": "testbed.emulation.capture",  # pcap of the agents' traffic
}


def command(program: str, *args: str, python: str | None = None) -> list[str]:
    """The argv that starts `program` (a key of PROGRAMS) with `args`."""
    if program not in PROGRAMS:
        raise KeyError(f"unknown program {program!r}; programs: {', '.join(PROGRAMS)}")
    return [python or sys.executable, "-m", PROGRAMS[program], *args]
