"""One pipeline for every masked op.

An op is declared once (`MaskedOp`, in the file of its family): its operands, a shape check, its
forward and backward written against a backend `B` that offers the mask-apply kernel and the vendor
GEMMs (`B.mask`, `B.linear`, `B.matmul`, ...), its eval rule and its fake (shape) function.
Everything else is here and shared, in this order:

    validate (nothing drawn, nothing touched) -> eval / p=0 shortcut -> resolve the seed
    (explicit, torch's generator, fastdrop's numpy generator; none drawn at p = 1 or for an empty
    operand, where the result does not depend on it) -> rank stream offset ->
    dispatch on where the data lives -> numpy / CUDA device array: op.forward on that backend;
    torch: one eager autograd.Function (setup_context, jvp, vmap) for every op, or under
    torch.compile or torch.jit.trace the op's torch.library custom op (register_fake +
    register_autograd) -> kernel.

One route skips the Function: the grouped masks (spatial dropout, DropPath rows) of small CPU
tensors under autograd are recorded as torch's multiply by per-group factors, whose backward is
torch's C++ (`_grouped.native_grouped`). Values are the kernel's, bit for bit. `training_lane`
takes a training step's default call of dropout and the grouped ops to its route without the
general checks, which such a call passes; a small contiguous elementwise call there gets a lighter
Function of its own (`LaneDropout`: the same kernel calls, its arguments made once). What torch
is doing around a call (compiling, tracing, functorch transforms, autocast, graph capture) is
asked through `_torch_state`.

Backward formulas are written with differentiable pieces (the dropout op, its own derivative, and
torch GEMMs), so double backward works and only the declared operands and (seed, offset) are saved,
never a mask. Under torch.compile a seed=None draw is the opaque `fastdrop::draw_seed` op, which
consumes torch's generator exactly as eager does; the seed then travels as a 0-d int64 tensor and
the offset as the int64 with the same bits (op schemas have no uint64). Compiled autograd traces
an eager Function's backward with Dynamo; there the backward takes that form too (`_traced_rng`),
so its masks are the custom ops. During CUDA-graph capture a seed=None call on a CUDA tensor takes
the custom op too, eagerly, with its seed drawn on the device (`capturing`): the kernels read it
from memory, so every replay draws a new mask.
"""
import contextlib
import math
import sys
from typing import NamedTuple

import numpy as np

from . import _autocast, _cpu, _seeds
from ._alloc import PHYSICAL_BYTES, check_output_bytes
from ._alloc import empty_like as _pooled_empty_like
from ._checks import (CUDA_ARRAY, MAX_U64, NUMPY, TORCH, InplaceLeafError, announce_write, check_array, import_torch,
                      check_bool, check_companions, check_device_byte_order, check_out, check_out_is_x, check_p,
                      check_plain_memory, check_storage, check_u64, check_writable, fill_torch_floats,
                      is_subclass_like, mark_written, numpy_view, quiet_under_jit_trace, squeeze_past_numpy, traced)
from ._dynamo_skip import MARKED, keep_dynamo_out
from ._grouped import grouped_layout, native_grouped, native_layout, one_element_groups
from ._torch_state import (NO_LEVELS, batched_for_vmap, batched_levels, capturing, compiling,
                           forward_ad_active, functorch_interpreters, grad_enabled, grad_levels_active,
                           grad_transform_active, modes_off, past_modes, tracing_dispatch_mode,
                           unwrapped, vmap_levels)
from .kernels import config, dropout_cpu
from .kernels.mask_pair_cpu import dropout_pair, dropout_pair_serial_at
from .kernels.config import CPU_PARALLEL_MIN
from .kernels.layout import tiled_layout
from .kernels.philox import LANES, kernel_rng_args, kernel_threshold


class Rng(NamedTuple):
    """What a mask is a function of. `seed` is an int, or a 0-d int64 tensor under torch.compile.
    rank_stream: the offset still lacks this process's rank stream offset, which the custom op
    adds when it runs (the backward and vmap rule of a recorded seed=None call: a compiled
    backward graph is traced once, maybe on another rank, whose offset it must not keep)."""
    p: float
    seed: object
    offset: int
    scale: float
    rank_stream: bool = False


_new_tuple = tuple.__new__


def _rng(p, seed, offset, scale):
    """Rng(p, seed, offset, scale) without the NamedTuple's Python-level __new__ (half the cost;
    this runs on every call)."""
    return _new_tuple(Rng, (p, seed, offset, scale, False))


def _seed_int(seed):
    if isinstance(seed, int):
        return seed
    if seed.is_cuda:  # a CUDA-graph capture's seed (`capturing`): only the kernels may read it
        raise RuntimeError("this fastdrop route needs its seed on the host, and under CUDA-graph "
                           "capture the seed lives on the device: it is not supported inside a "
                           "captured region (pass an explicit seed=, or run it outside the capture)")
    return int(seed) & MAX_U64


def _to_i64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def rows(a):
    """a (..., k) as the 2-D (rows, k) the GEMMs of a backward take (numpy or torch); a 2-D a
    itself."""
    if a.ndim == 2:
        return a
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _sum_to(t, shape):
    """t summed to `shape`, the gradient of an operand broadcast to t's shape (torch's
    `sum_to_size`): over t's extra leading dims and over the dims where `shape` has size 1."""
    shape = tuple(shape)
    if tuple(t.shape) == shape:
        return t
    lead = len(t.shape) - len(shape)
    if lead:
        t = t.sum(tuple(range(lead)))
    stretched = tuple(d for d, n in enumerate(shape) if n == 1 and t.shape[d] != 1)
    return t.sum(stretched, keepdims=True) if stretched else t


# ---- backends: the pieces every op's forward and backward are written with ----------------------

class NumpyBackend:
    """numpy arrays: fastdrop's CPU kernels and numpy's BLAS."""

    @classmethod
    def op(cls, op, operands, rng, params=()):
        """Another masked op inside a formula (e.g. a backward written with other ops)."""
        return op.forward(cls, operands, rng, params)

    @staticmethod
    def raw_ok(rng, *operands):
        """Whether a formula may call a kernel directly instead of going through ops."""
        return True

    @staticmethod
    def mask(x, rng, group_ndim=0, out=None, parallel_min=None):
        if out is None:
            out = np.empty_like(x)
        if group_ndim and one_element_groups(x.shape, group_ndim):
            group_ndim = 0  # the same mask (`one_element_groups`)
        if group_ndim:
            return _cpu.grouped_dropout_into(x, out, rng.p, rng.seed, rng.offset, rng.scale, group_ndim)
        return _cpu.dropout_into(x, out, rng.p, rng.seed, rng.offset, rng.scale, parallel_min=parallel_min)

    @classmethod
    def mask_pair(cls, a, b, rng, parallel_min=None):
        return cls.mask(a, rng, parallel_min=parallel_min), cls.mask(b, rng, parallel_min=parallel_min)

    @staticmethod
    def scale(x, factor, inplace=False):
        if factor == 1.0:
            return x
        if x.dtype == np.float16:  # float32 arithmetic rounded once, as every other half path
            y = (x.astype(np.float32) * np.float32(factor)).astype(np.float16)
        else:
            y = x * x.dtype.type(factor)
        if type(y) is not np.ndarray:  # numpy's arithmetic on a 0-d array gives a scalar
            y = np.asarray(y)
        if inplace:
            x[...] = y
            return x
        return y

    @staticmethod
    def linear(x, w, b):
        y = np.matmul(x, w.T)
        return y if b is None else y + b

    matmul = staticmethod(np.matmul)
    sum_to = staticmethod(_sum_to)

    @staticmethod
    def unsqueeze0(a):
        return a[None]

    @staticmethod
    def mT(a):
        return np.swapaxes(a, -1, -2)


@past_modes  # (the kernels write through its address)
def empty_like(x):
    """`_alloc.empty_like` (a pooled output from 32 MiB) past the thread's modes."""
    return _pooled_empty_like(x)


def torch_empty_like(t):
    """torch.empty_like(t), past the thread's modes where one is on (`past_modes`: the kernels
    write through its address; inline, a call fewer on the small calls' path)."""
    torch = sys.modules["torch"]
    C = torch._C
    if C._len_torch_dispatch_stack() or C._len_torch_function_stack():
        with modes_off():
            return torch.empty_like(t)
    return torch.empty_like(t)


_FLAT_SCALARS = {}  # torch float32/float64 -> numpy scalar type; filled on first use (no torch at import)
_SCALES = {}        # (torch dtype, scale) -> the kernel's scale scalar: a model uses a handful


def _small_dense_dropout(x, p, seed, offset, scale):
    """Elementwise dropout of a small C-contiguous float32/float64 CPU tensor (no autograd): the
    serial kernel straight on the memory of x and a fresh output. That is the kernel
    _cpu.dropout_into picks for such data; skipping its dtype and layout dispatch saves
    microseconds on the calls where they matter (a small layer's forward and backward)."""
    return _serial_dropout(x, _serial_args(x.dtype, p, seed, offset, scale))


def _serial_args(dtype, p, seed, offset, scale):
    """The elementwise `*_at` kernels' arguments after the data, for a torch float32/float64 or
    float16/bfloat16 dtype: (seed, offset) as the int64 bits of their uint64 values, T(p) as an
    int, the scale as the kernel's numpy scalar, and the element type the kernel reads (the
    scale's own for float32/float64; for a half type its bits, `_HALF_BITS`, with a float32 scale:
    computed in float32, rounded once); Python ints are the arguments Numba's dispatcher types
    fastest (dropout_cpu._int_rng_args). The pair kernel takes the first four (no half types)."""
    key = (dtype, p, scale)
    constants = _SERIAL_CONSTANTS.get(key)  # a numpy scalar costs more to make than to look up
    if constants is None:
        if len(_SERIAL_CONSTANTS) >= 256:  # p from a schedule: bounded
            _SERIAL_CONSTANTS.clear()
        kernel_scale = _kernel_scale(dtype, scale)
        constants = _SERIAL_CONSTANTS[key] = (int(kernel_threshold(p)), kernel_scale,
                                              _HALF_BITS.get(dtype, kernel_scale))
    return (seed - _TWO_64 if seed > _MAX_I64 else seed, offset - _TWO_64 if offset > _MAX_I64 else offset,
            *constants)


# (torch dtype, p, scale) -> (T(p) as an int, the kernel's scale scalar, the element type's scalar)
_SERIAL_CONSTANTS = {}
_TWO_64, _MAX_I64 = 1 << 64, (1 << 63) - 1


def _serial_dropout(x, args):
    """`_small_dense_dropout` with its kernel arguments already made (`_serial_args`)."""
    out = torch_empty_like(x)  # contiguous, as x
    dropout_cpu.dropout_flat_serial_at(x.data_ptr(), out.data_ptr(), x.numel(), *args)
    return out


def _permuted_dropout(x, p, seed, offset, scale, out, limit):
    """Elementwise dropout of a float32/float64 CPU tensor that is not C-contiguous, or a
    float16/bfloat16 one (its bits, computed in float32: `_serial_args`' element type), into out
    (None: a new tensor in torch's layout for x's dropout), or None (nothing done: the numpy
    launcher's route) where out has another dtype or lazy negation. The mask follows the logical
    index, so:
    - where x and out share a unit-stride dim other than the last (channels_last, a transposed
      matrix, other permuted dense views), the tiled kernel on their memory by address, as
      `_cpu.dropout_into` would run it without its numpy views (~40 us of views and layout
      checks a call);
    - no such dim, and a C-contiguous fresh output (a plain slice; an expanded x, the incoming
      gradient of a sum or mean): x's values copied into the output and the flat kernel in
      place there; the copy of an expanded x is a fill, where the strided kernel ran scalar
      (4096x4096 backward: 20 ms, torch's 12.8, a contiguous gradient 2.6);
    - a small x whose tiles would be mostly empty, or that has few elements: x copied to C order
      and the serial flat kernel (then torch's copy into a permuted fresh output).
    Bit for bit the kernels' results (one word per logical index; copies move bits unchanged).
    limit: the element count from which the parallel kernels run (`TorchBackend.mask`'s).
    docs/cpu_kernels.md, "Permuted layouts without numpy"."""
    n = x.numel()
    fresh = out is None
    if fresh:
        # large outputs from the output cache, small ones fresh from torch (heap memory)
        out = torch_empty_like(x) if n < CPU_PARALLEL_MIN else empty_like(x)
    elif out.dtype != x.dtype or out.is_neg():
        return None
    else:
        check_plain_memory(out, "out")  # before the kernel takes its address
    plan = tiled_layout(x.shape, x.stride(), out.stride(), LANES)
    small = n < limit
    copied = plan is None or small and (n <= _COPY_MAX_ELEMENTS or plan[0][plan[3]] < _COPY_BELOW_ROWS)
    if copied and fresh and out.is_contiguous():
        out.copy_(x)  # (our own fresh output: no autograd, no caller's version counter)
        if small:
            dropout_cpu.dropout_flat_inplace_serial_at(out.data_ptr(), n, *_serial_args(x.dtype, p, seed, offset, scale))
        else:
            args = _serial_args(x.dtype, p, seed, offset, scale)
            view, _ = numpy_view(out)  # (a half type's bits: as the element type the kernels read)
            dropout_cpu.dropout_flat_inplace(view.reshape(-1).view(type(args[4])), *kernel_rng_args(seed, offset, p),
                                             args[3])
        return out
    if copied and small and (fresh or out.is_contiguous()):
        xc = x.contiguous()  # a copy: x is not C-contiguous
        args = _serial_args(x.dtype, p, seed, offset, scale)
        if out.is_contiguous():
            dropout_cpu.dropout_flat_serial_at(xc.data_ptr(), out.data_ptr(), n, *args)
            return out
        dropout_cpu.dropout_flat_inplace_serial_at(xc.data_ptr(), n, *args)
        return out.copy_(xc)  # (fresh: ours)
    if plan is None:
        return None
    shape, xs, os, a = plan
    kernel = dropout_cpu.dropout_tiled_at if n >= limit else dropout_cpu.dropout_tiled_at_serial
    kernel(x.data_ptr(), _span(shape, xs), out.data_ptr(), _span(shape, os), np.array(shape + xs + os, np.int64), a,
           *_serial_args(x.dtype, p, seed, offset, scale))
    return out


