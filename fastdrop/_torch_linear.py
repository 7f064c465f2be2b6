"""torch.autograd bridge for the fused dense layers (fastdrop.linear).

Forward saves x and weight (the tensors the caller already holds, so no new memory) and four
Python scalars (p, seed, offset, scale); backward regenerates the mask from (seed, offset) inside
the kernel. Nothing of size N x I, O x I or N x O x I is saved: no mask, no masked copy.

Eager calls go through `DenseDropFunction` (an autograd.Function: less per-call overhead); under
torch.compile the same forward/backward run as the custom ops `fastdrop::dense_drop` and
`fastdrop::dense_drop_backward` (opaque to Dynamo, with fake shapes), which save x, weight and
the 0-d seed tensor; seed=None is then the `fastdrop::draw_seed` op of fastdrop._ops, so compiled
and eager models draw the same masks after the same torch.manual_seed.

Kernels run on 2-D C-contiguous float32/float64 views: CPU tensors go to fastdrop.linear.CPU as
numpy views (zero copy), CUDA tensors to fastdrop._cuda_linear as Numba device arrays (zero copy
through __cuda_array_interface__). float16/bfloat16 are computed in float32 and cast back once.
"""
import math
import types
from typing import List, Optional

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _distributed, _ops, _seeds
from . import linear as _linear
from ._checks import MAX_U64
from .kernels import dropout_cpu, linear_cpu
from .mask import kernel_rng_args

HALF_TYPES = (torch.float16, torch.bfloat16)
DROPOUT, BATCH, SAMPLE = "dropout", "batch", "sample"


# ---- CPU tensors: Numba masks, torch GEMMs ------------------------------------------------------
# For tensors the GEMMs go through torch (MKL on torch's OpenMP pool), not through np.dot inside
# a Numba kernel (scipy's OpenBLAS, another pool whose spinning threads slow the torch ops that
# follow), and masks below PARALLEL_MASK_MIN elements run serially so that Numba's own OpenMP
# pool (a second libgomp) is not woken for 0.1 ms of work (docs/threads.md). The per-sample
# DropConnect kernels use no BLAS and run on Numba's pool: they are all the work there is.

def _mask_into(src, dst, p, seed, offset, scale):
    """dst = src ⊙ M s (contiguous tensors; dst is src or does not overlap it)."""
    big = src.numel() >= linear_cpu.PARALLEL_MASK_MIN
    args = (*kernel_rng_args(seed, offset, p), np.dtype(_NP[src.dtype]).type(scale))
    if dst is src:
        (linear_cpu.mask_inplace if big else linear_cpu.mask_inplace_serial)(src.numpy().reshape(-1), *args)
    else:
        (dropout_cpu.dropout_flat if big else dropout_cpu.dropout_flat_serial)(src.numpy().reshape(-1),
                                                                       dst.numpy().reshape(-1), *args)
    return dst


_NP = {torch.float32: np.float32, torch.float64: np.float64}


def _addmm(b, a, m):
    return torch.mm(a, m) if b is None else torch.addmm(b, a, m)


def _t_dropout_linear_forward(x2d, w, b, p, seed, offset, scale):
    if x2d.numel() == 0:
        return _addmm(b, x2d, w.t())
    return _addmm(b, _mask_into(x2d, torch.empty_like(x2d), p, seed, offset, scale), w.t())


def _t_dropout_linear_backward(g, x2d, w, p, seed, offset, scale, need_x=True, need_w=True):
    gb = g.sum(0)
    gx = gw = None
    if x2d.numel() == 0:
        return torch.zeros_like(x2d), torch.mm(g.t(), x2d), gb
    xm = torch.empty_like(x2d)
    if need_x:
        gx = torch.mm(g, w)
        kern = (linear_cpu.mask_pair if x2d.numel() >= linear_cpu.PARALLEL_MASK_MIN
                else linear_cpu.mask_pair_serial)
        kern(x2d.numpy().reshape(-1), xm.numpy().reshape(-1), gx.numpy().reshape(-1),
             *kernel_rng_args(seed, offset, p), np.dtype(_NP[x2d.dtype]).type(scale))
    elif need_w:
        _mask_into(x2d, xm, p, seed, offset, scale)
    if need_w:
        gw = torch.mm(g.t(), xm)
    return gx, gw, gb


