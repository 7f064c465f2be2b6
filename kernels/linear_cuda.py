"""CUDA kernels for the fused dense layers: dropout -> linear and DropConnect (batch and per example).

Every product of the forward and backward passes is one tiled shared-memory GEMM

    C (M x Nc) = opA (M x K) @ opB (K x Nc)  [+ bias],   opA = A or Aᵀ,   opB = B or Bᵀ

run by TILE x TILE threads per TILE x TILE tile of C (block-level grid-stride loop over tiles).
The mask is never read from memory: its keep bits are regenerated from Philox (the mask contract,
README "The mask") for exactly the tile being loaded, into shared memory, by the block itself:

- `masked_gemm`: one 2-D mask on A, on B (applied, times `scale`, while the tile is loaded) or
  on C (applied in the epilogue). Element (r, c) of a stored (rows x cols) operand has logical
  index r * cols + c: the masks of x (dropout -> linear, index n*in + i) and of W (batch
  DropConnect, index o*in + i), in every product of forward and backward.
- `sample_gemm`: per-example DropConnect, mask element (n, o, i) at index (n*out + o)*in + i.
  The mask differs per example, so no masked W can be shared between rows: for every K-step the
  block regenerates the TILE^3 bits it needs (a cube over the n, o and i ranges of the step) and
  the inner product reads them; no (N, out, in) buffer exists anywhere.

Bit generation: a row of TILE consecutive mask words touches at most TILE/8 + 1 Philox blocks
(it may start mid-block); the (row, block) pairs are spread over the block's threads, each Philox
call serving up to 8 mask words. A K-step of `masked_gemm` costs (TILE/8 + 1) * TILE Philox calls
per masked tile instead of TILE^2 (one per element), and of `sample_gemm` TILE^2 * (TILE/8 + 1).
"""
import numpy as np
from numba import cuda

from .config import CUDA_JIT_OPTIONS

from .dropout_cuda import philox_block_cuda, philox_key
from .philox import HALF_MASK, LANES, SHIFT16

# Tile edge: TILE x TILE threads per block (256 for 16), TILE^3 bytes of mask cube in shared memory.
TILE = 16
BLOCKS_PER_ROW = TILE // LANES + 1  # Philox blocks a run of TILE consecutive mask words can touch
# Shared-array sizes must be compile-time constants: module globals are, `TILE * TILE` in a kernel
# is not (it types as a runtime int64 and cuda.shared.array rejects it on the real target).
TILE2 = TILE * TILE
TILE3 = TILE * TILE * TILE

MASK_NONE, MASK_A, MASK_B, MASK_C = 0, 1, 2, 3
# Per-example products: which of (n, o, i) the output row, output column and reduction index are.
SAMPLE_FWD, SAMPLE_GRAD_X, SAMPLE_GRAD_W = 0, 1, 2  # (n, o | i), (n, i | o), (o, i | n)


@cuda.jit(device=True)
def _set_bit(bits, r, c, valid_cols, h, thr):
    if c >= 0 and c < TILE:
        bits[r * TILE + c] = 1 if (c < valid_cols and h < thr) else 0


@cuda.jit(device=True)
def _set_pair(bits, r, c, valid_cols, word, thr):
    """Columns c and c + 1 from the low and high 16-bit halves of a 32-bit Philox word."""
    _set_bit(bits, r, c, valid_cols, word & HALF_MASK, thr)
    _set_bit(bits, r, c + 1, valid_cols, word >> SHIFT16, thr)