# Below CPU_PARALLEL_MIN, a permuted x is copied to C order (two copies with a fresh permuted
# output) instead of walked in tiles when it has at most this many elements, or fewer than this
# many unit-stride rows per tile (channels_last with C < 16): the tiles' fixed costs (their word
# buffers, Philox across few rows) made the tiled kernel slower there (8x3x16x16 channels_last:
# 33 vs 13 us; 8x16x16x16: 37 vs 43; a transposed 16x64: 7.0 vs 5.4, 32x128: 8.2 vs 10.4).
_COPY_MAX_ELEMENTS = 2048
_COPY_BELOW_ROWS = 16


def _span(shape, strides):
    """Elements from the first to the last of an array of `shape` and non-negative `strides`."""
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def _dense_grouped_dropout(x, p, seed, offset, scale, layout, n):
    """Spatial dropout / DropPath of a float32/float64 CPU tensor, or a float16/bfloat16 one (its
    bits, computed in float32), whose groups lie in runs of memory (`_grouped.grouped_layout`,
    which gave `layout`; no autograd): the one-launch grouped
    kernel on the flat memory (addresses), as _cpu.grouped_dropout_into would pick it, without its
    dtype and layout dispatch (a forward and a backward per layer per step). The output has x's
    strides (torch's layout rule for a dense x), so the same runs."""
    groups, _, run, _ = layout
    out = torch_empty_like(x) if n < CPU_PARALLEL_MIN else empty_like(x)  # a dense x's strides either way
    _cpu.groups_flat_at(x.data_ptr(), out.data_ptr(), n, groups, p, seed, offset, _kernel_scale(x.dtype, scale),
                        run=run, like=_HALF_BITS.get(x.dtype))  # (float16 / bfloat16: their bits)
    return out


def _dense_channels_last(x):
    """Is x a dense channels_last (4-D) / channels_last_3d (5-D) tensor with at least 2 channels,
    not a negative view, that `_dense_inner_grouped_dropout` takes (any channel count)?"""
    torch = sys.modules["torch"]
    nd = x.dim()
    c = x.shape[1] if nd == 4 or nd == 5 else 0
    return c > 1 and not x.is_neg() and \
        x.is_contiguous(memory_format=torch.channels_last if nd == 4 else torch.channels_last_3d)


# More than `_cpu.INNER_ROWS_MAX_C` channels took the by-address kernel only below 2^20 elements
# until 2026-12-07: forward+backward at 8x96x56x56 and 32x128x28x28 had read 15-20% slower by
# address. With 16 pattern rows a step (kernels/dropout_cpu.py, `_INNER_STEP_ROWS`), same process,
# toggled by round, two runs: no-grad forward by address faster at 4 of 5 shapes in one and 5 of 5
# in the other (32x128x16x16 337 -> 222-273 us, 32x256x14x14 627-640 -> 434-475, 32x128x28x28
# 965-996 -> 873-879; 8x96x56x56 671 -> 715 then 692 -> 638), forward+backward within the
# allocator's noise (docs/cpu_kernels.md).


def _dense_inner_grouped_dropout(x, p, seed, offset, scale, n):
    """Spatial dropout (group_ndim 2) of a channels_last float32/float64 tensor
    (`_dense_channels_last`; no autograd), or a float16/bfloat16 one (its bits, computed in
    float32): the one-launch inner-group kernel on its memory, without the numpy views, keep-mask
    launch and layout walk of `_cpu.grouped_dropout_into` (a no-grad call at 8x16x32x32 took 71.5
    us there, the kernel ~20; a forward and a backward per layer per step; bfloat16 fwd+bwd there:
    251 us against float32's 90). More than `_cpu.INNER_ROWS_MAX_C` channels too (`_dense_channels_last`):
    a pattern row is then 256 // C whole runs of C (one above 128 channels), up to 16 rows a
    parallel step (`kernels/dropout_cpu._inner_steps`). The output keeps x's layout (torch's
    rule)."""
    out = torch_empty_like(x) if n < CPU_PARALLEL_MIN else empty_like(x)
    _cpu.groups_inner_at(x.data_ptr(), out.data_ptr(), n, x.shape[0], x.shape[1], p, seed, offset,
                         _kernel_scale(x.dtype, scale), like=_HALF_BITS.get(x.dtype))
    return out


def _kernel_scale(dtype, scale):
    """The kernels' scale scalar for a torch float32/float64 dtype, float32 for float16/bfloat16
    (computed in float32, rounded once) (looked up: a numpy scalar costs more to make than to
    find)."""
    kernel_scale = _SCALES.get((dtype, scale))
    return _new_kernel_scale((dtype, scale)) if kernel_scale is None else kernel_scale


def _new_kernel_scale(key):
    if len(_SCALES) >= 256:  # p from a schedule: bounded, not one entry per value forever
        _SCALES.clear()
    dtype, scale = key
    s = _SCALES[key] = _FLAT_SCALARS.get(dtype, np.float32)(scale)
    return s


_PLAIN_TENSORS = ()  # torch.Tensor and nn.Parameter (subclasses keep the Function route)
# torch float16 / bfloat16 -> the numpy zero whose type the kernels read their bits as (the grouped
# ops take half tensors by address, and small ones on the native route)
_HALF_BITS = {}


def _not_batched(t):
    return False


# is_legacy_batched(t): t is a tensor of torch's legacy vmap (`_materialized_mask`). torch's
# is_legacy_batchedtensor, bound with the above; until then no tensor is taken for one (the routes
# that meet such tensors run after torch's ops registered). Other modules call it as
# `_core.is_legacy_batched`, which reads the binding of the moment.
is_legacy_batched = _not_batched


def _materialized_mask(x, rng, group_ndim):
    """The op's one mask applied to every gradient of a batch: a tensor of torch's legacy vmap
    (`torch.autograd.grad(..., is_grads_batched=True)`, which `torch.autograd.functional.jacobian`
    / `hessian` use with vectorize=True, runs a backward on a batch of gradients that way), or a
    backward under a torch.func.vmap the forward did not run under (`TorchReplayBackend`). Such a
    tensor has no memory to hand the kernels, so the mask is made in memory (the shape of one
    gradient, or its groups) and applied with torch's where, which has a batching rule and is
    its own derivative: x * scale where kept, exact zeros elsewhere, as the kernels give (the
    payload bits of a bfloat16 NaN aside: torch's bfloat16 multiply rewrites them)."""
    torch = sys.modules["torch"]
    shape = tuple(x.shape)
    if group_ndim == -1:
        mask_shape = (1,) * len(shape)
        keep = np.empty((1,), np.bool_)
    else:
        g = group_ndim if group_ndim > 0 else len(shape)
        mask_shape = shape[:g] + (1,) * (len(shape) - g)
        keep = np.empty(shape[:g], np.bool_)
    if keep.size:
        _cpu.fill_keep_mask(keep, rng.p, _seed_int(rng.seed), rng.offset & MAX_U64)
    kept = torch.from_numpy(keep.reshape(mask_shape)).to(x.device)
    return torch.where(kept, x * rng.scale, 0.0)


def _fill_flat_scalars():
    global _PLAIN_TENSORS, is_legacy_batched
    import torch
    # (a torch without the query has no legacy batched tensors to find)
    is_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", _not_batched)
    _FLAT_SCALARS.update({torch.float32: np.float32, torch.float64: np.float64})
    _PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
    _HALF_BITS.update({torch.float16: np.uint16(0), torch.bfloat16: np.int16(0)})
    # here, when torch's ops register, not on the first check: filled inside a torch.compile
    # trace, the checks' dtype table changed under Dynamo's guard and the call compiled twice
    fill_torch_floats(torch)
    _seeds.note_torch()


class TorchBackend:
    """torch tensors, no autograd: fastdrop's kernels on CPU or CUDA tensors, torch's GEMMs
    (MKL/OpenBLAS on CPU, cuBLAS on CUDA). Used by forwards and by the custom ops' bodies."""

    op = NumpyBackend.op
    raw_ok = NumpyBackend.raw_ok

    @staticmethod
    @past_modes  # (its allocations and copies: the kernels write through their addresses)
    def mask(x, rng, group_ndim=0, out=None, parallel_min=None):
        if is_legacy_batched(x):
            y = _materialized_mask(x, rng, group_ndim)
            return y if out is None else out.copy_(y)  # out: x itself, in place
        if x.is_neg():
            x = x.detach().resolve_neg()
        if not compiling() and x._is_zerotensor():  # (Dynamo cannot trace the query)
            x = x.detach().clone()  # an incoming gradient of torch's efficient zeros: no memory to read
        offset = rng.offset & MAX_U64
        if x.is_cuda:
            _cuda = cuda_module()
            # (a seed tensor on x's device, from a CUDA-graph capture, goes to the kernels as it is)
            seed = rng.seed if getattr(rng.seed, "is_cuda", False) else _seed_int(rng.seed)
            return _cuda.apply_tensor(x, rng.p, seed, offset, rng.scale, group_ndim, out)
        check_plain_memory(x, "x (or its gradient)")  # before any kernel takes its address
        seed = _seed_int(rng.seed)
        n = x.numel()
        if group_ndim > 0 and one_element_groups(x.shape, group_ndim):
            group_ndim = 0  # the same mask (`one_element_groups`)
        small = n < CPU_PARALLEL_MIN
        # the caller's parallel threshold, or the elementwise one (looked up per call: tests raise it)
        limit = _cpu.CPU_PARALLEL_MIN if parallel_min is None else parallel_min
        # (below the caller's threshold too: the dense layers pass theirs, and their small masks
        # went through numpy views, ~10 us of a DropoutLinear 8x512 forward)
        if not group_ndim and 0 < n < limit \
                and (x.dtype in _FLAT_SCALARS or x.dtype in _HALF_BITS) and x.is_contiguous():
            # (by address: x needs no detached copy, ~1 us of a small layer's forward)
            if out is None:
                return _small_dense_dropout(x, rng.p, seed, offset, rng.scale)
            if out.is_contiguous() and out.dtype == x.dtype and not out.is_neg():
                # in place (out is x) or out= (checked: no shared memory): the serial kernels on
                # the memory, as `_dropout_views` would pick them, without the numpy views
                check_plain_memory(out, "out")
                args = _serial_args(x.dtype, rng.p, seed, offset, rng.scale)
                if out.data_ptr() == x.data_ptr():
                    dropout_cpu.dropout_flat_inplace_serial_at(x.data_ptr(), n, *args)
                else:
                    dropout_cpu.dropout_flat_serial_at(x.data_ptr(), out.data_ptr(), n, *args)
                return out
        if x.requires_grad:  # (the routes below view x with numpy, or copy it with torch's ops)
            x = x.detach()
        if not group_ndim and n and (x.dtype in _FLAT_SCALARS or x.dtype in _HALF_BITS) and not x.is_contiguous():
            y = _permuted_dropout(x, rng.p, seed, offset, rng.scale, out, limit)
            if y is not None:
                return y
        layout = out is None and group_ndim > 0 and n > 0 and (x.dtype in _FLAT_SCALARS or x.dtype in _HALF_BITS) \
            and grouped_layout(x, group_ndim)
        if layout:
            return _dense_grouped_dropout(x, rng.p, seed, offset, rng.scale, layout, n)
        if out is None and group_ndim == 2 and n > 0 and (x.dtype in _FLAT_SCALARS or x.dtype in _HALF_BITS) \
                and _dense_channels_last(x):
            return _dense_inner_grouped_dropout(x, rng.p, seed, offset, rng.scale, n)
        if out is None:
            # torch's layout rules: a dense layout (channels_last...) is kept; only large outputs
            # come from the output cache (small ones are already faulted-in heap memory)
            out = torch_empty_like(x) if small else empty_like(x)
            if small and not x.is_contiguous() and out.is_contiguous():
                # e.g. the expanded gradient of a sum: a small copy beats the strided kernel's setup
                x = x.contiguous()
        if n == 0:
            # nothing to write, and numpy cannot view an empty tensor whose other dims multiply
            # past its size limit ((0, 2**62): torch holds it, np.asarray refused it)
            return out
        # out requires grad only in place on x; a fresh output needs no detach (~1 us)
        target = out.detach() if out.requires_grad else out
        groups = range(group_ndim)  # (more dims than numpy's 64, which torch allows: views without size-1 dims)
        on, _ = numpy_view(squeeze_past_numpy(target, groups)[0])
        x, groups = squeeze_past_numpy(x, groups)
        group_ndim = len(groups)
        xn, bf16 = numpy_view(x)
        kw = {"bf16": True} if bf16 else {}
        if group_ndim:
            _cpu.grouped_dropout_into(xn, on, rng.p, seed, offset, rng.scale, group_ndim, **kw)
        else:
            _cpu.dropout_into(xn, on, rng.p, seed, offset, rng.scale, parallel_min=parallel_min, **kw)
        return out

    @classmethod
    @past_modes
    def mask_pair(cls, a, b, rng, parallel_min=None):
        """(mask(a), mask(b)) for two tensors of one shape: one Philox pass for both on the CPU
        (on Numba's pool from parallel_min elements, below it on the calling thread)."""
        if a.is_cuda or a.shape != b.shape or a.dtype != b.dtype or a.dtype not in _FLAT_SCALARS or \
                a.numel() == 0 or is_legacy_batched(a) or is_legacy_batched(b):
            # (empty: `mask` returns before viewing memory numpy may not be able to view)
            return cls.mask(a, rng, parallel_min=parallel_min), cls.mask(b, rng, parallel_min=parallel_min)
        n = a.numel()
        if n < (CPU_PARALLEL_MIN if parallel_min is None else parallel_min):
            # by address (a small layer's backward: no numpy views, and no detached copies of
            # the tensor objects, which only numpy's view needs; ~1 us each)
            if a.is_neg() or not a.is_contiguous():
                a = a.detach().resolve_neg().contiguous()
            if b.is_neg() or not b.is_contiguous():
                b = b.detach().resolve_neg().contiguous()
            check_plain_memory(a, "x (or its gradient)")
            check_plain_memory(b, "x (or its gradient)")
            empty = sys.modules["torch"].empty_like
            oa, ob = empty(a), empty(b)
            args = _serial_args(a.dtype, rng.p, _seed_int(rng.seed), rng.offset & MAX_U64, rng.scale)
            dropout_pair_serial_at(a.data_ptr(), b.data_ptr(), oa.data_ptr(), ob.data_ptr(), n, *args[:4])
            return oa, ob
        a, b = a.detach().resolve_neg().contiguous(), b.detach().resolve_neg().contiguous()
        oa, ob = empty_like(a), empty_like(b)  # from the output cache from 32 MiB, as `mask`'s
        kernel = dropout_pair
        an, bn, oan, obn = (numpy_view(t)[0].reshape(-1) for t in (a, b, oa, ob))
        kernel(an, bn, oan, obn, *kernel_rng_args(_seed_int(rng.seed), rng.offset & MAX_U64, rng.p),
               an.dtype.type(rng.scale))
        return oa, ob

    @staticmethod
    def scale(x, factor, inplace=False):
        if factor == 1.0:
            return x
        return x.mul_(factor) if inplace else x * factor

    # (looked up per call, not bound once: a library that patches torch's F.linear, as
    # DeepSpeed's ZeRO-3 does, sees these GEMMs; sys.modules, not an import statement, ~1 us less)
    @staticmethod
    def linear(x, w, b):
        return sys.modules["torch"].nn.functional.linear(x, w, b)

    @staticmethod
    def matmul(a, b):
        return sys.modules["torch"].matmul(a, b)

    sum_to = staticmethod(_sum_to)
    unsqueeze0 = NumpyBackend.unsqueeze0

    @staticmethod
    def mT(a):
        return a.mT


