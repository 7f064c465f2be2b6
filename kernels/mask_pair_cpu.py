"""One mask applied to two arrays in one pass: the backward of dropout_linear and dropout_matmul
needs both the masked input (for the weight gradient) and the masked product g W (for the input
gradient), with the same mask; generating the Philox words once halves that work.
"""
import numpy as np
import numba

from .config import JIT_OPTIONS, cpu_kernel
from .dropout_cpu import CHUNK, _int_rng_args, _view_at, fill_chunk


@cpu_kernel
def dropout_pair(x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out1 = where(mask, x1 * scale, 0) and out2 = where(mask, x2 * scale, 0) with one mask, for
    flat contiguous arrays of equal size."""
    n = x1.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        _pair_chunk(c, buf, x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel(parallel=False)
def dropout_pair_serial_at(x1_address, x2_address, out1_address, out2_address, n, seed, offset, thr, scale):
    """`dropout_pair` on the calling thread over n contiguous elements of scale's dtype at four
    addresses (torch tensors' data_ptr(); seed, offset and thr as `dropout_flat_serial_at` takes
    them): a small dense layer's backward, without four numpy views (~6 us of a DropoutLinear
    8x512 step)."""
    x1 = _view_at(x1_address, n, scale)
    x2 = _view_at(x2_address, n, scale)
    out1 = _view_at(out1_address, n, scale)
    out2 = _view_at(out2_address, n, scale)
    key_lo, key_hi, off_lo, off_hi, t = _int_rng_args(seed, offset, thr)
    buf = np.empty(CHUNK, np.uint16)
    for c in range((n + CHUNK - 1) // CHUNK):
        _pair_chunk(c, buf, x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, t, scale)


@numba.njit(inline="always", **JIT_OPTIONS)
def _pair_chunk(c, buf, x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c (CHUNK elements from c * CHUNK) of both outputs, with one set of mask words."""
    zero = x1.dtype.type(0)
    start = c * CHUNK
    m = min(CHUNK, x1.size - start)
    fill_chunk(buf, start, m, (x1, x2), (out1, out2), off_lo, off_hi, key_lo, key_hi)
    # chunk slices, as in dropout_cpu: LLVM vectorizes these loops, not `start + k` indexing
    a1, a2 = x1[start:start + m], x2[start:start + m]
    o1, o2 = out1[start:start + m], out2[start:start + m]
    for k in range(m):
        keep = np.uint32(buf[k]) < thr
        o1[k] = a1[k] * scale if keep else zero
        o2[k] = a2[k] * scale if keep else zero

