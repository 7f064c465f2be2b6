"""Per-example DropConnect on the GPU with every thread's mask bits in registers.

    y[n, o]  = s * sum_i x[n, i] W[o, i] m(n, o, i) + b[o]    forward   (`sample_dot`)
    gx[n, i] = s * sum_o g[n, o] W[o, i] m(n, o, i)           grad x    (`sample_axpy`, rows a = n)
    gW[o, i] = s * sum_n g[n, o] x[n, i] m(n, o, i)           grad W    (`sample_axpy`, rows a = o)

m(n, o, i) = keep((n * out + o) * in + i), the mask contract (README "The mask"): element e is kept
iff 16-bit half e % 2 of word (e % 8) // 2 of Philox block e // 8 is below T(p). The mask differs per
example, so no masked W can be shared between rows and every mask bit is used once per product:
one Philox call per 8 multiply-adds is the floor of the work. These kernels are built around it:

- a thread's unit of work is 8 consecutive i of one mask row (n, o): one Philox block when the row
  starts on a block boundary (every `in` divisible by 8); otherwise the 8 bits straddle two blocks
  (`keep_bits` shifts them into place; the forward carries the second block to its next chunk, so
  it stays at one call per chunk plus one per row);
- the bits stay in a register and guard the thread's multiply-adds right there: no shared-memory
  mask, no __syncthreads, no thread waits for another (the tiled kernel `linear_cuda.sample_gemm`
  stages a 16^3 byte cube per K-step between three barriers, and a third of its Philox lanes idle
  on the block straddling each row);
- `sample_dot`: a thread is one o and ROWS_DOT consecutive n: W[o, i..i+7] is loaded once for all
  of them, and x[n, i..i+7] is one address across the warp (a broadcast);
  `sample_axpy`: a thread is 8 consecutive i (8 accumulators) of ROWS_AXPY rows a, the reduction
  index k runs over o (gx) or n (gW): the warp reads Q[k, ...] as 1 KiB of contiguous memory and
  P's element once for all its lanes;
- blocks are 2-D (`block_shape`): x spans the output columns (o, or chunks of 8 i) in whole
  warps, y the row groups, so a narrow product does not leave most of a block idle, and a warp
  shares its rows (uniform branches, broadcast loads);
- split-K (grid z = `splits`): a small product has too few outputs to fill the GPU (64x1024->1024
  forward: 32 K threads against an H200's 270 K resident), so the reduction is cut into `splits`
  ranges whose partial sums go to a (splits, rows, cols) buffer that `sum_splits` adds in a fixed
  order: deterministic, no atomics. With one split the kernels write the finished result. The
  split count depends on the product's shape (batch size included), so y[n] of one example may
  differ in the last bits between batch sizes (as with any GEMM that picks its algorithm by shape).

Accumulators and every zero are of the data's dtype (a `* 0` of a float32 would type as float64
in Numba and sum in double precision). Dropped terms are skipped, not multiplied by 0 (as in
`sample_gemm` and the CPU kernels): an inf in a dropped weight does not make the output NaN.
Block sizes and ROWS_* were chosen by registers and occupancy (ptxas, docs/cuda_kernels.md), not
by timing: no GPU has run these kernels yet.
"""
import numpy as np
from numba import cuda

from .config import CUDA_JIT_OPTIONS
from .dropout_cuda import philox_block_cuda, philox_key
from .philox import LANES

THREADS = 128   # threads per block: whole warps along the output columns, row groups across
WARP = 32
ROWS_DOT = 2    # n per thread in sample_dot (W's 8 values used twice; 4 rows took 157 registers)
ROWS_AXPY = 2   # rows a per thread in sample_axpy (16 accumulators)
CHUNK = LANES   # consecutive i per unit of work: one Philox block
_LOW16 = np.uint32(0xFFFF)
_SHIFT16 = np.uint32(16)


