"""One mask applied to two arrays in one pass: the backward of dropout_linear and dropout_matmul
needs both the masked input (for the weight gradient) and the masked product g W (for the input
gradient), with the same mask; generating the Philox words once halves that work.
"""
import numpy as np
import numba

from .config import cpu_kernel
from .dropout_cpu import CHUNK, fill_chunk


@cpu_kernel
def dropout_pair(x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out1 = where(mask, x1 * scale, 0) and out2 = where(mask, x2 * scale, 0) with one mask, for
    flat contiguous arrays of equal size."""
    n = x1.size
    zero = x1.dtype.type(0)
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_chunk(buf, start, m, (x1, x2), (out1, out2), off_lo, off_hi, key_lo, key_hi)
        # chunk slices, as in dropout_cpu: LLVM vectorizes these loops, not `start + k` indexing
        a1, a2 = x1[start:start + m], x2[start:start + m]
        o1, o2 = out1[start:start + m], out2[start:start + m]
        for k in range(m):
            keep = np.uint32(buf[k]) < thr
            o1[k] = a1[k] * scale if keep else zero
            o2[k] = a2[k] * scale if keep else zero


dropout_pair_serial = dropout_pair.serial  # below the launchers' thresholds: the calling thread
