#!/usr/bin/env bash
# The project's test command (README, .ci/run): set-up if needed, lint, then the
# whole suite (unit, property, end-to-end Mininet runs, quick benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
mkdir -p results
# benchmarks run with a short budget; their medians are saved for comparison
.venv/bin/python -m pytest -p no:cacheprovider --benchmark-min-rounds=3 \
  --benchmark-max-time=0.2 --benchmark-json=results/benchmarks.json "$@"
