"""DropPath (stochastic depth) as a module: timm's `DropPath` and torchvision's `StochasticDepth`."""
import torch

from .._checks import check_mode, check_p
from ..variants import DROP_PATH_MODES, drop_path


class DropPath(torch.nn.Module):
    """Drops whole samples of a residual branch in training; see fastdrop.drop_path.

    Args:
        p: drop probability per sample (timm's drop_prob, torchvision's p).
        scale_by_keep: scale kept samples by 1/(1-p) (timm's flag; inverted scaling only).
        mode: "row" (one draw per sample) or "batch" (one draw for the whole batch).
        scaling: "inverted" or "classic" (times (1-p) at eval).
        inplace: write into the input.
    Example:
        >>> x = x + DropPath(0.1)(block(x))
    """
    __constants__ = ["p", "scale_by_keep", "mode", "scaling", "inplace"]

    def __init__(self, p: float = 0.0, scale_by_keep: bool = True, mode: str = "row",
                 scaling: str = "inverted", inplace: bool = False):
        super().__init__()
        self.p = check_p(p)
        if mode not in DROP_PATH_MODES:
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode!r}")
        self.scale_by_keep = bool(scale_by_keep)
        self.mode = mode
        self.scaling = check_mode(scaling)
        self.inplace = inplace

    def extra_repr(self) -> str:
        extra = "" if self.scaling == "inverted" else f", scaling={self.scaling}"
        return f"p={self.p}, scale_by_keep={self.scale_by_keep}, mode={self.mode}{extra}"

    def forward(self, x):
        return drop_path(x, self.p, training=self.training, scale_by_keep=self.scale_by_keep,
                         mode=self.mode, scaling=self.scaling, inplace=self.inplace)
