"""Where the data lives, decided once per call: numpy array, torch tensor, or CUDA device array."""
import sys

import numpy as np

NUMPY, TORCH, CUDA_ARRAY = "numpy", "torch", "cuda_array"


def is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_simulator_array(x):
    """A device array of Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): it has no
    __cuda_array_interface__, but the simulated kernels take it like a real device array."""
    sim = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return sim is not None and isinstance(x, sim.FakeCUDAArray)


def array_kind(x, name="x"):
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_torch_tensor(x):
        return TORCH
    if hasattr(x, "__cuda_array_interface__") or is_simulator_array(x):
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
