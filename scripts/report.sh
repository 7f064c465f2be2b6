#!/usr/bin/env bash
# The main job: set up (if needed), then the benchmark report, fastdrop vs torch.
#   bash scripts/report.sh           default matrix (< 10 min on a 2-core machine)
#   bash scripts/report.sh --quick   a handful of rows (< 1 min)
# Progress goes to stderr; the markdown report to stdout and, with the JSON and a PNG plot, to
# bench/results/<machine>-<date>[-quick].{md,json,png}. The pytest-benchmark suites themselves:
#   .venv/bin/python -m pytest bench --benchmark-group-by=group
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/report.py "$@"
