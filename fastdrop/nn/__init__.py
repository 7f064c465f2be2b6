"""Drop-in torch.nn modules backed by fastdrop's kernels (imports torch)."""
from .convert import convert
from .drop_path import DropPath, StochasticDepth
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .linear import DropoutLinear, DropConnectLinear
from .matmul import DropoutMatmul
from .mc import MCResult, mc_predict

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropoutLinear", "DropConnectLinear", "DropoutMatmul",
           "DropPath", "StochasticDepth", "convert", "mc_predict", "MCResult"]

from .._dynamo_skip import keep_dynamo_out as _keep_dynamo_out

_keep_dynamo_out()  # the modules' internal code, now loaded (fastdrop/_dynamo_skip.py says why)