def _t_dropconnect_forward(x2d, w, b, p, seed, offset, scale, per_sample):
    if per_sample:
        b = None if b is None else b.numpy()
        return torch.from_numpy(_linear.CPU.dropconnect_forward(x2d.numpy(), w.numpy(), b, p, seed,
                                                                offset, scale, True))
    return _addmm(b, x2d, _mask_into(w, torch.empty_like(w), p, seed, offset, scale).t())


def _t_dropconnect_backward(g, x2d, w, p, seed, offset, scale, per_sample, need_x=True, need_w=True):
    if per_sample:
        return tuple(torch.from_numpy(a) for a in _linear.CPU.dropconnect_backward(
            g.numpy(), x2d.numpy(), w.numpy(), p, seed, offset, scale, True))
    gx = gw = None
    if need_x:
        gx = torch.mm(g, _mask_into(w, torch.empty_like(w), p, seed, offset, scale))
    if need_w:
        gw = torch.mm(g.t(), x2d)
        _mask_into(gw, gw, p, seed, offset, scale)
    return gx, gw, g.sum(0)


TORCH_CPU = types.SimpleNamespace(dropout_linear_forward=_t_dropout_linear_forward,
                                  dropout_linear_backward=_t_dropout_linear_backward,
                                  dropconnect_forward=_t_dropconnect_forward,
                                  dropconnect_backward=_t_dropconnect_backward)


def _backend(t):
    """(kernels, tensor -> kernel array, kernel array -> tensor) for t's device."""
    if t.is_cuda:
        from numba import cuda
        dev = t.device
        return (_linear.cuda_kernels(), lambda a: cuda.as_cuda_array(a),
                lambda a: torch.as_tensor(a, device=dev))
    if t.device.type != "cpu":
        raise ValueError(f"fastdrop runs on CPU and CUDA tensors, got device {t.device}")
    ident = lambda a: a  # noqa: E731
    return TORCH_CPU, ident, ident


def _compute_dtype(t):
    return torch.float32 if t.dtype in HALF_TYPES else t.dtype


def _as2d(t, ct):
    """t as a 2-D (prod(leading dims), last dim) C-contiguous tensor of dtype ct, detached."""
    return t.detach().reshape(math.prod(t.shape[:-1]), t.shape[-1]).to(ct).contiguous()


def _forward(x, weight, bias, p, seed, offset, scale, op):
    """The forward kernel on tensors (no autograd)."""
    kern, to_k, from_k = _backend(x)
    ct = _compute_dtype(x)
    x2d, w = _as2d(x, ct), weight.detach().to(ct).contiguous()
    b = None if bias is None else to_k(bias.detach().to(ct).contiguous())
    if op == DROPOUT:
        y = kern.dropout_linear_forward(to_k(x2d), to_k(w), b, p, seed, offset, scale)
    else:
        y = kern.dropconnect_forward(to_k(x2d), to_k(w), b, p, seed, offset, scale, op == SAMPLE)
    return from_k(y).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def _backward(grad, x, weight, p, seed, offset, scale, op, need_x, need_w):
    """(gx, gw, gb) from the regenerated mask; gx / gw are None where not needed."""
    kern, to_k, from_k = _backend(x)
    ct = _compute_dtype(x)
    x2d, w, g = _as2d(x, ct), weight.detach().to(ct).contiguous(), _as2d(grad, ct)
    args = (to_k(g), to_k(x2d), to_k(w), p, seed, offset, scale)
    # The CPU kernels skip the GEMMs of gradients nobody asked for; the CUDA module computes all.
    flags = dict(need_x=need_x, need_w=need_w) if kern is TORCH_CPU else {}
    if op == DROPOUT:
        gx, gw, gb = kern.dropout_linear_backward(*args, **flags)
    else:
        gx, gw, gb = kern.dropconnect_backward(*args, op == SAMPLE, **flags)
    if x2d.numel() == 0:
        gx = torch.zeros_like(x2d)
    gx = from_k(gx).reshape(x.shape).to(x.dtype) if need_x else None
    gw = from_k(gw).to(weight.dtype) if need_w else None
    return gx, gw, from_k(gb).to(weight.dtype)