class TorchAutogradBackend(TorchBackend):
    """The same pieces, differentiable: backward formulas use it, so double backward works.
    The mask is the dropout op itself (its own derivative), eager or as its custom op."""

    @staticmethod
    def op(op, operands, rng, params=()):
        return torch_apply(op, operands, params, rng)

    @staticmethod
    def raw_ok(rng, *operands):
        """Only with an int seed (not inside a compiled graph, where every kernel must be a custom
        op) and when nothing records the result (no autograd graph, no torch.func transform)."""
        import torch
        return isinstance(rng.seed, int) and _nothing_to_record(torch, operands)

    @staticmethod
    def mask(x, rng, group_ndim=0, out=None, parallel_min=None):
        return torch_apply(DROPOUT, (x,), (group_ndim,) if parallel_min is None else
                           (group_ndim, parallel_min), rng)

    @classmethod
    def mask_pair(cls, a, b, rng, parallel_min=None):
        if cls.raw_ok(rng, a, b):
            return TorchBackend.mask_pair(a, b, rng, parallel_min)
        return cls.mask(a, rng, parallel_min=parallel_min), cls.mask(b, rng, parallel_min=parallel_min)


class TorchReplayBackend(TorchAutogradBackend):
    """A backward under torch.func.vmap levels its forward did not run under (`torch.func.jacrev`
    and `vmap(vjp_fn)` batch the cotangents of one forward): the forward drew one mask, so every
    gradient of the batch gets that mask, whatever the vmap's randomness (torch's own dropout
    saves its mask, which then broadcasts over the batch). The mask is materialized and applied
    with torch's where (`_materialized_mask`), differentiable for double backward."""

    @staticmethod
    def raw_ok(rng, *operands):
        return False

    @staticmethod
    def mask(x, rng, group_ndim=0, out=None, parallel_min=None):
        return _materialized_mask(x, rng, group_ndim)

    @classmethod
    def mask_pair(cls, a, b, rng, parallel_min=None):
        return cls.mask(a, rng), cls.mask(b, rng)


class CudaArrayBackend:
    """CUDA device arrays (Numba, CuPy, the simulator's): fastdrop's CUDA kernels only."""

    @staticmethod
    def mask(x, rng, group_ndim=0, out=None, parallel_min=None):
        _cuda = cuda_module()
        # out is only ever x itself (or its view): in place
        return _cuda.dropout_array(x, rng.p, rng.seed, rng.offset, rng.scale, group_ndim, out is not None)

    @classmethod
    def mask_pair(cls, a, b, rng, parallel_min=None):
        return cls.mask(a, rng), cls.mask(b, rng)

    @staticmethod
    def scale(x, factor, inplace=False):
        _cuda = cuda_module()
        if factor == 1.0:
            return x
        return _cuda.scale_array(x, factor, inplace)

    @staticmethod
    def linear(x, w, b):
        _cuda = cuda_module()
        return _cuda.dense_call("dropout_linear_forward", x, w, b, Rng(0.0, 0, 0, 1.0))

    @staticmethod
    def matmul(a, b):
        raise TypeError("this op takes numpy arrays or torch tensors (CPU or CUDA); wrap CUDA device "
                        "arrays with torch.as_tensor")

    @staticmethod
    def unsqueeze0(a):
        _cuda = cuda_module()
        return _cuda.unsqueeze0(_cuda.as_device_array(a))


BACKENDS = {NUMPY: NumpyBackend, TORCH: TorchBackend, CUDA_ARRAY: CudaArrayBackend}
OPS = []  # every declared op, in declaration order (the generic tests iterate over it)


# ---- the op declaration --------------------------------------------------------------------------

class MaskedOp:
    """One masked op, declared once; see the module docstring.

    Args:
        name: the op's name (also its torch.library name, fastdrop::<name>).
        operands: names of the array operands; the first one decides kind, device and dtype.
        forward(B, operands, rng, params, out=None): the op in training mode.
        backward(B, grad, operands, rng, params, needs): gradients of the operands (None where not
            needed); operands not in `saves` arrive as None.
        plain(B, operands, params, factor): the deterministic op (eval mode, p = 0), differentiable.
        fake(operands, params): an empty output of the right shape (torch.compile's fake tensors).
        check(operands, params): validates shapes (before anything is drawn); returns params.
        saves: indices of the operands backward needs.
        optional: indices of operands that may be None (a bias).
        bias: index of the operand the output is affine in (for jvp), or None.
        upcast_half: compute float16/bfloat16 in float32 (ops built on GEMMs).
        own_products: the products are the op's own kernel's, which torch.autocast does not see
            (per-sample DropConnect): under autocast its operands go to autocast's dtype, but for
            a float32 masked operand.
        masked: index of the operand the mask multiplies (its float32 gradient is scaled in
            float32 under autocast), or None where the mask is on a product of two (a gradient op).
        vmap: rule under torch.func.vmap, or None (a clear error).
        params_rule(x, params): checks the op's integer parameters where a caller other than the
            public functions passes them (a direct call of its custom op); None: it takes none.
        out_numel(operands): the output's number of elements, where it can exceed x's (on host
            memory x-sized arrays and the output are refused before the draw when larger than
            physical memory); None: x-sized.
        flops(operand shapes, output shape): the floating-point operations of its GEMMs, for
            torch's FlopCounterMode; None: no GEMM (elementwise work, which torch counts as none).
    """

    def __init__(self, name, operands, forward, backward, plain, fake, check=None, saves=(),
                 optional=(), bias=None, upcast_half=False, own_products=False, masked=0, vmap=None,
                 out_numel=None, params_rule=None, flops=None):
        self.name, self.operands = name, tuple(operands)
        self.flops = flops
        self.params_rule = params_rule
        self.out_numel = out_numel
        self.forward, self.backward, self.plain, self.fake = forward, backward, plain, fake
        self.check = check
        self.saves, self.optional, self.bias = tuple(saves), tuple(optional), bias
        self.upcast_half, self.own_products, self.masked, self.vmap = upcast_half, own_products, masked, vmap
        self._library_op = None
        OPS.append(self)

    def __repr__(self):
        return f"MaskedOp({self.name})"

    def jvp(self, B, operands, tangents, rng, params):
        """The op is linear in each operand and affine in its bias: d op = sum over operands of the
        op with that operand replaced by its tangent (bias dropped), plus the bias tangent."""
        out = None
        for i, t in enumerate(tangents):
            if t is None or i == self.bias:
                continue
            args = [t if j == i else (None if j == self.bias else a) for j, a in enumerate(operands)]
            term = B.op(self, tuple(args), rng, params)
            out = term if out is None else out + term
        if self.bias is not None and tangents[self.bias] is not None:
            tb = tangents[self.bias]
            if out is not None and out.dtype != tb.dtype and _is_half(out):
                tb = tb.to(out.dtype)  # (autocast's GEMMs gave a half out: the bias as they cast it)
            out = tb if out is None else out + tb
        return out


# ---- the dropout op: the mask every other op's formula applies ------------------------------------
# Mask-shape rule `params[0]` = g: 0 elementwise; g > 0 one mask element per index of x's first g
# dims, broadcast over the rest (spatial dropout, DropPath); -1 one mask element for all of x
# (DropPath's batch mode, mask `dropout_mask((1,), ...)`). Dropout is linear in x, so its backward
# is the same op on the gradient. Its public functions are in fastdrop/functional.py.

def _mask(B, operands, rng, params, out=None):
    # params: (group_ndim,) or (group_ndim, parallel_min) when another op's formula applies the mask
    (x,), g = operands, params[0]
    if g == -1:  # one draw for everything: x as a batch of one
        y = B.mask(B.unsqueeze0(x), rng, 1, None if out is None else B.unsqueeze0(out))
        if out is not None:
            return out
        # (a 0-d x: y[0] of numpy and device arrays would be a host scalar, not a 0-d array)
        return y[0] if len(x.shape) else y.reshape(())
    return B.mask(x, rng, g, out, *params[1:])


def _backward(B, grad, operands, rng, params, needs):
    return (_mask(B, (grad,), rng, params),)


def _plain(B, operands, params, factor, inplace=False):
    return B.scale(operands[0], factor, inplace)


def _fake(operands, params):
    # torch's layout rule, as the kernels' outputs follow it (empty_like: a dense layout such as
    # channels_last is kept), so compiled graphs see the strides the op really returns
    return sys.modules["torch"].empty_like(operands[0])


_RANDOMNESS_REFUSAL = ("fastdrop's dropout draws random masks: under torch.func.vmap pass "
                      "randomness='different' (a mask per example) or 'same' (one mask for all)")


def _no_vmap(op, inplace=False):
    return RuntimeError(f"fastdrop.{op.name} does not support torch.func.vmap" + (" in place" if inplace else "")
                        + ("" if inplace else _jacobian_hint(op)))


def _same_only(op, randomness="different"):
    """The refusal for an op without a vmap rule over operands the batch shares, under a
    randomness other than 'same' (the one given: 'different', or 'error', which refuses random
    ops there): the one it takes."""
    what = "with a mask per example" if randomness == "different" else "over operands the batch shares"
    return RuntimeError(f"fastdrop.{op.name} does not support torch.func.vmap {what} "
                        f"(randomness={randomness!r}); over operands the batch shares pass "
                        f"randomness='same' (one mask for all)" + _jacobian_hint(op))


def _jacobian_hint(op):
    """Where an op without a vmap rule is refused, the Jacobian route it does take: jacfwd and
    hessian vmap forward-mode tangents (the refusal came from there, whatever randomness they
    were given; a review found the message pointed at randomness='same', which fails again)."""
    if op.vmap is not None:
        return ""
    if op.name.startswith("dropconnect_sample"):  # (its backward ops too: not batched either, README)
        return ("; where this vmap comes from torch.func.jacfwd / jacrev / hessian, which batch this op, "
                "take gradients one output at a time (torch.autograd.grad)")
    return ("; where this vmap comes from torch.func.jacfwd or hessian, which batch forward-mode "
            "tangents: its Jacobian takes torch.func.jacrev, its Hessian jacrev(jacrev(f))")


def _vmap_refusal(torch, op, operands, inplace):
    """The RuntimeError torch.func.vmap's rule for op (`FunctorchFunction.vmap`, `_vmap`) raises
    for these operands, or None: asked before the seed draw, so a refused call leaves torch's
    generator as it was. The rule runs at each vmap level an operand is batched at (functorch's
    wrappers unwrapped: a vmap of a grad wraps the batched tensor). A level no operand is batched
    at is a random op on a value shared by the batch, as torch's random ops see it: refused under
    randomness="error", one mask under "same", a mask per example under "different" (given by
    `batched_for_vmap` at the innermost level; an outer one is refused)."""
    levels = vmap_levels(torch)
    if not levels:
        return None
    batched = batched_levels(torch, operands)
    different = [level for level, r in levels.items() if r == "different" and level not in batched]
    if different and not batched and op.vmap is None and not inplace:
        return _same_only(op)
    if (batched or different) and (op.vmap is None or inplace):
        return _no_vmap(op, inplace)
    if any(levels[level] not in ("different", "same") for level in batched) or \
            any(r == "error" for level, r in levels.items() if level not in batched):
        # (an op without a vmap rule reaches here only with every operand shared: one mask for all)
        return _same_only(op, "error") if op.vmap is None else RuntimeError(_RANDOMNESS_REFUSAL)
    if different and different != [functorch_interpreters(torch)[-1].level()]:
        return RuntimeError(f"fastdrop.{op.name} under torch.func.vmap(randomness='different'): its "
                            f"input is not batched at an outer vmap level (or another transform runs "
                            f"inside that vmap), where a mask per example cannot be given; batch the "
                            f"input there (in_dims), or use randomness='same'")
    return None


