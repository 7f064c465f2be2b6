"""Launchers for the CPU kernels on numpy arrays: pick the contiguous or strided kernel, allocate.

Every launcher writes into a caller-given `out` of x's shape (any layout), so the torch bridge
can hand in `torch.empty_like(x)` and keep channels_last and other dense layouts as torch does.

float16 arrays, and bfloat16 data passed as uint16 views with `bf16=True` (numpy has no bfloat16),
go to the same kernels as 16-bit views, computed in float32 in registers and rounded once
(kernels/dropout_cpu.py): no float32 copy is made, so out of place costs the output alone and in
place (out is x) nothing.
"""
import math

import numpy as np

from .kernels import dropout_cpu
from .kernels.config import CPU_PARALLEL_MIN
from .kernels.layout import group_runs, merge_runs, unit_stride_dim
from .kernels.philox import LANES, kernel_rng_args


def span_view(a):
    """(base, strides): a 1-D view starting at a's first element covering the memory it spans,
    and a's strides in elements. Requires non-negative strides."""
    strides = np.array(a.strides, dtype=np.int64) // a.itemsize
    span = 1 + int(np.sum(strides * (np.array(a.shape, dtype=np.int64) - 1)))
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,)), strides


def _data_address(a):
    return a.__array_interface__["data"][0]


def _positive_strides(a):
    return all(s >= 0 for s in a.strides)


_HALF_BITS = (np.dtype(np.uint16), np.dtype(np.int16))


def _kernel_views(x, out, bf16):
    """(x, out, scale type) as the kernels take them: float32/float64 as they are; float16 as
    uint16 bits and bfloat16 as int16 bits (the kernels pick the format by that type), scale
    float32."""
    if bf16:
        if x.dtype not in _HALF_BITS or out.dtype not in _HALF_BITS:
            raise TypeError(f"bf16=True takes bfloat16 bits as uint16 (or int16) arrays, "
                            f"got x {x.dtype} and out {out.dtype}")
        return x.view(np.int16), out.view(np.int16), np.float32
    if x.dtype == np.float16 or out.dtype == np.float16:
        if x.dtype != out.dtype:
            raise TypeError(f"out must have x's dtype float16, got x {x.dtype} and out {out.dtype}")
        return x.view(np.uint16), out.view(np.uint16), np.float32
    if x.dtype in _HALF_BITS:
        raise TypeError(f"{x.dtype} data: pass bf16=True if it holds bfloat16 bits")
    return x, out, x.dtype.type


def dropout_into(x, out, p, seed, offset, scale, *, bf16=False, parallel_min=None):
    """out[...] = where(dropout_mask(x.shape, p, seed, offset), x * scale, 0).

    x, out: float32, float64 or float16 arrays, or bfloat16 bits as uint16 arrays with bf16=True
    (half types are computed in float32 and rounded once to nearest even). Contiguous data of
    parallel_min elements (default CPU_PARALLEL_MIN) and more runs on Numba's thread pool, smaller
    data on the calling thread."""
    if x.size == 0:
        return out
    xk, ok, scale_type = _kernel_views(x, out, bf16)
    _dropout_views(xk, ok, kernel_rng_args(seed, offset, p), scale_type(scale), parallel_min)
    return out


