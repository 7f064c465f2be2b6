"""Thread pools in a training loop (docs/threads.md): correctness only, never timing.

A small MLP is trained with fastdrop's fused layers and with a plain torch reference that applies
the same masks (fastdrop.dropout with the same seeds) before nn.Linear; the trajectories must agree.
"""
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastdrop
from fastdrop import dropconnect_linear, dropout_linear


def _train(fused, steps=30, n=32, i=48, h=40, c=5, per_sample=None):
    torch.manual_seed(0)
    x, y = torch.randn(n, i), torch.randint(0, c, (n,))
    l1, l2 = torch.nn.Linear(i, h), torch.nn.Linear(h, c)
    opt = torch.optim.SGD(list(l1.parameters()) + list(l2.parameters()), lr=0.1)
    losses = []
    for s in range(steps):
        opt.zero_grad()
        if per_sample is None:
            if fused:
                a = dropout_linear(x, l1.weight, l1.bias, 0.3, seed=2 * s)
                out = dropout_linear(torch.relu(a), l2.weight, l2.bias, 0.3, seed=2 * s + 1)
            else:
                a = l1(fastdrop.dropout(x, 0.3, seed=2 * s))
                out = l2(fastdrop.dropout(torch.relu(a), 0.3, seed=2 * s + 1))
        else:
            if fused:
                a = dropconnect_linear(x, l1.weight, l1.bias, 0.3, seed=s, per_sample=per_sample)
            else:
                m = fastdrop.dropout_mask((n,) + tuple(l1.weight.shape) if per_sample else
                                          tuple(l1.weight.shape), 0.3, s)
                wm = l1.weight * torch.from_numpy(m).float() / 0.7
                a = (torch.einsum("ni,noi->no", x, wm) if per_sample else x @ wm.T) + l1.bias
            out = l2(torch.relu(a))
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, l1.weight.detach().clone()


@pytest.mark.parametrize("per_sample", [None, False, True])
def test_training_loop_matches_torch_reference(per_sample):
    threads = torch.get_num_threads()
    fused_losses, w_fused = _train(True, per_sample=per_sample)
    ref_losses, w_ref = _train(False, per_sample=per_sample)
    assert fused_losses[-1] < fused_losses[0]
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w_fused, w_ref, rtol=1e-4, atol=1e-5)
    assert torch.get_num_threads() == threads  # fastdrop leaves torch's pool size alone


# Run in a fresh interpreter, so that no earlier test has started Numba's pool: numba's threading
# layer is chosen at the first parallel launch (threading_layer() raises before that).
LAYER_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numba, numpy as np
    import fastdrop
    from fastdrop.kernels.config import CPU_PARALLEL_MIN

    def started():
        try:
            numba.threading_layer()
            return True
        except ValueError:  # "Threading layer is not initialized"
            return False

    rng = np.random.default_rng(0)
    small = rng.standard_normal((64, 512), np.float32)  # below CPU_PARALLEL_MIN: serial kernel
    fastdrop.dropout(small, 0.5, seed=1)
    if "torch" in sys.argv:  # dense layers below PARALLEL_MASK_MIN mask serially (docs/threads.md)
        import torch
        y = fastdrop.dropout_linear(torch.randn(256, 1024, requires_grad=True), torch.randn(64, 1024),
                                    None, 0.5, seed=2)
        y.sum().backward()
    print("pool started by small calls:", started())

    # every kernel family of the numpy API, above CPU_PARALLEL_MIN: parallel kernels
    x = rng.standard_normal((CPU_PARALLEL_MIN // 256 + 3, 256), np.float32)
    w = rng.standard_normal((300, 257))
    outs = [fastdrop.dropout(x, 0.3, seed=7, offset=2**40),
            fastdrop.dropout(x.T, 0.3, seed=7),
            fastdrop.dropout2d(rng.standard_normal((8, 64, 16, 17), np.float32), 0.5, seed=7),
            fastdrop.dropout_mask((CPU_PARALLEL_MIN + 5,), 0.25, 7),
            fastdrop.philox4x32(np.arange(4 * 40000, dtype=np.uint64).reshape(-1, 4), [7, 9]),
            fastdrop.max_norm_(w.copy(), 3.0, dim=1), fastdrop.max_norm_(w.copy(), 3.0, dim=0),
            fastdrop.dropconnect_linear(x[:8, :64].astype(np.float64), w[:, :64], None, 0.3, seed=7,
                                        per_sample=True)]
    available = []
    for layer, module in (("tbb", "tbbpool"), ("omp", "omppool"), ("workqueue", "workqueue")):
        try:
            __import__("numba.np.ufunc." + module)
            available.append(layer)
        except ImportError:
            pass
    print("layer:", numba.threading_layer())
    print("available:", ",".join(available))
    print("threads:", numba.get_num_threads())
    print("digest:", hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outs)).hexdigest())
