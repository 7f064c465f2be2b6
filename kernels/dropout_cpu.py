"""CPU kernels for elementwise and grouped (spatial / per-sample) dropout.

The mask contract (README, "The mask"): logical C-order element i of a call with (seed, offset)
is kept iff  word(i) < T,  where word(i) is 32-bit word (i mod 4) of
Philox4x32-10(counter = (i//4 mod 2^32, i//4 div 2^32, offset mod 2^32, offset div 2^32),
key = (seed mod 2^32, seed div 2^32)), and T = floor((1 - p) * 2^32).
A kept element becomes x * scale, a dropped one 0.

Every kernel first fills a small scratch buffer with the words of a run of consecutive blocks
(a straight-line loop LLVM vectorizes: vpmuludq does 8 Philox lanes at once), then applies it.
Interleaving generation and application in one loop keeps Philox scalar and runs ~4x slower.
The apply loops index chunk slices (`xs[k]`, not `x[start + k]`): LLVM then proves the accesses
in bounds and free of overlap and vectorizes them.
"""
import numpy as np
import numba

from .config import CPU_BLOCKS_PER_CHUNK, JIT_OPTIONS, cpu_kernel
from .philox import philox_block_cpu

CHUNK = 4 * CPU_BLOCKS_PER_CHUNK  # elements (mask words) per scratch buffer


@numba.njit(inline="always", **JIT_OPTIONS)
def fill_words(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi):
    """buf[4*j + w] = word w of block first_block + j, for j < nblocks."""
    for j in range(nblocks):
        r0, r1, r2, r3 = philox_block_cpu(np.uint64(first_block + j), off_lo, off_hi, key_lo, key_hi)
        buf[4 * j] = np.uint32(r0)
        buf[4 * j + 1] = np.uint32(r1)
        buf[4 * j + 2] = np.uint32(r2)
        buf[4 * j + 3] = np.uint32(r3)


@cpu_kernel
def keep_mask(out, key_lo, key_hi, off_lo, off_hi, thr):
    """out[i] = (element i is kept) for a flat bool array `out`."""
    n = out.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint32)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_words(buf, start // 4, (m + 3) // 4, off_lo, off_hi, key_lo, key_hi)
        os = out[start:start + m]
        for k in range(m):
            os[k] = np.uint64(buf[k]) < thr


@numba.njit(inline="always", **JIT_OPTIONS)
def _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c of `dropout_flat`: elements [c * CHUNK, (c + 1) * CHUNK)."""
    start = c * CHUNK
    m = min(CHUNK, x.size - start)
    fill_words(buf, start // 4, (m + 3) // 4, off_lo, off_hi, key_lo, key_hi)
    zero = x.dtype.type(0)
    xs = x[start:start + m]
    os = out[start:start + m]
    for k in range(m):
        os[k] = xs[k] * scale if np.uint64(buf[k]) < thr else zero


@cpu_kernel
def dropout_flat(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) for flat contiguous x, out (out may alias x)."""
    for c in numba.prange((x.size + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint32)
        _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel(parallel=False)
def dropout_flat_serial(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`dropout_flat` on the calling thread, for inputs below CPU_PARALLEL_MIN elements: waking
    Numba's thread pool costs more than it saves there (its own function, not a flag: Numba's
    disk cache does not key on `parallel`)."""
    buf = np.empty(CHUNK, np.uint32)
    for c in range((x.size + CHUNK - 1) // CHUNK):
        _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def dropout_strided(xb, x_start, x_strides, ob, o_start, o_strides, shape,
                    key_lo, key_hi, off_lo, off_hi, thr, scale):
    """The same op on arbitrary (even negative) strides, addressed as base + sum(index * stride).

    xb / ob are 1-D views of the memory spans; strides are in elements. Rows of the last logical
    dimension are processed in order, so the mask words of a row are consecutive and generated
    in bulk as in `dropout_flat`.
    """
    nd = shape.size
    length = shape[nd - 1]
    rows = 1
    for d in range(nd - 1):
        rows *= shape[d]
    xs = x_strides[nd - 1]
    os = o_strides[nd - 1]
    zero = xb.dtype.type(0)
    rows_per_chunk = max(1, CHUNK // max(length, 1))
    for c in numba.prange((rows + rows_per_chunk - 1) // rows_per_chunk):
        buf = np.empty(CHUNK + 8, np.uint32)
        for r in range(c * rows_per_chunk, min(rows, (c + 1) * rows_per_chunk)):
            rem = r
            xo = x_start
            oo = o_start
            for d in range(nd - 2, -1, -1):
                idx = rem % shape[d]
                rem //= shape[d]
                xo += idx * x_strides[d]
                oo += idx * o_strides[d]
            j = 0
            while j < length:
                seg = min(length - j, CHUNK)
                first = r * length + j
                b0 = first // 4
                nblocks = (first + seg - 1) // 4 - b0 + 1
                fill_words(buf, b0, nblocks, off_lo, off_hi, key_lo, key_hi)
                shift = first - 4 * b0
                for k in range(seg):
                    v = xb[xo + (j + k) * xs]
                    ob[oo + (j + k) * os] = v * scale if np.uint64(buf[shift + k]) < thr else zero
                j += seg


@cpu_kernel
def apply_group_mask(x, out, keep, scale):
    """out[a, b, :] = x[a, b, :] * scale if keep[a * B + b] else 0, for 3-D (A, B, L) strided views."""
    nb = x.shape[1]
    zero = x.dtype.type(0)
    for g in numba.prange(x.shape[0] * nb):
        a = g // nb
        b = g - a * nb
        xr = x[a, b]  # row slices: the loops below vectorize (indexing x[a, b, k] does not)
        orow = out[a, b]
        if keep[g]:
            for k in range(xr.size):
                orow[k] = xr[k] * scale
        else:
            for k in range(xr.size):
                orow[k] = zero
