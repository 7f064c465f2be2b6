"""CPU kernels for MC dropout: T dropout samples of one input in one call.

Sample t draws its mask with its own offset (fastdrop.variants.mc_predict documents which), so a
task (t, chunk of elements) generates words with offset offsets[t] at the element's index within
the sample, exactly the words `dropout_mask(sample_shape, p, seed, offsets[t])` would give.

x may be a broadcast view (stride 0 over t): the fused MC head masks T copies of one hidden
activation h in one call and hands them to a single torch GEMM. (A kernel that multiplied each
masked tile by np.dot inside prange was dropped: it nests scipy's OpenBLAS pool inside Numba's
OpenMP pool, see dropout_matmul_cpu.)
"""
import numpy as np
import numba

from .config import cpu_kernel
from .dropout_cpu import CHUNK, fill_words


@cpu_kernel
def dropout_samples(x, out, off_lo, off_hi, key_lo, key_hi, thr, scale):
    """out[t] = where(mask(offset=offsets[t]), x[t] * scale, 0) for (T, L) x (rows contiguous or
    broadcast) and C-contiguous out."""
    L = x.shape[1]
    nchunks = (L + CHUNK - 1) // CHUNK
    zero = x.dtype.type(0)
    for job in numba.prange(x.shape[0] * nchunks):
        t = job // nchunks
        start = (job - t * nchunks) * CHUNK
        m = min(CHUNK, L - start)
        buf = np.empty(CHUNK, np.uint32)
        fill_words(buf, start // 4, (m + 3) // 4, off_lo[t], off_hi[t], key_lo, key_hi)
        for k in range(m):
            out[t, start + k] = x[t, start + k] * scale if np.uint64(buf[k]) < thr else zero


# The same loop compiled serial (prange runs as range): used below PARALLEL_MIN elements, where
# waking Numba's OpenMP pool (a second OpenMP runtime next to torch's, docs/threads.md) between
# torch's GEMMs costs more than the mask work.
dropout_samples_serial = cpu_kernel(parallel=False)(dropout_samples.py_func)
PARALLEL_MIN = 1 << 21
