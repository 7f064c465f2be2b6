"""CUDA kernel for max-norm (the other CUDA kernels of the family are dropout_cuda's mask kernels:
dropout_matmul on CUDA is the mask kernel followed by cuBLAS).

Imported lazily (only for CUDA data), so `import fastdrop` never loads numba.cuda.

`max_norm_rows`: one block per row (grid-stride over rows); the block's threads stride over the
row accumulating float64 partial sums, reduce them in shared memory, then scale the row if its
norm exceeds c. Each square is rounded on its own, as the CPU kernels (kernels/max_norm_cpu.py)
round it; the CPU adds them in another order (a reassociated, vectorized sum), so float64 norms can
differ from the CPU's in the last bits (float32 and half results nearly always equal the CPU's:
the norm is rounded into a float32 scale). The launcher presents any weight as a 2-D (rows, cols) view, rows = the vectors.
"""
import math

import numba
import numpy as np
from numba import cuda

from .config import CUDA_JIT_OPTIONS

if numba.config.ENABLE_CUDASIM:
    def _square(v):  # (Python's float product: no fused multiply-add to avoid)
        return v * v
else:
    from numba.cuda import libdevice

    def _square(v):
        """v * v rounded on its own (mul.rn), as the CPU rounds it: NVVM contracts a product and
        the sum it goes into into one fused multiply-add by default, rounding once where the CPU
        rounds twice (and the simulator, Python's arithmetic, as the CPU)."""
        return libdevice.dmul_rn(v, v)
    _square = cuda.jit(device=True, **CUDA_JIT_OPTIONS)(_square)


# Threads per block of max_norm_rows (a power of two for the tree reduction).
MAX_NORM_THREADS = 128
# Upper bound on blocks in one grid dimension (grid-stride loops cover the rest).
MAX_BLOCKS = 4096


@cuda.jit(**CUDA_JIT_OPTIONS)
def max_norm_rows(w, max_value, eps):
    """Constrain each row of the 2-D device array w (any strides) in place."""
    partial = cuda.shared.array(MAX_NORM_THREADS, np.float64)
    tid = cuda.threadIdx.x
    ncols = w.shape[1]
    for r in range(cuda.blockIdx.x, w.shape[0], cuda.gridDim.x):
        acc = 0.0
        for k in range(tid, ncols, MAX_NORM_THREADS):
            acc += _square(np.float64(w[r, k]))
        partial[tid] = acc
        cuda.syncthreads()
        step = MAX_NORM_THREADS // 2
        while step > 0:
            if tid < step:
                partial[tid] += partial[tid + step]
            cuda.syncthreads()
            step //= 2
        norm = math.sqrt(partial[0])
        cuda.syncthreads()  # everyone has read partial[0] before the next row overwrites it
        if norm > max_value:
            s = max_value / (norm + eps)
            if w.itemsize == 8:
                for k in range(tid, ncols, MAX_NORM_THREADS):
                    w[r, k] = w[r, k] * s
            else:
                # the CPU kernels' product: a float32 weight times float32(s), one rounding (a
                # float64 s made it a float64 product rounded once to float32, an ulp apart from
                # the CPU in about a quarter of the elements); float16 weights in float32, as the
                # CPU computes them, rounded once on the store
                s32 = numba.float32(s)
                for k in range(tid, ncols, MAX_NORM_THREADS):
                    w[r, k] = w[r, k] * s32


# ----------------------------------------------------------------------------- launchers
def max_norm_device(w2d, max_value, eps, stream=0):
    """Launch max_norm_rows on a 2-D device array (rows are the constrained vectors)."""
    if w2d.shape[0] == 0 or w2d.shape[1] == 0:
        return w2d
    blocks = max(1, min(MAX_BLOCKS, w2d.shape[0]))
    max_norm_rows[blocks, MAX_NORM_THREADS, stream](w2d, max_value, eps)
    return w2d
