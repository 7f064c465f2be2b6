"""CPU kernels for the max-norm constraint (Srivastava et al. 2014, sec. 5.1; Keras `MaxNorm`).

Each unit's incoming weight vector w is projected onto the L2 ball of radius c:

    w <- w * c / (||w|| + eps)   if ||w|| > c,   else unchanged        (torch.renorm's rule)

The launcher (fastdrop/max_norm.py) presents the weight as a 2-D view whose rows or columns are the
vectors to constrain. Rows: one prange task per row, norm then scale while the row is still in
cache, and rows inside the ball are only read, never written. Columns (the reduced axis is the
strided one): float64 partial sums per block of rows, walked in memory order, then their totals,
then a scaling pass (`max_norm_cols`); tasks write disjoint memory, so there are no races. Sums are
accumulated in float64.

The row kernel is compiled with fastmath={"reassoc"} on top of the house options: without it LLVM
must keep the sum's sequential order and cannot vectorize the reduction (4.8 ms vs 1.0 ms for a
4096x4096 float32 weight on the 2-core machine). Only reassociation is allowed (no NaN/inf or
contraction assumptions); the result differs from a sequential sum by float64 rounding only.
"""
import math

import numpy as np
import numba

from .config import JIT_OPTIONS, cpu_kernel

# `max_norm_cols` tasks: MAX_NORM_COL_TILE columns (32 KiB of float64 partial sums) by
# MAX_NORM_ROW_BLOCK rows, each row's share one contiguous run of memory. The tiling depends on
# the shape only, so the summation order, and the bits, do not depend on the thread count.
MAX_NORM_COL_TILE = 4096
MAX_NORM_ROW_BLOCK = 256


@cpu_kernel(fastmath={"reassoc"})
def max_norm_rows(w, max_value, eps):
    """Constrain each row of the 2-D array w (any strides) in place."""
    ncols = w.shape[1]
    for r in numba.prange(w.shape[0]):
        acc = 0.0
        for k in range(ncols):
            v = np.float64(w[r, k])
            acc += v * v
        norm = math.sqrt(acc)
        if norm > max_value:
            s = w.dtype.type(max_value / (norm + eps))
            for k in range(ncols):
                w[r, k] *= s


@numba.njit(inline="always", **JIT_OPTIONS)
def _add_squares(acc, w, r0, r1, c0):
    """acc[j] += w[r, c0 + j]**2 for r = r0, ..., r1 - 1 in that order, in float64. Four rows per
    pass over acc (the same sequential sum, written left to right): a row per pass loads and
    stores acc once per element read, and ran at half the read bandwidth."""
    n = acc.size
    r = r0
    while r + 4 <= r1:
        a, b, c, d = w[r, c0:c0 + n], w[r + 1, c0:c0 + n], w[r + 2, c0:c0 + n], w[r + 3, c0:c0 + n]
        for j in range(n):  # slices indexed from 0: the loop vectorizes
            va, vb, vc, vd = np.float64(a[j]), np.float64(b[j]), np.float64(c[j]), np.float64(d[j])
            acc[j] = acc[j] + va * va + vb * vb + vc * vc + vd * vd
        r += 4
    while r < r1:
        a = w[r, c0:c0 + n]
        for j in range(n):
            va = np.float64(a[j])
            acc[j] += va * va
        r += 1


@numba.njit(inline="always", **JIT_OPTIONS)
def _column_scales(total, scale, out, max_value, eps):
    """scale[j] and out[j] of the columns whose squares sum to total[j]; how many are out."""
    nout = 0
    for j in range(total.size):
        norm = math.sqrt(total[j])
        out[j] = norm > max_value
        scale[j] = max_value / (norm + eps) if out[j] else 1.0
        nout += out[j]
    return nout


@numba.njit(inline="always", **JIT_OPTIONS)
def _scale_columns(w, r0, r1, c0, scale, out, nout):
    """w[r, c0 + j] *= scale[j] where out[j], for rows r0 <= r < r1 (nout of the columns are out).
    Columns inside the ball are not written (as the row kernel leaves rows inside): a store of
    x * 1 would quiet a signalling NaN and could undo another thread's write. The conditional
    store vectorizes as a masked one, 8-16% slower than a plain one, which a tile with every
    column out takes."""
    n = scale.size
    for r in range(r0, r1):
        row = w[r, c0:c0 + n]
        if nout == n:
            for j in range(n):
                row[j] *= scale[j]
        else:
            for j in range(n):
                if out[j]:
                    row[j] *= scale[j]


