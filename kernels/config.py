"""One place for JIT options and launch knobs (no magic numbers inside kernels).

`cpu_kernel` also makes the parallel kernels safe in forked children. Numba's default threading
layer on Linux is GNU OpenMP, which is not fork-safe: a `fork()`ed child keeps the parent's OpenMP
thread team without its threads. If Numba started that team, Numba kills the child's first
parallel kernel ("fork() called from a process already using GNU OpenMP, this is unsafe"); if
torch did (Numba's omp layer and torch bind one libgomp, docs/threads.md), the child's first
parallel kernel waits for the missing threads forever. Either breaks DataLoader workers and
pre-fork servers. So every parallel kernel is compiled twice from the same Python function, and a
fork hook routes a child of such a process to the serial twin. The mask is a pure function of the
element index, so both give the same bits.
"""
import functools
import os
import sys
import threading
import types
import warnings

import numba
import numba.core.caching
from numba.core.compiler_lock import global_compiler_lock



def env_choice(name, choices, default):
    """choices[value] for the environment variable name (compared lower-case, stripped); unset or
    empty: choices[default]. Any other value warns (a RuntimeWarning naming the accepted ones) and
    keeps the default: a tuning knob must not make `import fastdrop` fail, nor be ignored in
    silence (FASTDROP_HUGEPAGES=false left huge pages on: a review)."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return choices[default]
    if text not in choices:
        warnings.warn(f"{name}={os.environ[name]!r} is not one of {', '.join(map(repr, choices))}; using "
                      f"{default!r}", RuntimeWarning, stacklevel=3)
        return choices[default]
    return choices[text]


def jit_off_hint():
    """What to add to the error of an njit-only helper reached from Python: with NUMBA_DISABLE_JIT=1
    the kernels run as Python and reach them (the bare message did not say why: a review)."""
    if not numba.config.DISABLE_JIT:
        return ""
    return ("; fastdrop's kernels need Numba's JIT, which NUMBA_DISABLE_JIT=1 turns off: unset it (the "
            "mask functions, dropout_mask and philox4x32, still run as Python)")


# the spellings of a switch
ON_OFF = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}


def _disk_cache_available():
    """Can Numba store this folder's compiled kernels somewhere? It tries NUMBA_CACHE_DIR, the
    source's __pycache__, then the user's cache dir; where none is writable (a read-only install
    with a read-only HOME, as in a container with a read-only root filesystem), cache=True made
    `import fastdrop` fail ("cannot cache function ...: no locator available": a review). Then the
    kernels compile in each process instead, and a warning says how to get the cache back."""
    def probe():
        pass
    try:
        numba.core.caching.FunctionCache(probe)  # (the locator search cache=True makes, same folder)
        return True
    except RuntimeError:
        warnings.warn("fastdrop: Numba finds no writable cache directory for fastdrop's kernels (the "
                      "install's __pycache__ and the user's cache dir are read-only), so each process "
                      "compiles the kernels it calls anew (seconds per kernel); set NUMBA_CACHE_DIR to a "
                      "writable directory to keep them", RuntimeWarning, stacklevel=2)
        return False

# cache=True: compiled machine code is stored next to the source (__pycache__), so only the
# first call in a fresh checkout pays the LLVM compile; error_model="numpy": division by zero
# follows IEEE instead of raising, and no Python exception path is compiled into inner loops.
DISK_CACHE = _disk_cache_available()
JIT_OPTIONS = dict(cache=DISK_CACHE, nogil=True, error_model="numpy")


class CpuKernel:
    """A parallel kernel and its serial twin, compiled from one Python function.

    Calling it runs `.parallel`, or `.serial` in a process forked from one whose GNU OpenMP team
    may have started (see `_pool_unsafe_after_fork`). Other attributes (`signatures`, `targetoptions`,
    `py_func`, ...) are the parallel dispatcher's. It is a Python object: njit code cannot call
    it (call a `parallel=False` kernel there).
    """

    def __new__(cls, fn, options):
        # A class per kernel, so that `_route` can set `__call__` on it (Python looks `__call__` up
        # on the type, never on the instance).
        return super().__new__(type(fn.__name__, (cls,), {}))

    def __init__(self, fn, options):
        functools.update_wrapper(self, fn)
        self.parallel = numba.njit(parallel=True, **options)(fn)
        self.serial = numba.njit(parallel=False, **options)(_serial_clone(fn))
        self._route(self.serial if _forked_serial else self.parallel if _pool_started else self._first_launch)
        _KERNELS.append(self)

    def _first_launch(self, *args, **kwargs):
        """The first parallel call of the process: start Numba's pool first, keeping torch's
        thread count, then route every kernel straight to its dispatcher."""
        _start_pool()
        return self.parallel(*args, **kwargs)

    def _route(self, dispatcher):
        # `__call__` is the dispatcher itself, as a staticmethod: a call adds no Python frame
        # (measured per call: ~0 ns, vs ~0.2-0.5 us for a `def __call__` forwarding the arguments).
        type(self).__call__ = staticmethod(dispatcher)

    def __getattr__(self, name):
        if name.startswith("__"):  # e.g. copy/pickle probing a half-built object: no recursion
            raise AttributeError(name)
        return getattr(self.parallel, name)

    def __repr__(self):
        return f"<cpu_kernel {self.__module__}.{self.__qualname__}>"


def _serial_clone(fn):
    """fn under the qualname `<qualname>.serial`: Numba's disk cache names its entries by module,
    qualname and first line, not by `parallel=`, so the twin needs a name of its own or the two
    variants would overwrite each other's cache entries."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    twin.__kwdefaults__ = fn.__kwdefaults__
    twin.__qualname__ = fn.__qualname__ + ".serial"
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return twin


