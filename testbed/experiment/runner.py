"""One scenario run: scenario -> topology -> agents -> records -> results.

The runner checks everything it can before it creates anything (plugin, weights,
gates, features), so bad input never leaves a half-built network behind.

`loopback=True` (`run_scenario.py --loopback`, docs/edge.md) starts the agents on
127.0.0.1 without Mininet: no root, and nothing of the scenario's network applied, which
the console, environment.json, summary.md and report.md say.

A fault while the requests run (the edge agent exits, a device agent fails or stalls)
does not lose what was measured: the run ends, its results are written and marked
partial (`RunResult.partial`, `partial` in environment.json and summary.csv), and the
command line says why with exit status 1.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from testbed import offloaders, programs
from testbed.agents.contract import NOT_RUN, Arrival, DeviceJob, DeviceMeta, OffloaderJob
from testbed.agents.edge_limits import EdgeLimits
from testbed.cleanup import Terminated, sigterm_raises
from testbed.config import gates
from testbed.emulation import capture, stale
from testbed.emulation.link.trace import load_trace
from testbed.emulation.loopback import LoopbackTopology
from testbed.emulation.topology import OffloadTopology, check_environment, stop_process, wait_ready
from testbed.emulation.traffic.run import TrafficRun
from testbed.errors import ScenarioError, TestbedError
from testbed.experiment import environment
from testbed.fidelity import measure
from testbed.models import plugins, predictions
from testbed.models.plugin_api import check_plugin
from testbed.offloaders.base import resolve_edge_device, warm_kernels
from testbed.results import records as results
from testbed.results import summary_md

log = logging.getLogger("testbed")
EDGE_PORT = 5000
WARMUP_REQUESTS = 2  # per offloader, not recorded: first calls pay allocations and JIT
PINGS = 5
STARTUP_S = 300.0  # importing torch on a device at a few % of a core is slow
# after the edge agent exits: how long the device agents get (beyond one connect timeout)
# to record the requests they lost and did not run, and exit
EDGE_LOST_GRACE_S = 30.0


@dataclass
class RunResult:
    out_dir: Path
    summary: list[dict]
    gate_failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    partial: str = ""  # why the run is partial (a fault, requests not run); "" when whole


def offloader_labels(specs) -> list[str]:
    """Display names: the offloader's name, plus its parameters where a name repeats."""
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    labels = []
    for spec in specs:
        if counts[spec.name] == 1:
            labels.append(spec.name)
        else:
            labels.append(spec.name + "_" + "_".join(f"{k}{v}" for k, v in spec.params.items()))
    return labels


def check_gates(scenario, labels: list[str]) -> None:
    for i, text in enumerate(scenario.expect):
        try:
            named = gates.offloaders_named(text)
        except gates.GateSyntaxError as exc:
            raise ScenarioError(f"{scenario.source}: expect[{i}] {text!r}: {exc}") from None
        for name in sorted(named - set(labels)):
            raise ScenarioError(
                f"{scenario.source}: expect[{i}] {text!r}: offloader {name!r} is not in "
                f"`offloaders` (this scenario runs: {', '.join(labels)})"
            )


def choose_samples(scenario, count: int) -> np.ndarray:
    if scenario.samples > count:
        raise ScenarioError(
            f"{scenario.source}: samples: {scenario.samples} but plugin {scenario.model!r} "
            f"has {count} test samples"
        )
    return np.random.default_rng(scenario.seed).choice(count, scenario.samples, replace=False)


