"""The benchmarks must never rot: run every pytest-benchmark suite on tiny shapes with
--benchmark-disable (each benchmark called once), and the report in its tiny mode, in subprocesses
(the suites and the report set up their own processes, threads and caches). One after the other:
run side by side on 2 cores, their thread pools contend and both get slower."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(args):
    env = dict(os.environ, FASTDROP_BENCH_TINY="1")
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{proc.args} failed:\n{out[-3000:]}\n{err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-report")
    procs = []
    try:
        procs.append(_start(["-m", "pytest", "bench", "-q", "--benchmark-disable",
                             "-p", "no:cacheprovider"]))
        suites = _finish(procs[-1])
        procs.append(_start(["bench/report.py", "--tiny", "--out", str(out), "--machine", "smoke"]))
        yield {"suites": suites, "report": _finish(procs[-1]), "out": out}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_bench_suites_run(runs):
    assert "passed" in runs["suites"]


def test_report_tiny(runs):
    out = runs["out"]
    stem = out / next(p.stem for p in out.glob("smoke-*.json"))
    res = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    md = stem.with_suffix(".md").read_text()
    assert "| dropout_fwd | 8x16 |" in md
    errors = [r["id"] + ": " + r["error"] for r in res["micro"] + res["memory"] if "error" in r]
    assert not errors, errors
    timed = [r for r in res["micro"] if "timings" in r]
    assert timed and all(r["speedup"] > 0 for r in timed)
    assert res["machine"]["numba_threading_layer"]
    assert res["compile"]["cold"]["dropout numpy f32: first call"] > 0
    assert res["e2e"]["providers"]["fastdrop"]["test_acc"]
    assert all("error" not in r for r in res["e2e_probes"].values())
