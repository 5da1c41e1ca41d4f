"""Sweeps on a Ray cluster (`run_scenario.py S --ray ADDRESS`): a real head with one
emulation slot started by the tests, real Mininet cells on it, compared with the same
sweep run locally; Ctrl-C and resume; a worker killed mid-cell. Unit tests beside them
cover what travels (folders, inputs) and a node that cannot run cells."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from testbed import errors
from testbed.config import sweep as grids
from testbed.emulation.stale import STATE_DIR
from testbed.errors import EnvironmentMissing
from testbed.experiment import cluster
from testbed.experiment import sweep as sweeps
from testbed.results import hosts
from testbed.results.load import Cell, Group, Study
from tests.mininet_utils import ROOT, leftovers, needs_mininet

SWEEP = {
    "name": "raygrid",
    "seed": 3,
    "model": "fashion_cnn",
    "samples": 10,
    "device": {"cpu": 1.0},
    "edge": {"cpu": 1.0},
    "network": {
        "uplink": {"bandwidth_mbps": [1, 4], "delay_ms": 10},
        "downlink": {"bandwidth_mbps": 1, "delay_ms": 10},
    },
    "offloaders": ["local", "raw"],
}
RUN = [sys.executable, str(ROOT / "run_scenario.py")]
FLAGS = ["--skip-fidelity", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid` (the head's daemons and their workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on this machine with one emulation slot; stopped (SIGTERM to `ray
    start --block`, which stops the node's daemons), and nothing of it left."""
    pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    # the head runs without token authentication (Ray's default): nothing may be left
    # in the home folder (a `ray start` with tokens writes ~/.ray/auth_token)
    home_token = Path.home() / ".ray" / "auth_token"
    had_token = home_token.exists()
    port = _free_port()
    log = open(temp / "head.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=1",
            '--resources={"emulation": 1}',
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--object-store-memory=100000000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in (temp / "head.log").read_bytes():
            assert proc.poll() is None, (temp / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 90 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        ours = _descendants(proc.pid) | {proc.pid}
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() for p in ours) and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = [p for p in ours if Path(f"/proc/{p}").exists()]
        assert not alive, f"Ray processes left after the head stopped: {alive}"
        assert had_token or not home_token.exists(), f"the cluster left {home_token}"


def _state_files() -> set[str]:
    return {p.stem for p in STATE_DIR.glob("dc*.json")} if STATE_DIR.is_dir() else set()


def _interfaces() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n.startswith("dc")}


def _files(folder: Path) -> list[str]:
    """A results folder's files, its run prefix (dcXXXX) written as one name."""
    import re

    return sorted(
        re.sub(r"dc[0-9a-f]{4}", "dcXXXX", str(p.relative_to(folder)))
        for p in folder.rglob("*")
        if p.is_file()
    )