""")


def _layer_run(*args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    full.update(env)
    res = subprocess.run([sys.executable, "-c", LAYER_SCRIPT, *args], capture_output=True, text=True,
                         env=full, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())


@functools.lru_cache(maxsize=None)
def _default_run():
    """The script on the layer Numba picks by itself (a fresh interpreter takes seconds: once)."""
    return _layer_run("torch")


def test_threading_layer_is_numbas_choice_and_small_calls_leave_it_asleep():
    """fastdrop leaves the layer to Numba (docs/threads.md): the first available of tbb, omp,
    workqueue (omp here, tbb is not installed); and small calls (contiguous dropout below
    CPU_PARALLEL_MIN, dense layers below PARALLEL_MASK_MIN) never start Numba's pool."""
    out = _default_run()
    assert out["pool started by small calls"] == "False"
    assert out["layer"] == out["available"].split(",")[0], out


def test_same_bits_on_every_threading_layer():
    """The parallel kernels give the same bits on each available layer (a mask is a pure function
    of the element index, whichever pool computes it; thread counts: test_determinism.py)."""
    base = _default_run()
    others = [layer for layer in base["available"].split(",") if layer != base["layer"]]
    assert others or base["layer"] == "workqueue"  # workqueue is always there
    for layer in others:
        out = _layer_run(NUMBA_THREADING_LAYER=layer)
        assert out["layer"] == layer
        assert out["digest"] == base["digest"], (out, base)


# Which libgomp answers each library's GOMP_parallel, read from the dynamic loader's own trace.
BINDING_SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[1] == "torch_first":
        import torch
    import numba, numpy as np

    @numba.njit(parallel=True)
    def bump(a):
        for i in numba.prange(a.size):
            a[i] += 1

    bump(np.zeros(64))
    import torch
    (torch.randn(1 << 20) * 2).sum()  # one of torch's parallel regions
    print(numba.threading_layer())
""")


def _gomp_parallel_bindings(order, tmp_path):
    """{library file name: libgomp file its GOMP_parallel is bound to} in a fresh interpreter."""
    log = tmp_path / f"ld-{order}"
    env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log)}
    env.pop("NUMBA_THREADING_LAYER", None)
    res = subprocess.run([sys.executable, "-c", BINDING_SCRIPT, order], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if res.stdout.strip() != "omp":
        pytest.skip(f"Numba picked the {res.stdout.strip()!r} layer, not GNU OpenMP")
    found = {}
    for path in tmp_path.glob(f"ld-{order}*"):
        for line in path.read_text(errors="replace").splitlines():
            # "binding file <lib> [0] to <libgomp> [0]: normal symbol `GOMP_parallel' [GOMP_4.0]"
            if "`GOMP_parallel'" in line and " to " in line:
                user, target = line.split("binding file ", 1)[1].split(" to ", 1)
                found[os.path.basename(user.split(" [")[0])] = target.split(" [")[0]
    if not found:
        pytest.skip("the dynamic loader wrote no LD_DEBUG trace (not glibc?)")
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_DEBUG is glibc's")
@pytest.mark.parametrize("order", ["torch_first", "numba_first"])
def test_numba_and_torch_share_one_openmp_runtime(order, tmp_path):
    """docs/threads.md: Numba's omppool extension names libgomp.so.1.0.0 and torch's wheel carries
    its own libgomp.so.1, so both files get mapped, but the loader binds the GOMP_* calls of both
    libraries to one of them (torch's, in the global scope, when torch came first; the one already
    loaded under the soname libgomp.so.1 when Numba's pool started first). One runtime means one
    thread team per calling thread: fastdrop's parallel kernels and torch's ops run on the same
    OpenMP threads, not two pools that spin against each other."""
    found = _gomp_parallel_bindings(order, tmp_path)
    numba_lib = [t for u, t in found.items() if u.startswith("omppool")]
    torch_lib = [t for u, t in found.items() if u.startswith("libtorch_cpu")]
    assert numba_lib and torch_lib, found
    assert numba_lib == torch_lib, found


KEEP_COUNT_SCRIPT = r"""
import sys
import numpy as np, torch
torch.set_num_threads(1)
import numba, fastdrop
from torch._dynamo.utils import counters
m = fastdrop.nn.DropConnectLinear(8, 8, p=0.5, per_sample=True)  # per-sample: Numba's pool
compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
x = torch.randn(4, 8)
for _ in range(3):
    compiled(x)
fastdrop.dropout(np.ones(1 << 22, np.float32), 0.5, seed=0)  # the parallel numpy kernel
print(torch.get_num_threads(), numba.threading_layer(), numba.get_num_threads(),
      counters["stats"]["unique_graphs"])
"""


def test_the_first_parallel_kernel_keeps_torchs_thread_count():
    """Numba's omp layer sets the OpenMP thread count when its pool starts, and torch shares that
    runtime: a user's torch.set_num_threads(1) (or torchrun's OMP_NUM_THREADS=1) became the core
    count at fastdrop's first parallel kernel, and a compiled model recompiled on its guard. Fresh
    interpreter: the count stays 1, one graph, while Numba's kernels keep their own threads."""
    res = subprocess.run([sys.executable, "-c", KEEP_COUNT_SCRIPT], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    torch_threads, layer, numba_threads, graphs = res.stdout.split()
    assert (torch_threads, numba_threads, graphs) == ("1", "2", "1"), res.stdout
    assert layer in ("omp", "tbb", "workqueue")