def _vmap(info, in_dims, operands, rng, params, apply=None):
    """torch.func.vmap: randomness="different" draws a mask per example (the vmapped dim joins the
    mask's leading dims), "same" one mask for all (the vmapped dim moves last, outside the mask).
    apply(DROPOUT, operands, rng, params): the op on the unbatched tensors (default: torch_apply,
    the eager route; the custom op's rule passes the custom op)."""
    (x,), (d,), g = operands, in_dims, params[0]
    if info.randomness not in ("different", "same"):
        raise RuntimeError(_RANDOMNESS_REFUSAL)
    if apply is None:
        apply = lambda op, ops, r, prm: torch_apply(op, ops, prm, r)  # noqa: E731
    if d is None:
        x, d = x.expand(info.batch_size, *x.shape), 0
    if info.randomness == "different":
        y = apply(DROPOUT, (x.movedim(d, 0),), rng, (0 if g == 0 else max(g, 0) + 1,))
        return y, 0
    xl = x.movedim(d, -1)
    group = g if g != 0 else (xl.dim() - 1 if xl.dim() > 1 else -1)
    return apply(DROPOUT, (xl,), rng, (group,)).movedim(-1, 0), 0


def _check_group_params(x, params):
    # (g,) or, where another op's formula applies the mask, (g, parallel_min)
    if not 1 <= len(params) <= 2 or not -1 <= params[0] <= len(x.shape) or \
            len(params) == 2 and params[1] < 0:
        raise ValueError(f"fastdrop::dropout params must be [g] or [g, parallel_min] with -1 <= g <= "
                         f"x.dim() = {len(x.shape)} and parallel_min >= 0, got {list(params)}")


DROPOUT = MaskedOp("dropout", ("x",), forward=_mask, backward=_backward, plain=_plain, fake=_fake,
                   vmap=_vmap, params_rule=_check_group_params)


def call(op, operands, params=(), *, p, training, seed, offset, scale, eval_factor=1.0, inplace=False,
         out=None, checked=None):
    """The pipeline every public masked op goes through (module docstring).

    scale: the factor kept elements get in training; eval_factor: the eval-mode factor; out: an
    array / tensor the result is written into (no autograd, as torch's out= ops); checked: what
    check_array returned for operands[0] when the caller already ran it (a public function whose
    rank rule needed the validated shape), so it does not run twice.
    """
    # (the shape checks below read traced sizes under torch.jit.trace: a TracerWarning each)
    return quiet_under_jit_trace(_call, op, operands, params, p, training, seed, offset, scale, eval_factor,
                                 inplace, out, checked)


def _call(op, operands, params, p, training, seed, offset, scale, eval_factor, inplace, out, checked):
    p = check_p(p)
    training = check_bool(training, "training")  # torch's F.dropout refuses non-bools too
    inplace = check_bool(inplace, "inplace")  # ("False" from a config file would write into x)
    offset = check_u64(offset, "offset")
    if seed is not None:
        seed = check_u64(seed, "seed")
    given = operands[0]
    x, kind, operands, params = validate(op, operands, params, checked)
    if out is not None:
        if out is x or out is operands[0] or out is given:  # (given: a memmap or matrix x, viewed)
            check_out_is_x(x, kind, inplace)
            inplace, out = True, None
        else:
            check_out(x, kind, out, inplace, given)
    if inplace and (p > 0.0 if training else eval_factor != 1.0):
        # (only where x is written: at eval with inverted scaling, or p = 0, the op returns x
        # untouched, as torch's dropout does for any x, read-only, expanded or a leaf)
        # (an empty array shares no memory with anything, and nothing is written into it)
        if kind == NUMPY and x is not given and x.size and not np.shares_memory(x, given):
            why = f"in the machine's byte order, got dtype {given.dtype.str}" if not given.dtype.isnative \
                else f"with strides in whole elements, got strides {given.strides} for itemsize {given.itemsize}"
            raise TypeError(f"inplace=True needs x {why} (the result would go into a converted copy)")
        if kind == TORCH and x is not given and not compiling() and given._is_zerotensor():
            raise RuntimeError("ZeroTensors are immutable (torch's rule); inplace=True needs a tensor "
                               "with memory: use x.clone()")
        check_writable(x, kind)
        # (not while tracing: the traced call writes x with torch's in-place ops, which check this
        # themselves, and Dynamo recorded x._base as a graph getattr that failed in the compiled
        # graph for a view made before a graph break)
        if kind == TORCH and x.requires_grad and grad_enabled() and not traced(sys.modules["torch"], x):
            # torch's order (check_inplace): a view autograd cannot rebase, a view of a leaf, a
            # leaf (a view made under no_grad is a leaf itself, and was refused as one: a review)
            base = x._base
            if base is not None:
                _check_view_rebase(sys.modules["torch"], x)
                if base.is_leaf and base.requires_grad:
                    raise InplaceLeafError("inplace dropout on a view of a leaf tensor that requires grad is "
                                           "not allowed (torch: a view of a leaf Variable that requires grad "
                                           "is being used in an in-place operation)")
            if x.is_leaf:
                raise InplaceLeafError("inplace dropout on a leaf tensor that requires grad is not allowed")
    B = BACKENDS[kind]
    if not training or p == 0.0:
        factor = eval_factor if not training else 1.0
        if factor != 1.0 or len(operands) > 1 or out is not None:
            # a GEMM, x scaled, or x copied into out: operands read, an output made (a freed x's
            # storage read by the copy into out= crashed the process: a review)
            # (not on the fake or symbolic tensors of a trace: no memory, and no guards to add)
            if kind == NUMPY or kind == TORCH and not _tracing(sys.modules["torch"], operands):
                if kind == TORCH:
                    _check_storages(sys.modules["torch"], operands, op.operands)  # torch's ops would crash on such memory
                if out is None and not inplace:
                    _check_host_output(op, x, kind, operands)
            elif kind == CUDA_ARRAY:  # (a kernel scales x or multiplies)
                check_device_byte_order(operands)
        if kind == TORCH and factor == 1.0:
            # torch's half GEMMs accumulate in float32 and round once themselves: nn.Linear's bits
            y = op.plain(B, operands, params, factor, inplace)
        else:
            # numpy's float16 GEMMs round every partial sum, and a classic eval's x * (1 - p) (or
            # product * (1 - p)) in a half type would be a second rounding: the ops' upcast, as
            # in training (one rounding, numpy's and torch's bits alike)
            y = _upcast(op, B, operands, lambda ops: op.plain(B, ops, params, factor, inplace), inplace)
        if out is not None:
            out[...] = y
            return out
        if (kind == TORCH or kind == CUDA_ARRAY) and y is x and x is not given:
            # x unchanged, as torch's dropout returns it: the object given (a ZeroTensor's copy was
            # made to read it; a __cuda_array_interface__ object was wrapped to read its shape)
            return given
        return given if inplace else y
    if out is None and not inplace:
        _check_host_output(op, x, kind, operands)
    if kind == CUDA_ARRAY:  # no GPU (nor the simulator), or arrays numba cannot type: refused before the draw
        _cuda = cuda_module()
        _cuda.require_gpu()
        check_device_byte_order(operands)
    elif kind == TORCH and x.is_cuda and "fastdrop._cuda" not in sys.modules:
        _require_numba_cuda()  # (a CUDA tensor's kernels: refused before the draw too)
    if seed is None and (p == 1.0 or any(0 in a.shape for a in operands if a is not None)):
        # The result does not depend on the mask, so none is drawn, as torch's own dropout draws
        # none at p = 1 or for an empty x: at p = 1 every mask element is dropped whatever the
        # seed (T(1) = 0; the kernels still run: dropped means exact zeros, which x * 0 is not for
        # a negative, infinite or NaN x); with an empty operand the mask or the output is empty
        # (a dense layer on 0 input features gives its bias).
        seed = 0
    if kind == TORCH:  # (it adds the rank stream offset: a recorded graph, at its run time)
        return _torch_call(op, operands, params, p, seed, offset, scale, inplace, out)
    if seed is None:
        offset = _seeds.stream_offset(offset)
        seed = _seeds.draw_numpy_seed()
    y = _upcast(op, B, operands, lambda ops: op.forward(B, ops, Rng(p, seed, offset, scale), params,
                                                      out=out if out is not None else
                                                      (ops[0] if inplace else None)), inplace)
    # in place: x itself, also where x was viewed as a plain ndarray (np.matrix, np.memmap)
    return given if inplace else y


def _check_host_output(op, x, kind, operands):
    """MemoryError, before the draw, where the output or an x-sized working array (the dense ops'
    masked x or a) in host memory would be larger than physical memory: an expanded x is small
    memory with a huge logical size. Not while compiling, where it would be a guard on the
    symbolic sizes, nor for device memory."""
    if kind == NUMPY or kind == TORCH and not compiling() and x.is_cpu:
        n = math.prod(x.shape) if op.out_numel is None else max(math.prod(x.shape), op.out_numel(operands))
        itemsize = x.element_size() if kind == TORCH else x.dtype.itemsize
        if op.upcast_half and itemsize == 2:
            itemsize = 4  # on the host a GEMM op's half operands are computed in float32 copies (`_upcast`)
        check_output_bytes(n * itemsize)


def validate(op, operands, params, checked=None, autocast=True, mixed_ok=False):
    """(x, kind, operands, params): op's operands checked (x first, then its companions, then the
    op's own shape rule), converted as check_array converts them; TypeError/ValueError otherwise.
    autocast: give mixed-dtype GEMM operands one dtype (`_autocast.gemm_operands`), as the public
    call does; the custom op's body, whose operands the traced graph already gave those dtypes,
    does not, and takes mixed ones where it runs under autocast (mixed_ok: `_autocast.library_arg`)."""
    x, kind = check_array(operands[0], op.operands[0]) if checked is None else checked
    if len(operands) > 1:
        mixed = None
        if kind == TORCH and op.upcast_half:
            if autocast:
                operands, mixed = _autocast.gemm_operands(op, (x, *operands[1:]))
                x = operands[0]
            elif mixed_ok:
                mixed = _autocast.mixed_dtypes(op, (x, *operands[1:]))
        operands = (x, *check_companions(x, kind, zip(op.operands[1:], operands[1:]), op.operands[0], mixed))
    elif x is not operands[0]:
        operands = (x,)
    if op.check is not None:
        params = op.check(operands, params)
    return x, kind, operands, params


def _upcast(op, B, operands, run, inplace=False):
    """float16/bfloat16 operands of a GEMM op computed in float32, rounded once on the way back;
    except torch CUDA tensors of an op whose products are torch's (`_native_half`)."""
    if not (op.upcast_half and _is_half(operands[0])) or _native_half(op, B, operands[0]):
        return run(operands)
    y = run(tuple(None if a is None else _astype(B, a, np.float32) for a in operands))
    if not _is_half(y):  # (a half y: autocast's GEMM gave its own dtype, as for mixed operands)
        y = _astype(B, y, operands[0].dtype)
    if inplace:
        operands[0][...] = y
        return operands[0]
    return y


def _native_half(op, B, x):
    """Does a half-precision GEMM op run in its own dtype: torch CUDA tensors whose products are
    torch GEMMs (dense layers, dropout_matmul: cuBLAS multiplies float16/bfloat16 on tensor cores,
    accumulating in float32). In float32 they ran 17x slower than a bfloat16 nn.Linear on the H200
    (bench/results/nvidia-h200-2026-12-04.md). The masked operand is then rounded to the half type
    before its product (the mask kernels' one rounding of x * scale), as torch's Dropout + Linear
    does; on the CPU, whose BLAS has no fast half GEMM, float32 stays. Per-sample DropConnect's
    products are its own float32/float64 kernels (own_products)."""
    return B is TorchBackend and not op.own_products and x.is_cuda


def _astype(B, a, dtype):
    if B is NumpyBackend:
        return a.astype(dtype)
    if B is CudaArrayBackend:  # a float16 device array: converted on the device
        _cuda = cuda_module()
        return _cuda.astype(a, dtype)
    if B is TorchBackend:
        return _torch_astype(a, dtype)
    return a.float() if dtype is np.float32 else a.to(dtype)


@past_modes  # (the kernels read the copy's memory)
def _torch_astype(a, dtype):
    return a.float() if dtype is np.float32 else a.to(dtype)


def _is_half(a):
    if isinstance(a, np.ndarray):
        return a.dtype == np.float16
    if hasattr(a, "element_size"):
        return a.element_size() == 2  # torch float16 / bfloat16
    return np.dtype(a.dtype) == np.float16  # a CUDA device array


# ---- torch: one eager route and one compiled route for every op ---------------------------------

