"""A small caching allocator for large CPU outputs of the torch bridge.

torch's CPU allocator returns freshly mmap'd memory for every large tensor (glibc's mmap
threshold tops out at 32 MiB), and the first write faults every 4 KiB page: on the dev machine a
64 MiB output costs ~17 ms of page faults, against 7 ms for the dropout kernel that fills it.
A training loop asks for the same large sizes every step, so, like torch's CUDA caching
allocator, contiguous float outputs of MIN_BYTES and more are carved from numpy blocks that go
back to a bounded free list when the last tensor using them dies. A block is never handed out
while any tensor still refers to it.

- Size classes: a request is rounded up to one of 8 steps per power of two (at most 12.5% more
  memory), so outputs of nearby sizes share blocks; the tensor has exactly the requested numel.
- Alignment: each tensor starts on a 64-byte boundary inside its block, as torch's own do.
- Hand-back: `torch.from_numpy` keeps the array alive; a weak reference on the array, whose
  callback is the C method `deque.append`, queues the block when the array dies. No Python code
  runs there, so a garbage collection or a KeyboardInterrupt cannot land inside it, and it takes
  no lock, so it cannot deadlock however it is re-entered. The queue is drained under the lock by
  the next large allocation, `cache_stats()` or `empty_cache()`; a handle that never got queued
  (its callback failed) is found dead by the same drain, so a block is never leaked.
- Bound: at most MAX_CACHED_BYTES of free blocks (env FASTDROP_CACHE_MAX_BYTES, read at import,
  default 512 MiB; 0 turns the cache off); the least recently returned are freed first.
- Huge pages: a plain tensor output of MIN_BYTES and more that the cache does not serve (cache
  off, larger than its bound, a half type) is torch's own allocation, which glibc maps fresh from the OS at that
  size; it is advised to Linux as MADV_HUGEPAGE, so its first writes fault 2 MiB pages instead of
  4 KiB ones, as numpy advises its own large arrays (the cache's blocks among them): a fresh 64
  MiB dropout output took 22-25 ms, 7-11.5 ms advised, 5.6-7 ms reused (2 threads;
  `docs/cpu_kernels.md`, "Fresh outputs in huge pages", also for the first calls of a process,
  slower). Only advice: where transparent huge pages are off it changes nothing. Env
  FASTDROP_HUGEPAGES=0 (read at import) turns it off.
- Out of memory: a request larger than physical memory (or the process's cgroup memory limit,
  where lower) raises MemoryError before allocating (with
  overcommit the allocation would succeed and the kernel's writes get the process killed); a
  failed allocation releases the free blocks and tries once more before raising MemoryError.

This module imports torch only inside `empty_like`, so `cache_stats()` and `empty_cache()` work
in a process without torch.
"""
import collections
import ctypes
import os
import re
import sys
import threading
import warnings
import weakref

import numpy as np

from .kernels.config import ON_OFF, env_choice
from .kernels.layout import dense_after

