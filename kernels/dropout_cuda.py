"""CUDA kernels for elementwise and grouped (spatial / per-sample) dropout, and the eval-time scale.

The same mask contract as kernels/dropout_cpu.py (README, "The mask"; the formula is at the top of
kernels/philox.py): element i is kept iff its 16-bit mask word h(i), half (i mod 2) of word
(i mod 8) // 2 of Philox4x32-10 block i // 8, is below T(p) = floor((1 - p) * 2^16).
The Philox source is kernels/philox.py, compiled here with `cuda.jit(device=True)`: the uint64
arithmetic is the same as on the CPU, so masks are bit-identical across devices by construction.

Every kernel is a grid-stride loop over flat C-contiguous arrays (the launchers in fastdrop/_cuda.py
make a contiguous copy of anything else). The elementwise kernels give one thread one 8-element
Philox block: all eight mask words of a call are used, none regenerated. A kept element is x * scale with
`scale` in the compute type (x's dtype; float32 for float16 data, rounded once on the store).
"""
import numpy as np
from numba import cuda

from .philox import HALF_MASK, LANES, SHIFT16, make_philox_block, philox_rounds

philox_rounds_cuda = cuda.jit(device=True)(philox_rounds)
philox_block_cuda = cuda.jit(device=True)(make_philox_block(philox_rounds_cuda))


@cuda.jit(device=True)
def _put(x, out, i, n, h, thr, scale):
    """out[i] = x[i] * scale if mask word h < thr else 0, for i < n (the tail block may overhang).
    The load is issued before the select, so it does not wait on the Philox result."""
    if i < n:
        v = x[i] * scale
        if h < thr:
            out[i] = v
        else:
            out[i] = 0


@cuda.jit(device=True)
def _put_pair(x, out, i, n, word, thr, scale):
    """Elements i and i + 1 from the low and high 16-bit halves of a 32-bit Philox word."""
    _put(x, out, i, n, word & HALF_MASK, thr, scale)
    _put(x, out, i + 1, n, word >> SHIFT16, thr, scale)


@cuda.jit(device=True)
def _keep_pair(out, i, n, word, thr):
    if i < n:
        out[i] = (word & HALF_MASK) < thr
    if i + 1 < n:
        out[i + 1] = (word >> SHIFT16) < thr


@cuda.jit
def dropout_flat(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) for flat contiguous x, out (out may alias x)."""
    n = x.size
    for b in range(cuda.grid(1), (n + LANES - 1) // LANES, cuda.gridsize(1)):
        r0, r1, r2, r3 = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
        i = LANES * b
        _put_pair(x, out, i, n, r0, thr, scale)
        _put_pair(x, out, i + 2, n, r1, thr, scale)
        _put_pair(x, out, i + 4, n, r2, thr, scale)
        _put_pair(x, out, i + 6, n, r3, thr, scale)


@cuda.jit
def keep_mask(out, key_lo, key_hi, off_lo, off_hi, thr):
    """out[i] = (element i is kept) for a flat bool array `out`."""
    n = out.size
    for b in range(cuda.grid(1), (n + LANES - 1) // LANES, cuda.gridsize(1)):
        r0, r1, r2, r3 = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
        i = LANES * b
        _keep_pair(out, i, n, r0, thr)
        _keep_pair(out, i + 2, n, r1, thr)
        _keep_pair(out, i + 4, n, r2, thr)
        _keep_pair(out, i + 6, n, r3, thr)


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
