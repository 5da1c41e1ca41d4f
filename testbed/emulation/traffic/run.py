"""Competing traffic during a run: the scenario's flows between the traffic hosts on
either side of the bottleneck (planned by testbed.emulation.traffic.plan), started at their
`start_s` after the requests begin and stopped at the end of the run.

Times count from the moment the device agent is started; a flow without `stop_s`
runs until the last request is done.
"""

from __future__ import annotations

import subprocess
import threading
import time

from testbed.emulation.topology import stop_process, wait_ready
from testbed.emulation.traffic.plan import (
    FAILED,
    NOT_RUN,
    FlowPlan,
    TrafficError,
    plan_traffic,
    with_status,
)

UNTIL_THE_END_S = 24 * 3600  # a flow without stop_s is stopped by us, not by its timer


class TrafficRun:
    def __init__(self, topo) -> None:
        self.topo = topo
        self.plans: list[FlowPlan] = plan_traffic(
            topo.scenario.traffic,
            receiver_ip={"up": topo.traffic_b.IP(), "down": topo.traffic_a.IP()},
            duration_s=UNTIL_THE_END_S,
            seed=topo.scenario.seed,
        )
        self.servers: dict[str, subprocess.Popen] = {}
        self.clients: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _host(self, side: str):
        return self.topo.traffic_b if side == "edge" else self.topo.traffic_a

    def start(self) -> None:
        """Start every server now (they must listen first), clients on their schedule."""
        for plan in self.plans:
            if not plan.runs:
                continue
            host = self._host(plan.receiver_side)
            proc = self.topo.popen(
                host, plan.server_argv, f"traffic-{plan.label}-server.log", limited=False
            )
            self.servers[plan.label] = proc
            if plan.ready_line:
                wait_ready(proc, f"traffic sink {plan.label}", 60)
            else:
                self._wait_listening(host, plan)
        self._thread = threading.Thread(target=self._schedule, daemon=True)
        self._thread.start()

    def _wait_listening(self, host, plan: FlowPlan) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["mnexec", "-a", str(host.pid), *plan.ready_check_argv],
                capture_output=True,
                text=True,
            ).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TrafficError(f"traffic server {plan.label} did not start listening")

    def _schedule(self) -> None:
        start = time.monotonic()
        for plan in sorted(self.plans, key=lambda p: p.start_s):
            if not plan.runs:
                continue
            if self._stop.wait(max(0.0, start + plan.start_s - time.monotonic())):
                return
            argv = list(plan.client_argv)
            if plan.kind == "tcp_bulk" and self.topo.congestion_scope == "socket":
                argv += ["-C", self.topo.scenario.network.congestion_control]
            self.clients[plan.label] = self.topo.popen(
                self._host(plan.sender_side),
                argv,
                f"traffic-{plan.label}-client.log",
                limited=False,
            )

    def stop(self) -> list[dict]:
        """Stop clients, then servers; each flow's achieved throughput."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        results = []
        running = {label: proc.poll() is None for label, proc in self.clients.items()}
        client_out = {label: _finish(proc) for label, proc in self.clients.items()}
        for plan in self.plans:
            meta = {"flow": plan.label, "kind": plan.kind, "direction": plan.direction}
            if plan.label not in self.servers:
                why = "starts after the run's end" if not plan.runs else "never started"
                status = NOT_RUN if not plan.runs else FAILED
                results.append({**meta, "status": status, "error": why})
                continue
            server_out = _finish(self.servers[plan.label])
            try:
                result = plan.parse(server_out, client_out.get(plan.label))
            except TrafficError as exc:
                results.append({**meta, "status": FAILED, "error": str(exc)})
                continue
            results.append(with_status(result, running.get(plan.label, False)))
        return results


def _finish(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        out, _ = proc.communicate()
    return out.decode(errors="replace") if out else ""
