"""Sweeps: expansion of list values into cells (unit), running and resuming (a fake
runner in a unit test, real Mininet runs beside it), several device hosts sharing
the bottleneck (measured)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.config import sweep as grids
from testbed.errors import ScenarioError
from testbed.experiment import sweep as sweeps
from tests.mininet_utils import ROOT, leftovers, needs_mininet, write_scenario


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BASE = """
name: grid
seed: 7
model: fashion_cnn
samples: 4
network:
  uplink: {bandwidth_mbps: BW, delay_ms: 10}
offloaders: [local, raw, {name: jpeg, quality: 50}]
expect: ["raw.failed == 0"]
"""


def test_lists_at_scalar_places_become_axes(tmp_path):
    text = BASE.replace("BW", "[0.5, 2, 8]") + (
        "devices: [1, 2]\nrepeats: 2\n"
        "traffic: [{type: udp_cbr, rate_mbps: [0.1, 0.3]}, {type: tcp_bulk}]\n"
    )
    sweep = grids.load_sweep(write(tmp_path / "s.yaml", text))
    assert sweep.axes == {
        "network.uplink.bandwidth_mbps": [0.5, 2, 8],
        "devices": [1, 2],
        "traffic[0].rate_mbps": [0.1, 0.3],
    }
    assert len(sweep.cells) == 3 * 2 * 2 * 2 and sweep.repeats == 2
    seen = set()
    for cell in sweep.cells:
        s = cell.scenario
        assert s.network.uplink.bandwidth_mbps == cell.values["network.uplink.bandwidth_mbps"]
        assert s.network.downlink.bandwidth_mbps == s.network.uplink.bandwidth_mbps  # follows
        assert s.devices == cell.values["devices"]
        assert s.traffic[0]["rate_mbps"] == cell.values["traffic[0].rate_mbps"]
        assert s.traffic[1]["type"] == "tcp_bulk"
        assert s.seed == 7 + cell.repeat  # repeats differ by seed only
        assert [o.name for o in s.offloaders] == ["local", "raw", "jpeg"]  # not an axis
        assert s.expect == ("raw.failed == 0",)
        seen.add(cell.dirname)
    assert len(seen) == len(sweep.cells)  # one folder each
    assert sweep.cells[0].dirname == "c000-bandwidth_mbps0.5-devices1-rate_mbps0.1-r0"
    assert sweep.cells[1].dirname == "c000-bandwidth_mbps0.5-devices1-rate_mbps0.1-r1"


def test_a_plain_scenario_is_one_cell(tmp_path):
    sweep = grids.load_sweep(write(tmp_path / "s.yaml", BASE.replace("BW", "1")))
    assert sweep.axes == {} and len(sweep.cells) == 1 and not sweep.is_grid
    assert sweep.cells[0].scenario.network.uplink.bandwidth_mbps == 1
    repeated = grids.load_sweep(write(tmp_path / "r.yaml", BASE.replace("BW", "1") + "repeats: 3"))
    assert repeated.is_grid and [c.scenario.seed for c in repeated.cells] == [7, 8, 9]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, -2]", "s.yaml:7: network.uplink.bandwidth_mbps: got -2; allowed: a number > 0"),
        ("[]", "network.uplink.bandwidth_mbps: an empty list"),
        ("[1, 1]", "repeats a value"),
    ],
)
def test_a_bad_value_in_a_list_is_refused_with_its_place(tmp_path, value, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[")):
        grids.load_sweep(write(tmp_path / "s.yaml", BASE.replace("BW", value)))


def test_repeats_must_be_one_integer(tmp_path):
    with pytest.raises(ScenarioError, match="repeats"):
        grids.load_sweep(write(tmp_path / "s.yaml", BASE.replace("BW", "1") + "repeats: [1, 2]"))
    with pytest.raises(ScenarioError, match="repeats: got 0"):
        grids.load_sweep(write(tmp_path / "s.yaml", BASE.replace("BW", "1") + "repeats: 0"))


def test_the_digest_follows_the_scenario(tmp_path):
    a = grids.load_sweep(write(tmp_path / "a.yaml", BASE.replace("BW", "[1, 2]")))
    b = grids.load_sweep(write(tmp_path / "b.yaml", BASE.replace("BW", "[1, 2]")))
    assert [c.digest() for c in a.cells] == [c.digest() for c in b.cells]
    assert a.cells[0].digest() != a.cells[1].digest()
    assert a.with_samples(9).cells[0].digest() != a.cells[0].digest()


class FakeRunner:
    """Stands in for runner.run in the unit test of the sweep's bookkeeping."""

    def __init__(self, fail_on=None, interrupt_on=None):
        self.calls, self.fail_on, self.interrupt_on = [], fail_on, interrupt_on

    def run(self, scenario, out_dir, progress=True, bar=None, **_):
        bw = scenario.network.uplink.bandwidth_mbps
        self.calls.append(bw)
        if bw == self.interrupt_on:
            out_dir.mkdir(parents=True)
            (out_dir / "partial").write_text("x")
            raise KeyboardInterrupt
        if bw == self.fail_on:  # as the runner ends a run that lost its edge: partial
            out_dir.mkdir(parents=True)
            return type("R", (), {"gate_failures": [], "partial": "the edge agent exited (1)"})()
        out_dir.mkdir(parents=True)
        rows = [{"offloader": "raw", "n": 4, "p50_ms": 100 / bw, "accuracy_drop_pp": 0}]
        from testbed.results.records import SUMMARY_COLUMNS, write_csv

        write_csv(out_dir / "summary.csv", rows, SUMMARY_COLUMNS)
        bar.update(scenario.samples * len(scenario.offloaders))
        gates = ["raw.p50_ms < 60  (raw.p50_ms = 100)"] if bw == 1 else []
        return type("R", (), {"gate_failures": gates, "partial": ""})()


