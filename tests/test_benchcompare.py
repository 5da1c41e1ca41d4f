"""The benchmark regression check: verdicts on constructed results, and one real
pytest-benchmark JSON produced here so that the shape the tool reads is the real one."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scripts import benchcompare

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "tests/benchmarks/test_bench_kernels.py::test_encode_kernel"
ZLIB = "tests/benchmarks/test_bench_kernels.py::test_encode_zlib[6]"


def results(path: Path, medians: dict[str, float]) -> Path:
    """A pytest-benchmark JSON reduced to what the tool reads (min: 90% of the median)."""
    benches = [
        {"name": full.split("::")[-1], "fullname": full, "stats": {"median": m, "min": 0.9 * m}}
        for full, m in medians.items()
    ]
    path.write_text(json.dumps({"benchmarks": benches}))
    return path


def baseline(path: Path, **pairs) -> Path:
    path.write_text(json.dumps({"tolerance": 0.2, "pairs": pairs}))
    return path


def speedup(ratio, **extra):
    """zlib's time over the kernel's: the kernel getting slower lowers it."""
    return {"numerator": ZLIB, "denominator": KERNEL, "ratio": ratio, "worse": "lower", **extra}


def run(capsys, *args):
    status = benchcompare.main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.fixture
def base(tmp_path):
    return baseline(tmp_path / "baseline.json", encode_vs_zlib6=speedup(20.0))


@pytest.mark.parametrize(
    ("kernel_ms", "status", "verdict"),
    [
        (1.25, 1, "REGRESSION"),  # 25% slower relative to zlib
        (1.15, 0, "ok"),  # 15% slower: within the tolerance
        (0.80, 0, "ok"),  # faster
    ],
)
def test_verdict_follows_the_kernels_time_relative_to_its_baseline(
    tmp_path, base, capsys, kernel_ms, status, verdict
):
    cur = results(tmp_path / "cur.json", {KERNEL: kernel_ms, ZLIB: 20.0})
    code, out = run(capsys, cur, base)
    assert code == status
    line = next(ln for ln in out.splitlines() if ln.startswith("encode_vs_zlib6"))
    assert verdict in line
    assert f"{100 * (kernel_ms - 1):+.1f}%" in line  # the change is the kernel's slowdown
    assert "20" in line and f"{20 / kernel_ms:.4g}" in line  # committed and current


def test_direction_higher_is_worse(tmp_path, capsys):
    """The same pair written as the kernel's time over zlib's: now a rise is the regression."""
    spec = {"numerator": KERNEL, "denominator": ZLIB, "ratio": 0.05, "worse": "higher"}
    base = baseline(tmp_path / "b.json", encode_share=spec)
    assert run(capsys, results(tmp_path / "slow.json", {KERNEL: 1.25, ZLIB: 20}), base)[0] == 1
    assert run(capsys, results(tmp_path / "fast.json", {KERNEL: 0.5, ZLIB: 20}), base)[0] == 0


def test_per_pair_tolerance_and_statistic(tmp_path, capsys):
    """A pair may widen its tolerance; `stat: min` reads the best rounds instead."""
    base = baseline(
        tmp_path / "b.json",
        loose=speedup(20.0, tolerance=0.5),
        best=speedup(20.0, stat="min"),
    )
    cur = results(tmp_path / "c.json", {KERNEL: 1.3, ZLIB: 20.0})  # min: 1.17 vs 18
    code, out = run(capsys, cur, base)
    assert code == 1
    assert "ok" in next(ln for ln in out.splitlines() if ln.startswith("loose"))
    best = next(ln for ln in out.splitlines() if ln.startswith("best"))
    assert "REGRESSION" in best and f"{18 / 1.17:.4g}" in best


def test_several_runs_use_the_median_ratio(tmp_path, base, capsys):
    """One noisy run among three does not decide the verdict."""
    runs = [
        results(tmp_path / f"r{i}.json", {KERNEL: ms, ZLIB: 20.0})
        for i, ms in enumerate([1.0, 1.05, 2.0])
    ]
    code, out = run(capsys, *runs, base)
    assert code == 0, out
    assert f"{20 / 1.05:.4g}" in out


def test_missing_benchmark_names_it_and_says_how_to_run_it(tmp_path, base, capsys):
    cur = results(tmp_path / "cur.json", {KERNEL: 1.0})
    code, out = run(capsys, cur, base)
    assert code == 2
    assert "MISSING" in out and ZLIB in out
    assert f"'{ZLIB}'" in out and "--benchmark-json" in out and "--partial" in out


def test_partial_skips_absent_pairs_visibly_and_still_checks_the_rest(tmp_path, capsys):
    base = baseline(
        tmp_path / "b.json",
        encode_vs_zlib6=speedup(20.0),
        decode=speedup(2.0, numerator="test_decode_zlib", denominator="test_decode_kernel"),
    )
    cur = results(tmp_path / "cur.json", {KERNEL: 1.5, ZLIB: 20.0})
    code, out = run(capsys, "--partial", cur, base)
    assert code == 1, out  # the present pair regressed
    decode = next(ln for ln in out.splitlines() if ln.startswith("decode"))
    assert "skipped" in decode and "test_decode_zlib" in decode
    cur = results(tmp_path / "cur.json", {KERNEL: 1.0, ZLIB: 20.0})
    assert run(capsys, "--partial", cur, base)[0] == 0


def test_partial_with_nothing_comparable_says_so(tmp_path, base, capsys):
    cur = results(tmp_path / "cur.json", {"tests/x.py::test_other": 1.0})
    code, out = run(capsys, "--partial", cur, base)
    assert code == 0
    assert "no pair was compared" in out
    assert run(capsys, cur, base)[0] == 2  # without --partial it is an error


def test_short_names_resolve_when_unique(tmp_path, capsys):
    base = baseline(
        tmp_path / "b.json",
        p=speedup(20.0, numerator="test_encode_zlib[6]", denominator="test_encode_kernel"),
    )
    cur = results(tmp_path / "c.json", {KERNEL: 1.0, ZLIB: 20.0})
    assert run(capsys, cur, base)[0] == 0
    dup = results(
        tmp_path / "d.json", {KERNEL: 1.0, ZLIB: 20.0, "other/t.py::test_encode_kernel": 9.0}
    )
    code, out = run(capsys, dup, base)
    assert code == 2 and "ambiguous" in out and "other/t.py::test_encode_kernel" in out


def fake_reruns(monkeypatch, tmp_path, kernel_ms: list[float | None]):
    """Reruns that time the kernel at each of `kernel_ms` (None: a rerun that failed)."""
    calls = []

    def rerun(benchmarks, times):
        calls.append((benchmarks, times))
        return [
            benchcompare.Results(results(tmp_path / f"rerun{i}.json", {KERNEL: ms, ZLIB: 20.0}))
            for i, ms in enumerate(kernel_ms)
            if ms is not None
        ]

    monkeypatch.setattr(benchcompare, "rerun", rerun)
    return calls


@pytest.mark.parametrize(
    ("reruns", "status", "message"),
    [
        ([1.0, 1.3], 0, "ok, not reproduced"),  # a noisy first run
        ([1.3, 1.25], 1, "REGRESSION confirmed"),
        ([1.3, None], 1, "REGRESSION stands"),  # a rerun that failed proves nothing
    ],
)
def test_confirm_reruns_the_regressed_pairs_benchmarks(
    tmp_path, base, capsys, monkeypatch, reruns, status, message
):
    calls = fake_reruns(monkeypatch, tmp_path, reruns)
    cur = results(tmp_path / "cur.json", {KERNEL: 1.4, ZLIB: 20.0})
    code, out = run(capsys, "--confirm", 2, cur, base)
    assert code == status, out
    assert calls == [([KERNEL, ZLIB], 2)]
    assert f"encode_vs_zlib6: {message}" in out
    assert "+40.0%" in out and "+30.0%" in out  # the first run, then each rerun


def test_confirm_leaves_passing_pairs_alone(tmp_path, base, capsys, monkeypatch):
    calls = fake_reruns(monkeypatch, tmp_path, [2.0, 2.0])
    cur = results(tmp_path / "cur.json", {KERNEL: 1.1, ZLIB: 20.0})
    assert run(capsys, "--confirm", 2, cur, base)[0] == 0
    assert calls == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"machine_info": {}}', "no 'benchmarks' list"),
        ('{"benchmarks": [{"name": "x"}]}', "lacks fullname or stats"),
    ],
)
def test_bad_results_file_exits_2_with_a_message(tmp_path, base, capsys, content, message):
    cur = tmp_path / "cur.json"
    if content is not None:
        cur.write_text(content)
    code, out = run(capsys, cur, base)
    assert code == 2
    assert message in out and str(cur) in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ({}, "non-empty object 'pairs'"),
        ({"p": {"numerator": "a", "denominator": "b", "ratio": 2}}, "missing worse"),
        ({"p": speedup(2.0, worse="up")}, "'higher' or 'lower'"),
        ({"p": speedup(-1)}, "'ratio' must be a positive number"),
        ({"p": speedup(2.0, tolerance="x")}, "'tolerance' must be"),
        ({"p": speedup(2.0, stat="mean")}, "'stat' must be"),
    ],
)
def test_bad_baseline_exits_2_with_a_message(tmp_path, capsys, pairs, message):
    base = tmp_path / "b.json"
    base.write_text(json.dumps({"pairs": pairs}))
    cur = results(tmp_path / "cur.json", {KERNEL: 1.0, ZLIB: 20.0})
    code, out = run(capsys, cur, base)
    assert code == 2
    assert message in out and "Traceback" not in out
    if pairs:
        assert "pair 'p'" in out


def test_update_round_trip(tmp_path, capsys):
    base = baseline(tmp_path / "b.json", encode_vs_zlib6=speedup(20.0, tolerance=0.3, note="kept"))
    runs = [
        results(tmp_path / f"r{i}.json", {KERNEL: ms, ZLIB: 20.0})
        for i, ms in enumerate([0.5, 0.4, 0.45])
    ]
    code, out = run(capsys, "--update", *runs, base)
    assert code == 0, out
    assert "20 -> 44.44" in out and "3 run(s)" in out
    pair = json.loads(base.read_text())["pairs"]["encode_vs_zlib6"]
    assert pair["ratio"] == pytest.approx(20 / 0.45, rel=1e-3)
    assert (pair["numerator"], pair["denominator"], pair["worse"]) == (ZLIB, KERNEL, "lower")
    assert (pair["tolerance"], pair["note"], pair["runs"]) == (0.3, "kept", 3)
    assert pair["spread_pct"] == pytest.approx(25.0)
    # the updated baseline passes against the runs it came from, and flags a slowdown
    assert run(capsys, *runs, base)[0] == 0
    slow = results(tmp_path / "slow.json", {KERNEL: 0.45 * 1.35, ZLIB: 20.0})
    assert run(capsys, slow, base)[0] == 1


def test_update_refuses_missing_benchmarks_unless_partial(tmp_path, base, capsys):
    before = base.read_text()
    cur = results(tmp_path / "cur.json", {KERNEL: 1.0})
    code, out = run(capsys, "--update", cur, base)
    assert code == 2 and ZLIB in out
    assert base.read_text() == before
    code, out = run(capsys, "--update", "--partial", cur, base)
    assert code == 0 and "kept 20" in out
    assert json.loads(base.read_text())["pairs"]["encode_vs_zlib6"]["ratio"] == 20


def test_committed_baseline_is_valid_and_names_real_benchmarks():
    """Every pair of the committed file parses and points at a benchmark that exists."""
    _, pairs = benchcompare.load_baseline(ROOT / "tests/benchmarks/baseline.json")
    assert pairs
    for p in pairs:
        for bench in (p.numerator, p.denominator):
            path, name = bench.split("::")
            func = name.split("[")[0]
            assert f"def {func}(" in (ROOT / path).read_text(), bench


# --------------------------------------------------------------------------- real JSON

BENCH_FILE = """
    import pytest

    DATA = list(range(20_000, 0, -1))

    @pytest.mark.benchmark(min_rounds=5, max_time=0.05)
    def test_fast(benchmark):
        benchmark(sorted, DATA[:1000])

    @pytest.mark.benchmark(min_rounds=5, max_time=0.05)
    def test_slow(benchmark):
        benchmark(sorted, DATA)
