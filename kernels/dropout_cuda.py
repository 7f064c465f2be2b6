"""CUDA kernels for elementwise and grouped (spatial / per-sample) dropout, and the eval-time scale.

The same mask contract as kernels/dropout_cpu.py (README, "The mask"): logical C-order element i of
a call with (seed, offset) is kept iff word(i) < T, word(i) being 32-bit word (i mod 4) of
Philox4x32-10(counter = (i//4 lo, i//4 hi, offset lo, offset hi), key = (seed lo, seed hi)).
The Philox source is kernels/philox.py, compiled here with `cuda.jit(device=True)`: the uint64
arithmetic is the same as on the CPU, so masks are bit-identical across devices by construction.

Every kernel is a grid-stride loop over flat C-contiguous arrays (the launchers in fastdrop/_cuda.py
make a contiguous copy of anything else). The elementwise kernels give one thread one 4-element
Philox block: all four words of a call are used, none regenerated. A kept element is x * scale with
`scale` in the compute type (x's dtype; float32 for float16 data, rounded once on the store).
"""
import numpy as np
from numba import cuda

from .philox import make_philox_block, philox_rounds

philox_rounds_cuda = cuda.jit(device=True)(philox_rounds)
philox_block_cuda = cuda.jit(device=True)(make_philox_block(philox_rounds_cuda))


@cuda.jit(device=True)
def _put(x, out, i, n, word, thr, scale):
    """out[i] = x[i] * scale if word < thr else 0, for i < n (the tail block may overhang)."""
    if i < n:
        if word < thr:
            out[i] = x[i] * scale
        else:
            out[i] = 0


@cuda.jit(device=True)
def _keep(out, i, n, word, thr):
    if i < n:
        out[i] = word < thr


@cuda.jit
def dropout_flat(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) for flat contiguous x, out (out may alias x)."""
    n = x.size
    for b in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        r0, r1, r2, r3 = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
        i = 4 * b
        _put(x, out, i, n, r0, thr, scale)
        _put(x, out, i + 1, n, r1, thr, scale)
        _put(x, out, i + 2, n, r2, thr, scale)
        _put(x, out, i + 3, n, r3, thr, scale)


@cuda.jit
def keep_mask(out, key_lo, key_hi, off_lo, off_hi, thr):
    """out[i] = (element i is kept) for a flat bool array `out`."""
    n = out.size
    for b in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        r0, r1, r2, r3 = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
        i = 4 * b
        _keep(out, i, n, r0, thr)
        _keep(out, i + 1, n, r1, thr)
        _keep(out, i + 2, n, r2, thr)
        _keep(out, i + 3, n, r3, thr)


@cuda.jit
def apply_group_mask(x, out, keep, length, scale):
    """out[j] = x[j] * scale if keep[j // length] else 0 for flat contiguous x, out viewed as
    (groups, length): one mask element per group, broadcast over its `length` elements. The mask
    (a few thousand groups at most in practice) comes from `keep_mask` first, so Philox runs once
    per group, not once per element."""
    n = x.size
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        if keep[j // length]:
            out[j] = x[j] * scale
        else:
            out[j] = 0


@cuda.jit
def scale(x, out, factor):
    """out = x * factor (classic dropout at eval)."""
    for j in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[j] = x[j] * factor
