"""CPU kernels for the max-norm constraint (Srivastava et al. 2014, sec. 5.1; Keras `MaxNorm`).

Each unit's incoming weight vector w is projected onto the L2 ball of radius c:

    w <- w * c / (||w|| + eps)   if ||w|| > c,   else unchanged        (torch.renorm's rule)

The launcher (fastdrop/max_norm.py) presents the weight as a 2-D view whose rows or columns are
the vectors to constrain. Rows: one prange task per row, norm then scale while the row is still in
cache, and rows inside the ball are only read, never written. Columns (the reduced axis is the
strided one): per-task blocks of columns, then one scaling pass; tasks own disjoint columns, so
there are no races.

One order of summation for every layout: ||w||^2 is summed in float64 as the CUDA kernel sums it
(kernels/variants_cuda.py), in LANES partial sums, partial j taking the elements j, j + LANES,
j + 2 LANES, ... in order, then added pairwise, j += j + h for h = LANES/2, ..., 1. A weight and
a strided view of the same values (a row slice, an F-ordered copy, a transpose taken by the
column kernel) get the same bits, as torch's renorm gives them, and the CUDA simulator gives the
CPU's bits in float64 too. The partial sums are independent, so the loops vectorize without
reassociation (a reassociated sequential sum ordered the additions by how Numba compiled each
layout: up to 12 ulp between a float64 weight and a row slice of it, a review 2026-12-07).
"""
import math

import numpy as np
import numba

from .config import cpu_kernel

# Columns per task in `max_norm_cols`: its live sums, 5 x 2048 float64s (80 KiB), stay in L2, and
# each row's 2048 elements stream in as 8-16 KiB of memory in order.
MAX_NORM_COL_BLOCK = 2048


# Partial sums of a vector's squares: the CUDA kernel's threads per block (MAX_NORM_THREADS),
# whose order the CPU kernels follow
LANES = 128


@cpu_kernel(parallel=False)
def _sum_squares(w, r, part):
    """||w[r]||^2 in float64, in the order of the module docstring; part: LANES float64s."""
    ncols = w.shape[1]
    part[:] = 0.0
    full = ncols - ncols % LANES
    for k0 in range(0, full, LANES):
        for j in range(LANES):
            v = np.float64(w[r, k0 + j])
            part[j] += v * v
    for j in range(ncols - full):
        v = np.float64(w[r, full + j])
        part[j] += v * v
    return _pairwise(part)


@cpu_kernel(parallel=False)
def _pairwise(part):
    """part[0] after the CUDA kernel's tree: part[j] += part[j + h] for h = LANES/2, ..., 1."""
    h = LANES // 2
    while h > 0:
        for j in range(h):
            part[j] += part[j + h]
        h //= 2
    return part[0]


@cpu_kernel
def max_norm_rows(w, max_value, eps):
    """Constrain each row of the 2-D array w (any strides) in place."""
    ncols = w.shape[1]
    for r in numba.prange(w.shape[0]):
        part = np.empty(LANES, np.float64)
        norm = math.sqrt(_sum_squares(w, r, part))
        if norm > max_value:
            s = w.dtype.type(max_value / (norm + eps))
            for k in range(ncols):
                w[r, k] *= s


@cpu_kernel
def max_norm_cols(w, max_value, eps):
    """Constrain each column of the 2-D array w (any strides) in place."""
    nrows, ncols = w.shape
    nblocks = (ncols + MAX_NORM_COL_BLOCK - 1) // MAX_NORM_COL_BLOCK
    # The documented order down the columns (row r: partial r % LANES of its column). The tree's
    # SUBTREES subtrees below its top levels are independent tasks: subtree k adds the partials
    # of lanes k, k + SUBTREES, ... depth first (made one at a time, in bit-reversed order, so
    # pairs complete as a binary counter carries: only a small stack of rows of sums is live),
    # each partial walking rows lane, lane + LANES, ... over a block of columns, which stream in
    # order. Then the top levels, then one scaling pass over the rows.
    sub = np.empty((SUBTREES, ncols), np.float64)
    for task in numba.prange(SUBTREES * nblocks):
        k, blk = task % SUBTREES, task // SUBTREES
        c0 = blk * MAX_NORM_COL_BLOCK
        c1 = min(ncols, c0 + MAX_NORM_COL_BLOCK)
        stack = np.empty((_SUB_DEPTH + 1, c1 - c0), np.float64)
        depth = 0
        for t in range(LANES // SUBTREES):
            lane = k + SUBTREES * _bit_reversed(t)
            acc = stack[depth]
            acc[:] = 0.0
            for r in range(lane, nrows, LANES):
                for j in range(c0, c1):
                    v = np.float64(w[r, j])
                    acc[j - c0] += v * v
            depth += 1
            carry = t
            while carry & 1:  # a completed pair of the tree: left + right (one rounding, commutative)
                stack[depth - 2] += stack[depth - 1]
                depth -= 1
                carry >>= 1
        sub[k, c0:c1] = stack[0]
    h = SUBTREES // 2
    while h > 0:  # the tree's top levels
        for i in range(h):
            sub[i] += sub[i + h]
        h //= 2
    scale = np.empty(ncols, w.dtype)
    outside = np.zeros(ncols, np.bool_)
    any_out = False
    for j in range(ncols):
        norm = math.sqrt(sub[0, j])
        if norm > max_value:
            scale[j] = max_value / (norm + eps)
            outside[j] = any_out = True
    if any_out:
        for r in numba.prange(nrows):
            for j in range(ncols):
                v = w[r, j]
                w[r, j] = v * scale[j] if outside[j] else v


# The tree's independent subtrees in `max_norm_cols` (its top log2(SUBTREES) levels are added
# after them): tasks for both cores with a few blocks of columns, each a stack of
# log2(LANES / SUBTREES) + 1 rows of sums.
SUBTREES = 8
_SUB_DEPTH = (LANES // SUBTREES).bit_length() - 1


@cpu_kernel(parallel=False)
def _bit_reversed(t):
    """t's log2(LANES / SUBTREES) low bits reversed: the partial of its subtree the depth-first
    walk takes t-th."""
    out = 0
    for _ in range(_SUB_DEPTH):
        out = (out << 1) | (t & 1)
        t >>= 1
    return out
