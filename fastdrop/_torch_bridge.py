"""torch.autograd bridge: dropout is linear in x, so its backward is the same op, with the same
(seed, offset), applied to the incoming gradient. Nothing but five Python scalars is saved."""
import numpy as np
import torch

from . import _cpu

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
        out = torch.empty_like(x)
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
    if inplace and x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise ValueError("inplace dropout on a leaf tensor that requires grad is not allowed")
    return DropoutFunction.apply(x, p, seed, offset, scale, group_ndim, inplace)
