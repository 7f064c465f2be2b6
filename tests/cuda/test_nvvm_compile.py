"""Every CUDA kernel compiles for the real target (Numba -> NVVM -> PTX), not only in the simulator.

The simulator runs kernels as Python and accepts code the CUDA target rejects (a shared-array size
computed in the kernel, say), and it has no GPU to catch it. This compiles each kernel for every
dtype it is launched with, for compute capability 8.0 (A100) and 9.0 (H100), in a subprocess
without the simulator and without a GPU. The kernels are found in the `*_cuda` modules, so a new
kernel without an entry in the signature table fails the test instead of being skipped. It needs
libnvvm (CUDA toolkit, CUDA_HOME or /usr/local/cuda) and libnvrtc: skipped where they are missing.
Without a toolkit: `pip install --target DIR "nvidia-cuda-nvcc==13.*" "nvidia-cuda-nvrtc==13.*"` (both
libraries land in DIR/nvidia/cu13/lib) and set FASTDROP_NVRTC_LIB=DIR/nvidia/cu13/lib.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.cudasim

SCRIPT = textwrap.dedent('''
    import importlib, inspect, pkgutil, sys
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
    import numpy as np
    import fastdrop.kernels

    # Every kernel of every *_cuda module: module-level kernels (not device functions), and
    # factories (functions that define a kernel inside, one per dtype). Each must have an entry below.
    kernels, factories = {}, {}
    for info in sorted(pkgutil.iter_modules(fastdrop.kernels.__path__), key=lambda i: i.name):
        if not info.name.endswith("_cuda"):
            continue
        mod = importlib.import_module("fastdrop.kernels." + info.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, dispatcher.CUDADispatcher) and not obj.targetoptions.get("device") \\
                    and obj.py_func.__module__ == mod.__name__:
                kernels[info.name + "." + name] = obj
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__ and \\
                    "cuda.jit" in inspect.getsource(obj):
                factories[info.name + "." + name] = obj

    # Every dtype each kernel is launched with (fastdrop/_cuda.py, _cuda_linear.py, the max-norm
    # launcher; half types: float16 data with float32 scale).
    u, i64, b = T.uint64, T.int64, T.boolean
    sigs = {"dropout_cuda.keep_mask": [(b[::1], u, u, u, u, u)]}
    for dt, sc in ((T.float32, T.float32), (T.float64, T.float64), (T.float16, T.float32)):
        a = dt[::1]
        sigs.setdefault("dropout_cuda.dropout_flat", []).append((a, a, u, u, u, u, u, sc))
        sigs.setdefault("dropout_cuda.apply_group_mask", []).append((a, a, b[::1], i64, sc))
        sigs.setdefault("dropout_cuda.scale", []).append((a, a, sc))
    for dt in (T.float32, T.float64):
        m = dt[:, ::1]
        sigs.setdefault("linear_cuda.masked_gemm", []).append(
            (m, m, m, dt[::1], b, b, b, i64, u, u, u, u, u, dt))
        sigs.setdefault("linear_cuda.sample_gemm", []).append(
            (m, m, m, dt[::1], b, b, b, i64, i64, i64, i64, u, u, u, u, u, dt))
        sigs.setdefault("linear_cuda.column_sums", []).append((m, dt[::1]))
        # any 2-D view of the weight (rows = the constrained vectors), Python-float bounds
        sigs.setdefault("variants_cuda.max_norm_rows", []).extend(
            [(dt[:, ::1], T.float64, T.float64), (dt[:, :], T.float64, T.float64)])
    # factory -> [(factory argument, signature)]; entries for factories no longer in the
    # modules are ignored (kernels can move), missing entries fail
    factory_sigs = {"variants_cuda.matmul_kernel": [
        (np.dtype(nd), (dt[:, :, :], dt[:, :, :], dt[:, :, :], b, b, u, u, u, u, u, dt))
        for nd, dt in (("float32", T.float32), ("float64", T.float64))]}

    jobs, failed = [], 0
    for name in sorted(set(kernels) - set(sigs)) + sorted(set(factories) - set(factory_sigs)):
        failed += 1
        print("FAIL", name, "has no signature in test_nvvm_compile.py")
    for name, kernel in kernels.items():
        jobs += [(name, kernel.py_func, sig) for sig in sigs.get(name, [])]
    for name, factory in factories.items():
        jobs += [(name, factory(arg).py_func, sig) for arg, sig in factory_sigs.get(name, [])]
    for cc in ((8, 0), (9, 0)):  # A100, H100
        # Device functions ask the current device for its compute capability; there is none here.
        dispatcher.get_current_device = lambda cc=cc: pytypes.SimpleNamespace(compute_capability=cc)
        for name, pyfunc, sig in jobs:
            try:
                ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=cc)
                assert ".target sm_%d%d" % cc in ptx, "PTX for another target"
            except Exception as e:
                failed += 1
                print("FAIL", name, cc, sig, type(e).__name__, str(e)[:800])
    print("KERNELS", " ".join(sorted(set(kernels) | set(factories))))
    print("DONE", 2 * len(jobs), "failed", failed)
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
    # the enumeration itself: at least the kernels known when this test was written
    found = set(out.splitlines()[-2].split()[1:])
    assert {"dropout_cuda.dropout_flat", "dropout_cuda.keep_mask", "dropout_cuda.apply_group_mask",
            "dropout_cuda.scale", "linear_cuda.masked_gemm", "linear_cuda.sample_gemm",
            "linear_cuda.column_sums", "variants_cuda.max_norm_rows"} <= found, out
