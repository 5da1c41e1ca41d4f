#!/usr/bin/env bash
# The project's test command (README, .ci/run): set-up if needed, lint, types, then the
# whole suite (unit, property, end-to-end Mininet runs, quick benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # the runtime packages ([tool.mypy] in pyproject.toml)
mkdir -p results
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
# benchmarks run with a short budget; their timings are saved for comparison
status=0
.venv/bin/python -m pytest -p no:cacheprovider --benchmark-min-rounds=3 \
  --benchmark-max-time=0.2 --benchmark-json=results/benchmarks.json "$@" || status=$?
# benchmark regressions: ratios to baselines timed in this run against the committed ones
# (docs/kernels.md). The whole suite must produce every pair; a subset compares what ran.
# A regression is timed twice more and fails only if it reproduces.
if [ results/benchmarks.json -nt "$stamp" ]; then
  partial=()
  if [ $# -gt 0 ]; then partial=(--partial); fi
  .venv/bin/python scripts/benchcompare.py --confirm 2 "${partial[@]}" \
    results/benchmarks.json tests/benchmarks/baseline.json || {
    rc=$?
    [ "$status" -ne 0 ] || status=$rc
  }
fi
exit "$status"
