#!/usr/bin/env python3
"""The GPU edge check (docs/edge.md): on a machine with an NVIDIA GPU, MobileNetV2's
`deepcod`, `raw` and `jpeg` in loopback mode (no Mininet, no root, NO link shaping), with
the edge halves on the CPU and then on the GPU, and the edge's own phases compared.

    .venv/bin/python scripts/gpu_edge_check.py [--samples 100] [--out docs/results/gpu_edge]

Writes OUT/gpu_edge.yaml (the sweep it ran: `edge.device` over cpu and cuda), OUT/run/
(the sweep's folders, report.md among them) and OUT/README.md: per offloader and edge
device the medians of `decode_ms` (the edge's decoding: entropy decoding and DeepCOD's
decoder, JPEG decoding, nothing for raw) and `edge_ms` (the model), with the GPU, driver
and CUDA versions that environment.json recorded. The link is not emulated, so only the
edge's phases are figures to read; the end-to-end latencies are this machine's loopback.

Exit status: 0 done; 3 no usable CUDA device (the reason said, nothing started); else the
run's own (run_scenario.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OFFLOADERS = ["deepcod", "raw", "jpeg"]
PHASES = ("decode_ms", "edge_ms", "total_ms")


def scenario(samples: int, devices: list[str]) -> str:
    cpu = min(4, os.cpu_count() or 1)  # the edge's torch threads (no quota in loopback)
    return f"""\
# written by scripts/gpu_edge_check.py: the edge's halves on the CPU, then on the GPU
name: gpu_edge
seed: 1
model: mobilenet_v2
samples: {samples}
device: {{cpu: 1.0}}
edge: {{cpu: {cpu}, device: [{", ".join(devices)}]}}
network:
  uplink: {{bandwidth_mbps: 100, delay_ms: 1}}  # NOT applied: --loopback shapes nothing
offloaders: [{", ".join(OFFLOADERS)}]
expect:
  - deepcod.failed == 0 and raw.failed == 0 and jpeg.failed == 0
"""


def median(rows: list[dict], column: str) -> float | None:
    values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
    return statistics.median(values) if values else None


def cells(run: Path) -> list[Path]:
    """The sweep's run folders (each with environment.json), in order."""
    return sorted(p.parent for p in run.rglob("environment.json"))


def table(run: Path) -> list[str]:
    lines = [
        "| offloader | edge device | n | p50 decode ms | p50 edge (model) ms | p50 total ms |",
        "|---|---|---|---|---|---|",
    ]
    gpu: dict = {}
    for folder in cells(run):
        env = json.loads((folder / "environment.json").read_text())
        device = env.get("edge_device") or {}
        if device.get("device") == "cuda":
            gpu = device
        with (folder / "requests.csv").open() as handle:
            rows = [r for r in csv.DictReader(handle) if r["status"] == "ok"]
        for name in OFFLOADERS:
            mine = [r for r in rows if r["offloader"] == name]
            figures = [median(mine, c) for c in PHASES]
            text = " | ".join("-" if f is None else f"{f:.2f}" for f in figures)
            lines.append(f"| {name} | {device.get('device', '?')} | {len(mine)} | {text} |")
    if gpu:
        lines += [
            "",
            f"GPU: {gpu.get('gpu')} ({gpu.get('memory_mib')} MiB), driver {gpu.get('driver')}, "
            f"CUDA {gpu.get('torch_cuda')} (torch), cuDNN {gpu.get('cudnn')}.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "gpu_edge")
    parser.add_argument(
        "--devices",
        default="cpu,cuda",
        help="the edge devices compared (cpu alone: the script's own check, without a GPU)",
    )
    args = parser.parse_args(argv)
    devices = args.devices.split(",")
    if not devices or not set(devices) <= {"cpu", "cuda"}:
        parser.error(f"--devices: got {args.devices!r}; allowed: cpu, cuda or both")
    from testbed.errors import TestbedError
    from testbed.offloaders.base import resolve_edge_device

    try:
        if "cuda" in devices:
            resolve_edge_device("cuda")
    except TestbedError as exc:
        print(f"gpu_edge_check: {exc}", file=sys.stderr)
        return exc.exit_status
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_edge.yaml"
    path.write_text(scenario(args.samples, devices))
    run = out / "run"
    command = [sys.executable, "run_scenario.py", str(path), "--loopback", "--out", str(run)]
    status = subprocess.run([*command, "--no-progress"], cwd=ROOT).returncode
    if not cells(run):
        return status or 1
    lines = [
        "# The edge on the GPU: MobileNetV2, deepcod / raw / jpeg",
        "",
        f"Made by `scripts/gpu_edge_check.py --samples {args.samples}` in loopback mode: "
        "the agents on 127.0.0.1, **no link emulation**, so only the edge's phases "
        "(decode, model) are figures; totals are this machine's loopback. Medians of the "
        "requests that succeeded; the sweep's report: `run/report.md`.",
        "",
        *table(run),
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
