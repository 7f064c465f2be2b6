"""Compile time in its own benchmark: a fresh interpreter running fastdrop's first calls with a cold
(empty) and a warm (filled) NUMBA_CACHE_DIR, and `import fastdrop` alone. The timed quantity is the
subprocess's wall time (interpreter start included); the in-process first-call times are in
extra_info (see bench/compile_time.py)."""
import shutil
import subprocess
import sys
import tempfile

import pytest

import compile_time
from bench_cases import TINY

ROUNDS = 1 if TINY else 3


@pytest.fixture
def cache_dir():
    d = tempfile.mkdtemp(prefix="fastdrop-numba-cache-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_compile_cold(benchmark, cache_dir):
    benchmark.group = "compile|first call"
    info = {}

    def fresh():
        shutil.rmtree(cache_dir, ignore_errors=True)
        return (), {}

    def run():
        info.update(compile_time.run_child(cache_dir, minimal=TINY))

    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(info)


def test_compile_warm(benchmark, cache_dir):
    benchmark.group = "compile|first call"
    compile_time.run_child(cache_dir, minimal=TINY)  # fill the cache
    info = {}

    def run():
        info.update(compile_time.run_child(cache_dir, minimal=TINY))

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(info)


def test_import_fastdrop(benchmark):
    benchmark.group = "compile|first call"

    def run():
        subprocess.run([sys.executable, "-c", "import fastdrop"], check=True)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