"""


@pytest.fixture(scope="module")
def real_json(tmp_path_factory):
    """test_fast and test_slow timed by pytest-benchmark in a child pytest."""
    d = tmp_path_factory.mktemp("realbench")
    (d / "test_tiny.py").write_text(textwrap.dedent(BENCH_FILE))
    out = d / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "test_tiny.py",
            f"--benchmark-json={out}",
        ],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_real_pytest_benchmark_json(tmp_path, real_json, capsys):
    """Sorting 1,000 items takes far less than a tenth of sorting 20,000: committed
    ratios ten times either side of that must pass and fail."""
    fast, slow = "test_tiny.py::test_fast", "test_tiny.py::test_slow"
    share = {"numerator": fast, "denominator": slow, "worse": "higher"}
    good = baseline(tmp_path / "good.json", share={**share, "ratio": 1.0})
    bad = baseline(tmp_path / "bad.json", share={**share, "ratio": 0.001})
    code, out = run(capsys, real_json, good)
    assert code == 0, out
    code, out = run(capsys, real_json, bad)
    assert code == 1 and "REGRESSION" in out, out
    code, out = run(capsys, "--update", real_json, bad)
    assert code == 0, out
    ratio = json.loads(bad.read_text())["pairs"]["share"]["ratio"]
    assert 0.001 < ratio < 0.2
    assert run(capsys, real_json, bad)[0] == 0


def test_command_line_entry_point(tmp_path, real_json):
    """`python scripts/benchcompare.py --confirm 1` as scripts/test.sh calls it, from the
    directory the benchmarks' names are relative to: the rerun is a real pytest run."""
    base = baseline(
        tmp_path / "b.json",
        share={
            "numerator": "test_fast",
            "denominator": "test_slow",
            "ratio": 0.001,
            "worse": "higher",
        },
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchcompare.py"),
            "--confirm",
            "1",
            str(real_json),
            str(base),
        ],
        cwd=real_json.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rerunning test_tiny.py::test_fast, test_tiny.py::test_slow 1 time(s)" in proc.stdout
    assert "share: REGRESSION confirmed" in proc.stdout, proc.stdout
