"""End to end on real Mininet hosts: a scenario file in, result files out, the
link's arithmetic checked, and nothing left behind, also after SIGINT and SIGTERM."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.agents.contract import REQUEST_COLUMNS
from tests.mininet_utils import ROOT, leftovers, needs_mininet, write_scenario

pytestmark = [needs_mininet, pytest.mark.mininet]


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "run_scenario.py", *map(str, args), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    scenario = write_scenario(tmp / "small.yaml")
    out = tmp / "out"
    # relative, as a user types it (the default is results/NAME-...): the programs in the
    # hosts must resolve it from the folder the command ran in
    proc = run_cli(scenario, "--out", os.path.relpath(out, ROOT))
    assert proc.returncode == 0, proc.stderr
    return proc, out


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prints_table_and_writes_result_files(small_run):
    proc, out = small_run
    assert "| local |" in proc.stdout and "| raw |" in proc.stdout
    for name in (
        "requests.csv",
        "summary.csv",
        "summary.md",
        "environment.json",
        "resolved_scenario.yaml",
    ):
        assert (out / name).stat().st_size > 0, name
    requests = read_csv(out / "requests.csv")
    assert list(requests[0]) == list(REQUEST_COLUMNS)  # the contract's, pinned in test_contract
    assert len(requests) == 40 and {r["status"] for r in requests} == {"ok"}
    summary = {row["offloader"]: row for row in read_csv(out / "summary.csv")}
    assert list(next(iter(summary.values())))[:18] == [
        "offloader",
        "n",
        "p50_ms",
        "mean_ms",
        "std_ms",
        "p95_ms",
        "p99_ms",
        "mean_bytes_up",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "agreement",
        "accuracy_drop_pp",
        "drop_lo_pp",
        "drop_hi_pp",
        "within_bound",
        "over_bound",
        "speedup_vs_raw",
    ]
    assert summary["local"]["n"] == summary["raw"]["n"] == "20"
    assert float(summary["local"]["mean_bytes_up"]) == 0
    assert float(summary["raw"]["mean_bytes_up"]) == 16 + 784
    env = json.loads((out / "environment.json").read_text())
    assert env["link_backend"] and env["congestion_control"] in ("bbr", "cubic", "reno")
    assert env["packages"]["torch"].startswith("2.13.0")


def test_local_accuracy_equals_the_plugins_on_the_same_samples(small_run):
    import torch

    from testbed.models import plugins

    _, out = small_run
    env = json.loads((out / "environment.json").read_text())
    plugin = plugins.get("fashion_cnn")
    data, model = plugin.test_data(), plugin.load_model()
    samples = np.array(env["samples"])
    with torch.inference_mode():
        predicted = model(plugin.to_tensor(data.inputs[samples])).argmax(1).numpy()
    expected = float(np.mean(predicted == data.labels[samples]))
    summary = {row["offloader"]: row for row in read_csv(out / "summary.csv")}
    assert float(summary["local"]["accuracy"]) == pytest.approx(expected)
    assert float(summary["raw"]["accuracy"]) == pytest.approx(expected)
    rows = [r for r in read_csv(out / "requests.csv") if r["offloader"] == "local"]
    assert [int(r["sample"]) for r in rows] == samples.tolist()
    assert all(r["agrees"] == "1" for r in rows)


def test_raw_uplink_matches_link_arithmetic(small_run):
    """1 Mbit/s, 10 ms one way: the uplink of a request is its serialization at the
    TCP goodput rate (0.956 of the link rate) plus one one-way delay (half the
    measured round trip of small pings)."""
    _, out = small_run
    env = json.loads((out / "environment.json").read_text())
    raw = [r for r in read_csv(out / "requests.csv") if r["offloader"] == "raw"]
    uplink = statistics.median(float(r["uplink_ms"]) for r in raw)
    bytes_up = int(raw[0]["bytes_up"])
    expected = bytes_up * 8 / (0.956 * 1e6) * 1e3 + env["rtt_ms"] / 2
    assert uplink == pytest.approx(expected, rel=0.10), (uplink, expected, env["rtt_ms"])
    assert 20 <= env["rtt_ms"] <= 24  # two 10 ms delays plus two tiny frames' serialization


def test_nothing_left_after_a_clean_run(small_run):
    _, out = small_run
    prefix = json.loads((out / "environment.json").read_text())["run_prefix"]
    assert leftovers(prefix) == []


def start_run(scenario, out, *options: str, records: int, timeout_s: float):
    """`run_scenario.py` started in the background, once it has written `records`
    records (or ended, or `timeout_s` passed): for tests that interrupt a run."""
    proc = subprocess.Popen(
        [sys.executable, "run_scenario.py", str(scenario), "--out", str(out), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    written = out / "records.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if written.exists() and written.read_text().count("\n") >= records:
            break
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_cleans_up(tmp_path, sig, status):
    scenario = write_scenario(tmp_path / "long.yaml", samples=2000, offloaders=["raw"])
    out = tmp_path / "out"
    proc = start_run(scenario, out, "--no-progress", records=10, timeout_s=180)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["interrupted"] is True and env["cleanup_failures"] == []
    assert leftovers(env["run_prefix"]) == []
    rows = read_csv(out / "requests.csv")  # what finished is kept
    assert 10 <= len(rows) < 2000


def test_impaired_run_with_traffic_and_capture(tmp_path):
    """Loss, competing traffic and --capture together through the command line."""
    scenario = write_scenario(
        tmp_path / "impaired.yaml",
        samples=40,
        offloaders=["raw"],
        network={
            "uplink": {"bandwidth_mbps": 2, "delay_ms": 5, "loss_pct": 10},
            "downlink": {"bandwidth_mbps": 2, "delay_ms": 5},
        },
        traffic=[{"type": "udp_cbr", "rate_mbps": 0.5, "direction": "up"}],
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out, "--capture")
    assert proc.returncode == 0, proc.stderr
    (flow,) = read_csv(out / "traffic.csv")
    assert float(flow["throughput_mbps"]) == pytest.approx(0.5 * 0.9, rel=0.15)  # 10% lost
    wire = read_csv(out / "capture.csv")
    assert len(wire) == 40
    assert all(int(r["wire_bytes_up"]) >= int(r["bytes_up"]) + 66 for r in wire)
    assert sum(int(r["retransmissions"]) for r in wire) >= 1  # 10% of 40 requests are lost
    slow = [float(r["uplink_ms"]) for r in read_csv(out / "requests.csv")]
    assert max(slow) > 100  # a lost request waits for TCP's retransmission timeout
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["uplink"]["measured"]["loss_pct"] > 0
    assert fidelity["downlink"]["ok"], fidelity["downlink"]
    env = json.loads((out / "environment.json").read_text())
    assert leftovers(env["run_prefix"]) == []


def test_leftovers_of_a_killed_run_are_removed_by_cleanup_stale(tmp_path):
    """SIGKILL leaves the topology behind; --cleanup-stale removes exactly that run's."""
    scenario = write_scenario(tmp_path / "killed.yaml", samples=2000, offloaders=["raw"])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "run_scenario.py",
            str(scenario),
            "--out",
            str(out),
            "--no-progress",
            "--skip-fidelity",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records = out / "records.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (records.exists() and records.stat().st_size):
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    (state,) = [  # other runs may be going on: take the killed one's
        p
        for p in Path("/run/deepcod-testbed").glob("dc*.json")
        if json.loads(p.read_text())["pid"] == proc.pid
    ]
    prefix = state.stem
    assert leftovers(prefix), "SIGKILL should have left the topology behind"
    cleaned = subprocess.run(
        [sys.executable, "run_scenario.py", "--cleanup-stale"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cleaned.returncode == 0 and prefix in cleaned.stdout, cleaned
    assert leftovers(prefix) == []
    assert not state.exists()


def test_a_clean_run_removes_its_state_file(small_run):
    _, out = small_run
    prefix = json.loads((out / "environment.json").read_text())["run_prefix"]
    assert not Path("/run/deepcod-testbed", f"{prefix}.json").exists()


def test_forcing_netem_without_netem_exits_3(tmp_path):
    from tests.test_link_emulation import NETEM

    if NETEM:
        pytest.skip("this kernel has netem")
    scenario = write_scenario(
        tmp_path / "netem.yaml",
        network={"uplink": {"bandwidth_mbps": 1}, "backend": "netem"},
    )
    proc = run_cli(scenario, "--out", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    assert "no sch_netem" in proc.stderr and "Traceback" not in proc.stderr
    env = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert leftovers(env["run_prefix"]) == []


def test_failing_gate_exits_4_with_its_values(tmp_path):
    scenario = write_scenario(
        tmp_path / "gate.yaml",
        samples=5,
        offloaders=["raw"],
        expect=["raw.failed == 0", "raw.p50_ms < 1"],  # 10 ms each way: cannot hold
    )
    proc = run_cli(scenario, "--out", tmp_path / "out", "--skip-fidelity")
    assert proc.returncode == 4, proc.stderr
    assert "raw.p50_ms < 1  (raw.p50_ms = " in proc.stderr
    assert "raw.failed == 0" not in proc.stderr  # only the failing gate is reported
    assert (tmp_path / "out" / "summary.csv").exists()  # results are written all the same


def test_deepcod_through_the_agents(tmp_path):
    """DeepCOD with the committed fashion_cnn networks (ratio 0.25) beside raw on a
    narrow uplink: far fewer bytes, a shorter uplink, its accuracy drop recorded."""
    scenario = write_scenario(
        tmp_path / "deepcod.yaml",
        samples=40,
        offloaders=["raw", {"name": "deepcod", "ratio": 0.25}],
        network={"uplink": {"bandwidth_mbps": 0.25, "delay_ms": 5}},
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out, "--skip-fidelity")
    assert proc.returncode == 0, proc.stderr
    rows = {r["offloader"]: r for r in read_csv(out / "summary.csv")}
    assert rows["deepcod"]["n"] == "40" and rows["deepcod"]["failed"] == "0"
    assert float(rows["deepcod"]["mean_bytes_up"]) < float(rows["raw"]["mean_bytes_up"]) / 5
    requests = read_csv(out / "requests.csv")
    uplink = {
        name: statistics.median(float(r["uplink_ms"]) for r in requests if r["offloader"] == name)
        for name in ("raw", "deepcod")
    }
    assert uplink["deepcod"] < uplink["raw"] / 2, uplink
    assert all(float(r["encode_ms"]) > 0 for r in requests if r["offloader"] == "deepcod")
    assert float(rows["deepcod"]["accuracy_drop_pp"]) < 15  # see plugins/fashion_cnn/README.md


def _run_edge_pid(device_job: Path) -> int | None:
    """The edge agent of the run whose device agent reads `device_job`: the process
    that carries the same run prefix in its environment."""
    from testbed.emulation.stale import RUN_ENV, run_processes

    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(device_job).encode() not in (proc / "cmdline").read_bytes():
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        marker = next((e for e in environ if e.startswith(f"{RUN_ENV}=".encode())), None)
        if marker is None:
            continue
        for pid in run_processes(marker.split(b"=", 1)[1].decode()):
            with_edge = Path(f"/proc/{pid}/cmdline")
            try:
                if b"testbed.agents.edge" in with_edge.read_bytes():
                    return pid
            except OSError:
                continue
    return None


def test_an_edge_killed_mid_run_leaves_a_partial_run_said_so_everywhere(tmp_path):
    """SIGKILL the edge agent after a few requests: the request in flight is an error,
    the rest `not_run`; summary.md, summary.csv and environment.json say partial; the
    command exits 1 with one clear line, and no log holds a traceback."""
    scenario = write_scenario(
        tmp_path / "lost.yaml",
        samples=15,
        offloaders=["raw", "local"],
        arrival={"process": "poisson", "rate_hz": 5},
    )
    out = tmp_path / "out"
    proc = start_run(scenario, out, "--no-progress", "--skip-fidelity", records=3, timeout_s=300)
    edge = _run_edge_pid(out / "logs" / "device_job.json")
    assert proc.poll() is None and edge is not None, proc.stderr.read() if proc.stderr else ""
    os.kill(edge, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: the run did not finish: the edge agent exited (status -9)")
    assert "planned requests not run" in last and "marked partial" in last
    assert "PARTIAL RUN:" in stdout  # the console table
    rows = read_csv(out / "requests.csv")
    statuses = [r["status"] for r in rows]
    assert len(rows) == 30 and statuses.count("not_run") >= 15  # local never ran
    lost = [r for r in rows if r["status"] == "error"]
    assert all(r["error"].startswith("edge connection lost") for r in lost), lost
    assert all(r["total_ms"] == "" for r in rows if r["status"] == "not_run")
    summary = {r["offloader"]: r for r in read_csv(out / "summary.csv")}
    assert {r["partial"] for r in summary.values()} == {"1"}
    assert summary["local"]["not_run"] == "15" and summary["local"]["n"] == "0"
    assert summary["local"]["p50_ms"] == "nan"  # no figure made up
    text = (out / "summary.md").read_text()
    assert "these results are partial (the edge agent exited (status -9)" in text
    assert "0.00 ms" not in text
    env = json.loads((out / "environment.json").read_text())
    assert env["partial"] is True and env["requests_planned"] == 30
    assert env["requests_run"] == statuses.count("ok") + statuses.count("error")
    assert "PARTIAL" in (out / "report.md").read_text()
    device_log = (out / "logs" / "device.log").read_text()
    assert "Traceback" not in device_log
    assert device_log.strip().splitlines()[-1].startswith("device agent: edge connection lost")
    assert leftovers(env["run_prefix"]) == []
