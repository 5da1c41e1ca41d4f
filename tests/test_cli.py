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


def cli(*args, user=None, timeout=300, cwd=ROOT):
    command = [sys.executable, "run_scenario.py", *map(str, args), "--no-progress"]
    if user:
        command = as_user(user, command)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def as_user(user: int, command: list) -> list:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]


def readable_copy(folder: Path) -> Path:
    """What a run needs up to its check for root, copied into `folder` open to every
    user: the command, the packages, the plugins' code (not their weights). The
    checkout itself may sit in a folder other users cannot enter (a clone under
    `mktemp -d`, mode 700)."""
    code = folder / "code"
    code.mkdir()
    shutil.copy2(ROOT / "run_scenario.py", code / "run_scenario.py")
    no_cache = shutil.ignore_patterns("__pycache__")
    for package in ("testbed", "kernels"):
        shutil.copytree(ROOT / package, code / package, ignore=no_cache)
    code_only = shutil.ignore_patterns("__pycache__", "*.pt", "*.npz", "*.png", "*.gz", "data")
    shutil.copytree(ROOT / "plugins", code / "plugins", ignore=code_only)
    for path in [code, *code.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)  # numba may write its cache beside
    return code


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
    folder = Path(tempfile.mkdtemp(prefix="deepcod-nonroot-"))  # pytest's tmp is root-only
    try:
        folder.chmod(0o777)
        code = readable_copy(folder)
        probe = subprocess.run(
            as_user(65534, [sys.executable, "-c", "import numpy, yaml"]),
            cwd=code,
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:  # the interpreter itself sits where nobody can reach
            pytest.skip(f"user nobody cannot run {sys.executable}: {probe.stderr.strip()[-200:]}")
        scenario = write_scenario(folder / "s.yaml")
        proc = cli(scenario, "--out", folder / "out", user=65534, cwd=code)
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


DOWN = {"bandwidth_mbps": 1, "delay_ms": 10}


def test_check_prints_every_cell_of_a_sweep_and_starts_nothing(tmp_path):
    network = {"uplink": {"bandwidth_mbps": [1, 4], "delay_ms": 10}, "downlink": DOWN}
    scenario = write_scenario(tmp_path / "s.yaml", network=network, repeats=2)
    proc = cli("--check", scenario)
    assert proc.returncode == 0, proc.stderr
    assert "s: 4 runs" in proc.stdout
    for rate in (1, 4):
        for repeat in (0, 1):
            assert f"bandwidth_mbps={rate} repeat {repeat}: model fashion_cnn, 20 samples" in (
                proc.stdout
            )
    assert "up 4 Mbit/s, 10 ms" in proc.stdout and "rough estimate" in proc.stdout
    assert not (ROOT / "results" / "s").exists() and not list(tmp_path.glob("s-*"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"expect": ["jpeg.p50_ms < 1"]}, "'jpeg' is not in `offloaders`"),
        ({"samples": 10001}, "has 10000 test samples"),
        ({"offlaoders": ["raw"]}, "s.yaml:"),
        (
            {
                "network": {"uplink": {"bandwidth_mbps": [1, 2]}, "downlink": DOWN},
                "offloaders": ["raw", {"name": "deepcod", "ratio": 0.37}],
            },
            "s.yaml: cell bandwidth_mbps=1 repeat 0: deepcod: no trained networks",
        ),
    ],
)
def test_check_refuses_what_a_run_refuses(tmp_path, overrides, message):
    proc = cli("--check", write_scenario(tmp_path / "s.yaml", **overrides))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_check_estimate_grows_with_samples_and_shrinks_with_bandwidth():
    from testbed.config.sweep import load_sweep
    from testbed.experiment.dry_run import estimate_s

    with tempfile.TemporaryDirectory() as folder:
        network = {"uplink": {"bandwidth_mbps": [1, 10], "delay_ms": 10}, "downlink": DOWN}
        cells = load_sweep(write_scenario(Path(folder) / "s.yaml", network=network)).cells
        slow, fast = (estimate_s(c, 784) for c in cells)
        assert slow > fast > estimate_s(cells[1], 0)
        more = load_sweep(write_scenario(Path(folder) / "m.yaml", samples=200)).cells[0]
        assert estimate_s(more, 784) > estimate_s(cells[0], 784)


def test_clean_cache_removes_only_what_uninstalled_plugins_left(tmp_path):
    cache = tmp_path / "cache"
    for folder in ("fashion_cnn", "gone_plugin", "calibration"):
        (cache / folder).mkdir(parents=True)
    kept = cache / "calibration" / "fashion_cnn-jpeg-0123456789abcdef.json"
    gone = cache / "calibration" / "gone_plugin-jalad-0123456789abcdef.json"
    for path in (kept, gone, cache / "gone_plugin" / "test.npz"):
        path.write_text("{}")
    env = {**os.environ, "DEEPCOD_TESTBED_CACHE": str(cache)}
    command = [sys.executable, "run_scenario.py", "--clean-cache"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"removed {cache / 'gone_plugin'}" in proc.stdout and "removed 2 entries" in proc.stdout
    assert not (cache / "gone_plugin").exists() and not gone.exists()
    assert kept.exists() and (cache / "fashion_cnn").is_dir()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_check_needs_no_root():
    if any(not p.stat().st_mode & 0o001 for p in (ROOT, *ROOT.parents)):
        pytest.skip("the code is closed to other users; a non-root command cannot start")
    folder = Path(tempfile.mkdtemp(prefix="deepcod-nonroot-"))
    try:
        folder.chmod(0o777)
        proc = cli("--check", write_scenario(folder / "s.yaml"), user=65534)
        assert proc.returncode == 0, proc.stderr
        assert "model fashion_cnn, 20 samples x 2 offloaders (local, raw)" in proc.stdout
    finally:
        shutil.rmtree(folder)
