"""fastdrop: compiled dropout kernels (Numba CPU and CUDA) with counter-based Philox masks.

`import fastdrop` loads no torch and no CUDA: the torch bridge and `fastdrop.nn` import torch when
used, and the CUDA kernels compile on the first CUDA input.
"""
from ._distributed import set_rank_streams
from ._seeds import manual_seed
from .functional import RankError, dropout, dropout1d, dropout2d, dropout3d
from .linear import dropout_linear, dropconnect_linear
from .mask import dropout_mask, keep_threshold, philox4x32
from .variants import drop_path, dropout_matmul, max_norm_, max_norm_hook, mc_predict

__version__ = "0.1.0"


def __getattr__(name):
    # fastdrop.nn needs torch; import it on first use so the numpy API works without torch.
    if name == "nn":
        import importlib
        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'fastdrop' has no attribute {name!r}")


__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "dropout_mask", "philox4x32",
           "keep_threshold", "manual_seed", "set_rank_streams", "RankError", "nn",
           "dropout_linear", "dropconnect_linear",
           "drop_path", "dropout_matmul", "max_norm_", "max_norm_hook", "mc_predict"]
