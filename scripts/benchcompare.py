"""Compare pytest-benchmark results against committed ratios (CI benchmark regressions).

Shared, noisy machines make absolute times meaningless, so what is committed is the ratio
of two benchmarks timed in the same run (their medians, or best rounds with `stat: min`):
a kernel against a baseline library on the same data. Load on the machine slows both; a
change to the kernel moves the ratio. The pairs and their format: docs/kernels.md.

    python scripts/benchcompare.py CURRENT.json [MORE.json ...] BASELINE.json
    python scripts/benchcompare.py --update CURRENT.json [MORE.json ...] BASELINE.json
    python scripts/benchcompare.py --partial ...   # a subset ran: skip absent pairs

With several CURRENT files each run gives its own ratio and their median is used.
With --confirm N a regressed pair's two benchmarks are timed N more times (pytest, run
from the current directory) and it fails only if each of those runs regresses too.
Exit status: 0 no regression; 1 a pair regressed beyond its tolerance; 2 a file is
missing or malformed, or (without --partial) a pair's benchmark is not in CURRENT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


class InputError(Exception):
    """A results or baseline file this tool cannot use (exit status 2)."""


DEFAULT_TOLERANCE = 0.20
WORSE = ("higher", "lower")
STATS = ("median", "min")
BENCH_FLAGS = "--benchmark-min-rounds=3 --benchmark-max-time=0.2"


@dataclass
class Pair:
    """numerator / denominator of one statistic of two benchmarks (the median unless the
    baseline says `min`); `worse` says which way is bad."""

    name: str
    numerator: str
    denominator: str
    ratio: float
    worse: str
    tolerance: float
    stat: str = "median"

    def slowdown(self, current: float) -> float:
        """How much worse `current` is than committed (0.25 = the kernel's time relative
        to its baseline grew by 25%); negative when it improved."""
        if self.worse == "higher":
            return current / self.ratio - 1
        return self.ratio / current - 1


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: expected a JSON object")
    return data


def load_baseline(path: Path) -> tuple[dict, list[Pair]]:
    data = _load_json(path, "baseline")
    pairs = data.get("pairs")
    if not isinstance(pairs, dict) or not pairs:
        raise InputError(f"baseline {path}: needs a non-empty object 'pairs'")
    default_tol = data.get("tolerance", DEFAULT_TOLERANCE)
    default_stat = data.get("stat", "median")
    out = []
    for name, spec in pairs.items():
        where = f"baseline {path}: pair {name!r}"
        if not isinstance(spec, dict):
            raise InputError(f"{where}: expected an object")
        missing = [k for k in ("numerator", "denominator", "ratio", "worse") if k not in spec]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}")
        if spec["worse"] not in WORSE:
            raise InputError(f"{where}: 'worse' must be 'higher' or 'lower'")
        tol = spec.get("tolerance", default_tol)
        stat = spec.get("stat", default_stat)
        if stat not in STATS:
            raise InputError(f"{where}: 'stat' must be 'median' or 'min'")
        ratio = spec["ratio"]
        for key, value in (("ratio", ratio), ("tolerance", tol)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InputError(f"{where}: '{key}' must be a positive number")
        if not all(isinstance(spec[k], str) for k in ("numerator", "denominator")):
            raise InputError(f"{where}: numerator and denominator are benchmark names")
        num, den, worse = spec["numerator"], spec["denominator"], spec["worse"]
        out.append(Pair(name, num, den, float(ratio), worse, float(tol), stat))
    return data, out


class Results:
    """One pytest-benchmark JSON: stats by fullname; a pair may also use the short name."""

    def __init__(self, path: Path):
        data = _load_json(path, "benchmark results")
        benches = data.get("benchmarks")
        if not isinstance(benches, list):
            raise InputError(
                f"benchmark results {path}: no 'benchmarks' list "
                "(expected pytest's --benchmark-json output)"
            )
        self.path = path
        self.stats: dict[str, dict] = {}
        self.by_name: dict[str, list[str]] = {}
        for b in benches:
            try:
                full, stats = b["fullname"], b["stats"]
                float(stats["median"])
            except (KeyError, TypeError, ValueError):
                raise InputError(
                    f"benchmark results {path}: an entry lacks fullname or stats.median"
                ) from None
            self.stats[full] = stats
            self.by_name.setdefault(b.get("name", full), []).append(full)

    def fullname(self, bench: str) -> str | None:
        if bench in self.stats:
            return bench
        full = self.by_name.get(bench, [])
        if len(full) > 1:
            raise InputError(
                f"benchmark results {self.path}: {bench!r} is ambiguous "
                f"({', '.join(full)}); use the full name in the baseline"
            )
        return full[0] if full else None

    def get(self, bench: str, stat: str) -> float | None:
        full = self.fullname(bench)
        if full is None:
            return None
        try:
            return float(self.stats[full][stat])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"benchmark results {self.path}: {full} has no stats.{stat}") from None


def run_ratios(pair: Pair, runs: list[Results]) -> tuple[list[float], list[str]]:
    """numerator/denominator in each run, and the benchmarks absent from any run (mixing
    runs with and without a benchmark would hide that it stopped running)."""
    ratios, absent = [], []
    for res in runs:
        num, den = res.get(pair.numerator, pair.stat), res.get(pair.denominator, pair.stat)
        absent += [b for b, v in ((pair.numerator, num), (pair.denominator, den)) if v is None]
        if num is not None and den:
            ratios.append(num / den)
    if absent or not ratios:
        return [], sorted(set(absent)) or [pair.denominator]
    return ratios, []


def how_to_run(names: list[str]) -> str:
    ids = " ".join(f"'{n}'" for n in names)
    return (
        f"run them with: .venv/bin/python -m pytest -p no:cacheprovider {ids} "
        f"{BENCH_FLAGS} --benchmark-json=results/benchmarks.json"
    )


def rerun(benchmarks: list[str], times: int) -> list[Results]:
    """Time `benchmarks` again, `times` separate pytest runs from the current directory."""
    out = []
    with tempfile.TemporaryDirectory(prefix="benchcompare-") as tmp:
        for i in range(times):
            path = Path(tmp) / f"rerun{i}.json"
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *benchmarks]
            cmd += [*BENCH_FLAGS.split(), f"--benchmark-json={path}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or not path.is_file():
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
                print(f"rerun {i + 1} failed (exit {proc.returncode}):\n{tail}")
                continue
            out.append(Results(path))
    return out


def confirm(pairs: list[Pair], runs: list[Results], times: int) -> list[str]:
    """Rerun the benchmarks of regressed `pairs`; a regression stands only if every rerun
    shows it too. A neighbour that slows one benchmark of a pair for a second or two (2 of
    10 runs here) rarely does so twice more; a slower kernel is slower every time."""
    names = sorted({runs[0].fullname(b) for p in pairs for b in (p.numerator, p.denominator)})
    print(f"\nconfirming {len(pairs)} regression(s): rerunning {', '.join(names)} {times} time(s)")
    reruns = rerun(names, times)
    stands = []
    for p in pairs:
        ratios, _ = run_ratios(p, reruns) if reruns else ([], [])
        worse = [p.slowdown(r) for r in ratios]
        shown = ", ".join(f"{100 * w:+.1f}%" for w in worse) or "no rerun"
        if len(worse) == times and all(w > p.tolerance for w in worse):
            stands.append(p.name)
            print(f"{p.name}: REGRESSION confirmed (reruns worse by {shown})")
        elif len(worse) < times:
            stands.append(p.name)
            print(f"{p.name}: REGRESSION stands: a rerun did not produce it ({shown})")
        else:
            print(f"{p.name}: ok, not reproduced (reruns worse by {shown}): a noisy first run")
    return stands


def compare(pairs: list[Pair], runs, partial: bool, confirm_times: int = 0) -> int:
    width = max(len(p.name) for p in pairs)
    stats = " or ".join(sorted({p.stat for p in pairs}))
    print(
        f"benchmark ratios ({stats} of each benchmark, {len(runs)} run(s); "
        "'worse by': how much the kernel's time grew relative to its baseline's)"
    )
    print(f"{'pair':<{width}}  {'committed':>10}  {'current':>10}  {'worse by':>9}  verdict")
    compared, regressed, missing = 0, [], {}
    for p in pairs:
        ratios, absent = run_ratios(p, runs)
        if not ratios:
            missing[p.name] = absent
            verdict = "skipped" if partial else "MISSING"
            print(
                f"{p.name:<{width}}  {p.ratio:>10.4g}  {'-':>10}  {'-':>9}  {verdict} "
                f"(not in CURRENT: {', '.join(absent)})"
            )
            continue
        compared += 1
        cur = statistics.median(ratios)
        worse = p.slowdown(cur)
        bad = worse > p.tolerance
        if bad:
            regressed.append(p)
        verdict = f"REGRESSION (> {100 * p.tolerance:.0f}%)" if bad else "ok"
        print(
            f"{p.name:<{width}}  {p.ratio:>10.4g}  {cur:>10.4g}  {100 * worse:>+8.1f}%  {verdict}"
        )
    absent_names = sorted({b for names in missing.values() for b in names})
    if missing and not partial:
        print(
            f"\nerror: {len(missing)} pair(s) could not be compared: benchmarks "
            f"{', '.join(absent_names)} are not in the results (deselected, skipped or "
            f"failed?); {how_to_run(absent_names)}; or pass --partial to skip them"
        )
        return 2
    if missing:
        print(f"\n{len(missing)} pair(s) skipped: {how_to_run(absent_names)}")
    if compared == 0:
        print("no pair was compared: none of their benchmarks ran")
    if regressed and confirm_times > 0:
        stands = confirm(regressed, runs, confirm_times)
    else:
        stands = [p.name for p in regressed]
    if stands:
        print(
            f"\n{len(stands)} regression(s): {', '.join(stands)}. If the slowdown is "
            "intended, update the baseline (docs/kernels.md, 'Benchmark regressions in CI')."
        )
        return 1
    return 0


def update(path: Path, data: dict, pairs: list[Pair], runs, partial: bool) -> int:
    """Rewrite the committed ratios from `runs`, keeping every pair's definition."""
    missing = []
    for p in pairs:
        ratios, absent = run_ratios(p, runs)
        spec = data["pairs"][p.name]
        if not ratios:
            missing += absent
            print(f"{p.name}: kept {p.ratio:.4g} (not in CURRENT: {', '.join(absent)})")
            continue
        cur = statistics.median(ratios)
        spec["ratio"] = float(f"{cur:.4g}")
        spec["runs"] = len(ratios)
        spec["spread_pct"] = round(100 * (max(ratios) / min(ratios) - 1), 1)
        print(
            f"{p.name}: {p.ratio:.4g} -> {spec['ratio']:.4g} ({100 * (cur / p.ratio - 1):+.1f}%, "
            f"{len(ratios)} run(s), spread {spec['spread_pct']}%)"
        )
    if missing and not partial:
        print(
            f"error: not updated: {', '.join(sorted(set(missing)))} not in the results; "
            f"{how_to_run(sorted(set(missing)))}; or pass --partial"
        )
        return 2
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise InputError(f"baseline {path}: cannot write it ({e})") from None
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/benchcompare.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="CURRENT.json [MORE.json ...] BASELINE.json"
    )
    parser.add_argument("--update", action="store_true", help="rewrite BASELINE's ratios")
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="N",
        help="rerun the benchmarks of a regressed pair N times (pytest, from the current "
        "directory); it fails only if every rerun regresses too",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="a subset of the benchmarks ran: skip (and list) pairs whose benchmarks are absent",
    )
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        parser.error("give CURRENT.json (one or more) and then BASELINE.json")
    if args.confirm < 0:
        parser.error("--confirm takes a number of reruns, 0 or more")
    *currents, baseline = (Path(f) for f in args.files)
    try:
        data, pairs = load_baseline(baseline)
        runs = [Results(c) for c in currents]
        if args.update:
            return update(baseline, data, pairs, runs, args.partial)
        return compare(pairs, runs, args.partial, args.confirm)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
