"""Copy Mahimahi's cellular traces into scenarios/traces/cellular/, gzip-compressed.

    .venv/bin/python scripts/import_cellular_traces.py SOURCE [--out DIR]

SOURCE holds the `.up` and `.down` files that ship with Mahimahi (its `traces/`
folder, with their SOURCE-README.txt: Winstein et al., NSDI 2013). Each is checked with the testbed's own parser, then written byte for byte as
`<name>.gz` with a fixed header (no file name, mtime 0), so importing again gives
identical files, and SOURCE's SOURCE-README.txt is copied as it is; `load_trace` reads `.gz` transparently. The table printed at the end
is the one in scenarios/traces/cellular/README.md. The testbed never reads SOURCE at
run time: only the committed copies.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.emulation.link.trace import load_trace  # noqa: E402
from testbed.errors import TestbedError  # noqa: E402

DEFAULT_OUT = ROOT / "scenarios" / "traces" / "cellular"
SOURCE_NOTE = "SOURCE-README.txt"


def compress(data: bytes) -> bytes:
    """Deterministic gzip: level 9, mtime 0 and no file name in the header."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def import_traces(source: Path, out: Path) -> list[tuple[str, float, float]]:
    """Write every trace of `source` to `out`; (name, period s, mean Mbit/s) of each."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".up", ".down"))
    if not files:
        raise SystemExit(f"{source}: no .up or .down traces")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in files:
        trace = load_trace(path)  # refuses a malformed file before anything is written
        target = out / (path.name + ".gz")
        target.write_bytes(compress(path.read_bytes()))
        copy = load_trace(target)
        assert copy.opportunities.tolist() == trace.opportunities.tolist(), target
        rows.append((path.name, trace.period_ms / 1000, trace.mean_rate_mbps()))
    note = source / SOURCE_NOTE
    if note.is_file():  # the traces' own README, verbatim: their source and citation
        (out / SOURCE_NOTE).write_bytes(note.read_bytes())
    return rows


def table(rows: list[tuple[str, float, float]]) -> str:
    """Markdown rows per trace name: uplink and downlink mean rate, and duration."""
    names = sorted({name.rsplit(".", 1)[0] for name, _, _ in rows})
    found = {name: (period, mbps) for name, period, mbps in rows}
    lines = [
        "| trace | uplink mean | downlink mean | duration (up / down) |",
        "|---|---|---|---|",
    ]
    for name in names:
        up, down = found.get(f"{name}.up"), found.get(f"{name}.down")
        cells = [f"{v[1]:.3f} Mbit/s" if v else "-" for v in (up, down)]
        periods = " / ".join(f"{v[0]:.1f} s" if v else "-" for v in (up, down))
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} | {periods} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a folder of Mahimahi's cellular traces")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source}: no such folder of traces", file=sys.stderr)
        return 2
    try:
        rows = import_traces(args.source, args.out)
    except TestbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
