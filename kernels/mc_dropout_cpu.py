"""CPU kernels for MC dropout: T dropout samples of one input in one call.

Sample t draws its mask with its own offset (fastdrop.variants.mc_predict documents which), so a
task (t, chunk of elements) generates words with offset offsets[t] at the element's index within
the sample, exactly the words `dropout_mask(sample_shape, p, seed, offsets[t])` would give.

`dropout_linear_samples` is the fused head: y[t] = (h * m_t * scale) @ w_t + bias for all t, where
w_t = w.T is passed pre-transposed (in, out). Tiles of rows are masked into a scratch matrix and
multiplied through BLAS, as in dropout_matmul_cpu; the T masked copies of h never exist at once.
"""
import numpy as np
import numba

from .config import cpu_kernel
from .dropout_cpu import CHUNK, fill_words

# Elements of h per task tile in the fused head (see dropout_matmul_cpu.MATMUL_TILE_ELEMS).
HEAD_TILE_ELEMS = 16384


@cpu_kernel
def dropout_samples(x, out, off_lo, off_hi, key_lo, key_hi, thr, scale):
    """out[t] = where(mask(offset=offsets[t]), x[t] * scale, 0) for C-contiguous (T, L) x, out."""
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


@cpu_kernel
def dropout_linear_samples(h, w_t, bias, has_bias, out, off_lo, off_hi, key_lo, key_hi, thr, scale):
    """out[t] = (mask_t * h * scale) @ w_t + bias for h (N, K), w_t (K, C), out (T, N, C);
    mask_t = dropout_mask((N, K), p, seed, offsets[t])."""
    T = out.shape[0]
    N, K = h.shape
    rows = max(1, min(N, HEAD_TILE_ELEMS // max(K, 1)))
    ntiles = (N + rows - 1) // rows
    zero = h.dtype.type(0)
    for job in numba.prange(T * ntiles):
        t = job // ntiles
        i0 = (job - t * ntiles) * rows
        i1 = min(N, i0 + rows)
        n = (i1 - i0) * K
        tile = np.empty((i1 - i0, K), h.dtype)
        first = i0 * K
        b0 = first // 4
        nblocks = (first + n - 1) // 4 - b0 + 1
        buf = np.empty(4 * nblocks, np.uint32)
        fill_words(buf, b0, nblocks, off_lo[t], off_hi[t], key_lo, key_hi)
        shift = first - 4 * b0
        for r in range(i1 - i0):
            for k in range(K):
                v = h[i0 + r, k]
                tile[r, k] = v * scale if np.uint64(buf[shift + r * K + k]) < thr else zero
        res = np.dot(tile, w_t)
        if has_bias:
            for r in range(i1 - i0):
                for c in range(res.shape[1]):
                    res[r, c] += bias[c]
        out[t, i0:i1, :] = res