def _dropout_views(x, out, args, scale, parallel_min=None):
    if parallel_min is None:
        parallel_min = CPU_PARALLEL_MIN  # looked up per call (tests raise it)
    if x.flags.c_contiguous and out.flags.c_contiguous:
        big = x.size >= parallel_min
        if _data_address(x) == _data_address(out):  # in place
            kernel = dropout_cpu.dropout_flat_inplace if big else dropout_cpu.dropout_flat_inplace_serial
            kernel(x.reshape(-1), *args, scale)
            return
        kernel = dropout_cpu.dropout_flat if big else dropout_cpu.dropout_flat_serial
        kernel(x.reshape(-1), out.reshape(-1), *args, scale)
        return
    if not _positive_strides(x):
        x = np.ascontiguousarray(x)
    if not _positive_strides(out):
        tmp = np.empty(out.shape, out.dtype)
        _dropout_views(x, tmp, args, scale, parallel_min)
        out[...] = tmp
        return
    ones = tuple(d for d in range(x.ndim) if x.shape[d] == 1)
    if ones:  # size-1 dims change no logical index: without them the layout is plain to see
        x, out = np.squeeze(x, ones), np.squeeze(out, ones)  # (e.g. channels_last with W = 1)
    if x.ndim == 0:
        x, out = x.reshape(1), out.reshape(1)
    a = _unit_stride_dim(x, out)
    if a is not None and math.prod(x.shape[a + 1:]) % LANES:
        # rows start mid-block: longer rows spread the tile's fixed costs (its phase passes, and
        # with the scatter fill before them each row's own fill: channels_last 14x14 ran 2.3x
        # faster, docs/cpu_kernels.md); with rows whole blocks apart larger tiles ran 0-8% slower
        x, out = _merge_runs(x, out)
        a = _unit_stride_dim(x, out)
    if a is not None:
        # channels_last, transposed and other permuted layouts: tiles walked in memory order
        xb, xs = span_view(x)
        ob, os = span_view(out)
        kernel = dropout_cpu.dropout_tiled if x.size >= parallel_min else dropout_cpu.dropout_tiled_serial
        kernel(xb, xs, ob, os, np.array(x.shape, dtype=np.int64), a, *args, scale)
        return
    xb, xs = span_view(x)
    ob, os = span_view(out)
    dropout_cpu.dropout_strided(xb, 0, xs, ob, 0, os, np.array(x.shape, dtype=np.int64), *args, scale)


def _merge_runs(x, out):
    """x and out as views with their runs of memory merged (kernels/layout.py, `merge_runs`)."""
    shape, xs, os = merge_runs(x.shape, x.strides, out.strides)
    if len(shape) == x.ndim:
        return x, out
    # as_strided keeps a read-only array read-only
    return (np.lib.stride_tricks.as_strided(x, shape=shape, strides=xs),
            np.lib.stride_tricks.as_strided(out, shape=shape, strides=os))


def _unit_stride_dim(x, out):
    """The dim `dropout_tiled` walks memory along (kernels/layout.py, `unit_stride_dim`)."""
    return unit_stride_dim(x.shape, x.strides, out.strides, x.itemsize, out.itemsize)


def _view3(a, shape3):
    """a as an (A, B, L) view, or None when its strides do not allow one without a copy."""
    v = a.view()
    try:
        v.shape = shape3
    except AttributeError:
        return None
    return v


def grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, *, bf16=False, parallel_min=None):
    """Dropout with one mask element per index of x's first `group_ndim` dims (spatial dropout,
    DropPath): mask = dropout_mask(x.shape[:group_ndim], p, seed, offset), broadcast over the rest.
    dtypes as in `dropout_into`. Data of parallel_min elements (default CPU_PARALLEL_MIN) and more
    runs on Numba's pool (measured alone at 2^17 float32 elements: 15 us parallel, 19 serial; at
    2^18: 21 vs 53); the mask itself (a few thousand elements in practice) is drawn on the calling
    thread below CPU_PARALLEL_MIN groups."""
    if x.size == 0:
        return out
    if parallel_min is None:
        parallel_min = CPU_PARALLEL_MIN
    out_given = out
    x, out, scale_type = _kernel_views(x, out, bf16)
    lead = x.shape[:group_ndim]
    groups = math.prod(lead)
    if x.flags.c_contiguous and out.flags.c_contiguous:  # the common case: one launch, flat views
        groups_flat_into(x, out, groups, p, seed, offset, scale_type(scale), parallel_min)
        return out_given
    runs = _group_runs_views(x, out, group_ndim)
    if runs is not None:  # dense, each group in runs of memory: (L, N, D) seen as (N, L, D)
        xf, of, run = runs
        groups_flat_into(xf, of, groups, p, seed, offset, scale_type(scale), parallel_min, run)
        return out_given
    keep = np.empty(groups, dtype=np.bool_)
    fill_keep_mask(keep, p, seed, offset)
    big = x.size >= parallel_min
    inner = _inner_group_views(x, out, group_ndim)
    if inner is not None:  # channels_last: the last group dim (C) innermost in memory
        xv, ov = inner
        nb = xv.shape[2]
        inplace = _data_address(xv) == _data_address(ov) and xv.strides == ov.strides
        if nb <= INNER_ROWS_MAX_C and xv.strides[1] == nb * xv.itemsize and ov.strides[1] == nb * ov.itemsize:
            # few channels, each a's runs one contiguous row (N, H*W*C): the long-loop kernel
            rows = (xv.shape[0], xv.shape[1] * nb)
            if inplace:  # (one array: the loop vectorizes, as it does not over two views of one memory)
                apply = dropout_cpu.apply_group_mask_inner_inplace if big else \
                    dropout_cpu.apply_group_mask_inner_inplace_serial
                apply(xv.reshape(rows), keep, nb, scale_type(scale))
            else:
                apply = dropout_cpu.apply_group_mask_inner if big else dropout_cpu.apply_group_mask_inner_serial
                apply(xv.reshape(rows), ov.reshape(rows), keep, nb, scale_type(scale))
        elif inplace:
            apply = dropout_cpu.apply_group_mask_inner_strided_inplace if big else \
                dropout_cpu.apply_group_mask_inner_strided_inplace_serial
            apply(xv, keep, scale_type(scale))
        else:
            apply = dropout_cpu.apply_group_mask_inner_strided if big else \
                dropout_cpu.apply_group_mask_inner_strided_serial
            apply(xv, ov, keep, scale_type(scale))
        return out_given
    apply = dropout_cpu.apply_group_mask if big else dropout_cpu.apply_group_mask_serial
    shape3 = (groups // lead[-1], lead[-1], x.size // groups)
    if x.ndim > group_ndim + 1:
        # The mask is constant over the non-group dims, so they may be walked in any order: in
        # x's memory order, a permuted layout (channels_last, timm's (N, H, W, C) views) becomes
        # one contiguous row per group instead of a copy (x and out get the same permutation).
        rest = sorted(range(group_ndim, x.ndim), key=lambda d: -abs(x.strides[d]))
        perm = list(range(group_ndim)) + rest
        x, out = x.transpose(perm), out.transpose(perm)
    xv = _view3(x, shape3)
    if xv is None:
        xv = np.ascontiguousarray(x).reshape(shape3)
    ov = _view3(out, shape3)
    if ov is None:
        tmp = np.empty(shape3, out.dtype)
        apply(xv, tmp, keep, scale_type(scale))
        out[...] = tmp.reshape(out.shape)
        return out_given
    apply(xv, ov, keep, scale_type(scale))
    return out_given


def _group_runs_views(x, out, group_ndim):
    """(x, out, run): flat views of x's and out's memory in memory order, when both have the same
    dense layout with each group in runs of `run` elements (kernels/layout.py, `group_runs`), else
    None. Runs of at least LANES elements: shorter ones (a transposed matrix's columns) keep the
    general route below."""
    if x.strides != out.strides or not _positive_strides(x):
        return None
    item = x.itemsize
    if any(s % item for s in x.strides):
        return None
    layout = group_runs(x.shape, [s // item for s in x.strides], group_ndim)
    if layout is None or layout[1] < LANES:
        return None
    flat = (x.size,)
    return (np.lib.stride_tricks.as_strided(x, shape=flat, strides=(item,)),
            np.lib.stride_tricks.as_strided(out, shape=flat, strides=(out.itemsize,)), layout[1])


# `apply_group_mask_inner` (long loops over whole runs) for runs of at most this many elements,
# the loop per run above: Dropout2d channels_last forward+backward against torch's, same process
# (2026-12-06): C = 3 at 8x3x224x224 0.27x -> 0.90x, C = 4 at 1x4x512x512 0.39x -> 0.88x. Limited
# to 16 while C = 64 ran slower (32x64x56x56 1.06x -> 0.62x): its apply loop indexed the row at
# start + k and ran scalar; with slices (session 36) the serial kernel takes 1.50 ms against 1.52
# for the loop per run at C = 64, 49 vs 77 us at 8x32x32x32, and the same from C = 128 on;
# without grad, torch tensors: 8x32x32x32 82 -> 27 us, 8x64x28x28 91 -> 53 us (torch's 20-45).
INNER_ROWS_MAX_C = 64


def _inner_group_views(x, out, group_ndim):
    """(A, L, B) views of x and out without copies, B the last group dim and unit stride in both,
    A the other group dims and L the rest (channels_last (N, C, H, W) -> (N, H*W, C)); None when
    the layouts do not allow them."""
    if x.ndim <= group_ndim or x.shape[group_ndim - 1] == 1:
        return None
    c = group_ndim - 1
    if x.strides[c] != x.itemsize or out.strides[c] != out.itemsize:
        return None
    perm = list(range(c)) + list(range(group_ndim, x.ndim)) + [c]
    lead = math.prod(x.shape[:c])
    shape3 = (lead, x.size // (lead * x.shape[c]), x.shape[c])
    xv = _view3(x.transpose(perm), shape3)
    ov = _view3(out.transpose(perm), shape3)
    if xv is None or ov is None:
        return None
    return xv, ov


def groups_flat_into(x, out, groups, p, seed, offset, scale, parallel_min=None, run=None):
    """The one-launch grouped kernel on kernel views x, out that are flat in memory order (the
    dtypes the kernels take, scale already of the compute type): runs of `run` elements (default
    one run per group, x.size // groups), run r of group r % groups (kernels/layout.py,
    `group_runs`), kept iff mask element r % groups is. Parallel from parallel_min elements
    (default CPU_PARALLEL_MIN)."""
    if parallel_min is None:
        parallel_min = CPU_PARALLEL_MIN
    kernel = dropout_cpu.dropout_groups_flat if x.size >= parallel_min else dropout_cpu.dropout_groups_flat_serial
    kernel(x.reshape(-1), out.reshape(-1), x.size // groups if run is None else run, groups,
           *kernel_rng_args(seed, offset, p), scale)


def groups_flat_at(x_address, out_address, n, groups, p, seed, offset, scale, parallel_min=None, run=None,
                   like=None):
    """`groups_flat_into` on n elements of scale's dtype (float32 / float64), or of like's (a numpy
    uint16 / int16 zero: float16 / bfloat16 bits, scale float32), at two addresses, in memory
    order: torch tensors' memory, without numpy views (`_core._dense_grouped_dropout`)."""
    if parallel_min is None:
        parallel_min = CPU_PARALLEL_MIN
    kernel = dropout_cpu.dropout_groups_flat_at if n >= parallel_min else dropout_cpu.dropout_groups_flat_at_serial
    kernel(x_address, out_address, n, n // groups if run is None else run, groups,
           *kernel_rng_args(seed, offset, p), scale, scale if like is None else like)


def groups_inner_at(x_address, out_address, n, na, nb, p, seed, offset, scale, parallel_min=None, like=None):
    """Spatial dropout of a channels_last float32/float64 tensor (or float16 / bfloat16 bits with
    like, as `groups_flat_at`) with nb channels (any number), on its memory at two
    addresses ((N, H, W, C): na = N rows of runs of nb = C), one launch
    (`_core._dense_inner_grouped_dropout`)."""
    if parallel_min is None:
        parallel_min = CPU_PARALLEL_MIN
    kernel = dropout_cpu.dropout_groups_inner_at if n >= parallel_min else dropout_cpu.dropout_groups_inner_at_serial
    kernel(x_address, out_address, n, na, nb, *kernel_rng_args(seed, offset, p), scale, scale if like is None else like)


def fill_keep_mask(keep, p, seed, offset):
    """keep (a C-contiguous bool array) = dropout_mask(keep.shape, p, seed, offset); masks below
    CPU_PARALLEL_MIN elements (spatial masks: a few thousand) are drawn on the calling thread."""
    fill = dropout_cpu.keep_mask if keep.size >= CPU_PARALLEL_MIN else dropout_cpu.keep_mask_serial
    fill(keep.reshape(-1), *kernel_rng_args(seed, offset, p))
