"""What a fastdrop module computes under torch.jit.script.

TorchScript compiles a module's forward from its source, and a fastdrop forward reaches the Numba
kernels through Python, which TorchScript cannot compile. Each forward therefore starts with
`if is_scripting(): return <one of the functions below>` (torch.jit.is_scripting): TorchScript compiles that
branch alone (it drops what follows), and eager calls go on past it. Under TorchScript a module is
its eval rule in torch ops (what a scripted model is deployed to run), and a training-mode call
with p > 0 is refused with a clear error (torch.compile, torch.export and torch.jit.trace record
the training op; TorchScript cannot run it):

    dropout family, DropPath   y = x * f
    DropoutLinear              y = linear(x * f, W, b)
    DropConnectLinear          y = linear(x, W, b)   (the mean network)
    DropoutMatmul              y = (a @ b) * f

with f = 1 - p at eval under classic scaling, else 1 (y is x itself); in training with p = 0, f = 1.

The module itself is scripted (no stand-in module): its parameters, hooks, attributes and
train/eval flag are the scripted model's, and scripting leaves the eager model as it was.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _factor(x: torch.Tensor, training: bool, p: float, classic: bool, name: str) -> float:
    """f of the rule above, after the checks eager calls make first."""
    if not x.is_floating_point():
        raise TypeError("fastdrop.nn." + name + ": x must have a floating point dtype (float16, bfloat16, "
                        "float32, float64)")  # (TorchScript's str(x.dtype) is a number)
    if training and p != 0.0:
        raise RuntimeError("a scripted fastdrop.nn." + name + " runs in eval mode only (or with p = 0): "
                           "its training op calls fastdrop's compiled kernels, which TorchScript cannot "
                           "run. Call model.eval() before running the scripted model, or use "
                           "torch.compile, torch.export or torch.jit.trace, which record the training op")
    if classic and not training:
        return 1.0 - p
    return 1.0


# the ranks x may have at eval for every module but Dropout1d (whose functional checks (2, 3) there)
ANY_RANK = (0, 64)


def scripted_dropout(x: torch.Tensor, training: bool, p: float, classic: bool, inplace: bool,
                     name: str, ranks: Tuple[int, int]) -> torch.Tensor:
    """Dropout, Dropout1d/2d/3d and DropPath under TorchScript; ranks: the (lowest, highest)
    rank x may have whatever the mode (ANY_RANK, or Dropout1d's (2, 3))."""
    if x.dim() < ranks[0] or x.dim() > ranks[1]:
        raise ValueError(name.lower() + ": Expected " + str(ranks[0]) + "D or " + str(ranks[1]) +
                         "D input, but received a " + str(x.dim()) + "D input of shape " + str(x.shape))
    factor = _factor(x, training, p, classic, name)
    if factor == 1.0:
        return x
    if inplace:
        # (TorchScript's mul_ by a Python float rounds the float to x's half type first; eager's
        # mul_ and both runtimes' x * f do not: this keeps half types bit for bit eager's)
        return x.copy_(x * factor)
    return x * factor


def scripted_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], training: bool,
                    p: float, classic: bool, name: str) -> torch.Tensor:
    """DropoutLinear (classic: x * (1 - p) at eval) and DropConnectLinear under TorchScript."""
    factor = _factor(x, training, p, classic, name)
    if factor == 1.0:
        return F.linear(x, weight, bias)
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        # computed in float32 and rounded once, as the eager op upcasts a classic eval's half
        # operands (x * (1 - p) rounded to the half type would be a second rounding)
        b32: Optional[torch.Tensor] = None
        if bias is not None:
            b32 = bias.float()
        return F.linear(x.float() * factor, weight.float(), b32).to(x.dtype)
    return F.linear(x * factor, weight, bias)


def scripted_matmul(a: torch.Tensor, b: torch.Tensor, training: bool, p: float, classic: bool,
                    name: str) -> torch.Tensor:
    """DropoutMatmul under TorchScript: the product, times 1 - p at a classic eval (half types in
    float32, rounded once, as the eager op computes it)."""
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError("dropout_matmul needs a (..., M, K) and b (..., K, N) with at least 2 dims, got "
                         "shapes " + str(a.shape) + " and " + str(b.shape))
    factor = _factor(a, training, p, classic, name)
    if factor == 1.0:
        return torch.matmul(a, b)
    if a.dtype == torch.float16 or a.dtype == torch.bfloat16:
        return (torch.matmul(a.float(), b.float()) * factor).to(a.dtype)
    return torch.matmul(a, b) * factor
