"""Drop-in replacements for torch.nn.Dropout and Dropout1d/2d/3d.

Same constructor (p, inplace) and validation, `extra_repr`, and train/eval behaviour as torch's
modules; `mode="classic"` selects the original paper's scaling. seed=None on every call: masks
come from torch's generator, so `torch.manual_seed` makes them reproducible.
"""
import torch

from .. import functional as F
from .._checks import check_mode, check_p


class _DropoutNd(torch.nn.Module):
    __constants__ = ["p", "inplace", "mode"]
    _fn = None  # the functional op, set by each subclass

    def __init__(self, p: float = 0.5, inplace: bool = False, mode: str = "inverted"):
        super().__init__()
        self.p = check_p(p)
        self.inplace = inplace
        self.mode = check_mode(mode)

    def extra_repr(self) -> str:
        mode = "" if self.mode == "inverted" else f", mode={self.mode}"
        return f"p={self.p}, inplace={self.inplace}{mode}"

    def forward(self, x):
        return self._fn(x, self.p, training=self.training, mode=self.mode, inplace=self.inplace)


class Dropout(_DropoutNd):
    """Elementwise dropout; see fastdrop.dropout."""
    _fn = staticmethod(F.dropout)


class Dropout1d(_DropoutNd):
    """Zeroes whole channels of (N, C, L) / (C, L) input; see fastdrop.dropout1d."""
    _fn = staticmethod(F.dropout1d)


class Dropout2d(_DropoutNd):
    """Zeroes whole channels of (N, C, H, W) input; see fastdrop.dropout2d."""
    _fn = staticmethod(F.dropout2d)


class Dropout3d(_DropoutNd):
    """Zeroes whole channels of (N, C, D, H, W) / (C, D, H, W) input; see fastdrop.dropout3d."""
    _fn = staticmethod(F.dropout3d)