def _torch_call(op, operands, params, p, seed, offset, scale, inplace, out=None):
    """op on tensors. offset: the caller's; with seed=None this process's rank stream offset is
    added (`_seeds.stream_offset`), by a custom op at its run time where the call is recorded
    (a compiled, traced or exported graph runs on each rank with that rank's stream)."""
    torch = sys.modules["torch"]
    rank_stream = seed is None
    if torch.compiler.is_compiling():
        if _SEED_OPS is None:
            raise RuntimeError("fastdrop's torch.library ops are registered when fastdrop is imported "
                               "after torch, or on fastdrop's first eager call on a tensor: import "
                               "torch before fastdrop (or call fastdrop.register_torch_ops()) before "
                               "torch.compile traces a fastdrop op")
        if forward_ad_active(torch):
            # a custom op has no forward-mode formula: torch would give a zero tangent, silently
            raise RuntimeError(f"fastdrop.{op.name} inside torch.compile does not support forward-mode "
                               f"AD (torch.func.jvp, torch.autograd.forward_ad): torch's custom ops carry "
                               f"no forward derivative; run the jvp eagerly (it works there)")
        if grad_transform_active(torch, operands[0]):
            # torch.func.grad / vjp / jacrev traced by Dynamo: a custom op's autograd formula is a
            # Function without setup_context, which those transforms refuse (a RuntimeError when
            # Dynamo runs the op on fake tensors). Dynamo runs this call eagerly instead: the
            # transform around it falls back to eager (the graph breaks there), where the op's
            # own Function serves it. vmap alone keeps the custom op and its vmap rule.
            return _eager_torch_call(torch)(op, operands, params, p, seed, offset, scale, inplace, out)
        seed_t = torch.ops.fastdrop.draw_seed(trace_token(), device="cpu") if seed is None else \
            _explicit_seed_tensor(torch, seed)
        return _library_call(op, operands, params, p, seed_t, offset, scale, inplace, out, rank_stream)
    if _SEED_OPS is None:
        register_torch_ops()
    if torch._C._is_tracing() or tracing_dispatch_mode(torch):
        # torch.jit.trace and make_fx record torch's ops only, not the kernels' writes (a traced
        # kernel call would return its uninitialized output), and fake tensors have no memory: the
        # call goes through its custom op, which the trace records (a fake tensor runs its fake
        # function), and a seed=None draw as aten's randint (the draw `_seeds` makes, the same
        # generator state consumed), which TorchScript knows to be random: every call of the
        # traced module draws a new mask from torch's generator, as eager calls and torch's own
        # traced dropout do (a custom op's draw, with constant arguments, would be folded into one
        # constant seed). An explicit seed is a constant of the trace.
        if forward_ad_active(torch):
            # the custom op has no forward-mode formula: a traced jvp would give a zero tangent
            raise RuntimeError(f"fastdrop.{op.name} under make_fx, FakeTensorMode or torch.jit.trace "
                               f"(torch.func.linearize traces with make_fx) does not support "
                               f"forward-mode AD (torch.func.jvp, torch.autograd.forward_ad): torch's "
                               f"custom ops carry no forward derivative; run the jvp eagerly (it works "
                               f"there)")
        if grad_levels_active(torch):
            # the custom op's autograd formula is a Function without setup_context, which
            # torch.func's grad transforms refuse with a message about an autograd.Function the
            # caller never wrote; the kernels' eager route would leave no trace
            raise RuntimeError(f"fastdrop.{op.name} under make_fx, FakeTensorMode or torch.jit.trace "
                               f"inside torch.func.grad / vjp / jacrev is not supported: the trace "
                               f"records fastdrop's custom ops, which torch.func cannot differentiate; "
                               f"run the transform eagerly, or under torch.compile (it runs the "
                               f"transform eagerly around fastdrop's op)")
        if not traced(torch, *operands):  # (real tensors, as torch.jit.trace's: refused before the draw)
            _check_storages(torch, operands, op.operands)
        if seed is None:
            seed_t = _seeds.torch_seed_tensor(torch)  # (outside any torch.func transform)
        else:
            # (a constant of the trace: the point, not a TracerWarning's worry)
            seed_t = quiet_under_jit_trace(torch.tensor, _to_i64(seed), dtype=torch.int64, device="cpu")
        return _library_call(op, operands, params, p, seed_t, offset, scale, inplace, out, rank_stream)
    if operands[0].is_meta:  # (after the traces: a trace on meta records its seed draw as on a CPU tensor)
        return _meta_call(torch, op, operands, params, p, seed, offset, scale, inplace, out, rank_stream)
    jvp_in_place = False
    if torch._C._are_functorch_transforms_active():
        tangents = _tangent_levels(torch, operands)
        refusal = _vmap_refusal(torch, op, operands, inplace) or _nested_jvp_refusal(op, tangents)
        if refusal is not None:
            raise refusal
        operands = batched_for_vmap(torch, operands)
        # in place on a tensor with a tangent under torch.func.jvp (the transform's input, or a
        # view of it): the Function's jvp must write x's tangent in place, which functorch
        # refuses there ("mutate a captured Tensor", raised after the kernel wrote x); out of
        # place, then torch's copy_ into x, which carries the tangent as torch's own in-place
        # dropout does (the same values). A tensor without a tangent (captured from outside the
        # transform) keeps the in-place Function, which writes it as before.
        jvp_in_place = inplace and bool(tangents[0])
    for i, a in enumerate(operands):  # before the seed draw: the kernels cannot take such a tensor
        # (a functionalization wrapper is of the plain class, its data_ptr() 0: a review)
        if a is not None and (type(a) not in _PLAIN_TENSORS or torch._is_functional_tensor(a)):
            check_plain_memory(a, op.operands[i] if i < len(op.operands) else "an operand")
    _check_storages(torch, operands, op.operands)
    if seed is None and operands[0].is_cuda and capturing(torch, operands[0].device):
        # CUDA-graph capture: the seed is drawn on the stream by torch's CUDA generator, whose
        # state every replay advances, and the kernels read it from device memory; the custom op
        # carries the seed tensor to the backward (the graph's replays: a new mask each, the
        # backward the forward's)
        seed_t = _seeds.device_seed_tensor(torch, operands[0].device)
        return _library_call(op, operands, params, p, seed_t, offset, scale, inplace, out, rank_stream)
    if seed is None:
        seed = _seeds.draw_torch_seed()
        offset = _seeds.stream_offset(offset)
    rng = _rng(p, seed, offset, scale)
    if inplace or out is not None:  # every check passed: the kernels write it next
        announce_write(torch, operands[0] if out is None else out)
    if out is not None:  # checked: no autograd records this call
        return mark_written(op.forward(TorchBackend, operands, rng, params, out=out))
    if jvp_in_place:
        return operands[0].copy_(torch_apply(op, operands, params, rng))
    return torch_apply(op, operands, params, rng, inplace)


def _meta_call(torch, op, operands, params, p, seed, offset, scale, inplace, out, rank_stream):
    """op on meta tensors: shapes only, as torch's ops give there (a model's forward for its output
    shapes): the custom op's fake function, with autograd; no seed drawn (no values to mask), as
    torch's dropout draws none on meta. torch.func's grad transforms and forward-mode AD have no
    formula on that route (the custom op's autograd has no setup_context nor jvp): refused, not a
    wrong tangent (a review)."""
    if forward_ad_active(torch) or grad_levels_active(torch):
        raise RuntimeError(f"fastdrop.{op.name} on meta tensors under forward-mode AD or torch.func.grad / vjp "
                           f"/ jacrev is not supported: the meta route is the op's custom op, which "
                           f"torch.func cannot differentiate; run the transform on CPU or CUDA tensors")
    seed_t = torch.tensor(0 if seed is None else _to_i64(seed), dtype=torch.int64, device="cpu")
    return _library_call(op, operands, params, p, seed_t, offset, scale, inplace, out, rank_stream)


def _tangent_levels(torch, operands):
    """For each operand, the torch.func.jvp levels (jacfwd's among them) at which it carries a
    tangent: the levels of its functorch wrappers that are jvp transforms (empty for None)."""
    functorch = torch._C._functorch
    jvp = functorch.TransformType.Jvp
    levels = {i.level() for i in functorch_interpreters(torch) if i.key() == jvp}
    out = []
    for a in operands:
        found = set()
        while a is not None and levels and functorch.is_functorch_wrapped_tensor(a):
            level = functorch.maybe_get_level(a)
            if level in levels:
                found.add(level)
            a = functorch.get_unwrapped(a)
        out.append(found)
    return out


def _nested_jvp_refusal(op, tangents):
    """A RuntimeError for an op with several operands (the dense layers, dropout_matmul) under
    nested torch.func.jvp with tangents on two or more of its operands (tangents: their
    `_tangent_levels`), else None: its jvp rule
    (bilinear: t_x W + x t_W) reads the primals saved for forward, which torch's
    autograd.Function hands back without their tangents at the other jvp level, so a second
    derivative through both came out 0, silently (a plain Function shows the same). With one
    operand carrying tangents the lost tangents multiply nothing and nested jvp holds; the
    dropout ops are linear in x, and the dense layers affine in their bias (its tangent adds,
    multiplying nothing: not counted). Asked before the draw. (An operand made inside the
    transforms from a constant, W.t() of a captured W, is wrapped at their levels without a
    tangent and counted: functorch shows an outer level's tangent to none of its inner levels.)"""
    tangents = [found for i, found in enumerate(tangents) if i != op.bias]
    if len(tangents) < 2 or len(set().union(*tangents)) < 2 or sum(1 for found in tangents if found) < 2:
        return None
    return RuntimeError(f"fastdrop.{op.name} under nested torch.func.jvp (a jvp of a jvp) with tangents on "
                        f"several of its operands is not supported: torch's autograd.Function hands its "
                        f"jvp rule the saved operands without their outer tangents, and the second "
                        f"derivative would be 0; use torch.func.grad / jacrev for one of the derivatives "
                        f"(jvp of grad and grad of jvp are supported), or perturb one operand")


def _check_storages(torch, operands, names):
    """`check_storage` of every tensor among operands with memory the kernels or torch's ops will
    read, torch.func's wrappers taken off (torch's legacy vmap tensors, which torch's ops take,
    `_materialized_mask`, pass), each named in the error by names (the op's `operands`: x, weight,
    bias; a, b). Real tensors only: not inside a trace."""
    transforms = torch._C._are_functorch_transforms_active()
    names = tuple(names) + ("an operand",) * (len(operands) - len(names))
    for a, name in zip(operands, names):
        if a is not None:
            check_storage(unwrapped(torch, a) if transforms else a, name)


def _tracing(torch, tensors):
    """Is this call traced (Dynamo, AOT or make_fx on fake or symbolic tensors, a dispatch mode
    that records torch's ops, torch.jit.trace), so that tensors may have no memory or symbolic
    sizes to check?"""
    return torch.compiler.is_compiling() or torch._C._is_tracing() or tracing_dispatch_mode(torch) or \
        traced(torch, *tensors)


def _explicit_seed_tensor(torch, seed):
    """An explicit seed in a compiled graph (or a compiled backward): a 0-d int64 tensor with its
    bits. Below 2^63 that is `torch.tensor(seed)`, a constant of the graph, or Inductor's scalar
    kernel for a seed Dynamo made symbolic (an int argument that changed between calls). From 2^63
    on, the int64 is seed - 2^64, and Inductor could not compile that constant into its C++ kernel
    (OverflowError for every such seed once seeds varied): those go through the `seed_tensor` op,
    whose int argument the graph's Python wrapper computes, as the ops' offset argument is.
    (The comparison is a guard on a symbolic seed: one graph per side of 2^63.)"""
    if seed < 1 << 63:
        return torch.tensor(seed, dtype=torch.int64, device="cpu")
    return torch.ops.fastdrop.seed_tensor(seed - (1 << 64))


_EAGER_TORCH_CALL = None


def _eager_torch_call(torch):
    """_torch_call, which Dynamo does not trace (it calls it, eagerly, at a graph break). Made when
    the torch ops register (`_seed_ops`, which loads torch._dynamo): made while Dynamo traces, the call of
    torch._dynamo.disable itself was the graph break, and fullgraph=True reported that instead of
    the reason below."""
    global _EAGER_TORCH_CALL
    if _EAGER_TORCH_CALL is None:
        _EAGER_TORCH_CALL = torch._dynamo.disable(_torch_call, reason=(
            "a fastdrop op under a torch.func transform that its compiled custom op cannot serve "
            "(grad / vjp / jacrev, a vmap inside another transform, or a vmap that does not batch "
            "the op's input) runs eagerly: compile without fullgraph=True, or call the transform "
            "outside torch.compile"))
    return _EAGER_TORCH_CALL


def _library_call(op, operands, params, p, seed_t, offset, scale, inplace, out, rank_stream=False):
    """op through its custom op (a compiled graph, a torch.jit trace), seed a 0-d int64 tensor;
    rank_stream: the op adds the rank stream offset to offset when it runs."""
    # operands go in as they are (half ones too: the op computes them in float32 inside, and its
    # backward, so the graph saves the operands, not float32 copies of twice their size), with
    # autocast's dtype, which the body re-enters (`_autocast.library_arg`)
    y = library_op(op)(*operands, seed_t, p, _to_i64(offset), scale, list(params), rank_stream,
                       _autocast.library_arg(op, operands[0]))
    if out is not None:
        return out.copy_(y)
    if not inplace:
        return y
    x = operands[0]
    if x.dtype == sys.modules["torch"].bfloat16:
        # (torch's bfloat16 add rewrites NaN payloads: bits first, so a decomposed bfloat16 program
        # with an in-place fastdrop layer cannot backpropagate, below)
        return x.copy_(y)
    # x = y as fill(-0.0) + y, not copy_: -0.0 is addition's identity (every bit of y kept for
    # float16/32/64, -0.0 and NaN payloads included), and a decomposed export (run_decompositions)
    # turns copy_ into aten.copy, which has no derivative, so such a program could not train; fill
    # and add have one (Inductor fuses the two into one pass)
    return x.fill_(-0.0).add_(y)


def torch_apply(op, operands, params, rng, inplace=False):
    """op on tensors with autograd, rng resolved: the eager Function, or the custom op when the
    seed is a tensor (inside a compiled graph or a compiled backward)."""
    if not isinstance(rng.seed, int):
        return library_op(op)(*operands, rng.seed, rng.p, rng.offset, rng.scale, list(params), rng.rank_stream,
                              _autocast.library_arg(op, operands[0]))
    apply = _recording_apply(sys.modules["torch"], operands)
    if apply is None:
        # Skip autograd's bookkeeping (in-place results stay the same object, as in torch).
        y = _kernel_forward(op, operands, rng, params, inplace)
        return mark_written(y) if inplace else y
    # the native route records torch's multiply, whose forward-mode tangent (t * f) keeps an inf or
    # NaN tangent of a dropped group; the Function's jvp applies the op: forward AD keeps it. In
    # place (x.mul_(f)) where `_inplace_lane` takes it, so both routes record the same op (a
    # review: the lane's in-place DropPath / Dropout2d on an activation had MulBackward0, the
    # pipeline's the Function, whose gradients differ in a dropped group's sign of zero and NaN):
    # a float32/float64 activation, neither a leaf nor a view
    x = operands[0]
    if op is DROPOUT and apply is _FUNCTIONS[2] and len(params) == 1 and params[0] > 0 \
            and sys.modules["torch"].autograd.forward_ad._current_level < 0 and \
            (not inplace or x.dtype in _FLAT_SCALARS and not x.is_leaf and x._base is None):
        layout = _native_groups(x, params[0], rng.p)
        if layout and rng.seed < 1 << 63 and rng.offset < 1 << 63:
            y = native_grouped(x, rng.p, rng.seed, rng.offset, rng.scale, params[0], layout, inplace=inplace)
            if y is not None:
                return y
    return apply(op, params, rng, inplace, *operands)


