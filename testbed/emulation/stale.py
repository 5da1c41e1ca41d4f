"""Leftovers of runs that were killed outright (SIGKILL, a crash, a power cut of the
Python process): found by the state file each run writes, removed by prefix.

Each run writes /run/deepcod-testbed/PREFIX.json with its pid and that process's start
time; a file whose process is gone marks a stale run. Only names with that prefix and
processes inside that run's namespaces are touched: never other users' runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STATE_DIR = Path("/run/deepcod-testbed")
RUN_ENV = "DEEPCOD_TESTBED_RUN"  # set to the prefix in every process a run starts


def run_processes(prefix: str) -> list[int]:
    """Pids of the processes a run started (their environment carries its prefix)."""
    marker = f"{RUN_ENV}={prefix}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (
                marker in (proc / "environ").read_bytes().split(b"\0")
                and int(proc.name) != os.getpid()
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register(prefix: str, host_pids: Sequence[int] = ()) -> Path:
    """Write (or rewrite, once the hosts exist) the run's state file."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / f"{prefix}.json"
    namespaces = []
    for pid in host_pids:
        with contextlib.suppress(OSError):
            namespaces.append(os.readlink(f"/proc/{pid}/ns/net"))
    state = {"pid": os.getpid(), "start": _start_time(os.getpid()), "namespaces": namespaces}
    path.write_text(json.dumps(state))
    return path


def unregister(path: Path) -> None:
    """Remove the run's state file, and the folder once no run is left in it."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        STATE_DIR.rmdir()


def stale_prefixes() -> list[str]:
    found: list[str] = []
    if not STATE_DIR.is_dir():
        return found
    for path in sorted(STATE_DIR.glob("dc*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _start_time(int(state["pid"])) != state.get("start"):
            found.append(path.stem)
    return found


def _namespaces_of(prefix: str) -> set[str]:
    try:
        return set(json.loads((STATE_DIR / f"{prefix}.json").read_text())["namespaces"])
    except (OSError, KeyError, json.JSONDecodeError):
        return set()


OURS = (b"testbed.", b"mininet:", b"iperf3", b"mnexec")  # what a run starts in its hosts


def clean(prefix: str) -> list[str]:
    """Remove one stale run's processes, interfaces, cgroups and state file."""
    removed = []
    namespaces = _namespaces_of(prefix)
    victims = set(run_processes(prefix))
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            mine = os.readlink(proc / "ns" / "net") in namespaces
            if mine and any(tag in (proc / "cmdline").read_bytes() for tag in OURS):
                victims.add(int(proc.name))
        except (OSError, ValueError):
            continue
    for pid in sorted(victims):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid}")
    time.sleep(0.2)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            removed.append(f"interface {name}")
    for controller in ("cpu", "cpuacct", "cpuset"):
        for path in Path("/sys/fs/cgroup", controller).glob(f"{prefix}*"):
            try:
                path.rmdir()
                removed.append(f"cgroup {path}")
            except OSError:
                pass
    unregister(STATE_DIR / f"{prefix}.json")
    return removed


def clean_all() -> dict[str, list[str]]:
    return {prefix: clean(prefix) for prefix in stale_prefixes()}
