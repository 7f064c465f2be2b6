"""The mask contract, in numpy terms (README, "The mask"), and the seed of numpy arrays' masks.

Element i (logical C-order index) of a call with (seed, offset) and drop probability p is kept iff
its 16-bit mask word is below T(p) (contract version 2; the formula is written once, at the top of
kernels/philox.py):

    words = philox4x32_10(counter=(b mod 2^32, b >> 32, offset mod 2^32, offset >> 32),
                          key=(seed mod 2^32, seed >> 32)),   b = i // 8
    h(i)  = (words[(i mod 8) // 2] >> (16 * (i mod 2))) & 0xFFFF
    keep  = h(i) < T(p),   T(p) = floor((1 - p) * 2^16)   (float64; T(0) = 2^16 keeps all, T(1) = 0 drops all)
"""
import math
import numbers

import numpy as np

from .kernels import philox
from .kernels.philox import kernel_rng_args, philox4x32_array  # noqa: F401

from . import _alloc, _core, _seeds
from ._cpu import fill_keep_mask
from ._checks import NUMPY, WRITABLE_NUMPY, check_p, check_shape, check_u64, check_writable, shown


def keep_threshold(p):
    """T(p) above, as a Python int in [0, 2^16]: the ops' p rules (TypeError for a bool, a string
    or a tensor, ValueError outside [0, 1] or NaN)."""
    return philox.keep_threshold(check_p(p))


def manual_seed(seed):
    """Re-seed the numpy source that seed=None uses for numpy arrays and CUDA device arrays
    (torch tensors draw from torch's generator: `torch.manual_seed`)."""
    _seeds.reseed_numpy(check_u64(seed, "seed"))


def philox4x32(counter, key, rounds=10):
    """Philox4x32-`rounds` of every counter under one key.

    Args:
        counter: integers of shape (..., 4), each in [0, 2^32).
        key: integers of shape (2,).
        rounds: number of rounds (10 is the standard generator).
    Returns:
        numpy uint32 array of shape (..., 4).
    Example:
        >>> philox4x32([0, 0, 0, 0], [0, 0])
        array([1713891541, 3781805453, 3159862348, 2600524760], dtype=uint32)
    """
    c = np.asarray(counter)
    k = np.asarray(key)
    for name, given, a in (("counter", counter, c), ("key", key, k)):
        if a.dtype.kind in "fO" and _python_ints(given, a):
            # ints that numpy holds only as floats or objects: 2^64 or more, or below -2^63
            raise ValueError(f"{name} values must lie in [0, 2^32)")
        if a.dtype.kind not in "ui":
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
            raise ValueError(f"{name} values must lie in [0, 2^32)")
    if c.ndim == 0 or c.shape[-1] != 4:
        raise ValueError(f"counter must have shape (..., 4), got {c.shape}")
    if k.shape != (2,):
        raise ValueError(f"key must have shape (2,), got {k.shape}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)):
        raise TypeError(f"rounds must be an int, got {type(rounds).__name__} {shown(rounds)}")
    if not 0 <= rounds <= 1 << 20:  # the kernel counts rounds in an int64; more is no generator anyone uses
        raise ValueError(f"rounds must be in [0, 2**20], got {shown(rounds)}")
    flat = np.ascontiguousarray(c.reshape(-1, 4), dtype=np.uint32)
    out = np.empty_like(flat)
    philox4x32_array(flat, np.ascontiguousarray(k, dtype=np.uint32), int(rounds), out)
    return out.reshape(c.shape)


def _python_ints(given, a):
    """Is `given` (not a numpy array), which numpy read as the float or object array a, made of
    Python / numpy integers (not bools) only?"""
    if isinstance(given, np.ndarray) or not a.size:
        return False
    items = np.asarray(given, dtype=object).ravel()
    return all(isinstance(e, numbers.Integral) and not isinstance(e, (bool, np.bool_)) for e in items)


def _check_allocatable(nbytes):
    """Refuse, before allocating, a request larger than the process's memory (physical memory, or
    its cgroup's limit where lower: `_alloc.PHYSICAL_BYTES`): with memory overcommit numpy's
    allocation can succeed and the kernel's writes then get the process killed instead of raising."""
    if nbytes > _alloc.PHYSICAL_BYTES:
        raise MemoryError(f"dropout_mask: the requested mask needs {nbytes} bytes, more than this "
                          f"process's {_alloc.PHYSICAL_BYTES} bytes of memory (physical memory, or its "
                          f"cgroup's limit)")


def dropout_mask(shape, p, seed, offset=0, *, out=None):
    """The keep-mask that `fastdrop.dropout(x, p, seed=seed)` applies to an x of this shape.

    Args:
        shape: the logical shape; element order is C order whatever the data's strides.
        p: drop probability in [0, 1].
        seed, offset: integers in [0, 2^64); different offsets give independent masks.
        out: a writeable numpy bool array of `shape` to write the mask into (any strides).
    Returns:
        numpy bool array of `shape` (out when given), True where the element is kept.
    """
    shape = check_shape(shape)
    p = check_p(p)
    seed = check_u64(seed, "seed")
    offset = check_u64(offset, "offset")
    if out is not None:
        if type(out) not in WRITABLE_NUMPY or out.dtype != np.bool_:
            raise TypeError(f"out must be a numpy bool array or np.memmap (no np.matrix or other subclass), "
                            f"got {type(out).__name__} {getattr(out, 'dtype', '')}")
        if out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, expected {shape}")
        check_writable(out, NUMPY, "out")
    if out is None or not out.flags.c_contiguous:  # (a strided out takes a C-order working copy)
        _check_allocatable(math.prod(shape))
    try:
        flat = out if out is not None and out.flags.c_contiguous else np.empty(shape, dtype=np.bool_)
    except ValueError:  # numpy's limits: more than 64 dims, or an empty shape whose other sizes
        # overflow numpy's size arithmetic
        why = f"has {len(shape)} dims (a numpy array has at most 64)" if len(shape) > 64 else \
            "is too large for a numpy array"
        raise ValueError(f"dropout_mask: shape {shape} {why}") from None
    if flat.size:
        fill_keep_mask(flat, p, seed, offset)
    if out is None:
        return flat
    if flat is not out:
        out[...] = flat
    return out


def dropout_mask_device(shape, p, seed, offset=0):
    """`dropout_mask` computed on the GPU: a numba device array of bool, bit for bit the same mask."""
    shape = check_shape(shape)
    p = check_p(p)
    seed = check_u64(seed, "seed")
    offset = check_u64(offset, "offset")
    _cuda = _core.cuda_module()
    _cuda.require_gpu()
    keep = _cuda.cuda.device_array(shape, dtype=np.bool_)
    if keep.size:
        _cuda.keep_mask_into(keep, p, seed, offset)
    return keep
