"""CPU kernels for the fused dense layers: dropout -> linear and DropConnect.

Notation: x is (N, I) (leading dims flattened), W is (O, I), b is (O,), s the scale (1/(1-p)
inverted, 1 classic), M the keep-mask of the README's contract, drawn over the shape named below.

    dropout_linear          y = (x ⊙ M s) Wᵀ + b              M over (N, I)
                            gx = (g W) ⊙ M s,  gW = gᵀ (x ⊙ M s),  gb = Σ_n g
    DropConnect, batch      y = x (W ⊙ M s)ᵀ + b              M over (O, I)
                            gx = g (W ⊙ M s),  gW = (gᵀ x) ⊙ M s,  gb = Σ_n g
    DropConnect, per sample y[n,o] = s Σ_i x[n,i] W[o,i] M[n,o,i] + b[o]     M over (N, O, I)
                            gx[n,i] = s Σ_o g[n,o] W[o,i] M[n,o,i]
                            gW[o,i] = s Σ_n g[n,o] x[n,i] M[n,o,i]

Two paths for the first two ops, chosen by measurement (docs/threads.md):
- numpy arrays: each forward / backward is one compiled call (`dropout_linear_fwd`, ...): the mask
  is applied to a scratch copy of one operand (x or W, never saved) and the products go through
  `np.dot` inside the kernel, i.e. BLAS (scipy's OpenBLAS). A GEMM is compute-bound and BLAS runs
  it at ~150-230 GFLOP/s here; a hand-written fused Numba GEMM would be a fraction of that, while
  the masked copy is one streaming pass over an operand O times smaller than the GEMM's work
  (0.09 ms next to a 2.5 ms GEMM at 256x1024->1024). The masking loop is serial: it is that cheap,
  and it keeps Numba's thread pool asleep while OpenBLAS's threads run.
- torch tensors: fastdrop._torch_linear applies the masks with `mask_pair` / `mask_inplace`
  here and dropout_cpu.dropout_flat(_serial) (serial below PARALLEL_MASK_MIN elements, parallel
  above) and runs the GEMMs with torch, on torch's own thread pool.
Masking loops index chunk-sized slices (`xs[k]`), not `x[start + k]`: measured 2.5x faster for a
copy and 10x for the in-place gradient update, which otherwise does not vectorize.

The per-sample (N, O, I) mask cannot be materialized, so those kernels are a fused loop: for each
(n, o) row the I mask words are generated into a small buffer (vectorized Philox, as in
dropout_cpu) and consumed at once by the dot product / the two gradient updates; backward
regenerates the same words. Work is split by output rows, so gW rows are private to a thread; gx
gets one partial buffer per thread (T x N x I, independent of O) reduced afterwards.
"""
import numpy as np
import numba

from .config import CPU_BLOCKS_PER_CHUNK, JIT_OPTIONS, cpu_kernel
from .dropout_cpu import dropout_flat_serial, fill_words

CHUNK = 4 * CPU_BLOCKS_PER_CHUNK
# Output rows per parallel task of the per-sample forward: (n, 16-row block) tasks give both cores
# work even for N = 1 and keep a task's W rows (16 x I) in L2. (Kept here, not in config.py,
# because config.py belongs to the dropout kernels' owner; it is this file's only knob.)
LINEAR_ROWS_PER_TASK = 16
# The torch path masks an operand with a serial loop below this many elements and with Numba's
# parallel kernel above: waking Numba's OpenMP pool (a second libgomp, docs/threads.md) costs more
# than it saves on small operands and leaves spinning threads next to torch's own pool.
PARALLEL_MASK_MIN = 1 << 21