def _native_groups(x, g, p):
    """`_grouped.native_layout` for a tensor under autograd with mask-shape rule g > 0, when it
    is a CPU float32/float64 tensor of a plain class (the route's kernels take no other) or a small
    float16/bfloat16 one (computed in float32, `native_grouped`), else None."""
    if (x.dtype not in _FLAT_SCALARS and x.dtype not in _HALF_BITS) or not x.is_cpu or \
            type(x) not in _PLAIN_TENSORS or is_subclass_like(x):
        return None  # (a functionalization wrapper is of the plain class, without memory: a review)
    n = x.numel()
    return native_layout(x, g, p, n, n * x.element_size())


def _check_view_rebase(torch, x):
    """torch's refusal of an in-place op on a view that its autograd cannot rebase (a view made by
    chunk / split / unbind, under no_grad or inference_mode, or inside a custom Function), here
    before the seed draw: torch raises it from the Function's mark_dirty, after the kernel wrote."""
    meta = torch._C._autograd._get_creation_meta(x)
    kinds = torch._C._autograd.CreationMeta
    if meta == kinds.DEFAULT:
        return
    made = {kinds.MULTI_OUTPUT_NODE: "is one of several views one function returned (chunk, split, "
                                     "unbind, ...)",
            kinds.NO_GRAD_MODE: "was made in no_grad mode",
            kinds.INFERENCE_MODE: "was made in inference mode",
            kinds.IN_CUSTOM_FUNCTION: "was made inside a custom autograd Function"}.get(meta, f"({meta})")
    raise RuntimeError(f"inplace=True on a view that {made} and requires grad: torch does not allow "
                       f"modifying such a view in place under grad mode (its autograd cannot rebase "
                       f"it); call the op out of place, or clone the view first")


_CHANNELS_LAST = None  # torch.channels_last, set with the lane's queries


def training_lane(x, p, g, ndim=None, inplace=False):
    """The common call of dropout (g = 0) or a grouped op (g > 0) in training mode, without the
    general pipeline: a plain CPU float32/float64 tensor (float16/bfloat16 not in place: a grouped
    op, or dropout of fewer than CPU_PARALLEL_MIN contiguous elements), 0 < p < 1, inverted
    scaling, seed=None at offset 0, no out= (the callers check those arguments; in place:
    `_inplace_lane`). Every check `call`
    runs passes for such a call, and its result is `call`'s, bit for bit, with the same draw from
    torch's generator: the route `torch_apply` would take. Under autograd that is the eager
    Function (a small contiguous elementwise call: `LaneDropout`; a grouped op:
    `native_grouped` first); with nothing to record (x needs no grad, or grad mode is off, as in
    MC-dropout sampling) the op's forward on the kernels. Skipping the pipeline's Python saves
    about a tenth of a small call (docs/cpu_kernels.md, "The training lane"). None, having
    touched nothing, when any condition fails: the caller goes on to `call`. ndim: the rank x
    must have (spatial dropout's batched rank), or None for any rank >= g. inplace: write x
    (`_inplace_lane`)."""
    if _LANE_QUERIES is None:  # torch's ops not registered yet: `call` registers them
        return None
    tensor, compiling, grad_enabled, strided, transforms_active, wrapped, tracing, forward_ad = _LANE_QUERIES
    # compiling before any query on x: Dynamo reads torch.compiler.is_compiling() as True and
    # traces nothing below it (it cannot trace the functorch queries)
    if compiling() or type(x) is not tensor:
        return None
    # the cheap refusals (CUDA; half types but not in place: a grouped op's native route or
    # grouped kernel by address, a small elementwise call's serial kernel by address) before the
    # functorch and tracing queries
    half = x.dtype in _HALF_BITS
    if (x.dtype not in _FLAT_SCALARS and not (half and not inplace)) or not x.is_cpu or x.is_nested or \
            x.layout != strided or (x.dim() < g if ndim is None else x.dim() != ndim) or x._is_zerotensor():
        return None
    if is_subclass_like(x):
        # a plain-typed tensor whose memory is not its values (a functionalization wrapper, whose
        # data_ptr() is 0: the kernels wrote to address 0; a legacy vmap batch): the general
        # route, which checks and refuses (a review)
        return None
    if transforms_active() or wrapped(x) or tracing() or forward_ad._current_level >= 0 or \
            tracing_dispatch_mode(sys.modules["torch"]):
        return None
    recorded = x.requires_grad and grad_enabled()
    n = x.numel()
    itemsize = x.element_size()
    nbytes = n * itemsize
    if inplace:
        return _inplace_lane(x, p, g, recorded, n, nbytes)
    small = not g and 0 < n < _cpu.CPU_PARALLEL_MIN and x.is_contiguous() and not x.is_neg()
    if half and not g and not small:
        return None  # a half x's elementwise call on the serial kernel only
    if g and recorded:
        layout = native_layout(x, g, p, n, nbytes)
        if not layout:
            return None
    elif n == 0 or nbytes > PHYSICAL_BYTES:
        return None  # empty (no draw) or an output too big (refused): the general route
    if x.untyped_storage().nbytes() < nbytes + x.storage_offset() * itemsize or not (
            x.is_contiguous() or x.dim() == 4 and x.is_contiguous(memory_format=_CHANNELS_LAST)):
        # memory short of x's elements, or a layout with gaps (a dense x spans its n elements:
        # contiguous, or timm's ConvNeXt branch permuted back to channels_last): the exact rule,
        # refused before the draw, as `call` refuses it
        check_storage(x)
    offset = _seeds.stream_offset(0)
    if offset >= 1 << 63:
        return None  # a rank of 2^15 or more: the general route
    seed, scale = _seeds.draw_torch_seed_eager(sys.modules["torch"]), 1.0 / (1.0 - p)
    if not recorded:  # nothing records the result: the kernel, as torch_apply runs it then
        if small:
            return _serial_dropout(x, _serial_args(x.dtype, p, seed, offset, scale))
        layout = g and n and not x.is_neg() and not is_legacy_batched(x) and grouped_layout(x, g)
        if layout:
            return _dense_grouped_dropout(x, p, seed, offset, scale, layout, n)  # TorchBackend.mask's pick
        return _mask(TorchBackend, (x,), _rng(p, seed, offset, scale), (g,))
    if g:
        y = native_grouped(x, p, seed, offset, scale, g, layout)
        if y is not None:
            return y
    elif small:
        # the small layer's call, where the Function's own Python is most of the time
        return _functions()[3](x, _rng(p, seed, offset, scale), _serial_args(x.dtype, p, seed, offset, scale))
    # dropout, or a grouped op with many groups dropped: the Function route torch_apply takes
    return _functions()[2](DROPOUT, (g,), _rng(p, seed, offset, scale), False, x)


def _inplace_lane(x, p, g, recorded, n, nbytes):
    """`training_lane` in place, on the routes whose checks are few: a small contiguous
    elementwise call (the serial in-place kernel) or a grouped op on groups in runs of memory
    (the flat grouped kernel over x's memory, or under autograd torch's `x.mul_(factors)` and
    the zero pass, `native_grouped`), with nothing recorded, or recorded on a tensor that is
    neither a leaf nor a view (an activation), where `call`'s in-place checks (a leaf, a view of
    one, a view autograd cannot rebase) pass; there a contiguous elementwise call takes the
    in-place Function `call` would apply. Every other in-place call, and any x torch would
    refuse to write (an inference tensor, a lazily negated view), goes to `call`, which checks
    and refuses it before the draw. x, its version counter bumped, as torch's in-place ops."""
    if n == 0 or x.is_neg() or x.is_inference() or is_legacy_batched(x):
        return None
    small = not g and n < _cpu.CPU_PARALLEL_MIN and x.is_contiguous()
    if recorded:
        if x.is_leaf or x._base is not None:
            return None
        layout = g and native_layout(x, g, p, n, nbytes)
        # elementwise: the in-place Function `call` would apply (contiguous: no overlapping memory)
        function = not g and x.is_contiguous()
    else:
        layout, function = g and grouped_layout(x, g), False
    if not (small and not recorded or layout or function):
        return None
    check_storage(x)
    offset = _seeds.stream_offset(0)
    if offset >= 1 << 63:
        return None
    seed, scale = _seeds.draw_torch_seed_eager(sys.modules["torch"]), 1.0 / (1.0 - p)
    if recorded:
        y = native_grouped(x, p, seed, offset, scale, g, layout, inplace=True) if g else None
        if y is None:  # elementwise, or many groups dropped: the Function, in place, with this draw
            announce_write(sys.modules["torch"], x)  # the kernel writes behind the modes' back, as in `call`
            y = _functions()[2](DROPOUT, (g,), _rng(p, seed, offset, scale), True, x)
        return y
    announce_write(sys.modules["torch"], x)  # to a dispatch mode that acts on writes, as `call` does
    if small:
        dropout_cpu.dropout_flat_inplace_serial_at(x.data_ptr(), n, *_serial_args(x.dtype, p, seed, offset, scale))
    else:
        groups, _, run, _ = layout
        _cpu.groups_flat_at(x.data_ptr(), x.data_ptr(), n, groups, p, seed, offset, _kernel_scale(x.dtype, scale),
                            run=run)
    return mark_written(x)


def _recording_apply(torch, operands):
    """None when nothing records op's result (no autograd graph, no forward-mode tangent, no
    torch.func transform is watching), else the `apply` of the autograd.Function that records it."""
    grad = torch.is_grad_enabled()
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    record = dead_wrapper = False
    for a in operands:
        if a is not None:
            if grad and a.requires_grad:
                record = True
            if wrapped(a):
                record = dead_wrapper = True
    if not record and torch.autograd.forward_ad._current_level < 0:
        return None
    eager, functorch, eager_apply, _ = _functions()
    if torch._C._are_functorch_transforms_active():
        return functorch.apply
    # A functorch wrapper with no transform active is a leftover of a finished one, which torch's
    # Function.apply unwraps; plain tensors skip that Python wrapper (its work is for those cases).
    return eager.apply if dead_wrapper else eager_apply


def _nothing_to_record(torch, operands):
    """No autograd graph, no forward-mode tangent and no torch.func transform is watching."""
    return _recording_apply(torch, operands) is None


_FUNCTIONS = None


def _setup(ctx, op, params, rng, inplace, operands, forward_ad):
    ctx.op, ctx.params, ctx.rng, ctx.n = op, params, rng, len(operands)
    ctx.half = _upcast_dtype(op, operands[0])
    ctx.dtypes = tuple(None if a is None else a.dtype for a in operands)  # (mixed under autocast)
    ctx.autocast = _autocast.autocast_state(operands[0])
    if op.saves:  # saved_tensors is () without the call
        ctx.save_for_backward(*(_savable(operands[i]) for i in op.saves))
    if forward_ad:
        ctx.present = [a is not None for a in operands]
        ctx.inplace = inplace  # (jvp's arguments are tangents, None for inplace itself)
        ctx.save_for_forward(*(a for a in operands if a is not None))
    if inplace:
        ctx.mark_dirty(operands[0])


def _savable(t):
    """t as the backward can keep it: an inference tensor (made under torch.inference_mode, e.g. a
    frozen backbone's features) cannot be saved for backward, so it is saved as a copy (torch's
    `F.linear(F.dropout(x), W)` saves the dropout's output, a tensor of its own); a copy of an
    operand, never a mask. (Under torch.compile AOTAutograd saves graph inputs itself, before this
    runs: an inference weight is refused there, as for F.linear.)"""
    return t.clone() if t is not None and t.is_inference() else t


def _function_backward(ctx, grad):
    op = ctx.op
    saved = [None] * ctx.n
    if op.saves:
        for i, t in zip(op.saves, ctx.saved_tensors):
            saved[i] = t
    needs = ctx.needs_input_grad[4:]
    torch = sys.modules["torch"]
    B, rng = _backward_route(torch, ctx)
    grads = _op_backward(ctx, B, plain_class(torch, grad), saved, rng, needs)
    return (None, None, None, None, *(plain_class(torch, g) if n else None for g, n in zip(grads, needs)))


def plain_class(torch, t):
    """t seen as a plain torch.Tensor when it is of a Python subclass without its own dispatch
    (`as_subclass`: the same tensor and autograd history, no copy): gradients come out plain, as
    torch's C++ backward formulas give them whatever the classes of the incoming gradient and
    the saved operands (a subclass gradient's `empty_like` and GEMMs went through its
    __torch_function__ and gave gradients of its class). None, plain tensors, tensor-subclass-
    likes (functorch's wrappers, a __torch_dispatch__ subclass) and non-tensors as they are."""
    if t is None or type(t) is torch.Tensor or not isinstance(t, torch.Tensor) or is_subclass_like(t):
        return t
    return t.as_subclass(torch.Tensor)


