"""Drop-in dense layers with fused dropout / DropConnect: nn.Linear's parameters, init and
state_dict keys (`weight`, `bias`), so a trained nn.Linear's state loads into them unchanged.

seed=None on every call: masks come from torch's generator, so `torch.manual_seed` makes a model
reproducible, and successive calls draw fresh masks.
"""
import torch
from torch.jit import is_scripting

from .. import linear as L
from .._checks import check_bool, check_mode, check_p, is_fx_proxy, traced_as_leaf
from . import _mc_state
from .leaf import FxLeaf
from ._script import scripted_linear


class _DropLinear(FxLeaf, torch.nn.Linear):
    """nn.Linear (same __init__, reset_parameters, state_dict) plus a drop probability."""

    def __init__(self, in_features, out_features, bias=True, p=0.5, device=None, dtype=None):
        p = check_p(p)  # before nn.Linear's init draws the weights from torch's generator
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.p = p

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class DropoutLinear(_DropLinear):
    """linear(dropout(x, p), weight, bias) in one fused call; see fastdrop.dropout_linear.

    Example:
        >>> layer = fastdrop.nn.DropoutLinear(1024, 1024, p=0.5)
        >>> layer.load_state_dict(torch.nn.Linear(1024, 1024).state_dict())
    """

    def __init__(self, in_features, out_features, bias=True, p=0.5, mode="inverted", device=None,
                 dtype=None):
        mode = check_mode(mode)  # (every argument checked before the weights are drawn)
        super().__init__(in_features, out_features, bias, p, device, dtype)
        self.mode = mode

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.mode == "inverted" else f", mode={self.mode}")

    def forward(self, input):  # torch's name for it: mod(input=t) works as on torch's modules
        if is_scripting():  # TorchScript compiles this branch alone (fastdrop/nn/_script.py)
            return scripted_linear(input, self.weight, self.bias, self.training, self.p, self.mode == "classic",
                                   "DropoutLinear")
        if type(input) is not torch.Tensor and is_fx_proxy(input):  # torch.fx: the traced root (FxLeaf)
            return traced_as_leaf(self, input, L.dropout_linear, (input, self.weight, self.bias, self.p),
                                  {"training": self.training, "mode": self.mode})
        if _mc_state.thread.sampler is not None:  # inside an mc_predict call on this thread
            return _mc_state.sample(self, input)
        # (weight and bias read once: a parametrization, spectral_norm's power iteration or a
        # weight-noise draw, runs once per forward)
        p, training, mode, weight, bias = self.p, self.training, self.mode, self.weight, self.bias
        if training is True and type(p) is float and 0.0 < p < 1.0 and mode == "inverted":
            # a training step's call: the dense lane `L.dropout_linear` tries first, one Python
            # call sooner (None: not the lane's, and the pipeline goes on, without a second try)
            y = L.dense_lane(L.DROPOUT_LINEAR, input, weight, bias, p)
            if y is not None:
                return y
        return L.dropout_linear_call(input, weight, bias, p, training, None, 0, mode)


class DropConnectLinear(_DropLinear):
    """A linear layer with DropConnect on its weights (Wan et al. 2013); see fastdrop.dropconnect_linear.

    per_sample=True draws a different weight mask for every example (never materialized);
    at eval the layer is the mean network (plain nn.Linear).
    """

    def __init__(self, in_features, out_features, bias=True, p=0.5, per_sample=False, device=None,
                 dtype=None):
        per_sample = check_bool(per_sample, "per_sample")
        super().__init__(in_features, out_features, bias, p, device, dtype)
        self.per_sample = per_sample

    def extra_repr(self) -> str:
        return super().extra_repr() + f", per_sample={self.per_sample}"

    def forward(self, input):  # torch's name for it: mod(input=t) works as on torch's modules
        if is_scripting():  # the mean network at eval (fastdrop/nn/_script.py)
            return scripted_linear(input, self.weight, self.bias, self.training, self.p, False,
                                   "DropConnectLinear")
        if type(input) is not torch.Tensor and is_fx_proxy(input):
            return traced_as_leaf(self, input, L.dropconnect_linear, (input, self.weight, self.bias, self.p),
                                  {"training": self.training, "per_sample": self.per_sample})
        if _mc_state.thread.sampler is not None:  # inside an mc_predict call on this thread
            return _mc_state.sample(self, input)
        p, training, per_sample, weight, bias = self.p, self.training, self.per_sample, self.weight, self.bias
        if training is True and per_sample is False and type(p) is float and 0.0 < p < 1.0:
            # a training step's call: the dense lane first, as in DropoutLinear
            y = L.dense_lane(L.DROPCONNECT, input, weight, bias, p)
            if y is not None:
                return y
        return L.dropconnect_linear_call(input, weight, bias, p, training, None, 0, per_sample, None,
                                         L.DEFAULT_SAMPLES)
