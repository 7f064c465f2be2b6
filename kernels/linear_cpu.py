"""CPU kernels of per-sample DropConnect (fastdrop/linear.py), the one dense product with no vendor op.

Notation: x is (N, I) (leading dims flattened), W is (O, I), b is (O,), s the keep scale, M the
keep-mask of the README's contract over (N, O, I):

    y[n,o]  = s Σ_i x[n,i] W[o,i] M[n,o,i] + b[o]
    gx[n,i] = s Σ_o g[n,o] W[o,i] M[n,o,i]
    gW[o,i] = s Σ_n g[n,o] x[n,i] M[n,o,i]

The (N, O, I) mask cannot be materialized, so these kernels are a fused loop: for each (n, o) row
the I mask words are generated into a small buffer (vectorized Philox, as in dropout_cpu) and
consumed at once by the dot product / the two gradient updates; backward regenerates the same
words. Work is split by output rows, so gW rows are private to a task; gx gets one partial buffer
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
# because config.py belongs to the dropout kernels' owner; it is this file's only knob.)
LINEAR_ROWS_PER_TASK = 16


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
        buf = np.empty(CHUNK + LANES, np.uint16)
        xr = x[n]
        for o in range(o0, min(no, o0 + LINEAR_ROWS_PER_TASK)):
            wr = w[o]
            acc = zero
            j = 0
            while j < ni:
                seg = min(ni - j, CHUNK)
                shift = fill_run(buf, (n * no + o) * ni + j, seg, off_lo, off_hi, key_lo, key_hi)
                for k in range(seg):
                    prod = xr[j + k] * wr[j + k]
                    acc += prod if np.uint32(buf[shift + k]) < thr else zero
                j += seg
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
                    shift = fill_run(buf, (n * no + o) * ni + j, seg, off_lo, off_hi, key_lo, key_hi)
                    for k in range(seg):
                        f = gs if np.uint32(buf[shift + k]) < thr else zero
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
