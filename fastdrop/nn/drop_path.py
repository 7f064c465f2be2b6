"""DropPath (stochastic depth) as a module: timm's `DropPath` and torchvision's `StochasticDepth`.

The probability is timm's `drop_prob` or torchvision's `p` (the same value: `.drop_prob` is a live
alias of `.p`, so drop-path-rate schedules that assign `m.drop_prob` change what forward uses).
`StochasticDepth` is DropPath under torchvision's signatures, `StochasticDepth(p, mode)` and
`forward(input)`, which `fastdrop.nn.convert` puts in torchvision's layer's place.
"""
import numpy as np
import torch
from torch.jit import is_scripting

from .._checks import check_mode, check_p, is_fx_proxy, module_inplace_flag, traced_as_leaf
from .. import _core
from ..functional import DROP_PATH_MODES, drop_path
from . import _mc_state
from .leaf import FxLeaf
from ._script import ANY_RANK, scripted_dropout


class DropPath(FxLeaf, torch.nn.Module):
    """Drops whole samples of a residual branch in training; see fastdrop.drop_path.

    Args:
        drop_prob: drop probability per sample (timm's name; the first positional argument).
        scale_by_keep: scale kept samples by 1/(1-p) (timm's flag; inverted scaling only).
        mode: "row" (one draw per sample) or "batch" (one draw for the whole batch).
        scaling: "inverted" or "classic" (times (1-p) at eval).
        inplace: write into the input.
        p: the same probability by torchvision's name (keyword only; give p or drop_prob).
    Example:
        >>> x = x + DropPath(0.1)(block(x))          # timm: DropPath(drop_prob=0.1)
        >>> DropPath(p=0.2, mode="batch")             # torchvision: StochasticDepth(0.2, "batch")
    """
    __constants__ = ["scale_by_keep", "mode", "scaling", "inplace", "_ranks"]
    _ranks = ANY_RANK  # (TorchScript reads a module's constants, not a module global tuple)
    # p and drop_prob are Python properties over _p (validated on assignment): TorchScript, which
    # cannot compile their setters, reads _p
    __jit_unused_properties__ = ["p", "drop_prob"]

    def __init__(self, drop_prob: float = None, scale_by_keep: bool = True, mode: str = "row",
                 scaling: str = "inverted", inplace: bool = False, *, p: float = None):
        super().__init__()
        if drop_prob is not None and p is not None:
            raise TypeError(f"DropPath got both drop_prob={drop_prob!r} and p={p!r}; they name the same "
                            f"probability, pass one")
        # torchvision's positional StochasticDepth(p, mode) would land mode in scale_by_keep and
        # silently run in "row" mode: refuse anything but a bool there.
        if not isinstance(scale_by_keep, (bool, np.bool_)):
            raise TypeError(f"scale_by_keep must be a bool, got {type(scale_by_keep).__name__} "
                            f"{scale_by_keep!r} (torchvision's StochasticDepth(p, mode) is "
                            f"DropPath(p, mode=mode))")
        self.p = 0.0 if drop_prob is None and p is None else (p if drop_prob is None else drop_prob)
        if mode not in DROP_PATH_MODES:
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode!r}")
        self.scale_by_keep = bool(scale_by_keep)
        self.mode = mode
        self.scaling = check_mode(scaling, "scaling")
        self.inplace = module_inplace_flag(inplace)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value):
        self._p = check_p(value)  # validated on every assignment, not only in __init__

    @property
    def drop_prob(self) -> float:
        """timm's name for p: reading and assigning it reads and assigns p."""
        return self._p

    @drop_prob.setter
    def drop_prob(self, value):
        self._p = check_p(value, "drop_prob")

    def extra_repr(self) -> str:
        extra = "" if self.scaling == "inverted" else f", scaling={self.scaling}"
        return f"p={self.p}, scale_by_keep={self.scale_by_keep}, mode={self.mode}{extra}"

    def forward(self, x):
        if is_scripting():  # TorchScript compiles this branch alone (fastdrop/nn/_script.py)
            return scripted_dropout(x, self.training, self._p, self.scaling == "classic", self.inplace, "DropPath",
                                    self._ranks)
        inplace = self.inplace
        if inplace is not False and inplace is not True:  # assigned since: torch's modules take 0 / 1
            inplace = module_inplace_flag(inplace)
        if type(x) is not torch.Tensor and is_fx_proxy(x):  # torch.fx: the traced root (FxLeaf)
            return traced_as_leaf(self, x, drop_path, (x, self.p), dict(
                training=self.training, scale_by_keep=self.scale_by_keep, mode=self.mode, scaling=self.scaling,
                inplace=inplace))
        if _mc_state.thread.sampler is not None:  # inside an mc_predict call on this thread
            return _mc_state.sample(self, x)
        p = self.p  # (the property: a subclass may override it, as a drop-rate schedule does)
        if self.training is True and type(p) is float and 0.0 < p < 1.0 and self.mode == "row" and \
                self.scale_by_keep is True and self.scaling == "inverted":
            # a training step's call: the lane drop_path tries first (`functional._lane`'s
            # conditions, which a module's call meets but for these), two Python calls sooner
            y = _core.training_lane(x, p, 1, None, inplace)
            if y is not None:
                return y
        return drop_path(x, p, training=self.training, scale_by_keep=self.scale_by_keep,
                         mode=self.mode, scaling=self.scaling, inplace=inplace)


class StochasticDepth(DropPath):
    """DropPath with torchvision's signatures: `StochasticDepth(p, mode)` and `forward(input)`.

    What `fastdrop.nn.convert` puts in place of `torchvision.ops.StochasticDepth`, so that a call
    by keyword, `sd(input=h)`, as torchvision's forward names its argument, keeps working.

    Args:
        p: drop probability per sample (mode "row") or for the whole batch (mode "batch").
        mode: "row" or "batch".
    Example:
        >>> x = x + StochasticDepth(0.2, "row")(block(x))
    """

    def __init__(self, p: float, mode: str):
        super().__init__(p=p, mode=mode)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"  # torchvision's repr

    def forward(self, input):
        if is_scripting():  # (TorchScript cannot call DropPath.forward: the same branch)
            return scripted_dropout(input, self.training, self._p, self.scaling == "classic", self.inplace,
                                    "StochasticDepth", self._ranks)
        return DropPath.forward(self, input)
