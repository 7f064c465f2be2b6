"""Where seed=None draws its seed from.

- torch tensors (CPU or CUDA): torch's default CPU generator, so `torch.manual_seed(s)` makes a
  model's masks reproducible run to run, successive calls differ, and the same program gives the
  same masks on CPU and GPU.
- numpy arrays and CUDA device arrays: a module-level numpy `Generator(PCG64)` seeded from OS
  entropy at import; `fastdrop.manual_seed(s)` re-seeds it.
Every drawn seed is a 63-bit integer and the offset is 0.
"""
import threading

import numpy as np

from ._checks import check_u64

_lock = threading.Lock()
_numpy_source = np.random.default_rng()


def manual_seed(seed):
    """Re-seed the numpy source that seed=None uses for numpy arrays and CUDA device arrays."""
    global _numpy_source
    seed = check_u64(seed, "seed")
    with _lock:
        _numpy_source = np.random.default_rng(seed)


def draw_numpy_seed():
    with _lock:
        return int(_numpy_source.integers(0, 1 << 63))


def draw_torch_seed():
    import torch
    return int(torch.randint(0, (1 << 63) - 1, (), dtype=torch.int64))
