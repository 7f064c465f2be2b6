"""What torch.jit.script makes of fastdrop's modules.

TorchScript compiles a module's forward from its source, and a fastdrop forward reaches the Numba
kernels through Python, which TorchScript cannot compile. torch.jit.script first calls each
module's `__prepare_scriptable__` and scripts what that returns: for a fastdrop module, one of the
modules below, which is the layer's eval rule in torch ops (what a scripted model is deployed to
run) and refuses a training-mode call with a clear error (torch.compile, torch.export and
torch.jit.trace record the training op; scripting cannot).

    eval:  dropout family and DropPath  y = x * f   (f = 1 - p for classic scaling, else 1: y is x)
           DropoutLinear                y = linear(x * f, W, b)
           DropConnectLinear            y = linear(x, W, b)   (the mean network)
    training with p = 0: the same with f = 1.

The dense layers' twins hold the layer's own Parameter objects, so the scripted model's
state_dict and parameters are the layer's.
"""
import torch
import torch.nn.functional as F


def _refusal(module) -> str:
    return (f"a scripted fastdrop.nn.{type(module).__name__} runs in eval mode only (or with p = 0): "
            f"its training op calls fastdrop's compiled kernels, which TorchScript cannot run. Call "
            f"model.eval() before running the scripted model, or use torch.compile, torch.export or "
            f"torch.jit.trace, which record the training op")


def _dtype_refusal(module) -> str:
    return (f"fastdrop.nn.{type(module).__name__}: x must have a floating point dtype (float16, "
            f"bfloat16, float32, float64)")


class _Scripted(torch.nn.Module):
    """What the scripted layers share: the checks, and the factor f of the rule above."""

    def __init__(self, module, p: float, eval_factor: float):
        super().__init__()
        self.p = float(p)
        self.eval_factor = float(eval_factor)
        self.refusal = _refusal(module)
        self.dtype_refusal = _dtype_refusal(module)
        self.train(module.training)

    def factor(self, x: torch.Tensor) -> float:
        if not x.is_floating_point():
            raise TypeError(self.dtype_refusal)
        if self.training and self.p != 0.0:
            raise RuntimeError(self.refusal)
        return 1.0 if self.training else self.eval_factor


class ScriptedDropout(_Scripted):
    """Dropout, Dropout1d/2d/3d or DropPath under torch.jit.script."""

    def __init__(self, module, p: float, eval_factor: float, inplace: bool):
        super().__init__(module, p, eval_factor)
        self.inplace = bool(inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.factor(x)
        if factor == 1.0:
            return x
        if self.inplace:
            return x.mul_(factor)
        return x * factor


class ScriptedLinear(_Scripted):
    """DropoutLinear or DropConnectLinear under torch.jit.script (the layer's own parameters)."""

    def __init__(self, module, eval_factor: float):
        super().__init__(module, module.p, eval_factor)
        self.register_parameter("weight", module.weight)
        self.register_parameter("bias", module.bias)  # (None for bias=False, as in nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.factor(x)
        if factor != 1.0:
            x = x * factor
        return F.linear(x, self.weight, self.bias)
