"""Output allocation for torch tensors that does not pay a page fault per 4 KiB.

torch's CPU allocator hands out fresh mmap'd memory for large tensors, and the first write to it
faults every 4 KiB page: allocating + filling a 64 MiB tensor costs ~19 ms here, against ~4.5 ms
when the region is advised for transparent huge pages first (what numpy does for its own
allocations of 4 MiB and more). The advice is a hint: where THP is off or madvise is missing it
changes nothing.
"""
import ctypes
import sys

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MIN_BYTES = 4 << 20

_madvise = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


def advise_huge_pages(tensor):
    """Ask for huge pages on the 2 MiB-aligned interior of a large, not yet touched CPU tensor."""
    nbytes = tensor.numel() * tensor.element_size()
    if _madvise is None or nbytes < MIN_BYTES or tensor.device.type != "cpu":
        return tensor
    start = tensor.data_ptr()
    lo = (start + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    hi = (start + nbytes) // HUGE_PAGE * HUGE_PAGE
    if hi > lo:
        _madvise(lo, hi - lo, MADV_HUGEPAGE)
    return tensor


def empty_like(x):
    """torch.empty_like(x) (same layout), huge-page advised when large."""
    import torch
    return advise_huge_pages(torch.empty_like(x))
