"""Public functional API: dropout and its spatial variants on numpy, torch and CUDA data.

inverted (default):  training  y = x * m / (1 - p)      eval  y = x
classic (Srivastava et al. 2014):  training  y = x * m   eval  y = x * (1 - p)
with m = fastdrop.dropout_mask(shape, p, seed, offset). Spatial dropout draws m over the leading
(batch, channel) dims and broadcasts it over the rest.
"""
import warnings

import numpy as np

from . import _cpu, _seeds
from ._checks import check_float_dtype, check_mode, check_p, check_u64
from ._dispatch import CUDA_ARRAY, NUMPY, TORCH, array_kind, dtype_of


class RankError(ValueError, RuntimeError):
    """Input of an unsupported rank (a ValueError; also a RuntimeError, which torch raises)."""


def _train_scale(p, mode):
    if mode == "classic" or p == 1.0:
        return 1.0
    return 1.0 / (1.0 - p)


def _resolve_seed(seed, kind):
    if seed is not None:
        return check_u64(seed, "seed")
    return _seeds.draw_torch_seed() if kind == TORCH else _seeds.draw_numpy_seed()


def _apply(x, p, training, seed, offset, mode, group_ndim, inplace=False):
    """Validate, handle the trivial cases, then dispatch once by where x lives."""
    p = check_p(p)
    mode = check_mode(mode)
    offset = check_u64(offset, "offset")
    kind = array_kind(x)
    dtype = dtype_of(x, kind)
    if dtype != "bfloat16":
        check_float_dtype(dtype)
    if seed is not None:
        seed = check_u64(seed, "seed")
    if not training:
        if mode == "inverted" or p == 0.0:
            return x
        return _scaled(x, kind, 1.0 - p, inplace)
    if p == 0.0:
        return x
    scale = _train_scale(p, mode)
    if kind == TORCH:
        # seed=None is drawn inside the bridge, as a traceable op under torch.compile.
        from . import _torch_bridge
        return _torch_bridge.dropout(x, p, seed, offset, scale, group_ndim, inplace)
    if kind == NUMPY and inplace and not x.flags.writeable:
        # before the seed draw: a refused call leaves the seed stream untouched
        raise ValueError("inplace=True needs a writeable array; x is read-only")
    seed = _resolve_seed(seed, kind)
    if kind == CUDA_ARRAY:
        from . import _cuda
        return _cuda.dropout_array(x, p, seed, offset, scale, group_ndim, inplace)
    return _numpy_dropout(x, p, seed, offset, scale, group_ndim, inplace)


def _numpy_dropout(x, p, seed, offset, scale, group_ndim, inplace):
    work = x.astype(np.float32) if x.dtype == np.float16 else x
    out = work if inplace and work is x else np.empty_like(work)
    if group_ndim:
        _cpu.grouped_dropout_into(work, out, p, seed, offset, scale, group_ndim)
    else:
        _cpu.dropout_into(work, out, p, seed, offset, scale)
    if out.dtype != x.dtype:
        if inplace:
            x[...] = out
            return x
        return out.astype(x.dtype)
    return out


def _scaled(x, kind, factor, inplace):
    if kind == NUMPY:
        if inplace:
            x *= x.dtype.type(factor)
            return x
        return x * x.dtype.type(factor)
    if kind == TORCH:
        return x.mul_(factor) if inplace else x * factor
    from . import _cuda
    return _cuda.scale_array(x, factor, inplace)


def dropout(x, p=0.5, *, training=True, seed=None, offset=0, mode="inverted", inplace=False):
    """Dropout on a numpy array, torch tensor (CPU or CUDA) or CUDA device array.

    Args:
        x: floating point data of any shape and strides.
        p: drop probability in [0, 1].
        training: apply the mask (True) or the eval-time rule of `mode` (False).
        seed: int in [0, 2^64), or None to draw one (torch's generator for tensors,
            `fastdrop.manual_seed`'s numpy generator otherwise).
        offset: int in [0, 2^64); selects an independent mask stream for the same seed.
        mode: "inverted" (scale kept elements by 1/(1-p) in training) or "classic"
            (no scaling in training, multiply by 1-p at eval).
        inplace: write the result into x.
    Returns:
        the same kind of object as x, same dtype, shape and device.
    Example:
        >>> y = fastdrop.dropout(np.ones((2, 3), np.float32), 0.5, seed=0)
    """
    return _apply(x, p, training, seed, offset, mode, 0, inplace)


def _spatial_group_ndim(x, name, batched_rank, unbatched_rank):
    ndim = len(x.shape)
    if ndim == batched_rank:
        return 2
    if ndim == unbatched_rank:
        return 1
    raise RankError(f"{name}: Expected {unbatched_rank}D or {batched_rank}D input, "
                    f"but received a {ndim}D input of shape {tuple(x.shape)}")


def dropout1d(x, p=0.5, *, training=True, seed=None, offset=0, mode="inverted", inplace=False):
    """Drops whole channels of (N, C, L) or (C, L) input; mask = dropout_mask((N, C) or (C,), ...)."""
    group_ndim = _spatial_group_ndim(x, "dropout1d", 3, 2)
    return _apply(x, p, training, seed, offset, mode, group_ndim, inplace)


def dropout2d(x, p=0.5, *, training=True, seed=None, offset=0, mode="inverted", inplace=False):
    """Drops whole channels of (N, C, H, W) input (torch's rules: 3-D input is read as (N, C, L)
    with a warning, as torch does; fewer than 2 dims is an error)."""
    ndim = len(x.shape)
    if ndim < 2:
        raise RankError(f"dropout2d: Feature dropout requires at least 2 dimensions in the input, "
                        f"got shape {tuple(x.shape)}")
    if ndim == 3:
        warnings.warn("dropout2d: Received a 3D input; as torch does, it is read as (N, C, L) and "
                      "1D channel-wise dropout is applied. Use dropout1d for that.", UserWarning)
    elif ndim != 4:
        warnings.warn(f"dropout2d: Received a {ndim}-D input; expected a 4-D (N, C, H, W) input.",
                      UserWarning)
    return _apply(x, p, training, seed, offset, mode, 2, inplace)


def dropout3d(x, p=0.5, *, training=True, seed=None, offset=0, mode="inverted", inplace=False):
    """Drops whole channels of (N, C, D, H, W) or unbatched (C, D, H, W) input."""
    group_ndim = _spatial_group_ndim(x, "dropout3d", 5, 4)
    return _apply(x, p, training, seed, offset, mode, group_ndim, inplace)