def reference_predictions(plugin, model, inputs: np.ndarray) -> list:
    """The unmodified model's prediction on each input, as records hold predictions
    (`testbed.models.predictions.to_record`): what every offloader's is compared with."""
    import torch

    out = []
    # batches of at most 256 inputs and 256 MiB of float input (a 640x480 frame is 3.7 MB)
    step = max(1, min(256, (256 << 20) // (4 * int(np.prod(plugin.input_spec.shape)))))
    with torch.inference_mode():
        for start in range(0, len(inputs), step):
            output = model(plugin.to_tensor(inputs[start : start + step]))
            out += [predictions.to_record(plugin, p) for p in predictions.predict(plugin, output)]
    return out


def run(
    scenario,
    out_dir: Path,
    progress: bool = True,
    fidelity: bool = True,
    strict: bool = False,
    capture: bool = False,
    bar=None,
    loopback: bool = False,
) -> RunResult:
    """`bar`: a tqdm bar to advance (a sweep's, shared by its cells) instead of a new one;
    `loopback`: the agents on 127.0.0.1 without Mininet (the module's docstring)."""
    labels = offloader_labels(scenario.offloaders)
    check_gates(scenario, labels)
    for path in (scenario.network.trace or {}).values():
        load_trace(path)  # a malformed trace is bad input: refused before anything starts
    try:
        edge_device = resolve_edge_device(scenario.edge.device)
    except TestbedError as exc:  # cuda without a GPU: exit 3, the file named
        raise type(exc)(f"{scenario.source}: {exc}") from None
    if loopback:
        if capture:
            raise ScenarioError("--capture needs the Mininet topology; --loopback has no link")
        if strict:
            raise ScenarioError(
                "--strict judges the emulated link; --loopback applies none (drop one of them)"
            )
    else:
        check_environment()
        for prefix, items in stale.clean_all().items():  # runs killed outright earlier
            print(f"removed {len(items)} leftovers of killed run {prefix}", file=sys.stderr)
    plugin = plugins.get(scenario.model)
    check_plugin(plugin)
    model = plugin.load_model()
    for spec in scenario.offloaders:  # a missing artefact is bad input, found before any start
        built = offloaders.get(spec.name)(plugin, model, **spec.params)
        started = time.monotonic()
        built.calibrate()  # at full speed here; the device host reads the cached results
        if time.monotonic() - started > 1 and progress:
            _say(f"calibrated {spec.name} in {time.monotonic() - started:.0f} s", bar)
    data = plugins.test_data(plugin, scenario.test_data)
    indices = choose_samples(scenario, len(data))
    reference = reference_predictions(plugin, model, data.inputs[indices])
    # compile the kernels here, at full speed, so that agents on slow hosts only load them
    kernels_s = warm_kernels(offloaders.get(spec.name) for spec in scenario.offloaders)
    reference_by_sample = dict(zip(indices.tolist(), reference, strict=True))
    if plugin.metric == "accuracy":
        reference_score = float(np.mean(np.array(reference) == data.labels[indices]))
    else:
        reference_score = 1.0

    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    (out_dir / "resolved_scenario.yaml").write_text(yaml.safe_dump(scenario.to_dict()))
    records_paths = [out_dir / records_name(i) for i in range(scenario.devices)]
    for path in records_paths:
        path.unlink(missing_ok=True)

    topo: OffloadTopology | LoopbackTopology
    topo = LoopbackTopology(scenario, logs) if loopback else OffloadTopology(scenario, logs)
    extra: dict = {"run_prefix": topo.prefix, "seed": scenario.seed, "samples": indices.tolist()}
    extra["edge_device"] = environment.edge_device(scenario.edge.device, edge_device)
    extra["loopback"] = loopback
    extra["warnings"] = loopback_warnings(scenario, fidelity) if loopback else []
    for line in extra["warnings"]:
        _say(f"WARNING: {line}", bar)
    extra["metric"] = plugin.metric  # the report reads it rather than guessing it back
    # who is compared with whom (testbed.results.roles): each class declares its role
    roles = [offloaders.get(spec.name).role for spec in scenario.offloaders]
    extra["roles"] = dict(zip(labels, roles, strict=True))
    extra["kernel_warmup_s"] = kernels_s
    extra["device_cpu_mode"] = scenario.device.cpu_mode  # docs/scenarios.md, `device:`
    extra["cleanup_failures"] = ["teardown did not run"]
    extra["fault"] = ""
    interrupted = False
    with sigterm_raises():
        try:
            topo.start()
            extra["link_backend"] = topo.backend.label if topo.backend else None
            if fidelity and not loopback:
                extra["fidelity"] = _fidelity(topo, out_dir, strict)
            if capture:
                _start_capture(topo, out_dir / "capture.pcap", logs)
            extra.update(
                _agents(scenario, plugin, topo, indices, labels, logs, progress, bar, edge_device)
            )
            extra["trace_players"] = {
                d: {"rate_changes": p.calls, "skipped": p.skipped, "max_late_ms": p.max_late_ms}
                for d, p in topo.players.items()
            }
        except (KeyboardInterrupt, Terminated):
            interrupted = True
            raise
        finally:
            try:
                extra["cleanup_failures"] = topo.stop()
            except (KeyboardInterrupt, Terminated):  # came during the teardown, which finished
                extra["cleanup_failures"] = []
                interrupted = True
                raise
            finally:
                extra["interrupted"] = interrupted
                extra["stall_ms"] = scenario.stall_ms
                summary = _write_results(
                    out_dir,
                    [r for p in records_paths for r in results.read_records(p)],
                    labels,
                    reference_by_sample,
                    reference_score,
                    plugin.metric,
                    extra,
                    predictions.comparer(plugin),
                    bounds=_bounds(scenario, labels),
                    planned=len(indices) * scenario.devices,
                )
    by_name = {row["offloader"]: row for row in summary}
    failed = []
    for text in scenario.expect:
        holds, filled = gates.evaluate(text, by_name)
        if not holds:
            failed.append(filled)
    return RunResult(out_dir, summary, failed, partial=extra["partial_reason"])


def loopback_warnings(scenario, fidelity: bool) -> list[str]:
    """What a loopback run did not do of its scenario, said on the console and recorded
    (environment.json `warnings`, which summary.md and report.md show)."""
    lines = [
        "loopback mode: the agents ran on 127.0.0.1 without Mininet, and the scenario's "
        "network (bandwidth, delay, jitter, loss, queue"
        + (", trace" if scenario.network.trace else "")
        + ", congestion control) was NOT applied: latencies are this machine's loopback, "
        "not the scenario's link",
        "loopback mode: no CPU quota: the edge ran unlimited"
        + (
            "; the device's share was emulated by dilation (cpu_mode: dilate)"
            if scenario.device.cpu_mode == "dilate"
            else "; the device too (cpu_mode: cfs needs the Mininet hosts' cgroups)"
        ),
    ]
    if fidelity:
        lines.append("loopback mode: the link check (fidelity) was skipped: there is no link")
    if scenario.traffic:
        flows = len(scenario.traffic)
        lines.append(
            f"loopback mode: the competing traffic ({flows} flow{'s' * (flows != 1)}) "
            "was not started"
        )
    return lines


def _fidelity(topo, out_dir: Path, strict: bool) -> list[str]:
    """Measure the links before the requests; warn loudly (or stop, under --strict)
    when a direction is off its configuration."""
    report = measure.measure(topo)
    (out_dir / "fidelity.json").write_text(json.dumps(report, indent=2))
    lines = measure.summary_lines(report)
    bad = [line for line, result in zip(lines, report.values(), strict=True) if not result["ok"]]
    for line in bad:
        log.warning("LINK FIDELITY: %s", line)
        print(f"WARNING: the emulated link is off its configuration: {line}", file=sys.stderr)
    if bad and strict:
        raise TestbedError("--strict: link fidelity out of tolerance (see fidelity.json)")
    return lines


def _start_capture(topo, pcap: Path, logs: Path) -> None:
    command = programs.command(
        "capture",
        "--iface",
        topo.bottleneck["uplink"],
        "--port",
        str(EDGE_PORT),
        "--out",
        str(pcap),
    )
    log_file = open(logs / "capture.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file)

    def stop() -> None:
        stop_process(proc, 10)
        log_file.close()

    topo.teardown.add("capture", stop)
    wait_ready(proc, "packet capture", 60)


def _capture_report(out_dir: Path, records: list[dict], labels: list[str]) -> list[str]:
    """capture.csv and one line per offloader: payload bytes against wire bytes."""
    wire = capture.analyze(out_dir / "capture.pcap", records, EDGE_PORT)
    rows = []
    for record in records:
        if "stream" in record and record.get("bytes_up"):
            found = wire.get(tuple(record["stream"][:2]), {})
            rows.append(
                {
                    "offloader": record["offloader"],
                    "request": record["request"],
                    "bytes_up": record["bytes_up"],
                    "wire_bytes_up": found.get("wire_bytes_up", 0),
                    "bytes_down": record["bytes_down"],
                    "wire_bytes_down": found.get("wire_bytes_down", 0),
                    "retransmissions": found.get("retransmissions", 0),
                }
            )
    results.write_csv(out_dir / "capture.csv", rows, results.CAPTURE_COLUMNS)
    lines = []
    for label in labels:
        mine = [r for r in rows if r["offloader"] == label]
        if mine:
            payload = sum(r["bytes_up"] for r in mine) / len(mine)
            on_wire = sum(r["wire_bytes_up"] for r in mine) / len(mine)
            retrans = sum(r["retransmissions"] for r in mine)
            lines.append(
                f"{label}: {payload:.0f} payload bytes up per request, {on_wire:.0f} "
                f"on the wire; {retrans} retransmitted segments"
            )
    return lines


def records_name(device: int) -> str:
    """records.jsonl for the first device (as with one), records-d1.jsonl, ..."""
    return "records.jsonl" if device == 0 else f"records-d{device}.jsonl"


def _edge_deadlines(scenario) -> list[str]:
    """The edge's frame and idle deadlines, never shorter than this scenario needs: a
    request's frame may take its whole timeout on a slow link, and an open-loop device
    may wait many mean gaps between requests."""
    frame_s = max(EdgeLimits.frame_s, scenario.request_timeout_s)
    idle_s = EdgeLimits.idle_s
    rate_hz = scenario.arrival.get("rate_hz")
    if rate_hz:
        idle_s = max(idle_s, 20 / rate_hz)
    return ["--frame-s", f"{frame_s:g}", "--idle-s", f"{idle_s:g}"]


def _agents(
    scenario, plugin, topo, indices, labels, logs: Path, progress: bool, bar, edge_device="cpu"
) -> dict:
    """`edge_device`: where the edge halves run (resolved: cpu or cuda)."""
    cores = os.cpu_count() or 1
    edge_threads = max(1, min(cores, round(scenario.edge.cpu)))
    loopback = isinstance(topo, LoopbackTopology)
    # loopback: a free port on 127.0.0.1 only (other runs and services share the machine)
    where = ["--host", topo.edge.IP(), "--port", "0"] if loopback else ["--port", str(EDGE_PORT)]
    edge = topo.popen(
        topo.edge,
        programs.command(
            "edge-agent",
            *where,
            "--preload",
            plugin.name,
            "--threads",
            str(edge_threads),
            "--device",
            edge_device,
            *_edge_deadlines(scenario),
        ),
        "edge.log",
    )
    port = int(wait_ready(edge, "edge agent", timeout_s=STARTUP_S).split()[1])
    barrier = logs / "barrier"  # several devices start each offloader together
    if scenario.devices > 1:
        barrier.mkdir(exist_ok=True)
    jobs = []
    for i, host in enumerate(topo.devices):
        suffix = "" if i == 0 else f"-d{i}"
        loaded = logs / f"device_loaded{suffix}"  # written once loaded; it waits for its limit
        job = DeviceJob(
            plugin=plugin.name,
            test_data=None if scenario.test_data is None else str(scenario.test_data),
            offloaders=tuple(
                OffloaderJob(name=s.name, params=s.params, label=label)
                for s, label in zip(scenario.offloaders, labels, strict=True)
            ),
            samples=tuple(indices.tolist()),
            edge_host=topo.edge.IP(),
            edge_port=port,
            timeout_s=scenario.request_timeout_s,
            threads=max(1, min(cores, round(scenario.device.cpu))),
            warmup=WARMUP_REQUESTS,
            pings=PINGS,
            arrival=Arrival.from_dict(scenario.arrival, f"{scenario.source}: arrival"),
            seed=scenario.seed,
            device_index=i,
            devices=scenario.devices,
            barrier=str(barrier) if scenario.devices > 1 else None,
            records=str(logs.parent / records_name(i)),
            meta=str(logs / f"device_meta{suffix}.json"),
            loaded=str(loaded),
            cgroup=None if loopback else host.name,  # no quota to wait for in loopback
            dilate_share=scenario.device.cpu if scenario.device.cpu_mode == "dilate" else None,
        )
        job.write(logs / f"device_job{suffix}.json", indent=1)
        jobs.append((job, loaded))
    traffic = TrafficRun(topo) if scenario.traffic and not loopback else None
    if traffic is not None:
        traffic.start()
    # loaded outside the CPU limit, then moved in before it profiles or sends anything
    devices = []
    for i, (host, (_, loaded)) in enumerate(zip(topo.devices, jobs, strict=True)):
        suffix = "" if i == 0 else f"-d{i}"
        device = topo.popen(
            host,
            programs.command("device-agent", str(logs / f"device_job{suffix}.json")),
            f"device{suffix}.log",
            limited=False,
        )
        devices.append((device, host, loaded, f"device{suffix}.log"))
    fault = ""
    try:
        for proc, host, loaded, log_name in devices if not loopback else []:
            _enter_limit(topo, host, proc, loaded, logs / log_name)
        _follow(
            devices,
            edge,
            [Path(j.records) for j, _ in jobs],
            len(indices) * len(labels) * len(jobs),
            scenario,
            logs,
            progress,
            bar,
        )
    except TestbedError as exc:  # what ran is kept: the results say partial, and why
        fault = str(exc)
    flows = traffic.stop() if traffic is not None else []
    return {
        "fault": fault,
        **_device_metas([Path(j.meta) for j, _ in jobs]),
        "traffic": flows,
        "congestion_control": scenario.network.congestion_control,
        "congestion_control_scope": topo.congestion_scope,
        "namespace_default_congestion_control": topo.device.cmd(
            "sysctl -n net.ipv4.tcp_congestion_control"
        ).strip(),
    }


def _device_metas(paths: list[Path]) -> dict:
    """What the device agents found before their requests (environment.json); a device
    that never reached the edge wrote none, and its figures read None: not measured."""
    metas = [DeviceMeta.read(p) for p in paths if p.exists()]
    first = metas[0] if metas else None
    return {
        "rtt_ms": first.rtt_ms if first else None,
        "device_rtt_ms": [m.rtt_ms for m in metas],
        "offloaders": list(first.offloaders) if first else [],  # the edge halves' (profiles)
        "device_offloaders": list(first.device_offloaders) if first else [],  # calibration
        "device_kernel_warmup_s": first.device_kernel_warmup_s if first else None,
        "device_prepare_s": first.device_prepare_s if first else None,
    }


def _follow(
    devices, edge, records: list[Path], total: int, scenario, logs: Path, progress: bool, bar=None
) -> None:
    """Show progress until every device agent ends; fail fast if an agent dies or stalls."""
    from tqdm import tqdm

    done, last_change, started = 0, time.monotonic(), False
    # longer than a device waits at the start barrier (timeout * 4 + 60 s), whose
    # message is clearer
    stall_s = scenario.request_timeout_s * (WARMUP_REQUESTS + 3) + 90
    own = bar is None
    if own:
        bar = tqdm(total=total, unit="req", desc=scenario.name, disable=not progress)
    try:
        while True:
            if edge.poll() is not None:  # the devices record what they lost, then exit
                _wait_exit([d for d, *_ in devices], scenario.request_timeout_s + EDGE_LOST_GRACE_S)
                if any(d.returncode != 0 for d, *_ in devices):
                    raise TestbedError(
                        f"the edge agent exited (status {edge.returncode}) mid-run: "
                        f"see {logs}/edge.log"
                    )
            for device, _, _, log_name in devices:
                if device.poll() is not None and device.returncode != 0:
                    raise TestbedError(
                        f"the device agent failed (exit {device.returncode}): "
                        + _last_words(logs / log_name)
                    )
            finished = all(device.poll() is not None for device, *_ in devices)
            count = sum(_count_lines(path) for path in records)
            if count != done:
                bar.update(count - done)
                done, last_change, started = count, time.monotonic(), True
            if finished:
                break
            limit = stall_s if started else STARTUP_S
            if time.monotonic() - last_change > limit:
                raise TestbedError(f"no request finished for {limit:.0f} s: see {logs}/device.log")
            time.sleep(0.2)
    finally:
        if own:
            bar.close()


def _wait_exit(processes, timeout_s: float) -> None:
    """Until every process has exited, or `timeout_s` (the teardown stops the rest)."""
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)


def _last_words(log_file: Path) -> str:
    """A failed agent's own last line where it said why (`device agent: ...`), else the
    last three lines of its log."""
    tail = log_file.read_text(errors="replace").strip().splitlines()
    if tail and tail[-1].startswith("device agent:"):
        return tail[-1].removeprefix("device agent:").strip()
    return " | ".join(tail[-3:])


def _enter_limit(topo, host, device, loaded: Path, log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not loaded.exists():
        if device.poll() is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise TestbedError(
                f"the device agent exited ({device.returncode}): " + " | ".join(tail)
            )
        if time.monotonic() > deadline:
            raise TestbedError(
                f"the device agent did not load in {STARTUP_S:.0f} s: see {log_file}"
            )
        time.sleep(0.05)
    topo.limit(host, device.pid)


def _say(text: str, bar) -> None:
    """A line above the progress bar (or on stderr without one)."""
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _bounds(scenario, labels: list[str]) -> tuple[float, dict[str, float]]:
    """The scenario's accuracy bound and each offloader's own configured one (by label)."""
    bound = float(getattr(scenario, "max_drop_pp", results.DEFAULT_MAX_DROP_PP))
    specs = [{"name": s.name, **s.params} for s in scenario.offloaders]
    return bound, results.configured_bounds(specs, labels)


def _write_results(
    out_dir,
    records,
    labels,
    reference,
    reference_score,
    metric,
    extra,
    compare=None,
    bounds=(results.DEFAULT_MAX_DROP_PP, {}),
    planned: int | None = None,
):
    """`bounds`: the scenario's max_drop_pp and each label's configured one; `planned`:
    requests per offloader the scenario asked for (None: those recorded)."""
    if (out_dir / "capture.pcap").exists():
        extra["capture"] = _capture_report(out_dir, records, labels)
    bound, configured = bounds
    extra["bounds"] = {"max_drop_pp": bound, "offloaders": configured}  # for the report
    _mark_partial(extra, records, planned * len(labels) if planned is not None else None)
    stall = results.stall_thresholds(records, labels, extra.get("stall_ms"))
    extra["stall_thresholds_ms"] = stall
    rows = results.complete_records(records, reference, compare, stall)
    results.write_csv(out_dir / "requests.csv", rows, results.REQUEST_COLUMNS)
    summary = results.summarize(
        rows, labels, reference_score, metric, bound, configured, planned, extra["partial"]
    )
    results.write_csv(out_dir / "summary.csv", summary, results.SUMMARY_COLUMNS)
    env = environment.collect(extra)
    (out_dir / "environment.json").write_text(json.dumps(env, indent=2, default=str))
    if extra.get("traffic"):
        results.write_csv(out_dir / "traffic.csv", extra["traffic"], results.TRAFFIC_COLUMNS)
    summary_md.write(out_dir, rows, summary, env, metric)
    return summary


def _mark_partial(extra: dict, records: list[dict], planned: int | None) -> None:
    """environment.json's account of how much of the run ran: `requests_planned`,
    `requests_run` (not `not_run`), and `partial` with its reason where not all did."""
    ran = sum(r.get("status") != NOT_RUN for r in records)
    planned = len(records) if planned is None else planned
    why = [extra.get("fault") or ""]
    if extra.get("interrupted"):
        why.append("interrupted")
    if ran < planned:
        why.append(f"{planned - ran} of {planned} planned requests not run")
    reason = "; ".join(w for w in why if w)
    extra.update(
        requests_planned=planned, requests_run=ran, partial=bool(reason), partial_reason=reason
    )
