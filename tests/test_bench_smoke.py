"""The benchmarks must never rot: run every pytest-benchmark suite on tiny shapes with
--benchmark-disable (each benchmark called once), and the report in its tiny mode, in subprocesses
(the suites and the report set up their own processes, threads and caches)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, **kw):
    env = dict(os.environ, FASTDROP_BENCH_TINY="1")
    res = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240, **kw)
    assert res.returncode == 0, f"{args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_bench_suites_run():
    res = _run(["-m", "pytest", "bench", "-q", "--benchmark-disable", "-p", "no:cacheprovider"])
    assert "passed" in res.stdout


def test_report_tiny(tmp_path):
    _run(["bench/report.py", "--tiny", "--out", str(tmp_path), "--machine", "smoke"])
    stem = tmp_path / next(p.stem for p in tmp_path.glob("smoke-*.json"))
    res = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    md = stem.with_suffix(".md").read_text()
    assert "| dropout_fwd | 8x16 |" in md
    errors = [r["id"] + ": " + r["error"] for r in res["micro"] + res["memory"] if "error" in r]
    assert not errors, errors
    timed = [r for r in res["micro"] if "timings" in r]
    assert timed and all(r["speedup"] > 0 for r in timed)
    assert res["machine"]["numba_threading_layer"]
    assert res["e2e"]["providers"]["fastdrop"]["test_acc"]
