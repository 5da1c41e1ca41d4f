"""The two ways a direction of the bottleneck is emulated, behind one interface.

* `userspace` (this project's machines: no `sch_netem`): HTB with a pfifo/bfifo on
  the bottleneck port for rate and queue; the userspace element (element.py) at the
  ingress of every host on the receiving side for serialization, delay, jitter, loss.
* `netem` (most users' kernels): HTB on the same port, netem under it for
  serialization (`rate`), delay, jitter, loss and the queue limit.

`auto` picks netem where the kernel has it. Both are reported in environment.json.
"""

from __future__ import annotations

import random

from testbed.emulation.link.htb import htb_commands, netem_commands
from testbed.emulation.link.impairments import Loss
from testbed.errors import EnvironmentMissing


def netem_available(host) -> bool:
    """Try netem on the host's own loopback (in its namespace, gone with it)."""
    out = host.cmd("tc qdisc add dev lo root netem delay 0ms 2>&1; echo __rc=$?")
    available = out.strip().endswith("__rc=0")
    if available:
        host.cmd("tc qdisc del dev lo root")
    return available


class UserspaceBackend:
    name = "userspace"
    label = "htb+userspace-element"

    def configure(self, topo, switch, direction: str, link, receivers: list, rate: float) -> None:
        port = topo.bottleneck[direction]
        for command in htb_commands(port, rate, link):
            topo._run(switch, command)
        for i, host in enumerate(receivers):
            queue = (1 if direction == "uplink" else 101) + i
            topo.start_element(host, link, direction, queue, link.bandwidth_mbps or 0.0)


class NetemBackend:
    name = "netem"
    label = "htb+netem"

    def configure(self, topo, switch, direction: str, link, receivers: list, rate: float) -> None:
        gemodel = None
        if link.loss_model == "gilbert_elliott":
            gemodel = Loss(link.loss_pct, link.loss_model, link.loss_burst_packets,
                           random.Random()).gemodel_params()  # fmt: skip
        for command in netem_commands(
            topo.bottleneck[direction], link.bandwidth_mbps, link, gemodel
        ):
            topo._run(switch, command)


def choose_backend(requested: str, netem_here: bool):
    if requested == "netem" and not netem_here:
        raise EnvironmentMissing(
            "network.backend: netem was asked for, but this kernel has no sch_netem "
            "(`modprobe sch_netem` fails or the module is not built); use backend: auto "
            "or userspace"
        )
    if requested == "netem" or (requested == "auto" and netem_here):
        return NetemBackend()
    return UserspaceBackend()
