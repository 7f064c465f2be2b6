"""torch.autograd bridge: dropout is linear in x, so its backward is the same op, with the same
(seed, offset), applied to the incoming gradient. Nothing but five Python scalars is saved.

Two routes to the same kernel call (`apply_tensor`), chosen per call:

- eager: `DropoutFunction`, a plain autograd.Function. A torch.library custom op costs ~6 us more
  per forward and ~45 us more per forward+backward in eager mode (measured at 64 elements on the
  2-core dev machine), which is more than the kernel itself at small sizes.
- under torch.compile (`torch.compiler.is_compiling()`): the custom ops of `fastdrop._ops`, which
  Dynamo and Inductor see as opaque nodes with a fake (shape) implementation and an autograd
  formula, so `torch.compile(model, fullgraph=True)` has no graph break. A seed=None draw becomes
  the `fastdrop::draw_seed` op, which consumes torch's generator exactly as eager does, so a
  compiled model and its eager twin give the same masks after the same `torch.manual_seed`.
  In-place dropout is computed out of place there and copied back into x (Inductor may re-inplace).

seed=None calls are separated across torch.distributed ranks by `fastdrop._distributed`.
"""
import numpy as np
import torch

from . import _cpu, _distributed, _seeds
from ._alloc import empty_like

HALF_TYPES = (torch.float16, torch.bfloat16)


def apply_tensor(x, p, seed, offset, scale, group_ndim, out=None):
    """Run the kernel on tensor x (no autograd); writes into `out` (default: empty_like(x))."""
    if x.is_cuda:
        from . import _cuda
        return _cuda.apply_tensor(x, p, seed, offset, scale, group_ndim, out)
    if x.device.type != "cpu":
        raise ValueError(f"fastdrop runs on CPU and CUDA tensors, got device {x.device}")
    if x.dtype in HALF_TYPES:
        # No half types in Numba's CPU target: compute in float32 and round once on the way back.
        res = apply_tensor(x.float(), p, seed, offset, scale, group_ndim)
        if out is None:
            return res.to(x.dtype)
        return out.copy_(res)
    if out is None:
        out = empty_like(x)
    xn = x.detach().numpy()
    on = out.detach().numpy()
    if group_ndim:
        _cpu.grouped_dropout_into(xn, on, p, seed, offset, scale, group_ndim)
    else:
        _cpu.dropout_into(xn, on, p, seed, offset, scale)
    return out


class DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed, offset, scale, group_ndim, inplace):
        ctx.rng = (p, seed, offset, scale, group_ndim)
        if inplace:
            ctx.mark_dirty(x)
            return apply_tensor(x, p, seed, offset, scale, group_ndim, out=x)
        return apply_tensor(x, p, seed, offset, scale, group_ndim)

    @staticmethod
    def backward(ctx, grad):
        # Through .apply again, so double backward works (the op is its own derivative).
        return (DropoutFunction.apply(grad, *ctx.rng, False),) + (None,) * 6


def dropout(x, p, seed, offset, scale, group_ndim, inplace):
    """Dropout of tensor x with autograd; seed=None draws the seed from torch's generator."""
    if inplace and x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise ValueError("inplace dropout on a leaf tensor that requires grad is not allowed")
    if not (x.is_cpu or x.is_cuda):
        # before the seed draw, so a refused call leaves torch's generator untouched
        raise ValueError(f"fastdrop runs on CPU and CUDA tensors, got device {x.device}")
    if seed is None:
        offset = _distributed.stream_offset(offset)
    if torch.compiler.is_compiling():
        return _compiled_dropout(x, p, seed, offset, scale, group_ndim, inplace)
    if seed is None:
        seed = _seeds.draw_torch_seed()
    return DropoutFunction.apply(x, p, seed, offset, scale, group_ndim, inplace)


def _compiled_dropout(x, p, seed, offset, scale, group_ndim, inplace):
    from . import _ops
    seed_t = torch.ops.fastdrop.draw_seed(_ops.trace_token()) if seed is None else _ops.seed_tensor(seed)
    out = torch.ops.fastdrop.dropout(x, seed_t, p, _ops.to_i64(offset), scale, group_ndim)
    if inplace:
        return x.copy_(out)
    return out
