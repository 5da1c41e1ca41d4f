"""Loopback mode (`run_scenario.py --loopback`, docs/edge.md): the real agents on
127.0.0.1 without Mininet or root, nothing of the link applied and every output saying
so; records, summaries and report as a Mininet run's; nothing left running after it
ends, after Ctrl-C or SIGTERM; nothing started where the scenario asks for a GPU this
machine lacks."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from testbed.emulation.stale import run_processes
from tests.helpers import ROOT

SCENARIO = {
    "name": "loop",
    "seed": 3,
    "model": "fashion_cnn",
    "samples": 8,
    "device": {"cpu": 1.0},
    "edge": {"cpu": 1.0, "device": "cpu"},
    "network": {"uplink": {"bandwidth_mbps": 1, "delay_ms": 10}},
    "offloaders": ["local", "raw", {"name": "jpeg", "quality": 50}],
    "expect": ["raw.failed == 0"],
}


def write(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump({**SCENARIO, **overrides}, sort_keys=False))
    return path


def command(*args) -> list[str]:
    return [sys.executable, str(ROOT / "run_scenario.py"), *map(str, args), "--no-progress"]


def cli(*args, timeout=300, **popen):
    return subprocess.run(
        command(*args),
        cwd=popen.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loopback")
    out = tmp / "out"
    proc = cli(write(tmp / "loop.yaml"), "--loopback", "--out", out)
    return proc, out


def test_a_loopback_run_gives_every_result_file(run):
    proc, out = run
    assert proc.returncode == 0, proc.stderr
    summary = {row["offloader"]: row for row in read_csv(out / "summary.csv")}
    assert list(summary) == ["local", "raw", "jpeg"]
    assert all(row["n"] == "8" for row in summary.values())
    requests = read_csv(out / "requests.csv")
    assert len(requests) == 24 and {r["status"] for r in requests} == {"ok"}
    assert float(summary["raw"]["mean_bytes_up"]) == 16 + 784  # header + the raw pixels
    for name in ("summary.md", "report.md", "resolved_scenario.yaml", "logs/edge.log"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "fidelity.json").exists()  # no link to check


def test_it_says_loudly_that_nothing_was_shaped(run):
    proc, out = run
    assert "WARNING: loopback mode" in proc.stderr and "NOT applied" in proc.stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["link_backend"] == "loopback (no shaping)" and env["loopback"] is True
    assert any("NOT applied" in w for w in env["warnings"])
    assert any("link check (fidelity) was skipped" in w for w in env["warnings"])
    assert env["edge_device"]["requested"] == env["edge_device"]["device"] == "cpu"
    assert "**Warning:** loopback mode" in (out / "summary.md").read_text()
    report = (out / "report.md").read_text()
    assert "loopback (no shaping)" in report and "NOT applied" in report


def test_the_edge_ran_on_its_device_warmed_up(run):
    _, out = run
    log = (out / "logs" / "edge.log").read_text()
    assert "edge halves run on cpu" in log and "fashion_cnn on cpu: warm-up passes" in log


def test_nothing_is_left_running(run):
    _, out = run
    env = json.loads((out / "environment.json").read_text())
    assert env["cleanup_failures"] == []
    assert run_processes(env["run_prefix"]) == []


def test_no_root_only_step_runs(tmp_path, monkeypatch):
    """In process, as a user who is not root: the root check, the stale-run cleanup and
    the Mininet topology are never reached."""
    from testbed.config.scenario import load_scenario
    from testbed.experiment import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a root-only step ran in loopback mode")

    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    monkeypatch.setattr(runner, "check_environment", refuse)
    monkeypatch.setattr(runner.stale, "clean_all", refuse)
    monkeypatch.setattr(runner, "OffloadTopology", refuse)
    edge = {"cpu": 1.0, "device": "auto"}  # resolved here, recorded as resolved
    scenario = load_scenario(write(tmp_path / "s.yaml", samples=3, offloaders=["raw"], edge=edge))
    result = runner.run(scenario, tmp_path / "out", progress=False, loopback=True)
    assert not result.partial and not result.gate_failures
    assert [row["offloader"] for row in result.summary] == ["raw"]
    env = json.loads((tmp_path / "out" / "environment.json").read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert env["edge_device"]["requested"] == "auto" and env["edge_device"]["device"] == expected
    assert f"edge halves run on {expected}" in (tmp_path / "out" / "logs" / "edge.log").read_text()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_a_user_who_is_not_root_can_run_it():
    folder = Path(tempfile.mkdtemp(prefix="deepcod-loopback-"))  # pytest's tmp is root-only
    try:
        folder.chmod(0o777)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        # through a child of its own, as the agents start: setpriv's own exec may still
        # pass through a folder its user cannot enter (its capabilities end with the exec)
        child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import torch'])"
        probe = subprocess.run(
            [*nobody, sys.executable, "-c", child + ".check_returncode()"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:  # the interpreter or the checkout is out of its reach
            why = (probe.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"user nobody cannot run {sys.executable}: {why}")
        scenario = write(folder / "s.yaml", samples=3)
        env = {**os.environ, "HOME": str(folder), "DEEPCOD_TESTBED_CACHE": str(folder / "c")}
        proc = subprocess.run(
            [*nobody, *command(scenario, "--loopback", "--out", folder / "out")],
            cwd=folder,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert (folder / "out" / "summary.csv").exists()
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_cleans_up_and_keeps_what_ran(tmp_path, signum, status):
    scenario = write(tmp_path / "s.yaml", samples=400, offloaders=["raw"])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        command(scenario, "--loopback", "--out", out),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        records = out / "records.jsonl"
        while not (records.exists() and records.read_text().count("\n") >= 5):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no request finished in 120 s"
            time.sleep(0.1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr
    assert "cleaned up" in stderr and "Traceback" not in stderr
    env = json.loads((out / "environment.json").read_text())
    assert env["interrupted"] and env["partial"] and env["cleanup_failures"] == []
    assert 0 < env["requests_run"] < 400
    assert run_processes(env["run_prefix"]) == []


def test_a_runner_killed_outright_leaves_no_agent(tmp_path):
    """SIGKILL gives the runner no teardown: its agents end with it (parent-death signal)."""
    scenario = write(tmp_path / "s.yaml", samples=400, offloaders=["raw"])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        command(scenario, "--loopback", "--out", out),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        records = out / "records.jsonl"
        while not (records.exists() and records.read_text().count("\n") >= 5):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        agents = _agents_of(proc.pid)
        assert len(agents) == 2, agents  # the edge and the device agent
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in agents) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in agents if _alive(pid)]


def _agents_of(parent: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_starts_nothing(tmp_path):
    scenario = write(tmp_path / "s.yaml", edge={"cpu": 1.0, "device": "cuda"})
    proc = cli(scenario, "--loopback", "--out", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {scenario}: edge.device is cuda")
    assert not (tmp_path / "out").exists()


def test_options_that_need_the_link_are_refused(tmp_path):
    """Before anything is loaded or started (in process: the message is the CLI's line)."""
    from testbed.config.scenario import load_scenario
    from testbed.errors import ScenarioError
    from testbed.experiment import runner

    scenario = load_scenario(write(tmp_path / "s.yaml"))
    for option in ("capture", "strict"):
        with pytest.raises(ScenarioError, match=f"--{option}.*--loopback"):
            runner.run(scenario, tmp_path / "out", loopback=True, **{option: True})
    assert not (tmp_path / "out").exists()


def test_every_part_not_applied_is_named(tmp_path):
    """Competing traffic and a CFS device quota, which a loopback run cannot apply."""
    from testbed.config.scenario import load_scenario
    from testbed.experiment.runner import loopback_warnings

    scenario = load_scenario(
        write(
            tmp_path / "s.yaml",
            device={"cpu": 0.5, "cpu_mode": "cfs"},
            traffic=[{"type": "udp_cbr", "rate_mbps": 0.5}],
        )
    )
    text = "\n".join(loopback_warnings(scenario, fidelity=False))
    assert "NOT applied" in text and "the device too (cpu_mode: cfs" in text
    assert "competing traffic (1 flow) was not started" in text
    assert "fidelity" not in text  # --skip-fidelity: nothing skipped by loopback