def cpu_kernel(fn=None, *, parallel=True, **options):
    """The house decorator for CPU kernels: njit with JIT_OPTIONS (extra njit options, e.g.
    fastmath, override them). parallel=True gives a `CpuKernel` (parallel + serial twin);
    parallel=False a plain Numba dispatcher, which njit code can call."""
    if not isinstance(parallel, bool):
        raise TypeError(f"cpu_kernel: parallel must be a bool, got {parallel!r}")
    opts = {**JIT_OPTIONS, **options}

    def wrap(f):
        if not isinstance(f, types.FunctionType):
            raise TypeError(f"cpu_kernel decorates a Python function, got {type(f).__name__}")
        return CpuKernel(f, opts) if parallel else numba.njit(parallel=False, **opts)(f)
    return wrap(fn) if fn is not None else wrap


_KERNELS = []            # every CpuKernel, for the fork hook
_forked_serial = False   # True in a child forked while a GNU OpenMP team may have existed
_pool_started = False    # Numba's thread pool has been started (by `_start_pool`)


def _start_pool():
    """Start Numba's thread pool, and leave torch's intra-op thread count as it was. Numba's omp
    layer sets the OpenMP thread count to NUMBA_NUM_THREADS when it starts, and torch shares that
    runtime (docs/threads.md): a `torch.set_num_threads(1)` or OMP_NUM_THREADS=1 (torchrun sets it
    per rank) silently became the core count at fastdrop's first parallel kernel, and a compiled
    graph, guarded on the count, recompiled. Numba passes its own count to every parallel region,
    so its kernels keep NUMBA_NUM_THREADS threads. Then every kernel is routed to its dispatcher
    directly (the serial twin where a fork made the pool unsafe)."""
    global _pool_started
    from numba.np.ufunc import parallel
    torch = sys.modules.get("torch")  # (kernels import nothing: torch only if the user has it)
    threads = torch.get_num_threads() if torch is not None else None
    # under the compiler lock, which the fork hook holds across a fork: a fork while another
    # thread launched the pool left the child Numba's launch locks held by a thread it does not
    # have (its first parallel kernel waited forever, and the parent's next launch on the shared
    # process lock with it; a review). The lock order is the dispatcher's own: a kernel loaded
    # from the cache launches the pool under this lock too.
    with global_compiler_lock:
        parallel._launch_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _pool_started = True
    for k in _KERNELS:
        k._route(k.serial if _forked_serial else k.parallel)


