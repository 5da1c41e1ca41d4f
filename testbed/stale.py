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
from pathlib import Path

STATE_DIR = Path("/run/deepcod-testbed")


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register(prefix: str, host_pids: list[int] = ()) -> Path:
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


def stale_prefixes() -> list[str]:
    found = []
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
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            mine = os.readlink(proc / "ns" / "net") in namespaces
            if mine and any(tag in (proc / "cmdline").read_bytes() for tag in OURS):
                os.kill(int(proc.name), signal.SIGKILL)
                removed.append(f"process {proc.name}")
        except (OSError, ValueError):
            continue
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
    (STATE_DIR / f"{prefix}.json").unlink(missing_ok=True)
    return removed


def clean_all() -> dict[str, list[str]]:
    return {prefix: clean(prefix) for prefix in stale_prefixes()}