def _summary(path: Path) -> dict[str, dict]:
    with path.open(newline="") as handle:
        return {row["offloader"]: row for row in csv.DictReader(handle)}


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_a_ray_sweep_matches_a_local_one_and_resumes_after_ctrl_c(head, tmp_path):
    scenario = tmp_path / "grid.yaml"
    scenario.write_text(yaml.safe_dump(SWEEP))
    before = (_state_files(), _interfaces())
    local, remote = tmp_path / "local", tmp_path / "ray"
    subprocess.run([*RUN, str(scenario), "--out", str(local), *FLAGS], check=True, cwd=ROOT)

    command = [*RUN, str(scenario), "--out", str(remote), *FLAGS, "--ray", head]
    driver = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    first = remote / "cells" / "c000-bandwidth_mbps1-r0" / "cell.json"
    _wait_for(first.exists, 120, "the first cell to come back")
    driver.send_signal(signal.SIGINT)  # Ctrl-C on the driver, mid-way through cell 2
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err
    state = {
        c["dir"]: c["status"] for c in json.loads((remote / "sweep.json").read_text())["cells"]
    }
    assert state == {
        "cells/c000-bandwidth_mbps1-r0": "done",
        "cells/c001-bandwidth_mbps4-r0": "interrupted",
    }, err
    assert (_state_files(), _interfaces()) == before  # the worker tore its cell down
    assert not cluster.JOBS_DIR.is_dir() or not any(cluster.JOBS_DIR.iterdir())
    kept = first.stat().st_mtime_ns

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 2 cells already done" in resumed.stderr
    assert first.stat().st_mtime_ns == kept  # the finished cell was not run again

    assert _files(remote) == _files(local)  # the same folders, files and plots
    for cell in ("c000-bandwidth_mbps1-r0", "c001-bandwidth_mbps4-r0"):
        a, b = local / "cells" / cell, remote / "cells" / cell
        assert (a / "resolved_scenario.yaml").read_text() == (
            b / "resolved_scenario.yaml"
        ).read_text()
        env_a, env_b = (json.loads((d / "environment.json").read_text()) for d in (a, b))
        assert set(env_a) == set(env_b) and env_b["host"] == env_a["host"]
        assert env_b["samples"] == env_a["samples"]
        rows_a, rows_b = _summary(a / "summary.csv"), _summary(b / "summary.csv")
        assert list(rows_a) == list(rows_b) == ["local", "raw"]
        for name in rows_a:
            assert list(rows_a[name]) == list(rows_b[name])  # columns
            for column in ("n", "accuracy", "accuracy_drop_pp", "mean_bytes_up", "failed"):
                assert rows_a[name][column] == rows_b[name][column], (cell, name, column)
        # the link's serialization dominates raw's latency: equal within run-to-run noise
        raw_a, raw_b = float(rows_a["raw"]["p50_ms"]), float(rows_b["raw"]["p50_ms"])
        assert abs(raw_a - raw_b) < 0.25 * raw_a, (raw_a, raw_b)
        assert json.loads((b / "cell.json").read_text())["host"] == env_a["host"]
    report = (remote / "report.md").read_text()
    assert f"- Hosts: `{env_a['host']}` (2 cells)" in report


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_its_topology_removed(head, tmp_path):
    scenario = tmp_path / "grid.yaml"
    scenario.write_text(yaml.safe_dump({**SWEEP, "name": "raykill"}))
    out = tmp_path / "out"
    before = _state_files()
    driver = subprocess.Popen(
        [*RUN, str(scenario), "--out", str(out), *FLAGS, "--ray", head],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    running: dict = {}

    def cell_running() -> bool:  # the task's worker, once its cell's topology exists
        workers = subprocess.run(
            ["pgrep", "-f", "^ray::_run_cell_task"], capture_output=True, text=True
        ).stdout.split()
        started = _state_files() - before
        if workers and started:
            running.update(worker=int(workers[0]), prefix=started.pop())
        return bool(running)

    _wait_for(cell_running, 120, "a cell to start on the worker")
    os.kill(running["worker"], signal.SIGKILL)
    _, err = driver.communicate(timeout=240)
    assert driver.returncode == 0, err
    assert "its worker was lost" in err and "running it again (2)" in err, err
    states = [json.loads(p.read_text()) for p in sorted(out.glob("cells/*/cell.json"))]
    assert [s["status"] for s in states] == ["done", "done"], (states, err)
    assert sorted(s["attempts"] for s in states) == [1, 2], (states, err)
    _wait_for(lambda: not leftovers(running["prefix"]), 30, "the killed cell's teardown")
    assert running["prefix"] not in _state_files()
    assert (out / "report.md").is_file()


# ------------------------------------------------------------------ unit tests


def test_a_cells_folder_travels_back_whole_and_bounded(tmp_path, monkeypatch):
    folder = tmp_path / "cell"
    (folder / "logs").mkdir(parents=True)
    (folder / "summary.csv").write_text("offloader,n\nraw,3\n")
    (folder / "logs" / "edge.log").write_bytes(b"x" * 1000)
    into = tmp_path / "back"
    cluster.unpack_folder(cluster.pack_folder(folder), into)
    assert _files(into) == _files(folder)
    assert (into / "logs" / "edge.log").read_bytes() == b"x" * 1000

    monkeypatch.setattr(cluster, "MAX_FOLDER_BYTES", 500)
    with pytest.raises(errors.TestbedError, match="over the 0 MiB"):
        cluster.pack_folder(folder)


@pytest.mark.parametrize("name", ["../escape", "/etc/evil"])
def test_a_folder_that_would_escape_is_refused(tmp_path, name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(errors.TestbedError, match="unreadable"):
        cluster.unpack_folder(buffer.getvalue(), tmp_path / "into")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(errors.TestbedError, match="unreadable"):
        cluster.unpack_folder(b"not a tar", tmp_path / "into")


def test_named_files_travel_unless_the_worker_has_the_same(tmp_path):
    trace = tmp_path / "up.csv"
    trace.write_text("0,1\n")
    packed = cluster.pack_inputs([str(trace)])
    scenario = {"network": {"trace": {"uplink": str(trace)}}}
    assert cluster._local_inputs(scenario, packed, tmp_path / "in") == scenario  # same bytes
    trace.write_text("0,2\n")  # the worker's copy differs: the one sent is used
    moved = cluster._local_inputs(scenario, packed, tmp_path / "in")
    assert Path(moved["network"]["trace"]["uplink"]).read_text() == "0,1\n"


def test_a_node_that_cannot_run_cells_says_why(tmp_path, monkeypatch):
    """A mock beside the real runs above: a node without root or Mininet."""
    from testbed.emulation import topology

    def refuse() -> None:
        raise EnvironmentMissing("Mininet needs root: run as root")

    monkeypatch.setattr(topology, "check_environment", refuse)
    got = cluster._run_cell_task({"options": {}}, cluster.pack_inputs([]))
    assert got["status"] == "unfit" and "cannot run cells: Mininet needs root" in got["error"]

    scenario = tmp_path / "grid.yaml"
    scenario.write_text(yaml.safe_dump(SWEEP))
    sweep = grids.load_sweep(scenario)

    def fake_run_cells(cells, options, finish, say):  # as the driver receives outcomes
        for cell in cells:
            finish(cell, cluster.Outcome(**got), 1)

    monkeypatch.setattr(cluster, "run_cells", fake_run_cells)
    out = tmp_path / "out"
    result = sweeps.run_sweep(sweep, out, progress=False, cluster=object())
    assert len(result.failed_cells) == 2
    assert all("cannot run cells: Mininet needs root" in f for f in result.failed_cells)
    states = json.loads((out / "sweep.json").read_text())["cells"]
    assert [c["status"] for c in states] == ["failed", "failed"]


def test_bad_ray_arguments_exit_2(tmp_path):
    single = tmp_path / "one.yaml"
    single.write_text(yaml.safe_dump({**SWEEP, "network": {"uplink": {"bandwidth_mbps": 1}}}))
    got = subprocess.run([*RUN, str(single), "--ray", "local"], capture_output=True, text=True)
    assert got.returncode == 2 and "is a single run: drop --ray" in got.stderr
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(SWEEP))
    got = subprocess.run([*RUN, str(grid), "--ray", "local:0"], capture_output=True, text=True)
    assert got.returncode == 2 and "allowed: local, local:N" in got.stderr
    assert "Traceback" not in got.stderr


def _cell(host: str, cpu: str, kernel: str) -> Cell:
    env = {"host": host, "cpu_model": cpu, "kernel": kernel}
    return Cell(Path(host), [], [], {}, [], {}, env)


def test_the_report_names_hosts_and_warns_when_pooled_cells_differ():
    same = Group({"bw": 1}, [_cell("a", "EPYC", "6.1"), _cell("b", "EPYC", "6.1")])
    mixed = Group({"bw": 4}, [_cell("a", "EPYC", "6.1"), _cell("c", "Xeon", "6.1")])
    study = Study(Path("."), "sweep", "s", "", {"bw": [1, 4]}, 2, [same, mixed], [], [], "", [], 4)
    lines = hosts.host_lines(study)
    assert lines[0] == "- Hosts: `a` (2 cells), `b` (1 cell), `c` (1 cell)"
    assert len(lines) == 2 and "bw=4" in lines[1] and "EPYC on `a`; Xeon on `c`" in lines[1]
    assert "kernel" not in lines[1]
    study.groups = [same]
    assert len(hosts.host_lines(study)) == 1  # alike machines: no warning


@needs_mininet
@pytest.mark.mininet
def test_what_a_killed_cell_left_is_removed_by_its_prefix():
    """A link made under the task's prefix that no teardown knows (a signal inside
    Mininet's build): removed after the child ends; another prefix's is not touched."""
    mine, other = "dcf0f0", "dcf0f1"
    for prefix in (mine, other):
        subprocess.run(
            ["ip", "link", "add", f"{prefix}sa-eth9", "type", "veth", "peer", f"{prefix}sb-eth9"],
            check=True,
        )
    try:
        cluster._remove_remains(mine)
        assert not leftovers(mine)
        assert len(leftovers(other)) == 2
    finally:
        for prefix in (mine, other):
            subprocess.run(["ip", "link", "del", f"{prefix}sa-eth9"], capture_output=True)