def _pool_unsafe_after_fork():
    """Would a parallel kernel in this forked child run on a GNU OpenMP runtime whose thread team
    the parent may have started?

    The team is started by Numba's first parallel launch on its `omp` layer, and by any other
    library's OpenMP region in the same runtime: torch's ops (docs/threads.md: both bind one
    libgomp). Whether torch ran one is not observable, so a libgomp mapped in the process counts
    as a possible team. tbb and workqueue are fork-safe (Numba's "forksafe" selection on Linux is
    exactly those two), and so is a non-GNU OpenMP."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized": Numba has not started a team
        if not _libgomp_mapped():
            return False
        layer = _layer_numba_will_pick()
    return _gnu_omp(layer)


def _gnu_omp(layer):
    """Is Numba's threading layer `layer` its omp one on GNU OpenMP (libgomp, fork-unsafe)?"""
    omppool = sys.modules.get("numba.np.ufunc.omppool")
    return layer == "omp" and getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def _libgomp_mapped():
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:  # no procfs: not Linux, where GNU OpenMP is the only fork-unsafe layer
        return False


def _layer_numba_will_pick():
    """The layer Numba's first parallel launch will load: numba.np.ufunc.parallel._launch_threads'
    order for NUMBA_THREADING_LAYER (default: the first of THREADING_LAYER_PRIORITY that loads)."""
    choice = str(numba.config.THREADING_LAYER).lower()
    candidates = {"default": list(numba.config.THREADING_LAYER_PRIORITY), "safe": ["tbb"],
                  "threadsafe": ["tbb", "omp"], "forksafe": ["tbb", "workqueue"]}.get(choice, [choice])
    for layer in candidates:
        if _layer_loads(layer):
            return layer
    return ""


def _layer_loads(layer):
    try:
        if layer == "tbb":
            from numba.np.ufunc.parallel import _check_tbb_version_compatible
            _check_tbb_version_compatible()
            from numba.np.ufunc import tbbpool  # noqa: F401
        elif layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        return layer in ("tbb", "omp", "workqueue")
    except Exception:  # ImportError (no libtbb, no libgomp) or a failed version check: not loadable
        return False


def _numba_started_gnu_team():
    """Did this process's Numba start its pool on GNU OpenMP (a fastdrop parallel kernel ran)?"""
    try:
        layer = numba.threading_layer()
    except ValueError:  # not initialized: no kernel launched a team
        return False
    return _gnu_omp(layer)


def _after_fork_in_child():
    global _forked_serial
    # held by this thread since _before_fork; no other thread of the parent exists here
    global_compiler_lock._lock = threading.RLock()
    if _forked_serial or _pool_unsafe_after_fork():  # grandchildren inherit the flag
        _forked_serial = True
        for k in _KERNELS:
            k._route(k.serial)
    torch = sys.modules.get("torch")
    if torch is not None:
        keep_torch_off_a_forked_team(torch)


def keep_torch_off_a_forked_team(torch):
    """torch on one thread in a forked child whose parent's GNU OpenMP team Numba started (a
    fastdrop parallel kernel ran there): torch binds the same libgomp, and its first parallel
    region (an elementwise op, a GEMM inside dropout_linear or mc_predict) would wait forever for
    the team's missing threads, where without fastdrop the child would have had no team. One
    thread, as DataLoader workers run torch: no region starts. Called at the fork when torch is
    loaded, else by fastdrop's import hook once the child imports torch. (A team torch's own ops
    started hangs torch's children with or without fastdrop.)"""
    if _forked_serial and _numba_started_gnu_team() and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(1)


def _before_fork():
    # A child routed to the serial twins loads them on its first calls, under Numba's global
    # compiler lock. Were another parent thread compiling or loading a kernel at the fork, the
    # child would inherit that lock held by a thread it does not have, and wait forever: the fork
    # waits for the compilation to end instead (holding the lock across it), and the child starts
    # with a free lock and a consistent dispatcher state.
    global_compiler_lock.acquire()


