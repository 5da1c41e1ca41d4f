"""The emulated network of one run: a device host and an edge host on a Linux
bridge, no controller, with the scenario's links and CPU shares.

    device ─── switch ─── edge
      uplink:   HTB on the switch's port to the edge  + serializer at the edge's ingress
      downlink: HTB on the switch's port to the device + serializer at the device's ingress

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
import sys
import time
from pathlib import Path

from testbed.cleanup import Teardown
from testbed.errors import EnvironmentMissing, TestbedError
from testbed.link.htb import htb_commands

log = logging.getLogger("testbed")
CFS_PERIOD_US = 5000  # short, so a low CPU share throttles in slices of ~1 ms, not ~100 ms
REQUIRED_TOOLS = ("mnexec", "tc", "ip", "iptables", "ethtool", "brctl", "ifconfig", "cgcreate")
SETUP_HINT = "run `bash scripts/setup.sh` as root (installs Mininet and the tools it drives)"


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


def stop_process(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


def wait_ready(proc: subprocess.Popen, what: str, timeout_s: float) -> str:
    """Wait for a child's `READY ...` line on stdout; fail with its stderr if it dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.2)
        if readable:
            line = proc.stdout.readline().decode(errors="replace")
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
        self.net = None
        self.device = self.edge = self.switch = None

    # -- building -------------------------------------------------------------
    def start(self) -> None:
        check_environment()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import CPULimitedHost
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        p, cores = self.prefix, os.cpu_count() or 1
        self.net = Mininet(topo=None, controller=None, build=False, autoSetMacs=True)
        self.teardown.add("cgroups", self._remove_cgroups)  # after the hosts are gone
        self.teardown.add("Mininet network", self._stop_net)
        self.device = self.net.addHost(
            f"{p}d",
            cls=CPULimitedHost,
            ip="10.0.0.1/24",
            cpu=self.scenario.device.cpu / cores,
            period_us=CFS_PERIOD_US,
            sched="cfs",
        )
        self.edge = self.net.addHost(
            f"{p}e",
            cls=CPULimitedHost,
            ip="10.0.0.2/24",
            cpu=self.scenario.edge.cpu / cores,
            period_us=CFS_PERIOD_US,
            sched="cfs",
        )
        self.switch = self.net.addSwitch(f"{p}s", cls=LinuxBridge, dpid="1")
        self.net.addLink(self.device, self.switch)
        self.net.addLink(self.edge, self.switch)
        self.net.build()
        self.net.start()
        self._configure_links()

    def _configure_links(self) -> None:
        net = self.scenario.network
        dev_port = self.device.connectionsTo(self.switch)[0][1]
        edge_port = self.edge.connectionsTo(self.switch)[0][1]
        for host in (self.device, self.edge):
            self._run(host, f"ethtool -K {host.defaultIntf()} tso off gso off gro off tx off")
            self._run(host, "sysctl -qw net.ipv4.tcp_no_metrics_save=1")
        for port in (dev_port, edge_port):
            self._run(self.switch, f"ethtool -K {port} tso off gso off gro off")
        for port, link in ((edge_port, net.uplink), (dev_port, net.downlink)):
            for command in htb_commands(port.name, link.bandwidth_mbps, link.queue_packets):
                self._run(self.switch, command)
        self._start_element(self.edge, net.uplink, queue=1, name="uplink")
        self._start_element(self.device, net.downlink, queue=2, name="downlink")

    def _start_element(self, host, link, queue: int, name: str) -> None:
        intf = host.defaultIntf()
        rule = (
            f"-i {intf} -m comment --comment {self.prefix}-{name} "
            f"-j NFQUEUE --queue-num {queue} --queue-bypass"
        )
        self._run(host, f"iptables -t mangle -A PREROUTING {rule}")
        self.teardown.add(
            f"{name} iptables rule", lambda: host.cmd(f"iptables -t mangle -D PREROUTING {rule}")
        )
        command = [
            "mnexec", "-a", str(host.pid), sys.executable, "-m", "testbed.link.element",
            "--queue", str(queue), "--rate-mbps", str(link.bandwidth_mbps),
            "--delay-ms", str(link.delay_ms),
        ]  # fmt: skip
        log_file = open(self.workdir / f"element-{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, cwd=_repo_root())
        self.teardown.add(f"{name} element", lambda: (stop_process(proc), log_file.close()))
        wait_ready(proc, f"{name} link element", timeout_s=30)

    def _run(self, node, command: str) -> str:
        out = node.cmd(f"{command}; echo __rc=$?")
        text, _, rc = out.rpartition("__rc=")
        if rc.strip() != "0":
            raise TestbedError(f"`{command}` failed on {node.name}: {text.strip()}")
        return text

    # -- agents ---------------------------------------------------------------
    def popen(self, host, args: list[str], log_name: str, **kwargs) -> subprocess.Popen:
        """Start a process in a host (inside its CPU cgroup); stopped by teardown."""
        log_file = open(self.workdir / log_name, "wb")  # noqa: SIM115
        proc = host.popen(args, stdout=subprocess.PIPE, stderr=log_file, cwd=_repo_root(), **kwargs)
        self.teardown.add(f"{log_name} process", lambda: (stop_process(proc), log_file.close()))
        return proc

    # -- teardown -------------------------------------------------------------
    def stop(self) -> list[str]:
        return self.teardown.run()

    def _stop_net(self) -> None:
        if self.net is not None:
            self.net.stop()

    def _remove_cgroups(self) -> None:
        for host in (f"{self.prefix}d", f"{self.prefix}e"):
            for controller in ("cpu", "cpuacct", "cpuset"):
                path = Path("/sys/fs/cgroup", controller, host)
                if path.is_dir():
                    path.rmdir()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