class DenseDropFunction(torch.autograd.Function):
    """y = op(x, weight, bias) for op in (dropout -> linear, batch DropConnect, per-sample DropConnect)."""

    @staticmethod
    def forward(ctx, x, weight, bias, p, seed, offset, scale, op):
        ctx.save_for_backward(x, weight)
        ctx.rng = (p, seed, offset, scale, op)
        return _forward(x, weight, bias, p, seed, offset, scale, op)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = _backward(grad, x, weight, *ctx.rng, need_x, need_w)
        return gx, gw, gb if need_b else None, None, None, None, None, None


# ---- torch.compile: the same computation as torch.library custom ops ------------------------------
# Dynamo cannot trace into Numba dispatchers; as in fastdrop._ops (and for the reasons given
# there: eager overhead, generator-faithful seeds) the custom ops are used only while compiling.

_OPS = (DROPOUT, BATCH, SAMPLE)


@torch.library.custom_op("fastdrop::dense_drop", mutates_args=())
def dense_drop(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor,
               p: float, offset: int, scale: float, op: int) -> torch.Tensor:
    return _forward(x, weight, bias, p, int(seed) & MAX_U64, offset & MAX_U64, scale, _OPS[op])


@dense_drop.register_fake
def _(x, weight, bias, seed, p, offset, scale, op):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("fastdrop::dense_drop_backward", mutates_args=())
def dense_drop_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, seed: torch.Tensor,
                        p: float, offset: int, scale: float, op: int, need_x: bool,
                        need_w: bool) -> List[torch.Tensor]:
    gx, gw, gb = _backward(grad, x, weight, p, int(seed) & MAX_U64, offset & MAX_U64, scale, _OPS[op],
                           need_x, need_w)
    # custom ops return tensors only: empty placeholders for gradients nobody asked for
    return [gx if need_x else x.new_empty(0), gw if need_w else weight.new_empty(0), gb]


@dense_drop_backward.register_fake
def _(grad, x, weight, seed, p, offset, scale, op, need_x, need_w):
    return [torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(weight) if need_w else weight.new_empty(0), weight.new_empty(weight.shape[0])]


def _setup_context(ctx, inputs, output):
    x, weight, bias, seed, p, offset, scale, op = inputs
    ctx.save_for_backward(x, weight, seed)
    ctx.rng = (p, offset, scale, op)
    ctx.has_bias = bias is not None


def _op_backward(ctx, grad):
    x, weight, seed = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    gx, gw, gb = torch.ops.fastdrop.dense_drop_backward(grad, x, weight, seed, *ctx.rng, need_x, need_w)
    return (gx if need_x else None, gw if need_w else None, gb if ctx.has_bias else None,
            None, None, None, None, None)


dense_drop.register_autograd(_op_backward, setup_context=_setup_context)


def _apply(x, weight, bias, p, seed, offset, scale, op):
    """Resolve seed=None (torch's generator, rank-separated offset) and run eager or compiled."""
    if seed is None:
        offset = _distributed.stream_offset(offset)
    if torch.compiler.is_compiling():
        seed_t = (torch.ops.fastdrop.draw_seed(_ops.trace_token()) if seed is None
                  else _ops.seed_tensor(seed))
        return torch.ops.fastdrop.dense_drop(x, weight, bias, seed_t, p, _ops.to_i64(offset), scale,
                                             _OPS.index(op))
    if seed is None:
        seed = _seeds.draw_torch_seed()
    return DenseDropFunction.apply(x, weight, bias, p, seed, offset, scale, op)


def dropout_linear(x, weight, bias, p, seed, offset, scale):
    return _apply(x, weight, bias, p, seed, offset, scale, DROPOUT)


def dropconnect_linear(x, weight, bias, p, seed, offset, scale, per_sample):
    return _apply(x, weight, bias, p, seed, offset, scale, SAMPLE if per_sample else BATCH)
