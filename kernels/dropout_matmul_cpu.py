"""CPU kernel for dropout fused with the following matmul: out = dropout(a) @ b, batched.

The mask is the contract's mask over a's own shape: element (g, i, k) of a (g the flat batch index)
has logical index (g*M + i)*K + k. A task owns a tile of consecutive rows of one batch entry; its
mask words are consecutive, so they are generated in bulk (as in dropout_cpu), applied while
copying the tile into a small scratch matrix, and the scratch is multiplied by b through BLAS
(np.dot). The masked a is never materialized as a whole.

This kernel serves numpy inputs only, and its tile loop is serial on purpose: np.dot is scipy's
OpenBLAS with its own thread pool, and calling it from inside a prange loop (Numba's OpenMP pool)
nests two pools on 2 cores: OpenBLAS warns "Detect OpenMP Loop and this application may hang" and
the call ran 3x slower than torch's composite. Torch tensors take fastdrop's parallel mask kernel
followed by torch's GEMM on torch's own OpenMP pool instead (fastdrop/_torch_variants.py).
"""
import numpy as np
import numba

from .config import cpu_kernel
from .dropout_cpu import CHUNK, fill_words

# Elements of a per task tile (rows * K ~ 16K): the masked tile (64 KiB in float32) stays in L2
# while BLAS reads it. (Knob kept here, not in config.py, which another helper owns.)
MATMUL_TILE_ELEMS = 16384


@cpu_kernel(parallel=False)
def dropout_matmul(a, b, out, a_batched, b_batched, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out[g] = (mask_g * a[g'] * scale) @ b[g''] for C-contiguous a (Ga, M, K), b (Gb, K, N),
    out (G, M, N); g' = g if a_batched else 0 (same for b). Mask over a's (Ga, M, K) indices."""
    nbatch = out.shape[0]
    M = a.shape[1]
    K = a.shape[2]
    rows_per_tile = max(1, min(M, MATMUL_TILE_ELEMS // max(K, 1)))
    ntiles = (M + rows_per_tile - 1) // rows_per_tile
    zero = a.dtype.type(0)
    for job in range(nbatch * ntiles):
        g = job // ntiles
        i0 = (job - g * ntiles) * rows_per_tile
        i1 = min(M, i0 + rows_per_tile)
        ga = g if a_batched else 0
        gb = g if b_batched else 0
        n = (i1 - i0) * K
        tile = np.empty((i1 - i0, K), a.dtype)
        first = (ga * M + i0) * K
        b0 = first // 4
        nblocks = (first + n - 1) // 4 - b0 + 1
        buf = np.empty(4 * nblocks, np.uint32)
        fill_words(buf, b0, nblocks, off_lo, off_hi, key_lo, key_hi)
        shift = first - 4 * b0
        for r in range(i1 - i0):
            for k in range(K):
                v = a[ga, i0 + r, k]
                tile[r, k] = v * scale if np.uint64(buf[shift + r * K + k]) < thr else zero
        out[g, i0:i1, :] = np.dot(tile, b[gb])


@cpu_kernel
def dropout_pair(x1, x2, out1, out2, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out1 = where(mask, x1 * scale, 0) and out2 = where(mask, x2 * scale, 0) with one mask, for
    flat contiguous arrays of equal size: dropout_matmul's backward masks a (for grad_b) and
    g @ b^T (for grad_a) in one parallel region, generating the mask once."""
    n = x1.size
    zero = x1.dtype.type(0)
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint32)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_words(buf, start // 4, (m + 3) // 4, off_lo, off_hi, key_lo, key_hi)
        # chunk slices, as in dropout_cpu: LLVM vectorizes these loops, not `start + k` indexing
        a1, a2 = x1[start:start + m], x2[start:start + m]
        o1, o2 = out1[start:start + m], out2[start:start + m]
        for k in range(m):
            keep = np.uint64(buf[k]) < thr
            o1[k] = a1[k] * scale if keep else zero
            o2[k] = a2[k] * scale if keep else zero