@cuda.jit(device=True)
def fill_bits(bits, nrows, rb, a0, b0, l0, adim, mdim, ldim, key_lo, key_hi, off_lo, off_hi, thr):
    """bits[r * TILE + c] = keep(((a0 + a) * mdim + b0 + b) * ldim + l0 + c), a = r // rb, b = r % rb,
    for r < nrows, c < TILE; 0 outside the (adim, mdim, ldim) array. Called by all threads."""
    tid = cuda.threadIdx.y * TILE + cuda.threadIdx.x
    for j in range(tid, nrows * BLOCKS_PER_ROW, TILE * TILE):
        r = j // BLOCKS_PER_ROW
        q = j - r * BLOCKS_PER_ROW
        a = a0 + r // rb
        b = b0 + r % rb
        valid_cols = ldim - l0 if (a < adim and b < mdim) else 0
        base = (a * mdim + b) * ldim + l0
        block = base // LANES + q
        c = LANES * block - base  # tile column of the block's mask word 0 (from -7 on)
        if valid_cols > 0 and c < valid_cols:
            w0, w1, w2, w3 = philox_block_cuda(np.uint64(block), off_lo, off_hi, key_lo, key_hi)
        else:  # every column here is padding (c >= valid_cols): _set_bit writes 0 whatever the word
            w0 = w1 = w2 = w3 = np.uint64(0)
        _set_pair(bits, r, c, valid_cols, w0, thr)
        _set_pair(bits, r, c + 2, valid_cols, w1, thr)
        _set_pair(bits, r, c + 4, valid_cols, w2, thr)
        _set_pair(bits, r, c + 6, valid_cols, w3, thr)


@cuda.jit(device=True)
def _load(dst, src, trans, r0, c0, bits, masked, scale):
    """Stage the stored tile src[r0:r0+TILE, c0:c0+TILE] (zero padded, masked and scaled when
    `masked`) into dst as [op row, op column]: transposed when the operand is used transposed.
    Reads are along the stored rows (coalesced) in both cases."""
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    r = r0 + ty
    c = c0 + tx
    v = src[r, c] if (r < src.shape[0] and c < src.shape[1]) else src.dtype.type(0)
    if masked:
        v = v * scale if bits[ty * TILE + tx] else src.dtype.type(0)
    if trans:
        dst[tx * TILE + ty] = v
    else:
        dst[ty * TILE + tx] = v


