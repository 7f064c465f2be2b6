"""fastdrop: compiled dropout kernels (Numba CPU and CUDA) with counter-based Philox masks.

`import fastdrop` loads no torch and no CUDA: the torch bridge and `fastdrop.nn` import torch when
used, and the CUDA kernels compile on the first CUDA input.
"""
from . import _checks, _core
from ._alloc import cache_stats, empty_cache
from ._checks import InplaceLeafError
from ._core import register_torch_ops
from ._seeds import set_rank_streams
from .functional import RankError, drop_path, dropout, dropout1d, dropout2d, dropout3d
from .linear import dropout_linear, dropconnect_linear
from .mask import dropout_mask, keep_threshold, manual_seed, philox4x32
from .matmul import dropout_matmul
from .max_norm import max_norm_, max_norm_hook

__version__ = "0.2.0"

# torch.compile can trace fastdrop's ops only once they are registered: now, or when torch loads.
_core.register_when_torch_loads()


_NEEDS_TORCH = ("nn", "mc_predict")


def __getattr__(name):
    # fastdrop.nn and mc_predict need torch: imported on first use, so the numpy API works without it.
    import importlib
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module 'fastdrop' has no attribute {name!r}")
    _checks.import_torch(f"fastdrop.{name}")  # (without torch: an error naming the extra)
    nn = importlib.import_module(".nn", __name__)
    return nn if name == "nn" else importlib.import_module(".nn.mc", __name__).mc_predict


def _torch_installed():
    import importlib.util
    spec = importlib.util.find_spec("torch")
    # (a bare torch/ folder on the path is a namespace package, not torch: no origin; a review)
    return spec is not None and spec.origin not in (None, "namespace")


# `from fastdrop import *` without torch installed exports the numpy API (it failed on nn: a review)
__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "dropout_mask", "philox4x32",
           "keep_threshold", "manual_seed", "register_torch_ops", "set_rank_streams", "RankError",
           "InplaceLeafError", "dropout_linear", "dropconnect_linear", "drop_path", "dropout_matmul",
           "max_norm_", "max_norm_hook", "empty_cache", "cache_stats"]
if _torch_installed():
    __all__ += ["nn", "mc_predict"]
