"""Where the data lives, decided once per call: numpy array, torch tensor, or CUDA device array."""
import sys

import numpy as np

NUMPY, TORCH, CUDA_ARRAY = "numpy", "torch", "cuda_array"


def is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def array_kind(x, name="x"):
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_torch_tensor(x):
        return TORCH
    if hasattr(x, "__cuda_array_interface__"):
        return CUDA_ARRAY
    raise TypeError(f"{name} must be a numpy array, a torch tensor or a CUDA device array "
                    f"(__cuda_array_interface__), got {type(x).__name__}")


def dtype_of(x, kind):
    """numpy dtype of x; torch's bfloat16 (no numpy equivalent) maps to the string 'bfloat16'."""
    if kind == TORCH:
        import torch
        if x.dtype == torch.bfloat16:
            return "bfloat16"
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must have a floating point dtype, got {x.dtype}")
        return np.dtype(str(x.dtype).replace("torch.", ""))
    return np.dtype(x.dtype)