def test_a_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    from testbed.experiment import runner

    sweep = grids.load_sweep(write(tmp_path / "s.yaml", BASE.replace("BW", "[1, 2, 4, 8]")))
    out = tmp_path / "out"
    fake = FakeRunner(interrupt_on=4)
    monkeypatch.setattr(runner, "run", fake.run)
    with pytest.raises(KeyboardInterrupt):
        sweeps.run_sweep(sweep, out, progress=False)
    state = json.loads((out / "sweep.json").read_text())
    assert [c["status"] for c in state["cells"]] == ["done", "done", "interrupted", "pending"]

    fake = FakeRunner(fail_on=8)
    monkeypatch.setattr(runner, "run", fake.run)
    result = sweeps.run_sweep(sweep, out, progress=False)
    assert fake.calls == [4, 8]  # the two finished cells are skipped
    assert result.skipped == 2
    assert not (out / "cells" / sweep.cells[2].dirname / "partial").exists()  # started afresh
    assert len(result.failed_cells) == 1 and "edge agent exited" in result.failed_cells[0]
    assert result.gate_failures == [
        f"[{sweep.cells[0].dirname}] raw.p50_ms < 60  (raw.p50_ms = 100)"
    ]
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["network.uplink.bandwidth_mbps"] for r in rows] == ["1", "2", "4"]
    assert [float(r["p50_ms"]) for r in rows] == [100, 50, 25]

    fake = FakeRunner()
    monkeypatch.setattr(runner, "run", fake.run)
    sweeps.run_sweep(sweep, out, progress=False)
    assert fake.calls == [8]  # only the failed cell again

    edited = grids.load_sweep(
        write(
            tmp_path / "s.yaml",
            BASE.replace("BW", "[1, 2, 4, 8]").replace("samples: 4", "samples: 5"),
        )
    )
    fake = FakeRunner()
    monkeypatch.setattr(runner, "run", fake.run)
    sweeps.run_sweep(edited, out, progress=False)
    assert fake.calls == [1, 2, 4, 8]  # a changed scenario is not mistaken for a finished one


# ------------------------------------------------------------------ real Mininet


