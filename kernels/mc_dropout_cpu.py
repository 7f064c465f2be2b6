"""CPU kernels for MC dropout: T dropout samples of one input in one call.

Sample t draws its mask with its own offset (fastdrop/nn/mc.py, mc_predict, documents which), so a
task (t, chunk of elements) generates words with offset offsets[t] at the element's index within
the sample, exactly the words `dropout_mask(sample_shape, p, seed, offsets[t])` would give.

x may be one row for every sample ((1, L)): the fused MC head masks T copies of one hidden
activation h in one call and hands them to a single torch GEMM. (Not a stride-0 broadcast view:
Numba types that as a non-contiguous array and the apply loop ran scalar, 1.86 vs 0.22 ms for
32 samples of 32768 elements.) (A kernel that multiplied each
masked tile by np.dot inside prange was dropped: it nests scipy's OpenBLAS pool inside Numba's
OpenMP pool, docs/threads.md.)
"""
import numpy as np
import numba

from .config import JIT_OPTIONS, cpu_kernel
from .dropout_cpu import CHUNK, fill_chunk


@numba.njit(inline="always", **JIT_OPTIONS)
def _samples_chunk(x, out, job, nchunks, off_lo, off_hi, key_lo, key_hi, thr, scale):
    """Chunk `job` of the (sample, chunk) grid: mask words with sample t's offset, then apply."""
    L = out.shape[1]
    t = job // nchunks
    start = (job - t * nchunks) * CHUNK
    m = min(CHUNK, L - start)
    buf = np.empty(CHUNK, np.uint16)
    xt, ot = x[t if x.shape[0] > 1 else 0], out[t]
    fill_chunk(buf, start, m, (xt,), (ot,), off_lo[t], off_hi[t], key_lo, key_hi)
    zero = x.dtype.type(0)
    xs, os = xt[start:start + m], ot[start:start + m]  # indexed from 0: the loop vectorizes
    for k in range(m):
        os[k] = xs[k] * scale if np.uint32(buf[k]) < thr else zero


@cpu_kernel
def dropout_samples(x, out, off_lo, off_hi, key_lo, key_hi, thr, scale):
    """out[t] = where(mask(offset=offsets[t]), x[t] * scale, 0) for a (T, L) x, or a (1, L) x
    that every sample reads, both C-contiguous, and a C-contiguous (T, L) out."""
    nchunks = (out.shape[1] + CHUNK - 1) // CHUNK
    for job in numba.prange(out.shape[0] * nchunks):
        _samples_chunk(x, out, job, nchunks, off_lo, off_hi, key_lo, key_hi, thr, scale)


# The same loop, serial: used below PARALLEL_MIN elements, where waking the OpenMP team (torch's
# and Numba's, one runtime: docs/threads.md) between torch's GEMMs costs more than the mask work. A function of its own (not a re-jit of dropout_samples.py_func): Numba's on-disk cache
# keys entries by bytecode and signature, not by the parallel flag.
@cpu_kernel(parallel=False)
def dropout_samples_serial(x, out, off_lo, off_hi, key_lo, key_hi, thr, scale):
    nchunks = (out.shape[1] + CHUNK - 1) // CHUNK
    for job in range(out.shape[0] * nchunks):
        _samples_chunk(x, out, job, nchunks, off_lo, off_hi, key_lo, key_hi, thr, scale)


PARALLEL_MIN = 1 << 21
