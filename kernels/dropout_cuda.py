"""CUDA kernels for elementwise and grouped (spatial / per-sample) dropout, and the eval-time scale.

The same mask contract as kernels/dropout_cpu.py (README, "The mask"; the formula is at the top of
kernels/philox.py): element i is kept iff its 16-bit mask word h(i), half (i mod 2) of word
(i mod 8) // 2 of Philox4x32-10 block i // 8, is below T(p) = floor((1 - p) * 2^16).
The Philox source is kernels/philox.py, compiled here with `cuda.jit(device=True)`: the uint64
arithmetic is the same as on the CPU, so masks are bit-identical across devices by construction.

Every kernel is a grid-stride loop over flat arrays: C-contiguous data, or, for the grouped kernel,
the memory of a dense permuted layout whose groups it can index directly (channels_last spatial
dropout, DropPath with the batch dim outermost), or, for float16/32/64 elementwise dropout, a
batched transpose (`dropout_transposed`: channels_last, transposed matrices); the launchers in
fastdrop/_cuda.py make a contiguous copy of anything else. A kept element is x * scale with `scale` in the compute
type (x's dtype; float32 for float16 data, rounded once on the store; bfloat16 data comes as its
bits to the `_bf16` kernels, below).

`dropout_flat` works in tiles of 8 elements per thread (blockDim <= CUDA_THREADS): each thread
generates one Philox block (8 mask words, none regenerated) into shared memory, then the block walks
the tile with a stride of blockDim, so consecutive threads of a warp read and write consecutive elements (128-byte
transactions for float32) and each thread issues its 8 loads before any select. The shared words
are stored word-major with rows of CUDA_THREADS + 4 (WORD_ROW): the 32 threads of a warp write 32
banks, and the 16 words a warp reads back (4 Philox blocks x 4 words) fall in 16 distinct banks.
"""
import numpy as np
from numba import cuda

from .config import CUDA_JIT_OPTIONS, CUDA_THREADS
from .philox import HALF_MASK, LANES, SHIFT16, make_philox_block, philox_rounds

philox_rounds_cuda = cuda.jit(device=True)(philox_rounds)
philox_block_cuda = cuda.jit(device=True)(make_philox_block(philox_rounds_cuda))


@cuda.jit(device=True)
def philox_key(seeds, key_lo, key_hi):
    """The Philox key words: the seed from the host (key_lo, key_hi), or, when `seeds` holds one
    element, the 64-bit seed in device memory (drawn on the stream by torch's graph-safe CUDA
    generator during CUDA-graph capture, so every replay reads the replay's own seed)."""
    if seeds.size == 0:
        return key_lo, key_hi
    s = np.uint64(seeds[0])
    return s & np.uint64(0xFFFFFFFF), s >> np.uint64(32)


TILE = CUDA_THREADS * LANES      # elements per tile of dropout_flat at the launchers' block size
WORD_ROW = CUDA_THREADS + 4      # shared row of one Philox word index, padded against bank conflicts
TILE_WORDS = 4 * WORD_ROW


@cuda.jit(device=True)
def _keep_pair(out, i, n, word, thr):
    if i < n:
        out[i] = (word & HALF_MASK) < thr
    if i + 1 < n:
        out[i + 1] = (word >> SHIFT16) < thr


@cuda.jit(device=True)
def _tile_words(words, tile, t, nt, key_lo, key_hi, off_lo, off_hi):
    """Thread t's Philox block of the tile (block tile * nt + t) into the shared words."""
    r0, r1, r2, r3 = philox_block_cuda(np.uint64(tile * nt + t), off_lo, off_hi, key_lo, key_hi)
    words[t] = np.uint32(r0)
    words[WORD_ROW + t] = np.uint32(r1)
    words[2 * WORD_ROW + t] = np.uint32(r2)
    words[3 * WORD_ROW + t] = np.uint32(r3)


