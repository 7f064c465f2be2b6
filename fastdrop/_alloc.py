"""A small caching allocator for large CPU outputs of the torch bridge.

torch's CPU allocator returns freshly mmap'd memory for every large tensor (glibc's mmap
threshold tops out at 32 MiB), and the first write faults every 4 KiB page: on the dev machine a
64 MiB output costs ~17 ms of page faults, against 7 ms for the dropout kernel that fills it.
A training loop asks for the same large sizes every step, so, like torch's CUDA caching
allocator, the outputs of 32 MiB and more are carved from numpy blocks that return to a bounded
free list when the last tensor using them dies (torch.from_numpy keeps the array alive; a
weakref finalizer on the array hands the block back). A block is never handed out while any
tensor still refers to it. Tensors from here cannot be resized in place (`resize_`): the only
difference from torch.empty.
"""
import threading
import weakref

import numpy as np
import torch

MIN_BYTES = 32 << 20        # smaller outputs come from glibc's heap, already faulted in
MAX_CACHED_BYTES = 512 << 20  # free blocks kept for reuse, in all

_lock = threading.Lock()
_free = {}  # nbytes -> [blocks]
_cached = 0
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _take(nbytes):
    global _cached
    with _lock:
        blocks = _free.get(nbytes)
        if blocks:
            _cached -= nbytes
            return blocks.pop()
    return np.empty(nbytes, dtype=np.uint8)


def _give(block):
    global _cached
    with _lock:
        if _cached + block.nbytes <= MAX_CACHED_BYTES:
            _free.setdefault(block.nbytes, []).append(block)
            _cached += block.nbytes


def cached_bytes():
    """Bytes held in free blocks (for tests and the curious)."""
    return _cached


def empty_like(x):
    """torch.empty_like(x) for a CPU tensor; contiguous outputs of MIN_BYTES and more are pooled."""
    nbytes = x.numel() * x.element_size()
    if nbytes < MIN_BYTES or not x.is_contiguous() or x.dtype not in _NUMPY:
        return torch.empty_like(x)
    block = _take(nbytes)
    arr = block.view(_NUMPY[x.dtype]).reshape(tuple(x.shape))
    weakref.finalize(arr, _give, block).atexit = False
    return torch.from_numpy(arr)