def _after_fork_in_parent():
    global_compiler_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


# Philox blocks generated per scratch buffer on the CPU: 128 blocks = 1024 16-bit mask words = 2 KiB,
# small enough to stay in L1 while the apply loop reads it back.
CPU_BLOCKS_PER_CHUNK = 128
# While a chunk's Philox words are generated, the cache lines of its data are prefetched (reads)
# and claimed for writing (prefetchw), 16 blocks = 128 elements at a time: the Philox rounds then
# overlap the memory traffic instead of alternating with it. The hardware streamer cannot do
# this: it stops at every 4 KiB page, and a chunk of float32 is one page. Measured on the dev
# machine, 4096x4096 float32 forward: 1.3x faster on 2 threads, 1.45x on one; groups of 64
# and 256 elements were 5-20% slower than 128 (docs/cpu_kernels.md, bench/overlap.py).
CPU_PREFETCH_GROUP = 16 * 8
# ... for outputs of at least this many bytes. Below, each thread's share of input and output
# usually still sits in its core's L2 (2 MiB here) from the op before, or the output is a fresh
# allocation whose first touch page-faults anyway, and the prefetches cost instead of saving:
# 256x1024 float32 on 2 threads ran 77 -> 93 us with them, nn.Dropout fwd+bwd at 1024x1024 +4%,
# at 2048x1024 (8 MiB) even, from 4096x1024 on 12-20% faster.
CPU_PREFETCH_MIN_BYTES = 8 << 20
# `dropout_tiled`'s tile (permuted layouts: channels_last, transposed): 64 unit-stride elements (a
# 256-byte run of float32) by 128 along the logical last dim; its words, in transposed order, take
# 18 KiB of L1 (docs/cpu_kernels.md).
TILED_A = 64
TILED_L = 128

# Elementwise dropout below this many elements runs on the calling thread. Alone, the parallel
# kernel wins even at 32K float32 elements (8 vs 11 us); but a parallel region must first wake the
# OpenMP team (torch's and Numba's, one runtime: docs/threads.md), ~60 us here when it has gone to
# sleep: the report measured 64x512 fwd at 70 us parallel vs 35 us serial, interleaved with torch.
# From 2^17 elements the parallel work amortizes the wake-up.
CPU_PARALLEL_MIN = 1 << 17
# torch's CPU elementwise ops split their range across its threads from this many elements on
# (at::internal::GRAIN_SIZE), each thread taking an equal contiguous share; the grouped ops' zero
# pass over torch's output follows the same split (fastdrop/_grouped.py, native_grouped)
TORCH_GRAIN_SIZE = 1 << 15
# The dense layers' masks sit between torch GEMMs: there the parallel mask
# paid off only from 2^21 elements (docs/threads.md, section 2).
DENSE_PARALLEL_MIN = 1 << 21

# cache=True for every CUDA kernel too: NVVM takes ~1 s per kernel specialization, in every process
# and every DDP rank, without it (cached PTX/cubin lands next to the source, like the CPU cache).
CUDA_JIT_OPTIONS = dict(cache=DISK_CACHE)

# CUDA launch shape: threads per block for the elementwise kernels (grid-stride loops).
CUDA_THREADS = 256
# Upper bound on the grid; grid-stride loops cover the rest.
CUDA_MAX_BLOCKS = 4096


def launch_shape(work):
    """(blocks, threads) for a grid-stride loop over `work` items."""
    return max(1, min(CUDA_MAX_BLOCKS, -(-work // CUDA_THREADS))), CUDA_THREADS

# Per-example DropConnect (kernels/sample_cuda.py): a product whose outputs give fewer threads than
# this splits its reduction (split-K) until they reach it (an H200: 132 SMs x 2048 resident threads
# = 270 K; half of that keeps every SM busy), each split at least SPLIT_MIN_REDUCTION long.
CUDA_FILL_THREADS = 1 << 17
SPLIT_MIN_REDUCTION = 128
CUDA_MAX_SPLITS = 64