@cuda.jit(device=True)
def _tile_kept(words, e, thr):
    """Is element e of the tile kept: Philox block e // 8 of it, word (e % 8) // 2, half e % 2."""
    w = np.uint64(words[((e % LANES) // 2) * WORD_ROW + e // LANES])
    return ((w >> (SHIFT16 * np.uint64(e % 2))) & HALF_MASK) < thr


# NaN: GPU arithmetic returns the canonical NaN (0x7fffffff, seen on an H200) where the CPU's keeps
# the operand's sign and payload, so a kept NaN is stored as it was loaded, never multiplied: the
# same bits as the CPU result for every quiet NaN (a signaling NaN, which the CPU quiets, stays
# signaling here; bfloat16, handled as bits, is quieted exactly as on the CPU).
@cuda.jit(device=True)
def store_kept(out, i, v, scale):
    """out[i] = v * scale for a kept element, or v itself if v is NaN (stored as loaded: a plain
    move keeps its bits; a store, not a returned value, so float16 NaNs never pass a conversion).
    The NaN test is made in float32 (a NaN converts to a NaN): numba-cuda lowers float16 `!=` to a
    C++ operator that NVVM cannot link (ptxas: unresolved extern)."""
    w = np.float32(v)
    if w != w:
        out[i] = v
    else:
        out[i] = v * scale


@cuda.jit(**CUDA_JIT_OPTIONS)
def dropout_flat(x, out, seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) for flat contiguous x, out (out may alias x); at most
    CUDA_THREADS threads per block. seeds: empty, or the seed in device memory (`philox_key`)."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    words = cuda.shared.array(TILE_WORDS, dtype=np.uint32)
    n = x.size
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    tile_size = nt * LANES
    for tile in range(cuda.blockIdx.x, (n + tile_size - 1) // tile_size, cuda.gridDim.x):
        _tile_words(words, tile, t, nt, key_lo, key_hi, off_lo, off_hi)
        cuda.syncthreads()
        start = tile * tile_size
        for k in range(LANES):
            e = k * nt + t
            i = start + e
            if i < n:
                v = x[i]                        # loaded before the select
                if _tile_kept(words, e, thr):
                    store_kept(out, i, v, scale)
                else:
                    out[i] = 0
        cuda.syncthreads()  # the words are overwritten by the next tile


# bfloat16: numba has no bfloat16 arrays, so the data comes as its bits (an int16 view, as on the
# CPU) and each element is widened to float32 in a register (exact: bfloat16 is a float32's top
# half), multiplied by a float32 scale and rounded once back to 16 bits, to nearest even: the
# result equals (x.float() * scale).bfloat16() and the CPU kernels' bits, with 2 bytes read and 2
# written per element instead of the 20 of a float32 round trip. The bit casts go through a
# one-element local array (its view is the reinterpretation); NVVM keeps it in a register
# (docs/cuda_kernels.md: no local memory).
@cuda.jit(device=True)
def bf16_to_f32(h):
    """bfloat16 bits (int16) -> float32, exact."""
    bits = cuda.local.array(1, np.uint32)
    bits[0] = np.uint32(np.uint16(h)) << np.uint32(16)
    return bits.view(np.float32)[0]


@cuda.jit(device=True)
def f32_to_bf16(f):
    """float32 -> bfloat16 bits (int16), round to nearest even on the 16 dropped bits (overflow to
    Inf); NaN stays NaN, quiet, with its sign and top payload bits (kernels/dropout_cpu.py)."""
    value = cuda.local.array(1, np.float32)
    value[0] = f
    u = value.view(np.uint32)[0]
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.int16(np.uint16((u >> np.uint32(16)) | np.uint32(0x40)))
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.int16(np.uint16(rounded))


@cuda.jit(device=True)
def kept_bf16(h, scale):
    """A kept bfloat16 element (bits in, bits out): (h as float32 * scale) rounded once; a NaN is
    quieted from its bits (top payload bit set), as the CPU's float32 multiply does."""
    if (np.uint16(h) & np.uint16(0x7FFF)) > np.uint16(0x7F80):
        return np.int16(np.uint16(h) | np.uint16(0x40))
    return f32_to_bf16(bf16_to_f32(h) * scale)


@cuda.jit(**CUDA_JIT_OPTIONS)
def dropout_flat_bf16(x, out, seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`dropout_flat` for bfloat16 bits (int16 arrays x, out), float32 scale."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    words = cuda.shared.array(TILE_WORDS, dtype=np.uint32)
    n = x.size
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    tile_size = nt * LANES
    for tile in range(cuda.blockIdx.x, (n + tile_size - 1) // tile_size, cuda.gridDim.x):
        _tile_words(words, tile, t, nt, key_lo, key_hi, off_lo, off_hi)
        cuda.syncthreads()
        start = tile * tile_size
        for k in range(LANES):
            e = k * nt + t
            i = start + e
            if i < n:
                v = kept_bf16(x[i], scale)
                if _tile_kept(words, e, thr):
                    out[i] = v
                else:
                    out[i] = 0
        cuda.syncthreads()


# Elementwise dropout on a batched transpose: logical (A, R, L), memory (A, L, R) (channels_last
# (N, C, H, W) is A = N, R = C, L = H*W; a transposed matrix A = 1). A block takes a tile of
# T_ROWS logical rows (r) by T_COLS columns (l) of one a. First its threads make the tile's keep
# flags from the Philox blocks of its rows (logically consecutive elements: each block is made
# once, at most T_COLS / 8 + 1 per row) into shared memory, column-major; then they walk the tile in
# memory order (r fastest), so a warp reads and writes T_ROWS consecutive elements.
T_ROWS = 32
T_COLS = 64
T_BLOCKS = T_COLS // LANES + 1   # Philox blocks a tile row can touch
T_FLAGS = T_ROWS * T_COLS


@cuda.jit(device=True)
def _tile_keep_flags(keep, a, r0, l0, R, L, thr, key_lo, key_hi, off_lo, off_hi):
    """keep[(l - l0) * T_ROWS + (r - r0)] = mask of logical element (a, r, l) for the tile."""
    t = cuda.threadIdx.x
    for w in range(t, T_ROWS * T_BLOCKS, cuda.blockDim.x):
        q = w // T_BLOCKS
        r = r0 + q
        if r < R:
            row_start = (a * R + r) * L               # logical index of (a, r, 0)
            b = (row_start + l0) // LANES + w % T_BLOCKS
            if b * LANES < row_start + min(l0 + T_COLS, L):
                r0w, r1w, r2w, r3w = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
                for h in range(LANES):
                    col = b * LANES + h - row_start - l0  # column of the tile, if inside it
                    if 0 <= col < T_COLS and l0 + col < L:
                        word = r0w if h < 2 else (r1w if h < 4 else (r2w if h < 6 else r3w))
                        half = (word >> (SHIFT16 * np.uint64(h % 2))) & HALF_MASK
                        keep[col * T_ROWS + q] = half < thr


@cuda.jit(**CUDA_JIT_OPTIONS)
def dropout_transposed(x, out, A, R, L, seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) over the flat memory of x and out laid out (A, L, R) for
    the logical (A, R, L) array: the mask of logical C-order index (a * R + r) * L + l."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    keep = cuda.shared.array(T_FLAGS, dtype=np.bool_)
    t = cuda.threadIdx.x
    row_tiles = (R + T_ROWS - 1) // T_ROWS
    col_tiles = (L + T_COLS - 1) // T_COLS
    for tile in range(cuda.blockIdx.x, A * row_tiles * col_tiles, cuda.gridDim.x):
        a = tile // (row_tiles * col_tiles)
        rest = tile - a * row_tiles * col_tiles
        r0 = (rest // col_tiles) * T_ROWS
        l0 = (rest % col_tiles) * T_COLS
        _tile_keep_flags(keep, a, r0, l0, R, L, thr, key_lo, key_hi, off_lo, off_hi)
        cuda.syncthreads()
        for e in range(t, T_FLAGS, cuda.blockDim.x):
            col = e // T_ROWS
            q = e - col * T_ROWS
            if r0 + q < R and l0 + col < L:
                m = (a * L + l0 + col) * R + r0 + q
                v = x[m]
                if keep[e]:
                    store_kept(out, m, v, scale)
                else:
                    out[m] = 0
        cuda.syncthreads()  # the flags are overwritten by the next tile


@cuda.jit(**CUDA_JIT_OPTIONS)
def keep_mask(out, seeds, key_lo, key_hi, off_lo, off_hi, thr):
    """out[i] = (element i is kept) for a flat bool array `out`."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    n = out.size
    for b in range(cuda.grid(1), (n + LANES - 1) // LANES, cuda.gridsize(1)):
        r0, r1, r2, r3 = philox_block_cuda(np.uint64(b), off_lo, off_hi, key_lo, key_hi)
        i = LANES * b
        _keep_pair(out, i, n, r0, thr)
        _keep_pair(out, i + 2, n, r1, thr)
        _keep_pair(out, i + 4, n, r2, thr)
        _keep_pair(out, i + 6, n, r3, thr)


@cuda.jit(device=True)
def _group_of(j, row, inner):
    """The mask element of memory position j when memory is laid out (A, L, B), B = inner:
    (j // row) * inner + j % inner, row = L * B. inner = 1: runs of `row` elements, one per group
    (C-contiguous data, DropPath on any layout with the batch dim outermost)."""
    if inner == 1:
        return j // row
    return (j // row) * inner + j % inner


@cuda.jit(**CUDA_JIT_OPTIONS)
def apply_group_mask(x, out, keep, row, inner, scale):
    """out[j] = x[j] * scale if keep[_group_of(j, row, inner)] else 0 over the flat memory of x
    and out (the same dense layout): one mask element per group, broadcast over its elements. The
    mask (a few thousand groups at most in practice) comes from `keep_mask` first, so Philox runs
    once per group, not once per element; dropped groups are not read."""
    n = x.size
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        if keep[_group_of(j, row, inner)]:
            store_kept(out, j, x[j], scale)
        else:
            out[j] = 0


@cuda.jit(**CUDA_JIT_OPTIONS)
def apply_group_mask_bf16(x, out, keep, row, inner, scale):
    """`apply_group_mask` for bfloat16 bits (int16 arrays x, out), float32 scale."""
    n = x.size
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        if keep[_group_of(j, row, inner)]:
            out[j] = kept_bf16(x[j], scale)
        else:
            out[j] = 0


@cuda.jit(**CUDA_JIT_OPTIONS)
def scale(x, out, factor):
    """out = x * factor (classic dropout at eval; also the launchers' dtype conversions, factor 1),
    a NaN stored as loaded (`store_kept`)."""
    for j in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        store_kept(out, j, x[j], factor)
