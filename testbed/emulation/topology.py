"""The emulated network of one run: device hosts (one, or `devices: N`, each with the
device's CPU share) and an edge host on two Linux bridges joined by the bottleneck
link, no controller, with the scenario's links and CPU shares. Competing-traffic
hosts, when the scenario has traffic, sit beside them so that their flows share the
bottleneck:

    devices ─┐                       ┌── edge
             switch A ═bottleneck═ switch B
    ta ──────┘                       └── tb

    uplink:   HTB on A's bottleneck port; impairments at the ingress of B's hosts
    downlink: HTB on B's bottleneck port; impairments at the ingress of A's hosts
    (userspace backend; with netem, netem sits under the HTB instead, see link/backends.py)

Everything made carries the run's prefix (hosts, interfaces, bridge, cgroups,
iptables comments), and is removed by `stop()`: nothing is ever cleaned by a
host-wide name match, so concurrent runs and other users' Mininets are safe.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import testbed
from testbed.agents.protocol import CC_ENV
from testbed.cleanup import Teardown, stop_process
from testbed.emulation import stale
from testbed.emulation.link.backends import (
    Backend,
    Direction,
    LinkTools,
    choose_backend,
    netem_available,
)
from testbed.emulation.stale import RUN_ENV
from testbed.errors import EnvironmentMissing, TestbedError

log = logging.getLogger("testbed")
# `cpu_mode: cfs`: short, so a low CPU share throttles in slices of ~1 ms, not ~100 ms; the
# kernel's minimum quota (1 ms) lengthens it below a share of 0.2 (0.05: 20 ms), and it stops
# the host at its scheduler tick, so a device's short work is unslowed or waits whole ticks
CFS_PERIOD_US = 5000
UNLIMITED = -1  # Mininet's CPU fraction for a cgroup without quota
REQUIRED_TOOLS = ("mnexec", "tc", "ip", "iptables", "ethtool", "brctl", "ifconfig", "cgcreate")
SETUP_HINT = "run `bash scripts/setup.sh` as root (installs Mininet and the tools it drives)"
REALTIME_PRIORITY = 50


def device_name(prefix: str, index: int) -> str:
    """`dc12abd` for the first device host (as before several existed), then `d1`, ..."""
    return f"{prefix}d" if index == 0 else f"{prefix}d{index}"


def device_cgroup_share(device) -> float:
    """The CPU share of a device host's cgroup: its own under `cpu_mode: cfs`; none under
    `dilate`, where the device agent slows its own work (`offloaders.base.DeviceClock`)."""
    return device.cpu if device.cpu_mode == "cfs" else UNLIMITED


def new_prefix() -> str:
    """A short per-run name prefix; interface names must fit 15 characters."""
    return "dc" + secrets.token_hex(2)


def check_environment() -> None:
    if os.geteuid() != 0:
        raise EnvironmentMissing(
            "Mininet needs root: run as root (e.g. `sudo .venv/bin/python run_scenario.py ...`)"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise EnvironmentMissing(f"missing {', '.join(missing)}: {SETUP_HINT}")
    try:
        import mininet.net  # noqa: F401
        import netfilterqueue  # noqa: F401
    except ImportError as exc:
        raise EnvironmentMissing(f"Python package missing ({exc.name}): {SETUP_HINT}") from exc
    if not Path("/sys/fs/cgroup/cpu").is_dir():
        raise EnvironmentMissing("the cgroup v1 `cpu` controller is not mounted at /sys/fs/cgroup")


def wait_ready(proc: subprocess.Popen, what: str, timeout_s: float) -> str:
    """Wait for a child's `READY ...` line on stdout; fail with its stderr if it dies."""
    deadline = time.monotonic() + timeout_s
    stdout = proc.stdout
    if stdout is None:
        raise ValueError(f"{what}: started without stdout=PIPE, so READY cannot be read")
    while time.monotonic() < deadline:
        readable, _, _ = select.select([stdout], [], [], 0.2)
        if readable:
            line = stdout.readline().decode(errors="replace")
            if line.startswith("READY"):
                return line.strip()
            if line == "" and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    stop_process(proc)
    raise TestbedError(f"{what} did not start (exit {proc.returncode}); see its log")