@cuda.jit(**CUDA_JIT_OPTIONS)
def masked_gemm(A, B, C, bias, has_bias, a_trans, b_trans, mask_on,
                seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """C = opA @ opB (+ bias), one 2-D mask on the stored A, B or C (index row * cols + col),
    kept elements times `scale`; A is (M, K) or (K, M) when a_trans, B (K, Nc) or (Nc, K).
    seeds: empty, or the seed in device memory (dropout_cuda.philox_key)."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    sa = cuda.shared.array(TILE2, dtype=C.dtype)
    sb = cuda.shared.array(TILE2, dtype=C.dtype)
    bits = cuda.shared.array(TILE2, dtype=np.uint8)
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    M, Nc = C.shape
    K = A.shape[0] if a_trans else A.shape[1]
    tiles_n = (Nc + TILE - 1) // TILE
    for t in range(cuda.blockIdx.x, ((M + TILE - 1) // TILE) * tiles_n, cuda.gridDim.x):
        m0 = (t // tiles_n) * TILE
        n0 = (t % tiles_n) * TILE
        acc = C.dtype.type(0)
        for k0 in range(0, K, TILE):
            ar0, ac0 = (k0, m0) if a_trans else (m0, k0)
            br0, bc0 = (n0, k0) if b_trans else (k0, n0)
            if mask_on == MASK_A:
                fill_bits(bits, TILE, 1, ar0, 0, ac0, A.shape[0], 1, A.shape[1],
                          key_lo, key_hi, off_lo, off_hi, thr)
            elif mask_on == MASK_B:
                fill_bits(bits, TILE, 1, br0, 0, bc0, B.shape[0], 1, B.shape[1],
                          key_lo, key_hi, off_lo, off_hi, thr)
            cuda.syncthreads()
            _load(sa, A, a_trans, ar0, ac0, bits, mask_on == MASK_A, scale)
            _load(sb, B, b_trans, br0, bc0, bits, mask_on == MASK_B, scale)
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sa[ty * TILE + kk] * sb[kk * TILE + tx]
            cuda.syncthreads()
        if mask_on == MASK_C:
            fill_bits(bits, TILE, 1, m0, 0, n0, M, 1, Nc, key_lo, key_hi, off_lo, off_hi, thr)
            cuda.syncthreads()
            acc = acc * scale if bits[ty * TILE + tx] else C.dtype.type(0)
            cuda.syncthreads()
        m = m0 + ty
        n = n0 + tx
        if m < M and n < Nc:
            C[m, n] = acc + bias[n] if has_bias else acc


@cuda.jit(**CUDA_JIT_OPTIONS)
def sample_gemm(A, B, C, bias, has_bias, a_trans, b_trans, product, n_dim, o_dim, i_dim,
                seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """C = scale * sum_k opA[m, k] opB[k, c] m(n, o, i) (+ bias) for per-example DropConnect, with
    (m, c, k) = (n, o, i), (n, i, o) or (o, i, n) for SAMPLE_FWD / SAMPLE_GRAD_X / SAMPLE_GRAD_W
    and m(n, o, i) = keep((n * o_dim + o) * i_dim + i), regenerated per K-step into `cube`;
    seeds as in masked_gemm."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    sa = cuda.shared.array(TILE2, dtype=C.dtype)
    sb = cuda.shared.array(TILE2, dtype=C.dtype)
    cube = cuda.shared.array(TILE3, dtype=np.uint8)  # [n, o, i] within the step
    ty = cuda.threadIdx.y
    tx = cuda.threadIdx.x
    M, Nc = C.shape
    K = A.shape[0] if a_trans else A.shape[1]
    # cube strides of the thread's output row, output column and the reduction index
    if product == SAMPLE_FWD:
        sm, sc, sk = TILE * TILE, TILE, 1
    elif product == SAMPLE_GRAD_X:
        sm, sc, sk = TILE * TILE, 1, TILE
    else:
        sm, sc, sk = TILE, 1, TILE * TILE
    tiles_n = (Nc + TILE - 1) // TILE
    for t in range(cuda.blockIdx.x, ((M + TILE - 1) // TILE) * tiles_n, cuda.gridDim.x):
        m0 = (t // tiles_n) * TILE
        n0 = (t % tiles_n) * TILE
        acc = C.dtype.type(0)
        for k0 in range(0, K, TILE):
            if product == SAMPLE_FWD:
                cn, co, ci = m0, n0, k0
            elif product == SAMPLE_GRAD_X:
                cn, co, ci = m0, k0, n0
            else:
                cn, co, ci = k0, m0, n0
            fill_bits(cube, TILE * TILE, TILE, cn, co, ci, n_dim, o_dim, i_dim,
                      key_lo, key_hi, off_lo, off_hi, thr)
            _load(sa, A, a_trans, k0 if a_trans else m0, m0 if a_trans else k0, cube, False, scale)
            _load(sb, B, b_trans, n0 if b_trans else k0, k0 if b_trans else n0, cube, False, scale)
            cuda.syncthreads()
            base = ty * sm + tx * sc
            for kk in range(TILE):
                if cube[base + kk * sk]:
                    acc += sa[ty * TILE + kk] * sb[kk * TILE + tx]
            cuda.syncthreads()
        m = m0 + ty
        n = n0 + tx
        if m < M and n < Nc:
            C[m, n] = acc * scale + bias[n] if has_bias else acc * scale


@cuda.jit(**CUDA_JIT_OPTIONS)
def column_sums(g, out):
    """out[c] = sum_r g[r, c] (the bias gradient)."""
    for c in range(cuda.grid(1), g.shape[1], cuda.gridsize(1)):
        acc = g.dtype.type(0)
        for r in range(g.shape[0]):
            acc += g[r, c]
        out[c] = acc