MIN_BYTES = 32 << 20          # smaller outputs come from glibc's heap, already faulted in
ALIGN = 64                    # bytes; torch's CPU allocator aligns to 64 too
STEP_BITS = 3                 # size classes: 2**3 steps per power of two, at most 1/8 wasted
DEFAULT_MAX_BYTES = 512 << 20
ENV_MAX_BYTES = "FASTDROP_CACHE_MAX_BYTES"
HUGE_PAGE = 2 << 20           # bytes of a transparent huge page (x86-64, arm64 with 4 KiB pages)
MADV_HUGEPAGE = 14            # <asm-generic/mman-common.h>
ENV_HUGEPAGES = "FASTDROP_HUGEPAGES"
HUGEPAGES = env_choice(ENV_HUGEPAGES, ON_OFF, "1") and sys.platform.startswith("linux")

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_LIMIT_RE = re.compile(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_max_bytes(text):
    """Bytes from FASTDROP_CACHE_MAX_BYTES: a non-negative integer, optionally with a K, M, G or T
    suffix (powers of 1024; "512M", "512MiB" and "512mb" are the same). Raises ValueError."""
    m = _LIMIT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{ENV_MAX_BYTES}={text!r} is not a byte count: use a non-negative integer, "
                         f"optionally with a K, M, G or T suffix (e.g. 268435456, 256M, 2G; 0 turns the "
                         f"cache off)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _max_bytes_from_env():
    text = os.environ.get(ENV_MAX_BYTES, "")
    if not text.strip():
        return DEFAULT_MAX_BYTES
    try:
        return parse_max_bytes(text)
    except ValueError as err:
        # A tuning knob must not make `import fastdrop` fail: say so loudly and keep the default.
        warnings.warn(f"{err}; using the default {DEFAULT_MAX_BYTES} bytes", RuntimeWarning, stacklevel=2)
        return DEFAULT_MAX_BYTES


def _physical_bytes():
    """The memory this process may use: the machine's, or its control group's limit where that is
    lower (a container's or a job scheduler's: past it the kernel's OOM killer ends the process,
    where a refusal gives a MemoryError)."""
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        machine = 1 << 63
    try:
        # bytes, decoded without failing: a group's name may be any bytes (a non-UTF-8 name made
        # `import fastdrop` fail with UnicodeDecodeError; a review), and it only names a path
        with open("/proc/self/cgroup", "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return machine
    limit = cgroup_memory_limit(text)
    return machine if limit is None else min(machine, limit)


def cgroup_memory_limit(proc_self_cgroup, root="/sys/fs/cgroup"):
    """The lowest memory limit, in bytes, of this process's control group and its ancestors, from
    the text of /proc/self/cgroup (v2's memory.max, v1's memory.limit_in_bytes), or None where
    none is set or readable. Inside a container's cgroup namespace the group's path is "/" and
    its limit sits at the hierarchy's root."""
    limits = []
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, name = root, "memory.max"  # v2: the unified hierarchy
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, controllers), "memory.limit_in_bytes"
        else:
            continue
        rel = path.strip("/")
        if ".." in rel.split("/"):
            continue  # a group outside this process's cgroup namespace: not below the mount's root
        while True:  # the group, then each ancestor up to the hierarchy's root
            limits.append(_read_limit(os.path.join(base, rel, name)))
            if not rel:
                break
            rel = os.path.dirname(rel)
    # v1 writes "no limit" as the largest page-aligned int64 (9223372036854771712); 0, which no
    # running process can have, is taken as none too
    found = [n for n in limits if n is not None and 0 < n < 1 << 62]
    return min(found) if found else None


def _read_limit(path):
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except (OSError, ValueError):  # (ValueError: a path with a NUL byte)
        return None
    # ASCII digits only, and not more than an int64's: a limit file is kernel-written ("max": no
    # limit), and anything else (str.isdigit takes "²", int() refuses past 4300 digits) is none
    return int(text) if text.isdigit() and len(text) <= 19 else None


MAX_CACHED_BYTES = _max_bytes_from_env()  # free blocks kept for reuse, in all
PHYSICAL_BYTES = _physical_bytes()


class _Handle(weakref.ref):
    """Weak reference to the array behind a pooled tensor, carrying the block it was cut from."""
    __slots__ = ("block",)

    def __new__(cls, arr, block, callback):
        self = super().__new__(cls, arr, callback)
        self.block = block
        return self

    def __init__(self, arr, block, callback):
        super().__init__(arr, callback)


# RLock: code under the lock can allocate, so a garbage collection can run there, and a user's
# finalizer could call back in; every change below is one C-level list/dict/deque step, so a
# re-entrant call sees a consistent state.
_lock = threading.RLock()


# A fork waits until no other thread is inside the lock (so the child inherits a consistent
# cache), and the child gets a free lock: one inherited while another parent thread held it
# (a thread polling cache_stats(), making a large output) would never be released there, and the
# child's first large output would wait forever.
def _before_fork():
    _lock.acquire()


def _after_fork_in_parent():
    _lock.release()


def _after_fork_in_child():
    global _lock
    _lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)

_free = []                        # free blocks, least recently returned first
_returned = collections.deque()   # handles of dead arrays, queued by the weakref callback
_live = {}                        # id(handle) -> handle, one per block handed out
_counts = {"hits": 0, "misses": 0}


