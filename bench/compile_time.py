"""First-call (JIT compile or cache load) cost and `import fastdrop` time, each measured in a fresh
subprocess: `cold` starts from an empty NUMBA_CACHE_DIR (every kernel the calls need is compiled
by LLVM), `warm` reuses the directory a cold run filled (kernels are loaded from disk).

The child times, in-process: `import fastdrop`; the first and later calls of fastdrop.dropout on a
small float32 numpy array; `import torch` (not fastdrop's cost, shown for scale); the first and
later fwd+bwd of fastdrop.nn.Dropout on a float32 tensor; and, once it exists, the first and later
fwd+bwd of fastdrop.nn.DropoutLinear. first call - steady call is the compile (or load) cost;
the steady cost is the median of calls 4-6.
"""
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
MINIMAL = sys.argv[1:] == ["minimal"]
T = time.perf_counter
out = {}
t = T(); import fastdrop; out["import fastdrop"] = T() - t
import numpy as np
x = np.ones((64, 64), np.float32)
def twice(name, fn):
    # first call: compile or cache load. The next two calls still pay thread-pool start-up, so
    # the steady cost is the median of the three calls after them.
    t = T(); fn(); first = T() - t
    steady = []
    for _ in range(5):
        t = T(); fn(); steady.append(T() - t)
    out[name + ": first call"] = first
    out[name + ": steady call"] = sorted(steady[2:])[1]
twice("dropout numpy f32", lambda: fastdrop.dropout(x, 0.5, seed=1))
if MINIMAL:
    print("RESULT " + json.dumps(out)); raise SystemExit
t = T(); import torch; out["import torch"] = T() - t
xt = torch.ones(64, 64, requires_grad=True)
layer = fastdrop.nn.Dropout(0.5)
twice("nn.Dropout fwd+bwd f32", lambda: layer(xt).sum().backward())
if hasattr(fastdrop.nn, "DropoutLinear"):
    lin = fastdrop.nn.DropoutLinear(64, 32, p=0.5)
    twice("nn.DropoutLinear fwd+bwd f32", lambda: lin(xt).sum().backward())
print("RESULT " + json.dumps(out))
"""


def run_child(cache_dir, minimal=False, python=sys.executable):
    """Run CHILD with NUMBA_CACHE_DIR=cache_dir; returns its dict of seconds. minimal: only the
    numpy dropout call (the smoke test's cheap mode)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    args = [python, "-c", CHILD] + (["minimal"] if minimal else [])
    res = subprocess.run(args, env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"compile-time child failed:\n{res.stderr[-2000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def cold_and_warm(minimal=False):
    """{"cold": {...}, "warm": {...}}: one cold run in a fresh cache directory, then a warm one."""
    with tempfile.TemporaryDirectory(prefix="fastdrop-numba-cache-") as d:
        cold = run_child(d, minimal)
        warm = run_child(d, minimal)
    return {"cold": cold, "warm": warm}


def import_time(repeats=5, python=sys.executable):
    """Median in-process `import fastdrop` seconds over fresh interpreters (warm disk cache)."""
    code = "import time; t = time.perf_counter(); import fastdrop; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(res.stdout.strip().splitlines()[-1]))
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1],
            "samples_s": times}