def _op_backward(ctx, B, grad, saved, rng, needs):
    """ctx.op's backward (the eager Function's and the custom op's) as its forward ran: half
    operands computed in float32 and rounded once (`_kernel_forward`; ctx.half), and the GEMMs
    under the forward's autocast (ctx.autocast; torch's custom_bwd)."""
    op = ctx.op
    torch = sys.modules["torch"]
    if op.saves and not _tracing(torch, [t for t in saved if t is not None]):
        # an operand freed since the forward (FSDP frees an unsharded weight after its use; its
        # backward hooks gather it again, a hand-written free does not)
        _check_storages(torch, [saved[i] for i in op.saves], ("a saved operand",) * len(op.saves))
    incoming = grad.dtype
    if ctx.half is not None:
        grad, saved = grad.float(), [None if t is None else t.float() for t in saved]
    if ctx.autocast is None:
        grads = op.backward(B, grad, saved, rng, ctx.params, needs)
    else:
        with sys.modules["torch"].autocast(*ctx.autocast):
            grads = op.backward(B, grad, saved, rng, ctx.params, needs)
    if ctx.half is not None:
        # each in its operand's dtype (a float32 weight among half operands); the bias's sum first
        # in the incoming gradient's dtype, as the composite's GEMM (autocast's) sums it, then
        # cast to a float32 bias as autocast's cast node casts it (a review, 2026-12-06)
        grads = [None if g is None else (g.to(incoming) if i == op.bias else g).to(d or ctx.half)
                 for i, (g, d) in enumerate(zip(grads, ctx.dtypes))]
    return grads


def _upcast_dtype(op, x):
    """x's half dtype where op computes it in float32 (`_upcast`), else None."""
    if op.upcast_half and _is_half(x) and not _native_half(op, TorchBackend, x):
        return x.dtype
    return None


def _kernel_forward(op, operands, rng, params, inplace):
    """op's eager forward on the kernels, inside its autograd.Function or with nothing to
    record (`torch_apply`). A GEMM op's half operands are computed in float32 here (`_upcast`), so
    the Function saves the operands themselves for backward, not float32 copies of twice their
    size (an upcast around the Function saved those, and a later in-place change of x went
    unnoticed)."""
    y = _upcast(op, TorchBackend, operands, lambda ops: op.forward(
        TorchBackend, ops, rng, params, out=ops[0] if inplace else None), inplace)
    return y if inplace else own_output(y)


def own_output(y):
    """An op's fresh result y as a tensor of its own where it is a view: a reshape of the op's
    own result (the dense ops' 2-d GEMM output, back to x's leading dims). A Function's output
    that is a view of a tensor made inside it cannot be changed in place (`h = layer(x); h += x`
    raised where nn.Linear's output takes it); the same memory, as a tensor of its own, as aten's
    matmul returns its reshaped product."""
    if y._is_view():
        y = sys.modules["torch"].ops.aten._unsafe_view(y, y.shape)
    return y


def _backward_route(torch, ctx):
    """(backend, rng) an eager Function's backward runs its formula with. Without create_graph
    (grad mode off here) nothing records the gradient: the raw kernels (TorchBackend). With it,
    or under a torch.func transform, the ops' autograd route, so the gradient has its own graph;
    under vmap levels the forward did not run under, the forward's one mask for every gradient
    of the batch (TorchReplayBackend). Under compiled autograd, which traces this backward, the
    autograd route with the traced rng: every kernel through its custom op."""
    rng = ctx.rng
    if torch.compiler.is_compiling():
        return TorchAutogradBackend, _traced_rng(torch, rng)
    if torch._C._are_functorch_transforms_active():
        forward_levels = getattr(ctx, "vmap_levels", NO_LEVELS)
        if vmap_levels(torch).keys() - forward_levels.keys():
            if "different" in forward_levels.values():
                raise RuntimeError(f"fastdrop.{ctx.op.name}: a backward batched by a torch.func.vmap "
                                   f"(jacrev, vmap of a vjp) of a forward that ran under "
                                   f"vmap(randomness='different') is not supported (it would need "
                                   f"a mask per example of one vmap and one mask for all of the "
                                   f"other); torch.func.vmap over torch.func.grad (per-example "
                                   f"gradients) works")
            # the forward drew one mask for all (no vmap, or randomness="same"): replay it
            return TorchReplayBackend, rng
        return TorchAutogradBackend, rng
    if torch.is_grad_enabled() or forward_ad_active(torch):
        # (a dual gradient, forward-over-reverse AD without create_graph: the raw kernels would
        # return it without its tangent; torch's ops carry it, grad mode or not)
        return TorchAutogradBackend, rng
    return TorchBackend, rng


def _traced_rng(torch, rng):
    """rng as a compiled graph carries it (the custom ops' schema): the seed a 0-d int64 tensor,
    the offset the int64 with the same bits. Under compiled autograd, which traces an eager
    Function's backward with Dynamo, that sends every mask through its opaque custom op (Dynamo
    cannot trace the Numba kernels, nor their uint64 scalars)."""
    return Rng(rng.p, _explicit_seed_tensor(torch, rng.seed), _to_i64(rng.offset), rng.scale)


def _jvp(ctx, _op, _params, _rng, _inplace, *tangents):
    it = iter(ctx.saved_tensors)
    primals = [next(it) if here else None for here in ctx.present]
    # (under the forward's autocast, as its GEMMs ran: mixed half / float32 operands need it)
    with contextlib.nullcontext() if ctx.autocast is None else sys.modules["torch"].autocast(*ctx.autocast):
        if ctx.half is None:
            out = ctx.op.jvp(TorchAutogradBackend, primals, tangents, ctx.rng, ctx.params)
        else:
            up = lambda ts: [None if t is None else t.float() for t in ts]  # noqa: E731  (as the forward)
            out = ctx.op.jvp(TorchAutogradBackend, up(primals), up(tangents), ctx.rng, ctx.params)
    # in the output's dtype (a float32 bias tangent promoted the sum: a float32 tangent of a
    # bfloat16 output under autocast)
    if out is not None and out.dtype != ctx.out_dtype:
        out = out.to(ctx.out_dtype)
    if ctx.inplace and out is not None and tangents[0] is not None:
        # the forward wrote x in place (mark_dirty): torch requires x's tangent written in place
        # too, and returned, as its own in-place ops do (a new tensor is refused)
        return tangents[0].copy_(out)
    return out


def _functions():
    """(eager, functorch, eager_apply, lane_apply): the autograd.Functions of every op, made on
    first use (`import fastdrop` needs no torch), the eager one's apply without torch's Python
    wrapper, and the same for the training lane's small elementwise dropout.
    The same backward and jvp; the functorch one has the setup_context form that torch.func needs,
    which costs an inspect.signature bind per call, so plain eager calls use the classic form."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import torch

        class EagerFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, op, params, rng, inplace, *operands):
                _setup(ctx, op, params, rng, inplace, operands,
                       torch.autograd.forward_ad._current_level >= 0)
                y = _kernel_forward(op, operands, rng, params, inplace)
                ctx.out_dtype = y.dtype  # (jvp's tangent: the output's dtype, autocast's too)
                return y

            backward = staticmethod(_function_backward)
            jvp = staticmethod(_jvp)

        class FunctorchFunction(torch.autograd.Function):
            @staticmethod
            def forward(op, params, rng, inplace, *operands):
                return _kernel_forward(op, operands, rng, params, inplace)

            @staticmethod
            def setup_context(ctx, inputs, output):
                op, params, rng, inplace, *operands = inputs
                _setup(ctx, op, params, rng, inplace, operands, True)
                ctx.out_dtype = output.dtype
                ctx.vmap_levels = vmap_levels(torch)  # a backward under others: one mask for all

            backward = staticmethod(_function_backward)
            jvp = staticmethod(_jvp)

            @staticmethod
            def vmap(info, in_dims, op, params, rng, inplace, *operands):
                if op.vmap is None or inplace:
                    raise _no_vmap(op, inplace)
                return op.vmap(info, in_dims[4:], operands, rng, params)

        is_compiling, transforms_active = torch.compiler.is_compiling, torch._C._are_functorch_transforms_active
        grad_enabled, subclass_like = torch.is_grad_enabled, torch._C._dispatch_isTensorSubclassLike
        tensor = torch.Tensor
        forward_ad = torch.autograd.forward_ad

        class LaneDropout(torch.autograd.Function):
            """DROPOUT (g = 0) of a small C-contiguous CPU tensor in a training step
            (`training_lane`): the eager Function's forward and backward on the serial kernel,
            with the kernel's arguments made once and kept for backward. The same values, the
            same saved state (scalars only); a lighter call, where a small layer spends most of
            its time in the Function's own Python."""

            @staticmethod
            def forward(ctx, x, rng, args):
                ctx.rng, ctx.args, ctx.dtype = rng, args, x.dtype
                return _serial_dropout(x, args)

            @staticmethod
            def backward(ctx, grad):
                # (the kernel reads the gradient's memory as x's dtype: autograd casts gradients
                # to the output's dtype, the check keeps that an assumption nobody relies on; a
                # subclass-like gradient, a legacy vmap batch among them, has no memory to read)
                # The common case first, `_backward_route`'s TorchBackend answer asked inline (two
                # Python calls fewer: ~1 us of a 64x512 layer's forward+backward); a subclass-like
                # gradient, which the C query cannot tell from a dispatch mode's, goes the long way.
                if type(grad) is not tensor:  # a Python subclass's: a plain gradient, as torch's
                    grad = plain_class(torch, grad)
                if not is_compiling() and not transforms_active() and not grad_enabled() and \
                        forward_ad._current_level < 0 and grad.dtype == ctx.dtype and grad.is_contiguous() and not grad.is_neg() and \
                        not subclass_like(grad) and not grad._is_zerotensor():
                    return _serial_dropout(grad, ctx.args), None, None
                B, rng = _backward_route(torch, ctx)
                if B is TorchBackend and grad.dtype == ctx.dtype and grad.is_contiguous() and \
                        not grad.is_neg() and not is_subclass_like(grad) and not grad._is_zerotensor():
                    return _serial_dropout(grad, ctx.args), None, None
                # else an expanded or strided gradient (of a sum, a transpose), create_graph, a
                # transform or compiled autograd: the op's backward, as the eager Function runs it
                return _mask(B, (grad,), rng, (0,)), None, None

        _FUNCTIONS = (EagerFunction, FunctorchFunction, _c_apply(torch, EagerFunction),
                      _c_apply(torch, LaneDropout))
    return _FUNCTIONS


def _c_apply(torch, function):
    """function.apply without torch's Python wrapper (`Function.apply`), whose work is for
    setup_context binding, torch.func transforms and dead functorch wrappers, none of which a
    classic-form Function on plain tensors meets (torch_apply routes those cases elsewhere). The
    C method the wrapper ends in; the wrapper itself where a torch lacks it."""
    base = getattr(torch._C, "_FunctionBase", None)
    c_apply = getattr(base, "__dict__", {}).get("apply")
    return function.apply if c_apply is None else c_apply.__get__(None, function)


# ---- torch.compile: the custom ops ----------------------------------------------------------------

_SEED_OPS = None
# the torch queries `training_lane` asks on every call, bound once (set with the seed ops)
_LANE_QUERIES = None


def _seed_ops():
    global _SEED_OPS
    if _SEED_OPS is None:
        import itertools
        import torch
        _fill_flat_scalars()  # every torch route passes here first (eager call, custom op)

        @torch.library.custom_op("fastdrop::draw_seed", mutates_args=(),
                                 tags=(torch.Tag.nondeterministic_seeded, torch.Tag.cudagraph_unsafe),
                                 schema="(int token, *, str device) -> Tensor")
        def draw_seed(token, *, device):
            """`token` is ignored; see `trace_token`. Tagged nondeterministic_seeded, so Inductor
            neither replaces the draw with its own RNG, nor merges draws, nor recomputes one.
            `device` names the generator drawn from, always the CPU's: activation checkpointing
            inside a compiled graph saves and restores that device's RNG state around the op (it
            reads the device from this keyword), so the recomputed forward draws the same seed.
            A string, not a Device: Inductor's C++ wrapper cannot pass a Device to a custom op
            (torch 2.13; test_inductor_cpp_wrapper_runs_every_op). Any other device is refused
            (a direct call naming "cuda" drew from the CPU's generator, silently)."""
            _check_seed_device(device)
            return torch.tensor(_seeds.draw_torch_seed(), dtype=torch.int64, device="cpu")

        @draw_seed.register_fake
        def _(token, *, device):
            _check_seed_device(device)
            return torch.empty((), dtype=torch.int64, device="cpu")

        @torch.library.custom_op("fastdrop::seed_tensor", mutates_args=(), schema="(SymInt seed) -> Tensor")
        def seed_tensor(seed):
            """An explicit seed, as the int64 with its bits, in a 0-d tensor (`_explicit_seed_tensor`)."""
            return torch.tensor(seed, dtype=torch.int64, device="cpu")

        @seed_tensor.register_fake
        def _(seed):
            return torch.empty((), dtype=torch.int64, device="cpu")

        # AOTAutograd's CSE merges argument-equal calls of ops tagged nondeterministic_seeded:
        # it exempts only the ops on its list of random ops, where the draw goes too. Where
        # that list is missing (another torch), a distinct constant per call site keeps two
        # layers' draws apart instead, except in a graph traced again (an exported program
        # called twice inside a compiled function repeats its baked-in tokens).
        tokens = itertools.repeat(0) if _exempt_from_cse(torch.ops.fastdrop.draw_seed) else itertools.count()

        @torch.compiler.assume_constant_result
        def token():
            # (assume_constant_result bakes the value in without a guard)
            return next(tokens)

        global _LANE_QUERIES, _CHANNELS_LAST
        _CHANNELS_LAST = torch.channels_last
        _LANE_QUERIES = (torch.Tensor, torch.compiler.is_compiling, torch.is_grad_enabled, torch.strided,
                         torch._C._are_functorch_transforms_active,
                         torch._C._functorch.is_functorch_wrapped_tensor, torch._C._is_tracing,
                         torch.autograd.forward_ad)
        # made now, not while Dynamo traces (`_eager_torch_call`); assume_constant_result above
        # has loaded torch._dynamo
        _eager_torch_call(torch)
        _SEED_OPS = token
    return _SEED_OPS


def trace_token():
    return _seed_ops()()


def _exempt_from_cse(op):
    """Put op on AOTAutograd's list of random ops, which its CSE pass never merges
    (`torch._functorch.compile_utils.fx_graph_cse`); False where torch has no such list."""
    try:
        from torch._functorch import compile_utils
    except ImportError:
        return False
    exempt = getattr(compile_utils, "rand_ops", None)
    if not isinstance(exempt, list):
        return False
    if op not in exempt:
        exempt.append(op)
    return True


