"""Every CUDA kernel compiles for the real target (Numba -> NVVM -> PTX), not only in the simulator.

The simulator runs kernels as Python and accepts code the CUDA target rejects (a shared-array size
computed in the kernel, say), and it has no GPU to catch it. This compiles each kernel for every
dtype it is launched with, in a subprocess without the simulator and without a GPU. It needs
libnvvm (CUDA toolkit, CUDA_HOME or /usr/local/cuda) and libnvrtc (e.g. `pip install
nvidia-cuda-nvrtc`; point FASTDROP_NVRTC_LIB at its lib/ folder): skipped where they are missing.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.cudasim

SCRIPT = textwrap.dedent('''
    import sys
    import types as pytypes
    try:
        import numba.cuda.dispatcher as dispatcher
        from numba import cuda, types as T
        from numba.cuda.cudadrv import nvrtc, nvvm
        nvvm.NVVM()
        nvrtc.get_lowest_supported_cc()
    except Exception as e:  # no toolkit libraries here: nothing to check
        print("SKIP", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        sys.exit(0)
    # Device functions ask the current device for its compute capability; there is none here.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(8, 0))
    from fastdrop.kernels import dropout_cuda as K, linear_cuda as L

    u, i64, b = T.uint64, T.int64, T.boolean
    jobs = [(K.keep_mask, (b[::1], u, u, u, u, u))]
    for dt, sc in ((T.float32, T.float32), (T.float64, T.float64), (T.float16, T.float32)):
        a = dt[::1]
        jobs += [(K.dropout_flat, (a, a, u, u, u, u, u, sc)),
                 (K.apply_group_mask, (a, a, b[::1], i64, sc)),
                 (K.scale, (a, a, sc))]
    for dt in (T.float32, T.float64):
        m = dt[:, ::1]
        jobs += [(L.masked_gemm, (m, m, m, dt[::1], b, b, b, i64, u, u, u, u, u, dt)),
                 (L.sample_gemm, (m, m, m, dt[::1], b, b, b, i64, i64, i64, i64, u, u, u, u, u, dt)),
                 (L.column_sums, (m, dt[::1]))]
    failed = 0
    for kernel, sig in jobs:
        try:
            cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        except Exception as e:
            failed += 1
            print("FAIL", kernel.py_func.__name__, sig, type(e).__name__, str(e)[:800])
    print("DONE", len(jobs), "failed", failed)
''')


def test_every_kernel_compiles_for_the_cuda_target():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if os.environ.get("FASTDROP_NVRTC_LIB"):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [os.environ["FASTDROP_NVRTC_LIB"], env.get("LD_LIBRARY_PATH")]))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, timeout=600)
    out = res.stdout.strip()
    if out.startswith("SKIP"):
        pytest.skip(f"CUDA toolkit libraries missing: {out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.endswith("failed 0"), out
