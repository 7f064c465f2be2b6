"""pytest-benchmark suites: run with `.venv/bin/python -m pytest bench` (outside the default
testpaths). Useful flags: --benchmark-group-by=group, --benchmark-columns=min,median,iqr,rounds,
--benchmark-disable (a smoke run: every benchmark called once). FASTDROP_BENCH_TINY=1 shrinks every
shape (tests/test_bench_smoke.py does this)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # bench_cases importable from the suites and report