def register_when_torch_loads():
    """Register the torch ops now if torch is loaded, else right after torch's import completes
    (a one-shot import hook), so torch.compile finds them whatever the import order."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if hasattr(torch, "library"):  # else torch is still importing: the first eager call registers
            register_torch_ops()
        return
    if "torch" in sys.modules:  # import of torch blocked (sys.modules["torch"] = None)
        return
    import importlib.abc
    import importlib.util
    import threading

    class TorchImportHook(importlib.abc.MetaPathFinder):
        """Wraps the loader of every spec found for torch, and leaves sys.meta_path only when torch
        runs: a probe (`importlib.util.find_spec("torch")`, as transformers' and accelerate's
        `is_torch_available()` do) finds a spec that is never executed, and removing the hook
        there left the later import unhooked, the ops unregistered (a saved torch.export program
        then failed to load: a review)."""
        finding = threading.local()  # this hook's own find_spec below, not to be answered again

        def find_spec(self, name, path=None, target=None):
            if name != "torch" or getattr(self.finding, "active", False):
                return None
            self.finding.active = True
            try:
                spec = importlib.util.find_spec(name)
            finally:
                self.finding.active = False
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                exec_module(module)
                config.keep_torch_off_a_forked_team(module)  # (a forked child importing torch)
                register_torch_ops()
            spec.loader.exec_module = exec_then_register
            return spec

    sys.meta_path.insert(0, TorchImportHook())


def register_torch_ops():
    """Register every op's torch.library custom ops (fastdrop::<name>, fastdrop::draw_seed) now.

    torch.compile can only trace ops that exist: this runs when fastdrop is imported after torch,
    when fastdrop.nn is imported, and on the first eager call on a tensor."""
    import_torch("fastdrop.register_torch_ops")
    _seed_ops()
    for op in OPS:
        library_op(op)
    for register in TORCH_OP_REGISTRARS:
        register()
    keep_dynamo_out()


# The torch ops of the plain functions over the core (max_norm_'s): each module adds its registration
# here when it loads, and register_torch_ops runs them with the masked ops'.
TORCH_OP_REGISTRARS = []


def _require_numba_cuda():
    """numba-cuda is an extra, not a dependency (no macOS wheel): CUDA data without it gets this
    error, not numba's deprecated built-in CUDA target (which numba 0.68 would still import)."""
    import importlib.util
    if importlib.util.find_spec("numba_cuda") is None:
        raise RuntimeError("fastdrop got CUDA data (a torch CUDA tensor or an object with "
                           "__cuda_array_interface__); its CUDA kernels need the numba-cuda package, which "
                           "is not installed: pip install 'fastdrop[cuda12]' (torch +cu12x) or "
                           "'fastdrop[cuda13]' (torch +cu13x), or 'fastdrop[cuda]' with a CUDA toolkit "
                           "(or for NUMBA_ENABLE_CUDASIM=1)")


def cuda_module():
    """fastdrop._cuda, imported on the first CUDA input (numba.cuda takes a second to load).

    It loads after the marking of keep_dynamo_out ran, so its code and the CUDA kernels' are
    marked here, on the first call once torch is loaded (without torch, the later import of torch
    marks them: TorchImportHook -> register_torch_ops)."""
    if "fastdrop._cuda" not in sys.modules:
        _require_numba_cuda()
    from . import _cuda
    if "fastdrop._cuda" not in MARKED and "torch" in sys.modules:
        keep_dynamo_out()
    return _cuda


def _compiled_capture_error(op):
    return RuntimeError(
        f"fastdrop.{op.name} was captured into a CUDA graph from inside a torch.compile'd or traced "
        f"function: there its seed is a host tensor baked into the launch, and every replay would "
        f"apply one mask. Capture the eager call (outside torch.compile, fastdrop draws its seed on "
        f"the device during capture and every replay draws a new mask), or let "
        f"torch.compile(mode='reduce-overhead') make the graphs (it keeps fastdrop's ops out of them)")


def _check_library_scalars(op, x, seed, p, scale, params):
    """A custom op's scalar arguments, which the public call makes and a direct call of
    torch.ops.fastdrop.<name> passes as it likes: refused as the public call refuses its own,
    before any kernel runs (a float seed would be truncated, a g beyond x's rank read as
    elementwise, an infinite scale written into the kept elements)."""
    torch = sys.modules["torch"]
    if seed.dtype != torch.int64:
        raise TypeError(f"fastdrop::{op.name}: seed must be a 0-d int64 tensor, got dtype {seed.dtype}")
    if seed.dim() != 0:
        raise ValueError(f"fastdrop::{op.name}: seed must be a 0-d int64 tensor, got shape "
                         f"{tuple(seed.shape)}")
    check_p(p)
    if not math.isfinite(scale):
        raise ValueError(f"fastdrop::{op.name}: scale must be finite, got {scale}")
    if op.params_rule is not None:
        op.params_rule(x, params)
    elif params:
        raise ValueError(f"fastdrop::{op.name} takes no params, got {list(params)}")


def _scalars(args):
    # (seed, p, offset, scale, params, rank_stream, autocast): rank_stream and autocast may be left
    # out (their defaults: a graph made before autocast was an argument); params None is the empty
    # list: AOTInductor's runtime passes an empty int[] as None (torch 2.13), hence the schema's int[]?
    seed, p, offset, scale, params, *rest = args
    rank_stream, autocast = (*rest, *(False, None)[len(rest):])
    return seed, p, offset, scale, () if params is None else params, rank_stream, autocast


def _check_seed_device(device):
    if device != "cpu":
        raise ValueError(f"fastdrop::draw_seed draws from the CPU generator: device must be 'cpu', got {device!r}")


def _run_offset(offset, rank_stream):
    """A custom op's offset as a uint64, with this process's rank stream offset added where the
    call drew its seed (seed=None): resolved when the graph runs, so a graph traced or exported
    on one rank gives every rank its own stream."""
    offset &= MAX_U64
    return _seeds.stream_offset(offset) if rank_stream else offset


def _refuse_meta_among_real(torch, op, operands, seed):
    """A custom op's fake function also runs as its Meta kernel, which torch's dispatch picks for
    a call with one meta tensor among real ones (torch.ops.fastdrop.<name> called directly): the
    body and its checks never ran, and the fake's output was a real tensor of uninitialized
    memory. Refused as the public call refuses mixed devices. (Under a fake mode every tensor is
    fake; meta operands with a real CPU seed are shape inference, as a compiled graph's seed is
    a host tensor beside operands on any device.)"""
    is_fake = torch._subclasses.fake_tensor.is_fake
    named = [(name, t) for name, t in zip(op.operands, operands) if t is not None]
    meta = [name for name, t in named if t.is_meta] + (["seed"] if seed.is_meta else [])
    real = [(name, t) for name, t in named if not t.is_meta and not is_fake(t)]
    if meta and real:
        raise ValueError(f"torch.ops.fastdrop.{op.name}: {real[0][0]} is on {real[0][1].device} but {meta[0]} is "
                         f"on meta; pass every tensor on one device (meta tensors give shapes only)")


def library_op(op):
    """The torch.library custom op fastdrop::<op.name>, made on first use."""
    if op._library_op is not None:
        return op._library_op
    import torch
    _seed_ops()  # fastdrop::draw_seed exists before any graph can use it
    n = len(op.operands)
    schema = "(" + ", ".join(f"Tensor{'?' if i in op.optional else ''} {name}"
                             for i, name in enumerate(op.operands)) + \
        ", Tensor seed, float p, SymInt offset, float scale, int[]? params, bool rank_stream=False, " \
        "ScalarType? autocast=None) -> Tensor"

    def impl(*args):
        operands, (seed, p, offset, scale, params, rank_stream, autocast) = args[:n], _scalars(args[n:])
        tracing = torch._C._get_tracing_state()
        if tracing is not None:
            # under torch.jit.trace, which records this op as one node: its body runs untraced
            # (traced, x.shape would give 0-d tensors, which the kernels' size math cannot take)
            torch._C._set_tracing_state(None)
        try:  # (the refusals too: the tracing state is restored whatever happens)
            autocast = _autocast.library_dtype(op, autocast)
            # A torch.jit.trace or make_fx graph replays this op on whatever its caller passes,
            # without the public call's checks (a call of torch.ops.fastdrop.<name> too): the same
            # checks here, so an integer or sparse tensor gets their TypeError, not a Numba
            # typing error or numpy's conversion error from inside the kernels' call.
            _, _, checked, params = validate(op, operands, tuple(params), autocast=False,
                                             mixed_ok=autocast is not None)
            _check_storages(torch, checked, op.operands)
            _check_library_scalars(op, checked[0], seed, p, scale, params)
            if seed.is_cuda:  # a CUDA-graph capture's seed, read by the kernels (`_torch_call`)
                rng = Rng(p, seed, _run_offset(offset, rank_stream), scale)
            elif operands[0].is_cuda and capturing(torch, operands[0].device):
                raise _compiled_capture_error(op)
            else:
                rng = Rng(p, _seed_int(seed), _run_offset(offset, rank_stream), scale)
            with _autocast.library_region(op, checked[0], autocast):
                y = _kernel_forward(op, checked, rng, params, False)
        finally:
            if tracing is not None:
                torch._C._set_tracing_state(tracing)
        # a custom op's output may not alias its inputs (e.g. p = 0 paths returning x)
        return y.clone() if any(y is a for a in operands) else y

    # cudagraph_unsafe: inside a compiled graph the seed is a host tensor (fastdrop::draw_seed,
    # CPU), so a captured call would replay one mask (refused at capture: _compiled_capture_error);
    # torch.compile's CUDA-graph mode (mode="reduce-overhead") splits the graph around the op.
    lib = torch.library.custom_op(f"fastdrop::{op.name}", impl, mutates_args=(), schema=schema,
                                  tags=(torch.Tag.cudagraph_unsafe,))

    def fake(*args):
        _refuse_meta_among_real(torch, op, args[:n], args[n])
        *_, params, _, autocast = _scalars(args[n:])
        autocast = _autocast.library_dtype(op, autocast)
        y = op.fake(args[:n], tuple(params))
        if autocast is None or op.own_products or y.dtype not in _autocast.lower_dtypes(torch) or \
                y.dtype == autocast:
            return y
        return y.new_empty(y.shape, dtype=autocast)  # (its GEMMs' autocast gives autocast's dtype)

    lib.register_fake(fake)

    def setup_context(ctx, inputs, output):
        operands, (seed, p, offset, scale, params, rank_stream, autocast) = inputs[:n], _scalars(inputs[n:])
        ctx.save_for_backward(*(_savable(operands[i]) for i in op.saves), seed)
        # the forward's offset, the rank stream left to the backward's ops to add when they run,
        # as the forward's op does: AOTAutograd runs this while tracing, and a compiled backward
        # graph (cached on disk, maybe by another rank) would keep the tracing process's rank
        ctx.scalars, ctx.params, ctx.rank_stream = (p, offset, scale), tuple(params), rank_stream
        # (the backward's GEMMs under the forward's autocast, which the body ran under)
        autocast = _autocast.library_dtype(op, autocast)
        ctx.autocast = None if autocast is None else ("cuda" if operands[0].is_cuda else "cpu", autocast)
        ctx.op, ctx.half = op, _upcast_dtype(op, operands[0])
        ctx.dtypes = tuple(None if a is None else a.dtype for a in operands)

    def backward(ctx, grad):
        *kept, seed = ctx.saved_tensors
        saved = [None] * n
        for i, t in zip(op.saves, kept):
            saved[i] = t
        p, offset, scale = ctx.scalars
        needs = ctx.needs_input_grad[:n]
        grads = _op_backward(ctx, TorchAutogradBackend, grad, saved, Rng(p, seed, offset, scale, ctx.rank_stream),
                             needs)
        return (*(g if need else None for g, need in zip(grads, needs)), None, None, None, None, None, None, None)

    lib.register_autograd(backward, setup_context=setup_context)

    def vmap_rule(info, in_dims, *args):
        # torch.func.vmap inside a compiled graph (eager calls take the Function's rule, `op.vmap`):
        # without a rule torch would loop over the examples with one seed, one mask for all
        if op.vmap is None:
            raise _no_vmap(op)
        operands, (seed, p, offset, scale, params, rank_stream, autocast) = args[:n], _scalars(args[n:])
        if in_dims[n] is not None:  # pragma: no cover - the seed is drawn outside the transform
            raise RuntimeError(f"fastdrop.{op.name}: a batched seed tensor under torch.func.vmap")
        apply = lambda B, ops, rng, prm: (  # noqa: E731  (the rule's torch_apply: this op, traced)
            lib(*ops, rng.seed, rng.p, rng.offset, rng.scale, list(prm), rng.rank_stream, autocast))
        # the rank stream added by the ops it calls, when they run (a traced rule runs once)
        return op.vmap(info, in_dims[:n], operands, Rng(p, seed, offset, scale, rank_stream), tuple(params), apply)

    lib.register_vmap(vmap_rule)
    if op.upcast_half:
        _autocast.register_autocast_kernels(op, getattr(torch.ops.fastdrop, op.name).default, n)
    if op.flops is not None:
        _register_flops(torch, op, n)
    op._library_op = lib
    return lib


def contracting_last_dim_flops(shapes, out_shape):
    """A GEMM whose output element sums over the first operand's last dim (x Wᵀ, a @ b, g W):
    a multiply and an add per term."""
    return 2 * math.prod(out_shape) * shapes[0][-1]


def _register_flops(torch, op, n):
    """torch's FlopCounterMode counts the op's GEMMs where it sees the custom op (meta tensors,
    traced graphs); without a formula it counted none (a review)."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(getattr(torch.ops.fastdrop, op.name))
    def flops(*args, out_shape=None, **kwargs):
        return op.flops(args[:n], out_shape)
