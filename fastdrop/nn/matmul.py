"""A module for attention's dropout: dropout(a, p) @ b, fused (fastdrop.dropout_matmul).

In an attention block, softmax(QK^T / sqrt(d)) -> dropout -> @ V is `self.attn_drop(attn, v)`
with `self.attn_drop = fastdrop.nn.DropoutMatmul(p)`: the mask is regenerated in backward, never
stored, and mc_predict samples it as it samples the other fastdrop modules (a functional
`fastdrop.dropout_matmul` call in a forward follows the model's train / eval flag, which
mc_predict leaves as it is, so it cannot; nor can torch's nn.MultiheadAttention's dropout float).
"""
import torch
from torch.jit import is_scripting

from .. import matmul as M
from .._checks import check_mode, check_p, is_fx_proxy, traced_as_leaf
from . import _mc_state
from .leaf import FxLeaf
from ._script import scripted_matmul


class DropoutMatmul(FxLeaf, torch.nn.Module):
    """dropout(a, p) @ b in one call; see fastdrop.dropout_matmul. No parameters.

    Example:
        >>> attn_drop = fastdrop.nn.DropoutMatmul(0.1)
        >>> out = attn_drop(torch.softmax(q @ k.mT * scale, -1), v)
    """

    def __init__(self, p=0.5, mode="inverted"):
        super().__init__()
        self.p, self.mode = check_p(p), check_mode(mode)

    def extra_repr(self) -> str:
        return f"p={self.p}" + ("" if self.mode == "inverted" else f", mode={self.mode}")

    def forward(self, a, b):
        if is_scripting():  # TorchScript compiles this branch alone (fastdrop/nn/_script.py)
            return scripted_matmul(a, b, self.training, self.p, self.mode == "classic", "DropoutMatmul")
        if (type(a) is not torch.Tensor and is_fx_proxy(a)) or (type(b) is not torch.Tensor and is_fx_proxy(b)):
            proxy = a if is_fx_proxy(a) else b  # torch.fx: the traced root (FxLeaf)
            return traced_as_leaf(self, proxy, M.dropout_matmul, (a, b, self.p),
                                  {"training": self.training, "mode": self.mode}, inputs=(a, b))
        if _mc_state.thread.sampler is not None:  # inside an mc_predict call on this thread
            return _mc_state.sample(self, a, b)
        return M.dropout_matmul(a, b, self.p, self.training, mode=self.mode)
