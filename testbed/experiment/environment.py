"""What a run needs to be reproduced: versions, kernel, link backend, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import testbed

PACKAGES = ("torch", "numpy", "numba", "mininet", "pyyaml", "scapy", "netfilterqueue")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def _git(*args: str) -> str:
    root = testbed.CHECKOUT
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def collect(extra: dict | None = None) -> dict:
    env = {
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "host": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "link_backend": "not started",
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": sys.argv,
    }
    env.update(extra or {})
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def edge_device(requested: str, resolved: str) -> dict:
    """environment.json's `edge_device`: the device asked for (`edge: {device:}`) and the
    one the edge ran on; on a GPU its name, memory, driver and CUDA versions (nvidia-smi
    where installed, torch's own figures otherwise), for figures to be read against."""
    import torch

    out: dict = {"requested": requested, "device": resolved, "torch_cuda": torch.version.cuda}
    if resolved != "cuda":
        return out
    out["cudnn"] = torch.backends.cudnn.version()
    smi = _nvidia_smi()
    if smi:
        out.update(smi)
    else:  # torch initialises CUDA in this process to answer
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            memory_mib=props.total_memory // 2**20,
            driver="unknown (no nvidia-smi)",
        )
    out["gpus_visible"] = torch.cuda.device_count()
    return out


def _nvidia_smi() -> dict:
    """The first GPU's name, memory and driver from nvidia-smi; {} without it."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
                # the GPU torch numbers 0: CUDA_VISIBLE_DEVICES's first, as nvidia-smi
                # itself ignores it
                "--id=" + (os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = [f.strip() for f in out.stdout.strip().split(",")]
    if out.returncode != 0 or len(fields) != 3:
        return {}
    name, memory, driver = fields
    return {
        "gpu": name,
        "memory_mib": int(memory) if memory.isdigit() else memory,
        "driver": driver,
    }
