"""The command line's contract: listings, exit statuses, no tracebacks for user mistakes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.mininet_utils import ROOT, write_scenario


def cli(*args, user=None, timeout=300):
    command = [sys.executable, "run_scenario.py", *map(str, args), "--no-progress"]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_list_offloaders_and_plugins():
    proc = cli("--list-offloaders", "--list-plugins")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("local ") for line in lines)
    assert any(line.startswith("raw ") for line in lines)
    assert any(line.startswith("fashion_cnn ") and "1x28x28 uint8" in line for line in lines)


def test_no_arguments_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "run_scenario.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "scenario file is required" in proc.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"network": {"trace": {"uplink": "bad.up", "downlink": "bad.up"}, "uplink": {}}},
            "bad.up: line 2",
        ),
        ({"expect": ["raw.p50_ms <"]}, "expect[0]"),
        ({"expect": ["jpeg.p50_ms < 1"]}, "'jpeg' is not in `offloaders`"),
        ({"samples": 10001}, "has 10000 test samples"),
    ],
)
def test_refused_before_anything_starts(tmp_path, overrides, message):
    (tmp_path / "bad.up").write_text("1\nten\n")
    scenario = write_scenario(tmp_path / "s.yaml", **overrides)
    proc = cli(scenario, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()


def test_samples_override_must_be_positive(tmp_path):
    proc = cli(write_scenario(tmp_path / "s.yaml"), "--samples", "0")
    assert proc.returncode == 2 and "--samples" in proc.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_not_root_exits_3_with_the_fix():
    closed = [p for p in (ROOT, *ROOT.parents) if not p.stat().st_mode & 0o001]
    if closed:  # e.g. a clone inside `mktemp -d` (0700): user nobody cannot reach the code
        pytest.skip(f"{closed[0]} is closed to other users; the non-root run cannot start")
    folder = Path(tempfile.mkdtemp(prefix="deepcod-nonroot-"))  # pytest's tmp is root-only
    try:
        folder.chmod(0o777)
        scenario = write_scenario(folder / "s.yaml")
        proc = cli(scenario, "--out", folder / "out", user=65534)
        assert proc.returncode == 3, proc.stderr
        assert "root" in proc.stderr and "Traceback" not in proc.stderr
        assert not (folder / "out").exists()
    finally:
        shutil.rmtree(folder)


def test_offloader_without_its_networks_is_refused_before_anything_starts(tmp_path):
    scenario = write_scenario(tmp_path / "s.yaml", offloaders=[{"name": "deepcod", "ratio": 0.37}])
    proc = cli(scenario, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert (
        "python -m testbed.offloaders.deepcod.train --plugin fashion_cnn --ratio 0.37"
        in proc.stderr
    )
    assert not (tmp_path / "out").exists()
