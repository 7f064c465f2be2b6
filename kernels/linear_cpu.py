"""CPU kernels of per-sample DropConnect (fastdrop/linear.py), the one dense product with no vendor op.

Notation: x is (N, I) (leading dims flattened), W is (O, I), b is (O,), s the keep scale, M the
keep-mask of the README's contract over (N, O, I):

    y[n,o]  = s Σ_i x[n,i] W[o,i] M[n,o,i] + b[o]
    gx[n,i] = s Σ_o g[n,o] W[o,i] M[n,o,i]
    gW[o,i] = s Σ_n g[n,o] x[n,i] M[n,o,i]

The (N, O, I) mask cannot be materialized, so these kernels are a fused loop: for each (n, o) row
the I mask words are generated into a small buffer (vectorized Philox, as in dropout_cpu) and
consumed at once by the dot product (SUM_LANES partial sums) / the two gradient updates; backward
regenerates the same words. Work is split by output rows, so gW rows are private to a task; gx gets one partial buffer
per task (a fixed number of tasks, so the bits do not depend on the thread count) reduced after.
(The other dense products are vendor GEMMs next to dropout_cpu's mask kernel.)
"""
import numpy as np
import numba

from .config import cpu_kernel
from .dropout_cpu import CHUNK, fill_run
from .philox import LANES
# Output rows per parallel task of the per-sample forward: (n, 16-row block) tasks give both cores
# work even for N = 1 and keep a task's W rows (16 x I) in L2. (Kept here, not in config.py,
# because config.py belongs to the dropout kernels' owner, like SUM_LANES below.)
LINEAR_ROWS_PER_TASK = 16
# Partial sums of the forward's dot products (dropconnect_sample_fwd): one AVX-512 vector of
# float32; a fixed number, so the summation order does not depend on the machine.
SUM_LANES = 16


# ---- DropConnect with one mask per example (fused, never materialized) --------------------------

@cpu_kernel
def dropconnect_sample_fwd(x, w, b, has_bias, y, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """y[n, o] = s Σ_i x[n, i] W[o, i] M[n, o, i] + b[o]; tasks are (n, block of output rows).

    The dot product is summed in SUM_LANES fixed partial sums (position k of a mask chunk into
    lane k mod SUM_LANES, the lanes added in order at the end): an order that vectorizes, and the
    same on every machine and thread count (a single running sum cannot vectorize: 3x slower)."""
    nn, ni = x.shape
    no = w.shape[0]
    nblk = (no + LINEAR_ROWS_PER_TASK - 1) // LINEAR_ROWS_PER_TASK
    zero = x.dtype.type(0)
    for task in numba.prange(nn * nblk):
        n = task // nblk
        o0 = (task - n * nblk) * LINEAR_ROWS_PER_TASK
        buf = np.empty(CHUNK + LANES, np.uint16)
        kept = np.empty(CHUNK, x.dtype)
        lanes = np.empty(SUM_LANES, x.dtype)
        xr = x[n]
        for o in range(o0, min(no, o0 + LINEAR_ROWS_PER_TASK)):
            wr = w[o]
            lanes[:] = zero
            j = 0
            while j < ni:
                seg = min(ni - j, CHUNK)
                shift = fill_run(buf, (n * no + o) * ni + j, seg, off_lo, off_hi, key_lo, key_hi)
                words, xs, ws = buf[shift:shift + seg], xr[j:j + seg], wr[j:j + seg]
                for k in range(seg):
                    kept[k] = xs[k] * ws[k] if np.uint32(words[k]) < thr else zero
                full = seg - seg % SUM_LANES
                for k0 in range(0, full, SUM_LANES):
                    for lane in range(SUM_LANES):
                        lanes[lane] += kept[k0 + lane]
                for k in range(full, seg):
                    lanes[k - full] += kept[k]
                j += seg
            acc = zero
            for lane in range(SUM_LANES):
                acc += lanes[lane]
            y[n, o] = acc * scale + (b[o] if has_bias else zero)


@cpu_kernel
def dropconnect_sample_bwd(g, x, w, gx_part, gx, gw, gb, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Both weight-side gradients in one pass over the regenerated mask words.

    Task t owns output rows [t O / T, (t+1) O / T): it writes gW and gb rows no other task
    touches, and adds its share of gx into gx_part[t] (T = gx_part.shape[0], fixed by the caller);
    the partials are summed afterwards in task order, in parallel over the elements of gx.
    """
    nn, ni = x.shape
    no = w.shape[0]
    nt = gx_part.shape[0]
    zero = x.dtype.type(0)
    for t in numba.prange(nt):
        part = gx_part[t]
        part[:, :] = zero
        buf = np.empty(CHUNK + LANES, np.uint16)
        keep = np.empty(CHUNK, np.bool_)
        for o in range(t * no // nt, (t + 1) * no // nt):
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
                    shift = fill_run(buf, (n * no + o) * ni + j, seg, off_lo, off_hi, key_lo, key_hi)
                    # Three simple loops over 1-D slices (the multipliers, then one axpy per
                    # gradient) vectorize; the same work as one loop of both updates does not
                    # (LLVM gives up on it: 4.5x slower at 64x512->512, bits identical).
                    # A dropped term is selected away, not multiplied by 0: an inf or NaN x or W
                    # there gave 0 * inf = NaN gradients, where the forward and the CUDA kernels
                    # count it as exactly 0 (the one-mask route, a masked W through the GEMM,
                    # does so for a non-finite W only: README, "The mask").
                    words = buf[shift:shift + seg]
                    for k in range(seg):
                        keep[k] = np.uint32(words[k]) < thr
                    gws, xs = gwr[j:j + seg], xr[j:j + seg]
                    for k in range(seg):
                        gws[k] += gs * xs[k] if keep[k] else zero
                    ps, ws = pr[j:j + seg], wr[j:j + seg]
                    for k in range(seg):
                        ps[k] += gs * ws[k] if keep[k] else zero
                    j += seg
            gb[o] = gbo
    for e in numba.prange(nn * ni):
        n = e // ni
        i = e - n * ni
        acc = zero
        for t in range(nt):
            acc += gx_part[t, n, i]
        gx[n, i] = acc
