"""Drop-in replacements for torch.nn.Dropout and Dropout1d/2d/3d.

Each class subclasses torch's own (`isinstance(m, torch.nn.Dropout)` holds, so recipes such as
`if isinstance(m, nn.Dropout): m.train()` and `fastdrop.nn.convert` see them as dropout layers);
same constructor (p, inplace) and validation, `extra_repr`, empty `state_dict`, and train/eval
behaviour as torch's modules. `mode="classic"` selects the original paper's scaling. seed=None on
every call: masks come from torch's generator, so `torch.manual_seed` makes them reproducible.
"""
import numbers

import torch
from torch.jit import is_scripting

from .. import functional as F
from .. import _core
from .._checks import check_mode, is_fx_proxy, module_inplace_flag, outside_unit_interval, python_number, \
    shown_number, traced_as_leaf
from . import _mc_state
from .leaf import FxLeaf
from ._script import ANY_RANK, scripted_dropout


class _DropoutNd(FxLeaf):
    """The fastdrop half of each module: mixed in before torch's class, so torch's __init__ and
    attributes stay, and this forward (fastdrop's op) replaces torch's."""
    __constants__ = ["p", "inplace", "mode", "_name", "_ranks"]
    _fn = None  # the functional op, set by each subclass
    _name = ""  # the class's name, for TorchScript's messages (set by each subclass)
    _ranks = ANY_RANK  # the ranks x may have in eval mode too (TorchScript's branch checks them)
    _lane = (0, None)  # functional._lane's (g, ndim): the mask-shape rule and rank _fn gives it

    def __init__(self, p: float = 0.5, inplace: bool = False, mode: str = "inverted"):
        p = python_number(p)  # a numpy p as its Python number, which torch.compile reads as a constant
        # torch compares p with 0 and 1 and would let bools, strings-with-__lt__ or NaN through.
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"p must be a real number in [0, 1], got {type(p).__name__} {p!r}")
        # torch's range check lets NaN through, raises OverflowError for 10**400 and takes
        # 1 + 10**-400 for 1 (`outside_unit_interval`): refused with torch's message
        if outside_unit_interval(p):
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {shown_number(p)}")
        super().__init__(p, module_inplace_flag(inplace))  # p stored as given, like torch
        self.mode = check_mode(mode)

    def extra_repr(self) -> str:
        mode = "" if self.mode == "inverted" else f", mode={self.mode}"
        return f"p={self.p}, inplace={self.inplace}{mode}"

    def forward(self, input):  # torch's name for it: mod(input=t) works as on torch's modules
        if is_scripting():  # TorchScript compiles this branch alone (fastdrop/nn/_script.py)
            return scripted_dropout(input, self.training, self.p, self.mode == "classic", self.inplace, self._name,
                                    self._ranks)
        inplace = self.inplace
        if inplace is not False and inplace is not True:  # assigned since: torch's modules take 0 / 1
            inplace = module_inplace_flag(inplace)
        if type(input) is not torch.Tensor and is_fx_proxy(input):  # torch.fx: the traced root (FxLeaf)
            return traced_as_leaf(self, input, self._fn, (input, self.p, self.training, inplace),
                                  {"mode": self.mode})
        if _mc_state.thread.sampler is not None:  # inside an mc_predict call on this thread
            return _mc_state.sample(self, input)
        p, training, mode = self.p, self.training, self.mode
        if training is True and type(p) is float and 0.0 < p < 1.0 and mode == "inverted":
            # a training step's call: the lane self._fn tries first (`functional._lane`'s
            # conditions, which a module's call meets but for these), two Python calls sooner;
            # None when it is not the lane's, and self._fn goes on
            g, ndim = self._lane
            y = _core.training_lane(input, p, g, ndim, inplace)
            if y is not None:
                return y
        return self._fn(input, p, training, inplace, mode=mode)


class Dropout(_DropoutNd, torch.nn.Dropout):
    """Elementwise dropout; see fastdrop.dropout."""
    _name = "Dropout"
    _fn = staticmethod(F.dropout)


class Dropout1d(_DropoutNd, torch.nn.Dropout1d):
    """Zeroes whole channels of (N, C, L) / (C, L) input; see fastdrop.dropout1d."""
    _name = "Dropout1d"
    _lane = (2, 3)
    _ranks = (2, 3)  # F.dropout1d's rank rule, which holds at eval too
    _fn = staticmethod(F.dropout1d)


class Dropout2d(_DropoutNd, torch.nn.Dropout2d):
    """Zeroes whole channels of (N, C, H, W) input; see fastdrop.dropout2d."""
    _name = "Dropout2d"
    _lane = (2, 4)
    _fn = staticmethod(F.dropout2d)


class Dropout3d(_DropoutNd, torch.nn.Dropout3d):
    """Zeroes whole channels of (N, C, D, H, W) / (C, D, H, W) input; see fastdrop.dropout3d."""
    _name = "Dropout3d"
    _lane = (2, 5)
    _fn = staticmethod(F.dropout3d)
