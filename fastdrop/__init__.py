"""fastdrop: compiled dropout kernels (Numba CPU and CUDA) with counter-based Philox masks.

`import fastdrop` loads no torch and no CUDA: the torch bridge and `fastdrop.nn` import torch when
used, and the CUDA kernels compile on the first CUDA input.
"""
from . import _core
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


def __getattr__(name):
    # fastdrop.nn and mc_predict need torch: imported on first use, so the numpy API works without it.
    import importlib
    if name == "nn":
        return importlib.import_module(".nn", __name__)
    if name == "mc_predict":
        return importlib.import_module(".nn.mc", __name__).mc_predict
    raise AttributeError(f"module 'fastdrop' has no attribute {name!r}")


__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "dropout_mask", "philox4x32",
           "keep_threshold", "manual_seed", "register_torch_ops", "set_rank_streams", "RankError",
           "InplaceLeafError", "nn",
           "dropout_linear", "dropconnect_linear",
           "drop_path", "dropout_matmul", "max_norm_", "max_norm_hook", "mc_predict",
           "empty_cache", "cache_stats"]
