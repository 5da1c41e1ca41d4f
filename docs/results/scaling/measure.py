"""The same sweep on 1 and 2 emulation slots of a Ray cluster started on this machine
(`--ray local:N`), alternated, timed; writes table.md and scaling.png here.

    flock /tmp/mininet.lock .venv/bin/python docs/results/scaling/measure.py [ROUNDS]

Two slots on ONE machine run two emulations on one kernel and its cores: the figure says
how much a second slot gains there (and what it costs the measurements), not what a
second machine gains (that is the arithmetic in docs/scenarios.md).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SWEEP = {
    "name": "scaling",
    "seed": 3,
    "model": "fashion_cnn",
    "samples": 40,
    "device": {"cpu": 1.0},
    "edge": {"cpu": 1.0},
    "network": {
        "uplink": {"bandwidth_mbps": [1, 2, 4, 8], "delay_ms": 10},
        "downlink": {"bandwidth_mbps": 1, "delay_ms": 10},
    },
    "offloaders": ["local", "raw"],
}


def run(slots: int, work: Path, scenario: Path) -> dict:
    out = work / f"out-{slots}-{time.monotonic_ns()}"
    command = [sys.executable, str(ROOT / "run_scenario.py"), str(scenario), "--out", str(out)]
    command += ["--skip-fidelity", "--no-progress", "--ray", f"local:{slots}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"slots {slots}: exit {done.returncode}: {done.stderr[-2000:]}")
    cells = [float(s) for s in re.findall(r"done on \S+ in (\d+) s", done.stderr)]
    raw = []
    with (out / "summary.csv").open(newline="") as handle:
        raw = [float(r["p50_ms"]) for r in csv.DictReader(handle) if r["offloader"] == "raw"]
    return {"slots": slots, "wall": wall, "cell_s": sum(cells) / len(cells), "raw_p50": raw}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenario = work / "scaling.yaml"
        scenario.write_text(yaml.safe_dump(SWEEP))
        runs = [run(slots, work, scenario) for _ in range(rounds) for slots in (1, 2)]
    by = {s: [r for r in runs if r["slots"] == s] for s in (1, 2)}
    lines = [
        f"4 cells (fashion_cnn, local + raw, 40 samples, uplink 1/2/4/8 Mbit/s), `--ray "
        f"local:N` on this machine ({rounds} rounds, 1 and 2 slots alternated)",
        "",
        "| slots | sweep wall s | mean cell s | raw p50 ms per cell (1, 2, 4, 8 Mbit/s) |",
        "|---|---|---|---|",
    ]
    for r in runs:
        p50 = ", ".join(f"{v:.1f}" for v in r["raw_p50"])
        lines.append(f"| {r['slots']} | {r['wall']:.1f} | {r['cell_s']:.1f} | {p50} |")
    mean = {s: sum(r["wall"] for r in rs) / len(rs) for s, rs in by.items()}
    lines += ["", f"speed-up of 2 slots over 1: {mean[1] / mean[2]:.2f}x (mean sweep wall time)"]
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
    for s, rs in by.items():
        ax.scatter([s] * len(rs), [r["wall"] for r in rs], color="C0")
    ax.plot([1, 2], [mean[1], mean[2]], color="C0", label="measured (mean)")
    ax.plot([1, 2], [mean[1], mean[1] / 2], "--", color="C1", label="ideal: N machines")
    ax.set_xticks([1, 2])
    ax.set_xlabel("emulation slots on one 2-core machine")
    ax.set_ylabel("sweep wall time (s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "scaling.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
