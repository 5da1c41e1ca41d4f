"""The adaptive offloaders through the real agents on an emulated link: the device's
bandwidth estimate against the configured rate, and the splits chosen from it."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.helpers import MAIN_JOB_OFFLOADERS
from tests.mininet_utils import ROOT, needs_mininet, write_scenario
from tests.test_e2e_mininet import read_csv, run_cli

pytestmark = [needs_mininet, pytest.mark.mininet]


def test_estimate_and_choices_follow_the_link(tmp_path):
    """speech_kws sends 32 KB of raw audio: at 2 Mbit/s about 130 ms on the wire, plenty
    for the estimate; raw runs first, so the adaptive offloaders start informed."""
    scenario = write_scenario(
        tmp_path / "adaptive.yaml",
        model="speech_kws",
        samples=12,
        device={"cpu": 0.5},
        network={
            "uplink": {"bandwidth_mbps": 2, "delay_ms": 10},
            "downlink": {"bandwidth_mbps": 2, "delay_ms": 10},
        },
        offloaders=["raw", "local", "neurosurgeon", "jalad"],
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out, "--skip-fidelity")
    assert proc.returncode == 0, proc.stderr
    requests = read_csv(out / "requests.csv")
    rows = {r["offloader"]: r for r in read_csv(out / "summary.csv")}
    assert all(rows[name]["failed"] == "0" for name in rows), rows
    # goodput of the frames: 2 Mbit/s less the TCP/IP/Ethernet headers (1448 of 1514)
    estimates = [float(r["est_uplink_mbps"]) for r in requests if r["offloader"] == "local"]
    assert estimates and all(e == pytest.approx(2 * 0.956, rel=0.12) for e in estimates), estimates

    neuro = [r for r in requests if r["offloader"] == "neurosurgeon"]
    choices = [json.loads(r["choice"]) for r in neuro]
    assert all(c["est_mbps"] == pytest.approx(2 * 0.956, rel=0.12) for c in choices), choices
    # what it chose was no slower than the better of its two extremes, measured
    best_fixed = min(float(rows["raw"]["p50_ms"]), float(rows["local"]["p50_ms"]))
    # (+10 ms: at half a core, CFS's 4 ms tick makes medians of a few ms lumpy)
    assert float(rows["neurosurgeon"]["p50_ms"]) < 1.25 * best_fixed + 10, rows
    assert float(rows["neurosurgeon"]["accuracy_drop_pp"]) == 0  # float32: nothing lost

    jalad = [json.loads(r["choice"]) for r in requests if r["offloader"] == "jalad"]
    assert all(1 <= c["bits"] <= 8 and c["split"] in (1, 2, 3, 4) for c in jalad), jalad
    jalad_bytes = statistics.median(
        int(r["bytes_up"]) for r in requests if r["offloader"] == "jalad"
    )
    assert jalad_bytes < float(rows["raw"]["mean_bytes_up"]) / 4
    agree = [int(r["agrees"]) for r in requests if r["offloader"] == "jalad"]
    assert sum(agree) >= len(agree) - 2, agree  # a 1-point bound on calibration data
    env = json.loads((out / "environment.json").read_text())
    assert len(env["offloaders"][2]["edge_stage_ms"]) == 5


def test_fashion_lowbw_holds_its_gates(tmp_path):
    """lowbw's quick version, as shipped, with fewer samples: every offloader through
    the agents, and the scenario's own `expect:` gates (exit 4 if one fails)."""
    out = tmp_path / "out"
    proc = run_cli(ROOT / "scenarios" / "fashion_lowbw.yaml", "--out", out, "--samples", "40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["offloader"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == list(MAIN_JOB_OFFLOADERS)
    assert all(r["n"] == "40" for r in rows.values())


def test_adaptive_deepcod_through_the_agents(tmp_path):
    """Adaptive DeepCOD over fashion_cnn's three shipped ratios: the whole model on a
    full core takes about a millisecond, far below the 20 ms round trip, so every
    decision is local and every third request a probe that offloads the fastest ratio;
    the edge decodes each probe's ratio from its first byte."""
    scenario = write_scenario(
        tmp_path / "adaptive_deepcod.yaml",
        samples=12,
        offloaders=[
            {
                "name": "deepcod",
                "ratios": [0.1, 0.25, 1],
                "max_drop_pp": 100,
                "calibration_samples": 20,
                "probe_every": 2,
            }
        ],
    )
    out = tmp_path / "out"
    proc = run_cli(scenario, "--out", out, "--skip-fidelity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_csv(out / "requests.csv") if r["offloader"] == "deepcod"]
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows), rows
    choices = [json.loads(r["choice"]) for r in rows]
    kinds = ["probe" if c.get("probe") else c.get("mode") for c in choices]
    assert kinds.count("probe") >= 3 and kinds.count("local") >= 6, kinds
    for row, choice in zip(rows, choices, strict=True):
        if choice.get("probe"):
            assert choice["ratio"] in (0.1, 0.25, 1.0) and int(row["bytes_up"]) > 16
            assert float(row["decode_ms"]) > 0
        else:
            assert choice["mode"] == "local" and int(row["bytes_up"]) == 0
    env = json.loads((out / "environment.json").read_text())
    edge = env["offloaders"][0]
    assert set(edge["edge_ms"]) == {"0.1", "0.25", "1"}
