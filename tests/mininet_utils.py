"""Helpers for the tests that build real Mininet topologies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.emulation.stale import run_processes

ROOT = Path(__file__).resolve().parent.parent

needs_mininet = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mnexec") is None,
    reason="needs root and Mininet (bash scripts/setup.sh)",
)


def leftovers(prefix: str) -> list[str]:
    """Everything a run with this prefix could have left on the machine."""
    found = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [
        f"interface {line.split(':')[1].strip()}" for line in links.splitlines() if prefix in line
    ]
    for controller in ("cpu", "cpuacct", "cpuset"):
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup", controller).glob(f"{prefix}*")]
    for pid in run_processes(prefix):  # every process the run started carries its prefix
        try:
            found.append(f"process {pid} {Path(f'/proc/{pid}/cmdline').read_text()[:80]!r}")
        except OSError:
            continue
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [
        f"process {line.strip()}" for line in procs.splitlines() if f"mininet:{prefix}" in line
    ]
    return found


def write_scenario(path: Path, **overrides) -> Path:
    import yaml

    scenario = {
        "name": path.stem,
        "seed": 5,
        "model": "fashion_cnn",
        "samples": 20,
        "device": {"cpu": 1.0},
        "edge": {"cpu": 1.0},
        "network": {
            "uplink": {"bandwidth_mbps": 1, "delay_ms": 10},
            "downlink": {"bandwidth_mbps": 1, "delay_ms": 10},
        },
        "offloaders": ["local", "raw"],
    }
    scenario.update(overrides)
    path.write_text(yaml.safe_dump(scenario))
    return path