def run_cli(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "run_scenario.py", *map(str, args), "--no-progress", "--skip-fidelity"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_two_devices_share_the_bottleneck(tmp_path):
    """The uplink's serialization is shared: two devices sending 800-byte inputs at the
    same time over 0.1 Mbit/s each wait about twice as long as one alone."""
    scenario = write_scenario(
        tmp_path / "shared.yaml",
        samples=8,
        devices=[1, 2],
        network={"uplink": {"bandwidth_mbps": 0.1, "delay_ms": 5}},
        offloaders=["raw"],
        expect=["raw.failed == 0"],
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((out / "sweep.json").read_text())
    assert [c["values"]["devices"] for c in state["cells"]] == [1, 2]
    one, two = (out / c["dir"] for c in state["cells"])
    rows_one, rows_two = read_csv(one / "requests.csv"), read_csv(two / "requests.csv")
    assert len(rows_one) == 8 and len(rows_two) == 16  # every device ran every sample
    assert (two / "records-d1.jsonl").exists()

    def median_uplink(rows):
        values = sorted(float(r["uplink_ms"]) for r in rows)
        return values[len(values) // 2]

    alone, shared = median_uplink(rows_one), median_uplink(rows_two)
    frame_ms = 8 * int(rows_one[0]["bytes_up"]) / 0.1 / 1000 / 0.956  # HTB's goodput share
    assert alone == pytest.approx(frame_ms + 5, rel=0.25)
    assert 1.6 < shared / alone < 2.4, (alone, shared)
    prefix = json.loads((two / "environment.json").read_text())["run_prefix"]
    assert leftovers(prefix) == []


@needs_mininet
@pytest.mark.mininet
@pytest.mark.slow
def test_a_real_sweep_runs_each_cell_once_and_reports(tmp_path):
    scenario = write_scenario(
        tmp_path / "bw.yaml",
        samples=4,
        network={"uplink": {"bandwidth_mbps": [0.5, 4], "delay_ms": 5}},
        expect=["raw.p50_ms < 22"],  # holds at 4 Mbit/s only (16 ms here; 28 ms at 0.5)
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "[c000-bandwidth_mbps0.5-r0] raw.p50_ms < 22  (raw.p50_ms = " in proc.stderr
    assert "c001" not in proc.stderr  # the 4 Mbit/s cell's gate held
    rows = read_csv(out / "summary.csv")
    raw = {
        r["network.uplink.bandwidth_mbps"]: float(r["p50_ms"])
        for r in rows
        if r["offloader"] == "raw"
    }
    assert raw["0.5"] > raw["4"] + 8  # 800 bytes: 13.4 ms against 1.7 ms of serialization
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/requests.csv")}
    again = run_cli(scenario, "--out", out)
    assert again.returncode == 4 and "2 of 2 cells already done" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/requests.csv")} == stamps
    resolved = yaml.safe_load(
        (out / "cells" / "c001-bandwidth_mbps4-r0" / "resolved_scenario.yaml").read_text()
    )
    assert resolved["network"]["uplink"]["bandwidth_mbps"] == 4


def test_a_file_of_several_documents_is_several_sweeps(tmp_path):
    one = BASE.replace("BW", "[1, 2]")
    two = BASE.replace("BW", "3").replace("name: grid", "name: other")
    found = grids.load_sweeps(write(tmp_path / "s.yaml", one + "---\n" + two))
    assert [s.name for s in found] == ["grid", "other"]
    assert [len(s.cells) for s in found] == [2, 1]
    with pytest.raises(ScenarioError, match="document 2: name 'grid' is taken"):
        grids.load_sweeps(write(tmp_path / "d.yaml", one + "---\n" + one))
    bad = two.replace("samples: 4", "samples: -4")
    with pytest.raises(ScenarioError, match=r"document 2: .*s.yaml:15: samples: got -4"):
        grids.load_sweeps(write(tmp_path / "s.yaml", one + "---\n" + bad))
    with pytest.raises(ScenarioError, match="2 YAML documents"):
        grids.load_sweep(tmp_path / "s.yaml")  # one scenario expected