def size_class(nbytes):
    """nbytes rounded up to a multiple of 1/8 of its power of two (32 MiB + 1 -> 36 MiB)."""
    step = 1 << max(nbytes.bit_length() - 1 - STEP_BITS, 0)
    return -(-nbytes // step) * step


def _keep(block):
    # Lock held. Newest at the end; evict the oldest while over the bound.
    if block.nbytes > MAX_CACHED_BYTES:
        return  # freed to the OS, keeping the others
    _free.append(block)
    total = sum(b.nbytes for b in _free)
    while _free and total > MAX_CACHED_BYTES:
        total -= _free[0].nbytes
        del _free[0]


def _drain():
    # Lock held. Queued handles first, then any dead handle whose callback never queued it; the
    # _live.pop(...) is handle check makes both idempotent, so a block is kept at most once.
    while _returned:
        h = _returned.popleft()
        if _live.pop(id(h), None) is h:
            _keep(h.block)
    for key, h in list(_live.items()):
        if h() is None and _live.pop(key, None) is h:
            _keep(h.block)


def _take(nbytes):
    """A free block of exactly nbytes, or None."""
    with _lock:
        _drain()
        for i in range(len(_free) - 1, -1, -1):   # most recently returned first: warmest pages
            if _free[i].nbytes == nbytes:
                block = _free[i]
                del _free[i]
                _counts["hits"] += 1
                return block
        _counts["misses"] += 1
        return None


def _os_alloc(nbytes):
    return np.empty(nbytes, dtype=np.uint8)  # numpy advises its large arrays MADV_HUGEPAGE itself


_madvise = None  # libc's madvise, looked up at the first large output; False where there is none


def advise_hugepages(address, nbytes):
    """Advise the whole 2 MiB pages inside [address, address + nbytes) as MADV_HUGEPAGE, for an
    output of MIN_BYTES and more whose memory has not been written yet (glibc maps such sizes
    fresh from the OS). Advice only: nothing changes where Linux refuses it or has no huge pages."""
    global _madvise
    if not HUGEPAGES or nbytes < MIN_BYTES:
        return
    lo = -(-address // HUGE_PAGE) * HUGE_PAGE
    hi = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    if _madvise is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
        except (OSError, AttributeError):
            fn = False
        _madvise = fn
    if _madvise and hi > lo:
        _madvise(lo, hi - lo, MADV_HUGEPAGE)  # its return value ignored: EINVAL without THP


def _new_block(nbytes):
    try:
        return _os_alloc(nbytes)
    except MemoryError:
        pass
    released = empty_cache()  # the free blocks may be what stands in the way: retry once without them
    try:
        return _os_alloc(nbytes)
    except MemoryError:
        raise MemoryError(f"fastdrop: cannot allocate a {nbytes}-byte output, even after releasing "
                          f"{released} cached bytes (empty_cache())") from None


def empty_cache():
    """Free every cached block that no tensor uses; returns the number of bytes released.

    Outputs still alive are untouched and return to the cache when they die."""
    with _lock:
        _drain()
        released = sum(b.nbytes for b in _free)
        _free.clear()
    return released


def cache_stats():
    """The output cache's state, as a dict of ints.

    Keys: `cached_bytes` and `free_blocks` (held for reuse), `in_use_bytes` and `in_use_blocks`
    (handed out, still referenced by a tensor), `hits` and `misses` (pooled requests served from
    the cache or newly allocated), `limit_bytes` (the bound on cached bytes; 0: cache off) and
    `min_bytes` (smaller outputs are never pooled). Bytes are whole blocks: size class plus
    alignment padding."""
    with _lock:
        _drain()
        return {"cached_bytes": sum(b.nbytes for b in _free), "free_blocks": len(_free),
                "in_use_bytes": sum(h.block.nbytes for h in _live.values()), "in_use_blocks": len(_live),
                "hits": _counts["hits"], "misses": _counts["misses"],
                "limit_bytes": MAX_CACHED_BYTES, "min_bytes": MIN_BYTES}


_NUMPY = {}  # torch dtype -> numpy dtype, filled on first use so this module needs no torch


def check_output_bytes(nbytes):
    """MemoryError for an output larger than physical memory, or the process's cgroup memory limit
    where lower (asked before a call draws its seed: an expanded tensor or broadcast array has a
    small memory and a huge logical size)."""
    if nbytes > PHYSICAL_BYTES:
        raise MemoryError(f"fastdrop: the output (or a working copy of an operand) needs {nbytes} "
                          f"bytes, more than this process's "
                          f"{PHYSICAL_BYTES} bytes of memory (physical memory, or its cgroup's limit)")


def empty_like(x):
    """torch.empty_like(x) for a CPU tensor; contiguous float outputs of MIN_BYTES and more are
    pooled (64-byte aligned, not resizable in place). Raises MemoryError for a request larger than
    physical memory or one that cannot be allocated. (fastdrop's routes call it past the thread's
    modes: `_core.empty_like`.)"""
    import torch
    if not _NUMPY:
        _NUMPY.update({torch.float32: np.float32, torch.float64: np.float64})
    if _returned:  # release dead outputs beyond the bound now, not at the next large call
        with _lock:
            _drain()
    nbytes = x.numel() * x.element_size()
    if nbytes < MIN_BYTES:
        return torch.empty_like(x)
    check_output_bytes(nbytes)
    size = size_class(nbytes) + ALIGN
    contiguous = x.is_contiguous()
    strides = None if contiguous else _dense_strides(x)
    if size > MAX_CACHED_BYTES or x.dtype not in _NUMPY or type(x) not in (torch.Tensor, torch.nn.Parameter):
        # never cacheable, or a subclass: torch.empty_like gives the output x's subclass through
        # its __torch_function__, as torch's ops do (a Parameter's is a plain tensor, as the block is)
        out = torch.empty_like(x)
        if type(out) is torch.Tensor and out.layout == torch.strided and out.device.type == "cpu":
            # (a subclass's, a meta or a sparse tensor's data pointer is no memory of its own)
            advise_hugepages(out.data_ptr(), nbytes)  # fresh from glibc's mmap, as the size says
        return out
    if strides is None and not contiguous:
        # a layout with gaps or overlaps (a slice, the expanded gradient of a sum, every backward
        # step): torch.empty_like makes it dense in x's stride order (C order for those two, not
        # for a sliced channels_last tensor); its strides, read from a meta tensor (~1 us)
        like = torch.empty_like(x, device="meta")
        strides = None if like.is_contiguous() else like.stride()
    block = _take(size)
    if block is None:
        block = _new_block(size)
    start = -block.ctypes.data % ALIGN
    arr = block[start:start + nbytes].view(_NUMPY[x.dtype])
    item = arr.itemsize
    # a geometry numpy cannot hold (torch's can): more than 64 dims, or a size-1 dim whose stride
    # in bytes passes int64 (as_strided); (numpy's errors came after the seed draw: a review)
    numpy_geometry = x.dim() <= 64 and (strides is None or all(
        n != 1 or abs(st) <= _MAX_STRIDE // item for n, st in zip(x.shape, strides)))
    if strides is None and numpy_geometry:
        arr = arr.reshape(tuple(x.shape))
    h = _Handle(arr, block, _returned.append)
    with _lock:
        _live[id(h)] = h
    if not numpy_geometry:
        # the block's storage given torch.empty_like's geometry (read from a meta tensor) by set_,
        # which makes no view either
        out = torch.from_numpy(arr)
        return out.set_(out.untyped_storage(), 0, x.shape, torch.empty_like(x, device="meta").stride())
    if strides is None:
        return torch.from_numpy(arr)
    # x's dense order (channels_last, a transpose): the strides torch.empty_like would give, made
    # by numpy, so the tensor is not a view (a view made under no_grad cannot be changed in place
    # under grad mode later, as a fresh output can)
    return torch.from_numpy(np.lib.stride_tricks.as_strided(arr, tuple(x.shape), tuple(s * item for s in strides)))


_MAX_STRIDE = (1 << 63) - 1  # numpy's byte strides are int64


def _dense_strides(x):
    """x's strides when x is dense and non-overlapping in an order other than C's (channels_last,
    a transpose, a permutation): torch.empty_like(x) gives its output those strides. None for a
    layout with gaps or overlaps. These outputs came from torch until 2026-12-06, fresh memory
    every call: a channels_last 32x128x56x56 float32 dropout ran 18.3 ms against 2.6 ms
    contiguous (a helper's perf-cliff hunt), the difference its page faults."""
    strides = x.stride()
    return strides if dense_after(1, sorted(zip(strides, x.shape))) is not None else None
