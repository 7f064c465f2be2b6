"""One place for JIT options and launch knobs (no magic numbers inside kernels)."""
import numba

# cache=True: compiled machine code is stored next to the source (__pycache__), so only the
# first call in a fresh checkout pays the LLVM compile; error_model="numpy": division by zero
# follows IEEE instead of raising, and no Python exception path is compiled into inner loops.
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")


def cpu_kernel(fn=None, *, parallel=True):
    """The house decorator for CPU kernels: njit with the options above."""
    def wrap(f):
        return numba.njit(parallel=parallel, **JIT_OPTIONS)(f)
    return wrap(fn) if fn is not None else wrap


# Philox blocks generated per scratch buffer on the CPU: 256 blocks = 1024 mask words = 4 KiB,
# small enough to stay in L1 while the apply loop reads it back.
CPU_BLOCKS_PER_CHUNK = 256

# Elementwise dropout below this many elements runs on the calling thread. Alone, the parallel
# kernel wins even at 32K float32 elements (8 vs 11 us); but in a training loop every call follows
# torch ops whose OpenMP threads are still spinning, and Numba's pool (a second libgomp,
# docs/threads.md) waits for the cores: the report measured 64x512 fwd at 70 us parallel vs 35 us
# serial, interleaved with torch. From 2^17 elements the parallel work amortizes the wait.
CPU_PARALLEL_MIN = 1 << 17

# CUDA launch shape: threads per block for the elementwise kernels (grid-stride loops).
CUDA_THREADS = 256
# Upper bound on the grid; grid-stride loops cover the rest.
CUDA_MAX_BLOCKS = 4096