class OffloadTopology:
    def __init__(self, scenario, workdir: Path, prefix: str | None = None) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.prefix = prefix or new_prefix()
        self.teardown = Teardown()
        self.net: Any = None  # the Mininet network once started (Mininet has no types)
        self.device = self.edge = None  # the first device host, the edge host
        self.devices: list = []  # every device host (`devices: N`), first one first
        self.traffic_a = self.traffic_b = None  # competing-traffic hosts, device / edge side
        self.backend: Backend | None = None
        self.bottleneck: dict[str, str] = {}  # direction -> the HTB's interface
        self.congestion_scope = "namespace"
        self.players: dict = {}  # direction -> TracePlayer, with a trace
        self.trace_start = 0.0

    @property
    def side_a(self) -> list:
        return [h for h in (*self.devices, self.traffic_a) if h is not None]

    @property
    def side_b(self) -> list:
        return [h for h in (self.edge, self.traffic_b) if h is not None]

    # -- building -------------------------------------------------------------
    def start(self) -> None:
        check_environment()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import CPULimitedHost, Host
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        # every process of the run (host shells, agents, elements, probes, traffic)
        # inherits this, so leftovers can be told apart from other runs' by environment
        os.environ[RUN_ENV] = self.prefix
        self.teardown.add("run marker", lambda: os.environ.pop(RUN_ENV, None))
        state = stale.register(self.prefix)
        self.teardown.add("run state file", lambda: stale.unregister(state))
        p, cores = self.prefix, os.cpu_count() or 1
        net = self.net = Mininet(topo=None, controller=None, build=False, autoSetMacs=True)
        self.teardown.add("cgroups", self._remove_cgroups)  # after the hosts are gone
        self.teardown.add("Mininet network", self._stop_net)
        limited = {"cls": CPULimitedHost, "period_us": CFS_PERIOD_US, "sched": "cfs"}
        device_cpu = device_cgroup_share(self.scenario.device)
        device_cpu = device_cpu if device_cpu == UNLIMITED else device_cpu / cores
        for i in range(self.scenario.devices):  # 10.0.0.1, then 10.0.0.21, .22, ...
            ip = "10.0.0.1/24" if i == 0 else f"10.0.0.{20 + i}/24"
            self.devices.append(net.addHost(device_name(p, i), ip=ip, cpu=device_cpu, **limited))
        self.device = self.devices[0]
        self.edge = net.addHost(
            f"{p}e", ip="10.0.0.2/24", cpu=self.scenario.edge.cpu / cores, **limited
        )
        switch_a = net.addSwitch(f"{p}sa", cls=LinuxBridge, dpid="1")
        switch_b = net.addSwitch(f"{p}sb", cls=LinuxBridge, dpid="2")
        for device in self.devices:
            net.addLink(device, switch_a)
        net.addLink(self.edge, switch_b)
        if self.scenario.traffic:
            self.traffic_a = net.addHost(f"{p}ta", cls=Host, ip="10.0.0.11/24")
            self.traffic_b = net.addHost(f"{p}tb", cls=Host, ip="10.0.0.12/24")
            net.addLink(self.traffic_a, switch_a)
            net.addLink(self.traffic_b, switch_b)
        bottleneck = net.addLink(switch_a, switch_b)
        net.build()
        net.start()
        stale.register(self.prefix, [h.pid for h in self.side_a + self.side_b])
        self.bottleneck = {"uplink": bottleneck.intf1.name, "downlink": bottleneck.intf2.name}
        self._configure(switch_a)

    def _configure(self, switch) -> None:
        net = self.scenario.network
        for host in self.side_a + self.side_b:
            self.run(host, f"ethtool -K {host.defaultIntf()} tso off gso off gro off tx off")
            self._set_congestion_control(host, net.congestion_control)
            self.run(host, "sysctl -qw net.ipv4.tcp_no_metrics_save=1")
        for intf in self.net.switches[0].intfList() + self.net.switches[1].intfList():
            if intf.name != "lo":
                self.run(switch, f"ethtool -K {intf.name} tso off gso off gro off")
        backend = self.backend = choose_backend(net.backend, netem_available(self.device))
        tools = LinkTools(
            run=self.run, start=self.start_ready, teardown=self.teardown, prefix=self.prefix
        )
        self.trace_start = time.monotonic()  # trace time 0, shared by HTB and the elements
        for direction, receivers in (("uplink", self.side_b), ("downlink", self.side_a)):
            player = backend.configure(
                Direction(
                    name=direction,
                    link=getattr(net, direction),
                    switch=switch,
                    port=self.bottleneck[direction],
                    receivers=receivers,
                    trace=net.trace[direction] if net.trace else None,
                    trace_start=self.trace_start,
                    seed=self.scenario.seed,
                ),
                tools,
            )
            if player is not None:
                self.players[direction] = player

    def _set_congestion_control(self, host, algorithm: str) -> None:
        """The namespace's default where the kernel allows it; otherwise (an algorithm
        outside net.ipv4.tcp_allowed_congestion_control cannot be a child namespace's
        default) every TCP socket the testbed opens sets it itself (TCP_CONGESTION)."""
        out = host.cmd(f"sysctl -qw net.ipv4.tcp_congestion_control={algorithm}; echo __rc=$?")
        if not out.strip().endswith("__rc=0"):
            self.congestion_scope = "socket"
        elif self.congestion_scope != "socket":
            self.congestion_scope = "namespace"

    def process_env(self) -> dict[str, str]:
        """Environment for processes in the hosts: the socket-level congestion control."""
        return {**os.environ, CC_ENV: self.scenario.network.congestion_control}

    def run(self, node, command: str) -> str:
        """Run a shell command on a host or switch; its output, or TestbedError."""
        out = node.cmd(f"{command}; echo __rc=$?")
        text, _, rc = out.rpartition("__rc=")
        if rc.strip() != "0":
            raise TestbedError(f"`{command}` failed on {node.name}: {text.strip()}")
        return text

    # -- processes in the hosts ------------------------------------------------
    def popen(
        self, host, args: list[str], log_name: str, limited: bool = True, realtime: bool = False
    ) -> subprocess.Popen:
        """Start a process in a host; stopped by teardown. `limited`: inside the host's
        CPU cgroup (agents); otherwise only in its network namespace (link elements,
        probes, traffic: the testbed's own machinery must not eat the device's share).
        `realtime`: SCHED_FIFO, for the parts that emulate or measure the link (the
        element, the probes), so that a busy machine delays packets no more than a
        kernel qdisc would be; they sleep between packets, and the kernel's RT
        throttling keeps a share of every second for everything else."""
        if realtime and shutil.which("chrt"):
            args = ["chrt", "-f", str(REALTIME_PRIORITY), *args]
        log_file = open(self.workdir / log_name, "wb")  # noqa: SIM115
        if limited:
            proc = host.popen(
                args,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=_repo_root(),
                env=self.process_env(),
            )
        else:
            proc = subprocess.Popen(
                ["mnexec", "-a", str(host.pid), *args],
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=_repo_root(),
                env=self.process_env(),
            )

        def stop() -> None:
            stop_process(proc)
            log_file.close()

        self.teardown.add(f"{log_name} process", stop)
        return proc

    def start_ready(self, host, args: list[str], log_name: str, what: str) -> subprocess.Popen:
        """Start a part of the link's machinery in `host` (not limited, realtime; see
        `popen`) and wait for its READY line."""
        proc = self.popen(host, args, log_name, limited=False, realtime=True)
        wait_ready(proc, what, timeout_s=60)
        return proc

    def limit(self, host, pid: int) -> None:
        """Move a process started with `limited=False` into the host's CPU cgroups: the
        device agent loads torch and its model at full speed (minutes at 3% of a core,
        and no part of any request), then runs everything it measures under the limit."""
        for controller in ("cpu", "cpuacct", "cpuset"):
            group = Path("/sys/fs/cgroup", controller, host.name)
            if not (group / "cgroup.procs").exists():
                continue
            if controller == "cpuset" and not (group / "cpuset.cpus").read_text().strip():
                continue  # an unconfigured cpuset (no cores pinned) takes no process
            (group / "cgroup.procs").write_text(f"{pid}\n")

    # -- teardown -------------------------------------------------------------
    def stop(self) -> list[str]:
        return self.teardown.run()

    def _stop_net(self) -> None:
        if self.net is not None:
            self.net.stop()

    def _remove_cgroups(self) -> None:
        devices = [device_name(self.prefix, i) for i in range(self.scenario.devices)]
        for host in (*devices, f"{self.prefix}e", f"{self.prefix}ta", f"{self.prefix}tb"):
            for controller in ("cpu", "cpuacct", "cpuset"):
                path = Path("/sys/fs/cgroup", controller, host)
                if path.is_dir():
                    path.rmdir()


def _repo_root() -> str:
    return str(testbed.CHECKOUT)