def block_shape(cols):
    """(x, y) threads of a block for a product with `cols` thread columns: x in whole warps, up to
    THREADS; y = THREADS // x row groups."""
    x = min(THREADS, -(-max(cols, 1) // WARP) * WARP)
    return x, THREADS // x


@cuda.jit(device=True)
def _pair_bits(word, thr):
    """Keep bits of a Philox word's two elements: the low 16-bit half in bit 0, the high in bit 1
    (compared in 32 bits: the word is a uint64 holding 32)."""
    w = np.uint32(word)
    return (1 if (w & _LOW16) < thr else 0) | (2 if (w >> _SHIFT16) < thr else 0)


@cuda.jit(device=True)
def block_bits(block, key_lo, key_hi, off_lo, off_hi, thr):
    """Keep bits of the 8 elements of Philox block `block`: element 8 * block + j in bit j."""
    w0, w1, w2, w3 = philox_block_cuda(np.uint64(block), off_lo, off_hi, key_lo, key_hi)
    return (_pair_bits(w0, thr) | _pair_bits(w1, thr) << 2 | _pair_bits(w2, thr) << 4 |
            _pair_bits(w3, thr) << 6)


@cuda.jit(device=True)
def keep_bits_carried(e, valid, carry, key_lo, key_hi, off_lo, off_hi, thr):
    """(bits, carry): keep bits of mask elements e .. e + valid - 1 (valid <= 8), element e + j
    in bit j, and the bits of the block after e's when the elements reached into it (else -1).
    carry: that value from the chunk before, when this chunk starts in the block it reached."""
    block = e // LANES
    s = e - block * LANES
    lo = carry if carry >= 0 else block_bits(block, key_lo, key_hi, off_lo, off_hi, thr)
    carry = -1
    if s + valid > LANES:  # the elements straddle two blocks
        carry = block_bits(block + 1, key_lo, key_hi, off_lo, off_hi, thr)
        lo |= carry << LANES
    return (lo >> s) & ((1 << valid) - 1), carry


@cuda.jit(device=True)
def keep_bits(e, valid, key_lo, key_hi, off_lo, off_hi, thr):
    """Keep bits of mask elements e .. e + valid - 1 (valid <= 8): element e + j in bit j."""
    return keep_bits_carried(e, valid, -1, key_lo, key_hi, off_lo, off_hi, thr)[0]


@cuda.jit(device=True)
def _split_range(total, unit):
    """This block's [lo, hi) of range(total) for split z = blockIdx.z, in whole multiples of unit."""
    units = (total + unit - 1) // unit
    per = (units + cuda.gridDim.z - 1) // cuda.gridDim.z
    lo = cuda.blockIdx.z * per * unit
    return lo, min(total, lo + per * unit)


# The per-thread values live in tuples and scalars, not cuda.local.array: NVVM left a 4-row
# accumulator array in local memory (a stack frame in ptxas's report); tuples are registers.

@cuda.jit(device=True)
def _load8(a, r, c0, valid):
    """a[r, c0 + j] for j < 8 (0 from j = valid on), as a tuple."""
    z = a.dtype.type(0)
    return (a[r, c0] if valid > 0 else z, a[r, c0 + 1] if valid > 1 else z,
            a[r, c0 + 2] if valid > 2 else z, a[r, c0 + 3] if valid > 3 else z,
            a[r, c0 + 4] if valid > 4 else z, a[r, c0 + 5] if valid > 5 else z,
            a[r, c0 + 6] if valid > 6 else z, a[r, c0 + 7] if valid > 7 else z)


@cuda.jit(device=True)
def _dot8(x, n, i0, bits, w):
    """sum_j x[n, i0 + j] w[j] over the kept j (bit j of bits); x is read only where kept.
    Written out: a loop would index the tuple w with a variable, which puts it in local memory."""
    s = x.dtype.type(0)
    if bits & 1:
        s += x[n, i0] * w[0]
    if bits & 2:
        s += x[n, i0 + 1] * w[1]
    if bits & 4:
        s += x[n, i0 + 2] * w[2]
    if bits & 8:
        s += x[n, i0 + 3] * w[3]
    if bits & 16:
        s += x[n, i0 + 4] * w[4]
    if bits & 32:
        s += x[n, i0 + 5] * w[5]
    if bits & 64:
        s += x[n, i0 + 6] * w[6]
    if bits & 128:
        s += x[n, i0 + 7] * w[7]
    return s


@cuda.jit(device=True)
def _axpy8(acc, pk, bits, q):
    """acc[j] + pk q[j] where bit j of bits is set, acc[j] elsewhere."""
    return (acc[0] + pk * q[0] if bits & 1 else acc[0], acc[1] + pk * q[1] if bits & 2 else acc[1],
            acc[2] + pk * q[2] if bits & 4 else acc[2], acc[3] + pk * q[3] if bits & 8 else acc[3],
            acc[4] + pk * q[4] if bits & 16 else acc[4], acc[5] + pk * q[5] if bits & 32 else acc[5],
            acc[6] + pk * q[6] if bits & 64 else acc[6], acc[7] + pk * q[7] if bits & 128 else acc[7])


@cuda.jit(device=True)
def _dot_row(x, n, N, out_dim, o, in_dim, i0, valid, w, carry, key_lo, key_hi, off_lo, off_hi, thr):
    """(row n's kept terms of chunk i0, the carry for its next chunk); 0 for a row past N."""
    if n >= N:
        return x.dtype.type(0), carry
    bits, carry = keep_bits_carried((n * out_dim + o) * in_dim + i0, valid, carry,
                                    key_lo, key_hi, off_lo, off_hi, thr)
    return _dot8(x, n, i0, bits, w), carry


@cuda.jit(device=True)
def _store_dot(dst, z, final, n, N, o, acc, bias, has_bias, scale):
    if n < N:
        if not final:
            dst[z, n, o] = acc
        elif has_bias:
            dst[0, n, o] = acc * scale + bias[o]
        else:
            dst[0, n, o] = acc * scale


@cuda.jit(**CUDA_JIT_OPTIONS)
def sample_dot(x, W, dst, bias, has_bias, seeds, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Forward: y[n, o] = scale * sum_i x[n, i] W[o, i] m(n, o, i) (+ bias[o]) into dst[0] when
    the grid has one split; else split z's partial sum (no scale, no bias) into dst[z].
    x (N, in), W (out, in), dst (splits, N, out); seeds as in dropout_cuda.philox_key.
    A thread: one o (x of the grid), ROWS_DOT = 2 rows n (written out: acc0, acc1)."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    N, in_dim = x.shape
    out_dim = W.shape[0]
    o = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if o >= out_dim:
        return
    final = cuda.gridDim.z == 1
    z = cuda.blockIdx.z
    i_lo, i_hi = _split_range(in_dim, CHUNK)
    for g in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, (N + ROWS_DOT - 1) // ROWS_DOT,
                   cuda.gridDim.y * cuda.blockDim.y):
        n = g * ROWS_DOT
        acc0 = acc1 = x.dtype.type(0)
        c0 = c1 = -1
        for i0 in range(i_lo, i_hi, CHUNK):
            valid = min(CHUNK, i_hi - i0)
            w = _load8(W, o, i0, valid)
            t0, c0 = _dot_row(x, n, N, out_dim, o, in_dim, i0, valid, w, c0,
                              key_lo, key_hi, off_lo, off_hi, thr)
            t1, c1 = _dot_row(x, n + 1, N, out_dim, o, in_dim, i0, valid, w, c1,
                              key_lo, key_hi, off_lo, off_hi, thr)
            acc0 += t0
            acc1 += t1
        _store_dot(dst, z, final, n, N, o, acc0, bias, has_bias, scale)
        _store_dot(dst, z, final, n + 1, N, o, acc1, bias, has_bias, scale)


@cuda.jit(device=True)
def _axpy_row(acc, P, q, a, rows, k, p_trans, rows_are_n, out_dim, in_dim, i0, valid,
              key_lo, key_hi, off_lo, off_hi, thr):
    """Row a's accumulators after reduction step k (unchanged for a row past `rows`)."""
    if a >= rows:
        return acc
    pk = P[k, a] if p_trans else P[a, k]
    row = a * out_dim + k if rows_are_n else k * out_dim + a
    bits = keep_bits(row * in_dim + i0, valid, key_lo, key_hi, off_lo, off_hi, thr)
    return _axpy8(acc, pk, bits, q)


@cuda.jit(device=True)
def _store_axpy(dst, z, final, a, rows, i0, valid, acc, scale):
    if a < rows:
        for j in range(CHUNK):
            if j < valid:
                dst[z if not final else 0, a, i0 + j] = acc[j] if not final else acc[j] * scale


@cuda.jit(**CUDA_JIT_OPTIONS)
def sample_axpy(P, Q, dst, p_trans, rows_are_n, out_dim, seeds, key_lo, key_hi, off_lo, off_hi, thr,
                scale):
    """Backward: dst[a, i] = scale * sum_k opP[a, k] Q[k, i] m(row(a, k), i) into dst[0] with one
    split, else split z's partial sum (no scale) into dst[z]. opP = P.T if p_trans else P;
    row(a, k) = a * out + k if rows_are_n (gx: a = n, k = o, P = g, Q = W) else k * out + a
    (gW: a = o, k = n, P = g, Q = x). dst (splits, rows, in). A thread: 8 i (x of the grid),
    ROWS_AXPY = 2 rows."""
    key_lo, key_hi = philox_key(seeds, key_lo, key_hi)
    rows = dst.shape[1]
    in_dim = dst.shape[2]
    i0 = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) * CHUNK
    if i0 >= in_dim:
        return
    final = cuda.gridDim.z == 1
    z = cuda.blockIdx.z
    valid = min(CHUNK, in_dim - i0)
    k_lo, k_hi = _split_range(Q.shape[0], 1)
    zero = dst.dtype.type(0)
    for g in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, (rows + ROWS_AXPY - 1) // ROWS_AXPY,
                   cuda.gridDim.y * cuda.blockDim.y):
        a = g * ROWS_AXPY
        acc0 = (zero, zero, zero, zero, zero, zero, zero, zero)
        acc1 = acc0
        for k in range(k_lo, k_hi):
            q = _load8(Q, k, i0, valid)
            acc0 = _axpy_row(acc0, P, q, a, rows, k, p_trans, rows_are_n, out_dim, in_dim, i0, valid,
                             key_lo, key_hi, off_lo, off_hi, thr)
            acc1 = _axpy_row(acc1, P, q, a + 1, rows, k, p_trans, rows_are_n, out_dim, in_dim, i0, valid,
                             key_lo, key_hi, off_lo, off_hi, thr)
        _store_axpy(dst, z, final, a, rows, i0, valid, acc0, scale)
        _store_axpy(dst, z, final, a + 1, rows, i0, valid, acc1, scale)


@cuda.jit(**CUDA_JIT_OPTIONS)
def sum_splits(parts, C, bias, has_bias, scale):
    """C[m, c] = scale * sum_z parts[z, m, c] (+ bias[c]), z in order (deterministic)."""
    S, M, Nc = parts.shape
    for t in range(cuda.grid(1), M * Nc, cuda.gridsize(1)):
        m = t // Nc
        c = t - m * Nc
        acc = parts[0, m, c]
        for z in range(1, S):
            acc += parts[z, m, c]
        if has_bias:
            C[m, c] = acc * scale + bias[c]
        else:
            C[m, c] = acc * scale
