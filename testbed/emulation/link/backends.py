"""The two ways a direction of the bottleneck is emulated, behind one interface.

* `userspace` (this project's machines: no `sch_netem`): HTB with a pfifo/bfifo on
  the bottleneck port for rate and queue; the userspace element (element.py) at the
  ingress of every host on the receiving side for serialization, delay, jitter, loss.
* `netem` (most users' kernels): HTB on the same port, netem under it for
  serialization (`rate`), delay, jitter, loss and the queue limit.

`auto` picks netem where the kernel has it. Both are reported in environment.json.

A backend sets up its whole direction, as a Mininet link configures itself: the
qdiscs, the elements and, with a trace, the HTB following the trace's rate
(trace_rate.py). It acts on the network only through the `LinkTools` the topology
lends it.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import programs
from testbed.cleanup import Teardown
from testbed.emulation.link import element, trace_rate
from testbed.emulation.link.htb import htb_commands, netem_commands
from testbed.emulation.link.impairments import Loss
from testbed.emulation.link.settings import LinkSpec
from testbed.emulation.link.trace import TracePlayer, load_trace
from testbed.errors import EnvironmentMissing


@dataclass(frozen=True)
class Direction:
    """One direction of the bottleneck, as the topology built it."""

    name: str  # uplink | downlink
    link: LinkSpec
    switch: Any  # the Mininet switch that holds `port`
    port: str  # the bottleneck interface whose egress carries this direction (the HTB's)
    receivers: list  # the hosts on the far side (the element sits at their ingress)
    trace: Path | None  # a Mahimahi trace that sets the rate instead of bandwidth_mbps
    trace_start: float  # CLOCK_MONOTONIC of trace time 0, shared by HTB and the elements
    seed: int  # the scenario's; each element's seed is derived from it


@dataclass(frozen=True)
class LinkTools:
    """What the topology lends a backend to act on its hosts and switches."""

    # run(node, shell command) -> its output; raises TestbedError when it fails
    run: Callable[[Any, str], str]
    # start(host, argv, log name, what) -> the process, once it printed READY: a program
    # in the host's network namespace (outside its CPU share, realtime), stopped at teardown
    start: Callable[[Any, list[str], str, str], subprocess.Popen]
    teardown: Teardown  # what the backend makes beside processes, undone in reverse order
    prefix: str  # the run's name prefix: every rule made carries it


class Backend:
    """A way to emulate one direction; `name` is the scenario's word for it."""

    name = label = ""

    def configure(self, direction: Direction, tools: LinkTools) -> TracePlayer | None:
        """Set up `direction` whole; returns its trace player (None without a trace)."""
        if direction.trace is None:
            rate = direction.link.bandwidth_mbps
            assert rate is not None  # the schema requires it without a trace
            self.shape(direction, tools, rate, serialize=True)
            return None
        trace = load_trace(direction.trace)
        self.shape(direction, tools, trace_rate.first_rate(trace), serialize=False)
        return trace_rate.follow(
            direction.port, trace, direction.trace_start, tools.teardown, direction.name
        )

    def shape(self, direction: Direction, tools: LinkTools, rate: float, serialize: bool) -> None:
        """The direction's qdiscs (and elements), HTB starting at `rate` (Mbit/s)."""
        raise NotImplementedError


class UserspaceBackend(Backend):
    name = "userspace"
    label = "htb+userspace-element"

    def shape(self, direction: Direction, tools: LinkTools, rate: float, serialize: bool) -> None:
        for command in htb_commands(direction.port, rate, direction.link):
            tools.run(direction.switch, command)
        for i, host in enumerate(direction.receivers):
            queue = (1 if direction.name == "uplink" else 101) + i
            self._start_element(direction, tools, host, queue)

    def _start_element(self, direction: Direction, tools: LinkTools, host, queue: int) -> None:
        """The element for packets arriving at `host`, fed by an NFQUEUE rule."""
        d = direction
        rule = (
            f"-i {host.defaultIntf()} -m comment --comment {tools.prefix}-{d.name} "
            f"-j NFQUEUE --queue-num {queue} --queue-bypass"
        )
        tools.run(host, f"iptables -t mangle -A PREROUTING {rule}")
        delete = f"iptables -t mangle -D PREROUTING {rule}"
        tools.teardown.add(f"{host.name} iptables rule", lambda: host.cmd(delete))
        config = element.ElementConfig(
            queue=queue,
            seed=d.seed * 1000 + queue + (0 if d.name == "uplink" else 500),
            trace=None if d.trace is None else str(d.trace),
            trace_start=None if d.trace is None else d.trace_start,
            link=d.link,
        )
        argv = programs.command("link-element", *element.arguments(config))
        tools.start(
            host, argv, f"element-{d.name}-{host.name}.log", f"{d.name} link element in {host.name}"
        )


class NetemBackend(Backend):
    name = "netem"
    label = "htb+netem"

    def shape(self, direction: Direction, tools: LinkTools, rate: float, serialize: bool) -> None:
        link = direction.link
        gemodel = None
        if link.loss_model == "gilbert_elliott":
            gemodel = Loss(
                link.loss_pct, link.loss_model, link.loss_burst_packets, random.Random()
            ).gemodel_params()
        for command in netem_commands(direction.port, rate, link, gemodel, serialize):
            tools.run(direction.switch, command)


def netem_available(host) -> bool:
    """Try netem on the host's own loopback (in its namespace, gone with it)."""
    out = host.cmd("tc qdisc add dev lo root netem delay 0ms 2>&1; echo __rc=$?")
    available = out.strip().endswith("__rc=0")
    if available:
        host.cmd("tc qdisc del dev lo root")
    return available


def choose_backend(requested: str, netem_here: bool) -> Backend:
    if requested == "netem" and not netem_here:
        raise EnvironmentMissing(
            "network.backend: netem was asked for, but this kernel has no sch_netem "
            "(`modprobe sch_netem` fails or the module is not built); use backend: auto "
            "or userspace"
        )
    if requested == "netem" or (requested == "auto" and netem_here):
        return NetemBackend()
    return UserspaceBackend()
