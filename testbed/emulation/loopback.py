"""Loopback mode (`run_scenario.py --loopback`, docs/edge.md): the edge and device agents
as plain processes on 127.0.0.1, without Mininet, for checks and for machines without
root. Nothing of the scenario's network is applied (no rate, delay, loss, queue, trace,
competing traffic, CPU quota): the runner says so on the console, in environment.json
(`link_backend`, `warnings`) and in summary.md and report.md.

`LoopbackTopology` offers what the runner uses of `OffloadTopology` (hosts with an
address, `popen`, `limit`, a teardown), so the rest of a run (records, summaries, report,
cleanup on Ctrl-C and SIGTERM) is the Mininet run's own.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
from pathlib import Path

import testbed
from testbed.agents.protocol import CC_ENV
from testbed.cleanup import Teardown, stop_process
from testbed.emulation.stale import RUN_ENV

LOCALHOST = "127.0.0.1"
LABEL = "loopback (no shaping)"
_PR_SET_PDEATHSIG = 1


class LoopbackBackend:
    """Stands where a link backend would: it shapes nothing."""

    label = LABEL


class LoopbackHost:
    """A role (edge, device) of a loopback run: this machine, at 127.0.0.1."""

    def __init__(self, name: str) -> None:
        self.name = name

    def IP(self) -> str:
        return LOCALHOST

    def cmd(self, command: str) -> str:
        """A shell command's output, run on this machine (as a Mininet host's `cmd`)."""
        out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
        return out.stdout


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in a forked child


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the runner dies, even by SIGKILL, so that
    no agent outlives a run killed outright (Linux's PR_SET_PDEATHSIG; kept across exec).
    Only a call through a function resolved before the fork: nothing here may take a
    lock another thread of the runner could have held."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LoopbackTopology:
    def __init__(self, scenario, workdir: Path, prefix: str | None = None) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.prefix = prefix or "lo" + secrets.token_hex(2)
        self.teardown = Teardown()
        self.backend = LoopbackBackend()
        self.edge = LoopbackHost(f"{self.prefix}e")
        self.devices = [LoopbackHost(f"{self.prefix}d{i}") for i in range(scenario.devices)]
        self.device = self.devices[0]
        self.bottleneck: dict[str, str] = {}  # no emulated link
        self.players: dict = {}  # no trace is played
        self.congestion_scope = "not applied (loopback: this machine's default)"

    def start(self) -> None:
        """Nothing to build; every process the run starts carries its prefix (as in a
        Mininet run), so a test can find one left behind."""
        os.environ[RUN_ENV] = self.prefix
        self.teardown.add("run marker", lambda: os.environ.pop(RUN_ENV, None))

    def process_env(self) -> dict[str, str]:
        """The agents' environment: this one, without a congestion control to force (the
        loopback has no bottleneck, and an unprivileged user may not set every one)."""
        env = dict(os.environ)
        env.pop(CC_ENV, None)
        return env

    def popen(
        self, host, args: list[str], log_name: str, limited: bool = True, realtime: bool = False
    ) -> subprocess.Popen:
        """Start an agent on this machine; stopped by teardown. `limited` and `realtime`
        are the Mininet topology's and mean nothing here: there is no CPU quota."""
        log_file = open(self.workdir / log_name, "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=str(testbed.CHECKOUT),
            env=self.process_env(),
            preexec_fn=_die_with_parent,
        )

        def stop() -> None:
            stop_process(proc)
            log_file.close()

        self.teardown.add(f"{log_name} process", stop)
        return proc

    def limit(self, host, pid: int) -> None:
        """No CPU quota in loopback mode (the device's `cpu_mode: dilate` still applies)."""

    def stop(self) -> list[str]:
        return self.teardown.run()