@numba.njit(inline="always", **JIT_OPTIONS)
def _inplace_chunk(a, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c of a ⊙= M s. Its own loop: `dropout_flat_serial(a, a)` fails LLVM's overlap check
    and runs scalar (4x)."""
    start = c * CHUNK
    m = min(CHUNK, a.size - start)
    fill_words(buf, start // 4, (m + 3) // 4, off_lo, off_hi, key_lo, key_hi)
    zero = a.dtype.type(0)
    s_ = a[start:start + m]
    for k in range(m):
        s_[k] = s_[k] * scale if np.uint64(buf[k]) < thr else zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _pair_chunk(x, xm, gx, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c of xm = x ⊙ M s and gx ⊙= M s, one pass over the same mask words (flat, contiguous)."""
    start = c * CHUNK
    m = min(CHUNK, x.size - start)
    fill_words(buf, start // 4, (m + 3) // 4, off_lo, off_hi, key_lo, key_hi)
    zero = x.dtype.type(0)
    # chunk-sized slices, not start + k indexing: 10x faster measured (the in-place gx
    # update through start + k does not vectorize)
    xs, xms, gs = x[start:start + m], xm[start:start + m], gx[start:start + m]
    for k in range(m):
        keep = np.uint64(buf[k]) < thr
        xms[k] = xs[k] * scale if keep else zero
        gs[k] = gs[k] * scale if keep else zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _mask_pair(x, xm, gx, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """All chunks of `_pair_chunk`, on the calling thread."""
    buf = np.empty(CHUNK, np.uint32)
    for c in range((x.size + CHUNK - 1) // CHUNK):
        _pair_chunk(x, xm, gx, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@numba.njit(inline="always", **JIT_OPTIONS)
def _add_bias(y, b):
    for n in range(y.shape[0]):
        for o in range(y.shape[1]):
            y[n, o] += b[o]


@cpu_kernel(parallel=False)
def mask_inplace_serial(a, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """a ⊙= M s on the calling thread (below PARALLEL_MASK_MIN elements)."""
    buf = np.empty(CHUNK, np.uint32)
    for c in range((a.size + CHUNK - 1) // CHUNK):
        _inplace_chunk(a, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def mask_inplace(a, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """a ⊙= M s on Numba's pool, for operands of PARALLEL_MASK_MIN elements or more."""
    for c in numba.prange((a.size + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint32)
        _inplace_chunk(a, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel(parallel=False)
def mask_pair_serial(x, xm, gx, key_lo, key_hi, off_lo, off_hi, thr, scale):
    _mask_pair(x, xm, gx, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def mask_pair(x, xm, gx, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`_mask_pair` on Numba's pool, for operands of PARALLEL_MASK_MIN elements or more."""
    for c in numba.prange((x.size + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint32)
        _pair_chunk(x, xm, gx, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


# ---- dropout -> linear (numpy arrays: one compiled call, BLAS only) ----------------------------

@cpu_kernel(parallel=False)
def dropout_linear_fwd(x, w, b, has_bias, xm, y, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """y = (x ⊙ M s) Wᵀ + b; xm is an (N, I) scratch buffer."""
    dropout_flat_serial(x.reshape(-1), xm.reshape(-1), key_lo, key_hi, off_lo, off_hi, thr, scale)
    np.dot(xm, w.T, y)
    if has_bias:
        _add_bias(y, b)


@cpu_kernel(parallel=False)
def dropout_linear_bwd(g, x, w, xm, gx, gw, gb, ones, need_x, need_w, key_lo, key_hi, off_lo, off_hi,
                       thr, scale):
    """gx = (g W) ⊙ M s, gW = gᵀ (x ⊙ M s), gb = onesᵀ g (a GEMV; ones has N entries).

    need_x / need_w skip the GEMM of a gradient nobody asked for (a first layer's gx)."""
    if need_x:
        np.dot(g, w, gx)
        _mask_pair(x.reshape(-1), xm.reshape(-1), gx.reshape(-1), key_lo, key_hi, off_lo, off_hi,
                   thr, scale)
    elif need_w:
        dropout_flat_serial(x.reshape(-1), xm.reshape(-1), key_lo, key_hi, off_lo, off_hi, thr, scale)
    if need_w:
        np.dot(g.T, xm, gw)
    np.dot(ones, g, gb)


# ---- DropConnect with one mask per call (numpy arrays) -----------------------------------------

@cpu_kernel(parallel=False)
def dropconnect_fwd(x, w, b, has_bias, wm, y, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """y = x (W ⊙ M s)ᵀ + b; wm is an (O, I) scratch buffer."""
    dropout_flat_serial(w.reshape(-1), wm.reshape(-1), key_lo, key_hi, off_lo, off_hi, thr, scale)
    np.dot(x, wm.T, y)
    if has_bias:
        _add_bias(y, b)


@cpu_kernel(parallel=False)
def dropconnect_bwd(g, x, w, wm, gx, gw, gb, ones, need_x, need_w, key_lo, key_hi, off_lo, off_hi,
                    thr, scale):
    """gx = g (W ⊙ M s), gW = (gᵀ x) ⊙ M s, gb = onesᵀ g."""
    if need_x:
        dropout_flat_serial(w.reshape(-1), wm.reshape(-1), key_lo, key_hi, off_lo, off_hi, thr, scale)
        np.dot(g, wm, gx)
    if need_w:
        np.dot(g.T, x, gw)
        mask_inplace_serial(gw.reshape(-1), key_lo, key_hi, off_lo, off_hi, thr, scale)
    np.dot(ones, g, gb)


# ---- DropConnect with one mask per example (fused, never materialized) --------------------------

@cpu_kernel
def dropconnect_sample_fwd(x, w, b, has_bias, y, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """y[n, o] = s Σ_i x[n, i] W[o, i] M[n, o, i] + b[o]; tasks are (n, block of output rows)."""
    nn, ni = x.shape
    no = w.shape[0]
    nblk = (no + LINEAR_ROWS_PER_TASK - 1) // LINEAR_ROWS_PER_TASK
    zero = x.dtype.type(0)
    for task in numba.prange(nn * nblk):
        n = task // nblk
        o0 = (task - n * nblk) * LINEAR_ROWS_PER_TASK
        buf = np.empty(CHUNK + 8, np.uint32)
        xr = x[n]
        for o in range(o0, min(no, o0 + LINEAR_ROWS_PER_TASK)):
            wr = w[o]
            acc = zero
            j = 0
            while j < ni:
                seg = min(ni - j, CHUNK)
                first = (n * no + o) * ni + j
                b0 = first // 4
                fill_words(buf, b0, (first + seg - 1) // 4 - b0 + 1, off_lo, off_hi, key_lo, key_hi)
                shift = first - 4 * b0
                for k in range(seg):
                    prod = xr[j + k] * wr[j + k]
                    acc += prod if np.uint64(buf[shift + k]) < thr else zero
                j += seg
            y[n, o] = acc * scale + (b[o] if has_bias else zero)


@cpu_kernel
def dropconnect_sample_bwd(g, x, w, gx_part, gx, gw, gb, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Both weight-side gradients in one pass over the regenerated mask words.

    Thread t owns output rows [t O / T, (t+1) O / T): it writes gW and gb rows no other thread
    touches, and adds its share of gx into gx_part[t] (T = gx_part.shape[0]); the partials are
    summed afterwards, in parallel over the elements of gx.
    """
    nn, ni = x.shape
    no = w.shape[0]
    nt = gx_part.shape[0]
    zero = x.dtype.type(0)
    for t in numba.prange(nt):
        part = gx_part[t]
        part[:, :] = zero
        buf = np.empty(CHUNK + 8, np.uint32)
        for o in range(t * no // nt, (t + 1) * no // nt):
            # 1-D row views and a multiplier instead of a branch: 4x faster than 2-D indexing
            # with `if keep` (measured at 64x512->512), the k loop then vectorizes.
            gwr = gw[o]
            wr = w[o]
            gwr[:] = zero
            gbo = zero
            for n in range(nn):
                gno = g[n, o]
                gbo += gno
                gs = gno * scale
                xr = x[n]
                pr = part[n]
                j = 0
                while j < ni:
                    seg = min(ni - j, CHUNK)
                    first = (n * no + o) * ni + j
                    b0 = first // 4
                    fill_words(buf, b0, (first + seg - 1) // 4 - b0 + 1, off_lo, off_hi, key_lo, key_hi)
                    shift = first - 4 * b0
                    for k in range(seg):
                        f = gs if np.uint64(buf[shift + k]) < thr else zero
                        gwr[j + k] += f * xr[j + k]
                        pr[j + k] += f * wr[j + k]
                    j += seg
            gb[o] = gbo
    for e in numba.prange(nn * ni):
        n = e // ni
        i = e - n * ni
        acc = zero
        for t in range(nt):
            acc += gx_part[t, n, i]
        gx[n, i] = acc
