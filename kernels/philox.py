"""Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).

A counter-based generator: four 32-bit output words are a pure function of a 128-bit counter
(c0, c1, c2, c3) and a 64-bit key (k0, k1). Each of the 10 rounds is

    (hi0, lo0) = mulhilo(0xD2511F53, c0)          (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
    c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
    k = (k0 + 0x9E3779B9, k1 + 0xBB67AE85)  mod 2^32          (the key bump, after each round)

`philox_rounds` below is plain Python on uint64 scalars holding 32-bit values, written once
and compiled for both targets: `numba.njit` here and `numba.cuda.jit(device=True)` in
kernels/dropout_cuda.py. Every product of two 32-bit values fits in uint64, and every sum is
masked back to 32 bits, so the same source is exact under numpy scalars (the CUDA simulator),
LLVM on the CPU, and NVVM on the GPU: masks are bit-identical across devices by construction.

The mask contract, version 2 (README, "The mask"): logical C-order element i of a call with
(seed, offset) and drop probability p is kept iff  h(i) < T(p),  where

    b = i // 8,  (w0, w1, w2, w3) = Philox4x32-10(counter = (b lo, b hi, offset lo, offset hi),
                                                  key = (seed lo, seed hi))
    h(i) = 16-bit half (i mod 2) of word w[(i mod 8) // 2]    (half 0 = the low 16 bits)
    T(p) = floor((1 - p) * 2^16)                              (in [0, 2^16], float64 arithmetic)

Eight elements per Philox call: the Philox rounds are the larger half of the CPU kernels' work
(docs/cpu_kernels.md), and 16-bit halves made them 1.3x faster than one 32-bit word per element
(version 1; docs/mask_contract.md has the measurements). T(0) = 2^16 keeps everything, T(1) = 0 drops
everything; otherwise the keep probability is T/2^16, within 2^-16 of 1 - p.
"""
import math

import numpy as np
import numba

from .config import JIT_OPTIONS, cpu_kernel

M0 = np.uint64(0xD2511F53)
M1 = np.uint64(0xCD9E8D57)
W0 = np.uint64(0x9E3779B9)
W1 = np.uint64(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
MAX_U64 = (1 << 64) - 1  # seeds and offsets: 64-bit words (a Python int)
SHIFT32 = np.uint64(32)
ROUNDS = 10


def philox_rounds(c0, c1, c2, c3, k0, k1, rounds):
    """Philox4x32 with `rounds` rounds; every argument is a uint64 holding a 32-bit value."""
    for _ in range(rounds):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return c0, c1, c2, c3


def make_philox_block(rounds_fn):
    """Bind `philox_rounds` compiled for one target into the block function of the mask contract."""
    def philox_block(block, off_lo, off_hi, key_lo, key_hi):
        """The four 32-bit words of block `block` (eight 16-bit mask words, elements 8*block ..
        8*block + 7): counter = (block lo, block hi, offset lo, offset hi)."""
        return rounds_fn(block & MASK32, block >> SHIFT32, off_lo, off_hi, key_lo, key_hi, ROUNDS)
    return philox_block


philox_rounds_cpu = numba.njit(inline="always", **JIT_OPTIONS)(philox_rounds)
philox_block_cpu = numba.njit(inline="always", **JIT_OPTIONS)(make_philox_block(philox_rounds_cpu))


@cpu_kernel
def philox4x32_array(counters, key, rounds, out):
    """out[i, :] = Philox4x32-`rounds`(counters[i, :], key); counters (n, 4) uint32, key (2,) uint32."""
    k0 = np.uint64(key[0])
    k1 = np.uint64(key[1])
    for i in numba.prange(counters.shape[0]):
        r0, r1, r2, r3 = philox_rounds_cpu(np.uint64(counters[i, 0]), np.uint64(counters[i, 1]),
                                           np.uint64(counters[i, 2]), np.uint64(counters[i, 3]),
                                           k0, k1, rounds)
        out[i, 0] = np.uint32(r0)
        out[i, 1] = np.uint32(r1)
        out[i, 2] = np.uint32(r2)
        out[i, 3] = np.uint32(r3)


# ---- the scalars every mask kernel takes (README, "The mask") -------------------------------

LANES = 8            # mask elements per Philox block: four 32-bit words, two 16-bit halves each
MASK_BITS = 16
HALF_MASK = np.uint64(0xFFFF)
SHIFT16 = np.uint64(16)


def keep_threshold(p):
    """T(p) above, as a Python int in [0, 2^16]; ValueError for p outside [0, 1] (or NaN)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got p={p}")
    return int(math.floor((1.0 - p) * float(1 << MASK_BITS)))


_THRESHOLDS = {}  # p -> np.uint32(T(p)): a model uses a handful of p's, and this runs every call
_OFFSETS = {}     # offset -> (lo, hi) as np.uint64: almost always 0 (or a few MC / rank offsets)


def kernel_threshold(p):
    """T(p) as the kernels take it: np.uint32, cached per p."""
    thr = _THRESHOLDS.get(p)
    if thr is None:
        if len(_THRESHOLDS) >= 256:  # p from a schedule: bounded, not one entry per value forever
            _THRESHOLDS.clear()
        # uint32, not uint64: compared with 16-bit halves, the CPU apply loops vectorize in 32-bit lanes
        thr = _THRESHOLDS[p] = np.uint32(keep_threshold(p))
    return thr


def kernel_rng_args(seed, offset, p):
    """(key_lo, key_hi, off_lo, off_hi, threshold) for the kernels."""
    thr = kernel_threshold(p)
    off = _OFFSETS.get(offset)
    if off is None:
        if len(_OFFSETS) >= 256:
            _OFFSETS.clear()
        off = _OFFSETS[offset] = (np.uint64(offset & 0xFFFFFFFF), np.uint64(offset >> 32))
    u64 = np.uint64
    return u64(seed & 0xFFFFFFFF), u64(seed >> 32), off[0], off[1], thr