@cpu_kernel
def max_norm_cols(w, max_value, eps):
    """Constrain each column of the 2-D array w (any strides; fast when its rows are contiguous)
    in place, in three parallel passes:

    1. each (row block, column tile) task adds its rows' squares into its own row of `part`,
       walking every row's tile in memory order;
    2. each column's norm is the sum of its row blocks' partial sums, in block order, which sets
       its scale; each tile counts its columns outside the ball;
    3. the columns outside the ball in flagged tiles are scaled, walked as in 1.

    Pass 3 reads the weight a second time (the norms need every row first): 2 reads and a write,
    against the row kernel's read and write. A weight of one row block (at most
    MAX_NORM_ROW_BLOCK rows) takes one pass instead, a task per tile doing all three. Walking
    columns down the rows instead (a task per block of 64 columns, every step a new row 16 KiB
    on) took 4-9x the row kernel's time (docs/cpu_kernels.md)."""
    nrows, ncols = w.shape
    if nrows == 0 or ncols == 0:
        return
    nrb = (nrows + MAX_NORM_ROW_BLOCK - 1) // MAX_NORM_ROW_BLOCK
    ntiles = (ncols + MAX_NORM_COL_TILE - 1) // MAX_NORM_COL_TILE
    if nrb == 1:
        # one row block: a task owns whole columns, and scales its tile right after summing it,
        # while it is still in cache (16 rows of a tile are 256 KiB of float32)
        for tile in numba.prange(ntiles):
            c0 = tile * MAX_NORM_COL_TILE
            n = min(ncols, c0 + MAX_NORM_COL_TILE) - c0
            acc = np.zeros(n, np.float64)
            _add_squares(acc, w, 0, nrows, c0)
            scale, out = np.empty(n, w.dtype), np.empty(n, np.bool_)
            nout = _column_scales(acc, scale, out, max_value, eps)
            if nout:
                _scale_columns(w, 0, nrows, c0, scale, out, nout)
        return
    part = np.empty((nrb, ncols), np.float64)
    for t in numba.prange(nrb * ntiles):
        rb = t // ntiles
        c0 = (t % ntiles) * MAX_NORM_COL_TILE
        acc = np.zeros(min(ncols, c0 + MAX_NORM_COL_TILE) - c0, np.float64)
        _add_squares(acc, w, rb * MAX_NORM_ROW_BLOCK, min(nrows, (rb + 1) * MAX_NORM_ROW_BLOCK), c0)
        part[rb, c0:c0 + acc.size] = acc
    # filled by pass 2, tile by tile (np.ones / np.zeros here would each be a parallel region)
    scale, out, tile_out = np.empty(ncols, w.dtype), np.empty(ncols, np.bool_), np.empty(ntiles, np.int64)
    for tile in numba.prange(ntiles):
        c0 = tile * MAX_NORM_COL_TILE
        c1 = min(ncols, c0 + MAX_NORM_COL_TILE)
        total = part[0, c0:c1].copy()
        for rb in range(1, nrb):
            pr = part[rb, c0:c1]
            for j in range(c1 - c0):
                total[j] += pr[j]
        tile_out[tile] = _column_scales(total, scale[c0:c1], out[c0:c1], max_value, eps)  # how many out
    for t in numba.prange(nrb * ntiles):
        tile = t % ntiles
        if tile_out[tile]:
            rb = t // ntiles
            c0 = tile * MAX_NORM_COL_TILE
            c1 = min(ncols, c0 + MAX_NORM_COL_TILE)
            _scale_columns(w, rb * MAX_NORM_ROW_BLOCK, min(nrows, (rb + 1) * MAX_NORM_ROW_BLOCK), c0,
                           scale[c0:c1], out[c0:c1], tile_out[tile])


# The serial twins, under the names the launcher picks below CPU_PARALLEL_MIN elements
max_norm_rows_serial = max_norm_rows.serial
max_norm_cols_serial = max_norm_cols.serial
