"""Launchers for the CUDA kernels (kernels/dropout_cuda.py): CUDA device arrays and torch CUDA tensors.

Imported by the dispatcher on the first CUDA input only, so `import fastdrop` never loads
numba.cuda. Without a GPU (and without NUMBA_ENABLE_CUDASIM=1) every entry point raises a
RuntimeError before any work: a CUDA input never silently falls back to the CPU.

Layout: the kernels work on flat C-contiguous memory. A non-contiguous device array is first
copied into a contiguous one (one extra device copy; the mask still follows the logical C-order
index, so the result is the same as for a contiguous input); with inplace=True the result is
then copied back into x. float16 data is computed in float32 and rounded once on the store,
exactly as the CPU path does.
"""
import math

import numba
import numpy as np
from numba import cuda

from .kernels import dropout_cuda as K
from .kernels.config import launch_shape
from .kernels.philox import LANES, kernel_rng_args
from ._checks import as_device_array, check_p, check_shape, check_u64, refuse_graph_capture, require_gpu

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


def _compute_scalar(dtype, value):
    """A scalar of the compute type: x's dtype, float32 for float16 (rounded once on the store)."""
    return np.float32(value) if dtype == np.float16 else dtype.type(value)


def _flat(a):
    return a.reshape(a.size)


def dropout_flat_into(x, out, p, seed, offset, scale, stream=0):
    """out = where(dropout_mask(x.shape, p, seed, offset), x * scale, 0); x, out contiguous."""
    blocks, threads = launch_shape(-(-x.size // K.TILE) * K.CUDA_THREADS)  # one block per tile
    K.dropout_flat[blocks, threads, stream](_flat(x), _flat(out), *kernel_rng_args(seed, offset, p),
                                            _compute_scalar(x.dtype, scale))
    return out


def keep_mask_into(keep, p, seed, offset, stream=0):
    """keep (a contiguous bool device array) = dropout_mask(keep.shape, p, seed, offset)."""
    blocks, threads = launch_shape(-(-keep.size // LANES))
    K.keep_mask[blocks, threads, stream](_flat(keep), *kernel_rng_args(seed, offset, p))
    return keep


def grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, stream=0, keep=None):
    """Mask = dropout_mask(x.shape[:group_ndim], p, seed, offset) broadcast over the remaining dims
    (same as fastdrop._cpu.grouped_dropout_into); x, out contiguous; `keep`: an optional
    bool scratch buffer of prod(x.shape[:group_ndim]) elements."""
    groups = math.prod(x.shape[:group_ndim])
    if keep is None:
        keep = cuda.device_array(groups, dtype=np.bool_, stream=stream)
    keep_mask_into(keep, p, seed, offset, stream)
    blocks, threads = launch_shape(x.size)
    K.apply_group_mask[blocks, threads, stream](_flat(x), _flat(out), keep, x.size // groups,
                                                _compute_scalar(x.dtype, scale))
    return out


def _run(x, out, p, seed, offset, scale, group_ndim, stream=0):
    if group_ndim:
        return grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, stream)
    return dropout_flat_into(x, out, p, seed, offset, scale, stream)


def _contiguous(x):
    if x.is_c_contiguous():
        return x
    tmp = cuda.device_array(x.shape, x.dtype)
    tmp[:] = x  # numba's strided device-to-device assignment kernel (it takes no Ellipsis)
    return tmp


def dropout_array(x, p, seed, offset, scale, group_ndim, inplace):
    """Dropout on a CUDA device array (numba, CuPy, anything with __cuda_array_interface__).

    Returns a numba device array of x's shape and dtype, or x itself (written) when inplace.
    Arguments are already validated by fastdrop.functional.
    """
    require_gpu()
    xd = as_device_array(x)
    if xd.size == 0:
        return x if inplace else cuda.device_array(xd.shape, xd.dtype)
    src = _contiguous(xd)
    if inplace and src is xd:
        _run(xd, xd, p, seed, offset, scale, group_ndim)
        return x
    out = cuda.device_array(xd.shape, xd.dtype)
    _run(src, out, p, seed, offset, scale, group_ndim)
    if inplace:
        xd[:] = out
        return x
    return out


def scale_array(x, factor, inplace):
    """x * factor on a CUDA device array (classic dropout at eval), in x's dtype."""
    require_gpu()
    xd = as_device_array(x)
    if xd.size == 0:
        return x if inplace else cuda.device_array(xd.shape, xd.dtype)
    # float16: the factor is rounded to float16 first, so float32(x) * float32(f16 factor) rounded
    # once is numpy's float16 product, x * np.float16(factor).
    if xd.dtype == np.float16:
        factor = np.float16(factor)
    src = _contiguous(xd)
    out = src if inplace and src is xd else cuda.device_array(xd.shape, xd.dtype)
    blocks, threads = launch_shape(xd.size)
    K.scale[blocks, threads](_flat(src), _flat(out), _compute_scalar(xd.dtype, factor))
    if inplace and out is not xd:
        xd[:] = out
    return x if inplace else out


def dropout_mask_device(shape, p, seed, offset=0):
    """`fastdrop.dropout_mask` computed on the device: a numba device array of bool, bit for bit
    the same mask."""
    shape = check_shape(shape)
    p = check_p(p)
    seed = check_u64(seed, "seed")
    offset = check_u64(offset, "offset")
    require_gpu()
    keep = cuda.device_array(shape, dtype=np.bool_)
    if keep.size:
        keep_mask_into(keep, p, seed, offset)
    return keep


def apply_tensor(x, p, seed, offset, scale, group_ndim, out=None):
    """The torch CUDA path of fastdrop._core (no autograd): launches on torch's current stream,
    writes into `out` (default: empty_like(x), torch's layout rules)."""
    import torch
    require_gpu()
    refuse_graph_capture(torch)
    if x.dtype == torch.bfloat16:
        # numba has no bfloat16 arrays (float16 goes straight into the kernels, computed in float32
        # in registers): compute in float32 and round once, as the CPU bridge does.
        res = apply_tensor(x.float(), p, seed, offset, scale, group_ndim)
        return res.to(x.dtype) if out is None else out.copy_(res)
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    src = x.detach() if x.is_contiguous() else x.detach().contiguous()
    direct = out.is_contiguous()
    dst = out.detach() if direct else torch.empty_like(src)
    with cuda.gpus[x.device.index]:
        # Our launches go on torch's current stream: ordered after the ops that produced x and
        # before those that read the result, with no synchronization (hence sync=False).
        stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
        xd = cuda.as_cuda_array(src, sync=False)
        od = cuda.as_cuda_array(dst, sync=False)
        if group_ndim:
            # The group mask buffer comes from torch's allocator, stream-ordered like the rest.
            keep = torch.empty(math.prod(x.shape[:group_ndim]), dtype=torch.bool, device=x.device)
            grouped_dropout_into(xd, od, p, seed, offset, scale, group_ndim, stream,
                                 keep=cuda.as_cuda_array(keep, sync=False))
        else:
            dropout_flat_into(xd, od, p, seed, offset, scale, stream)
    if not direct:
        out.copy_(dst)  # e.g. channels_last: the result keeps torch's layout for x
    return out

