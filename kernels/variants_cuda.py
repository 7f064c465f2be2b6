"""CUDA kernels for the dropout family: max-norm and dropout fused with the following matmul.

Imported lazily (only for CUDA data), so `import fastdrop` never loads numba.cuda.

- `max_norm_rows`: one block per row (grid-stride over rows); the block's threads stride over the
  row accumulating float64 partial sums, reduce them in shared memory, then scale the row if its
  norm exceeds c. The launcher presents any weight as a 2-D (rows, cols) view, rows = the vectors.
- `dropout_matmul` (made per dtype): classic shared-memory tiled matmul, TILE x TILE threads per
  output tile. The mask is applied while a's tile is loaded: thread (ty, tx) computes the Philox
  block of its element's logical index (g*M + i)*K + k and keeps its word (mask contract, README),
  so the masked a is never written to memory. Philox runs once per a element per column tile
  (N / TILE times); attention's N (head dim, 64-128) keeps that small next to the matmul.
"""
import math

import numpy as np
from numba import cuda

from .dropout_cuda import philox_block_cuda

# Threads per block of max_norm_rows (a power of two for the tree reduction).
MAX_NORM_THREADS = 128
# Output tile edge of dropout_matmul: TILE x TILE threads per block.
MATMUL_TILE = 16
# Upper bound on blocks in one grid dimension (grid-stride loops cover the rest).
MAX_BLOCKS = 4096


@cuda.jit
def max_norm_rows(w, max_value, eps):
    """Constrain each row of the 2-D device array w (any strides) in place."""
    partial = cuda.shared.array(MAX_NORM_THREADS, np.float64)
    tid = cuda.threadIdx.x
    ncols = w.shape[1]
    for r in range(cuda.blockIdx.x, w.shape[0], cuda.gridDim.x):
        acc = 0.0
        for k in range(tid, ncols, MAX_NORM_THREADS):
            v = np.float64(w[r, k])
            acc += v * v
        partial[tid] = acc
        cuda.syncthreads()
        step = MAX_NORM_THREADS // 2
        while step > 0:
            if tid < step:
                partial[tid] += partial[tid + step]
            cuda.syncthreads()
            step //= 2
        norm = math.sqrt(partial[0])
        cuda.syncthreads()  # everyone has read partial[0] before the next row overwrites it
        if norm > max_value:
            s = max_value / (norm + eps)
            for k in range(tid, ncols, MAX_NORM_THREADS):
                w[r, k] = w[r, k] * s


@cuda.jit(device=True)
def _word(idx, off_lo, off_hi, key_lo, key_hi):
    """The mask word of logical element idx (one Philox block per call)."""
    r0, r1, r2, r3 = philox_block_cuda(np.uint64(idx // 4), off_lo, off_hi, key_lo, key_hi)
    j = idx % 4
    if j == 0:
        return r0
    if j == 1:
        return r1
    if j == 2:
        return r2
    return r3


_MATMUL_KERNELS = {}


def matmul_kernel(dtype):
    """The dropout_matmul kernel for one dtype (shared-memory tiles need a compile-time type)."""
    dtype = np.dtype(dtype)
    if dtype in _MATMUL_KERNELS:
        return _MATMUL_KERNELS[dtype]
    nbtype = dtype.type

    @cuda.jit
    def dropout_matmul(a, b, out, a_batched, b_batched, key_lo, key_hi, off_lo, off_hi, thr, scale):
        """out[g] = (mask * a[g'] * scale) @ b[g''], a (Ga, M, K), b (Gb, K, N), out (G, M, N)."""
        sa = cuda.shared.array((MATMUL_TILE, MATMUL_TILE), nbtype)
        sb = cuda.shared.array((MATMUL_TILE, MATMUL_TILE), nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        M = a.shape[1]
        K = a.shape[2]
        N = b.shape[2]
        zero = nbtype(0)
        for g in range(cuda.blockIdx.z, out.shape[0], cuda.gridDim.z):
            ga = g if a_batched else 0
            gb = g if b_batched else 0
            for tile_i in range(cuda.blockIdx.y, (M + MATMUL_TILE - 1) // MATMUL_TILE, cuda.gridDim.y):
                for tile_j in range(cuda.blockIdx.x, (N + MATMUL_TILE - 1) // MATMUL_TILE, cuda.gridDim.x):
                    i = tile_i * MATMUL_TILE + ty
                    j = tile_j * MATMUL_TILE + tx
                    acc = zero
                    for k0 in range(0, K, MATMUL_TILE):
                        ka = k0 + tx
                        if i < M and ka < K:
                            idx = (np.uint64(ga) * np.uint64(M) + np.uint64(i)) * np.uint64(K) + np.uint64(ka)
                            w = _word(idx, off_lo, off_hi, key_lo, key_hi)
                            sa[ty, tx] = a[ga, i, ka] * scale if np.uint64(w) < thr else zero
                        else:
                            sa[ty, tx] = zero
                        kb = k0 + ty
                        sb[ty, tx] = b[gb, kb, j] if (kb < K and j < N) else zero
                        cuda.syncthreads()
                        for kk in range(MATMUL_TILE):
                            acc += sa[ty, kk] * sb[kk, tx]
                        cuda.syncthreads()
                    if i < M and j < N:
                        out[g, i, j] = acc

    _MATMUL_KERNELS[dtype] = dropout_matmul
    return dropout_matmul


# ----------------------------------------------------------------------------- launchers
def max_norm_device(w2d, max_value, eps, stream=0):
    """Launch max_norm_rows on a 2-D device array (rows are the constrained vectors)."""
    if w2d.shape[0] == 0 or w2d.shape[1] == 0:
        return w2d
    blocks = max(1, min(MAX_BLOCKS, w2d.shape[0]))
    max_norm_rows[blocks, MAX_NORM_THREADS, stream](w2d, max_value, eps)
    return w2d


def dropout_matmul_device(a3, b3, out3, a_batched, b_batched, p, seed, offset, scale, stream=0):
    """out3 = dropout(a3) @ b3 on device arrays (Ga, M, K), (Gb, K, N), (G, M, N)."""
    from ..mask import kernel_rng_args
    G, M, N = out3.shape
    if out3.size == 0:
        return out3
    kernel = matmul_kernel(a3.dtype)
    grid = (min(MAX_BLOCKS, -(-N // MATMUL_TILE)), min(MAX_BLOCKS, -(-M // MATMUL_TILE)), min(65535, G))
    kernel[grid, (MATMUL_TILE, MATMUL_TILE), stream](
        a3, b3, out3, a_batched, b_batched, *kernel_rng_args(seed, offset, p), a3.dtype.type(scale))
    return out3


def _torch_stream(t):
    import torch
    return cuda.external_stream(torch.cuda.current_stream(t.device).cuda_stream)


def max_norm_array(w, max_value, dims, eps):
    """max_norm_ on a torch CUDA tensor, or a C-contiguous device array whose `dims` are trailing."""
    from .._cuda import require_gpu
    from .._dispatch import is_torch_tensor
    require_gpu()
    if not is_torch_tensor(w):
        nd = len(w.shape)
        if list(dims) != list(range(nd - len(dims), nd)):
            raise ValueError(f"max_norm_ on a CUDA device array needs the normed dims to be the trailing "
                             f"ones, got dim={tuple(dims)} for {nd} dims (use a torch tensor for others)")
        rows = math.prod(w.shape[:nd - len(dims)])
        max_norm_device(w.reshape(rows, w.size // max(rows, 1)), max_value, eps)
        return w
    import torch
    if w.dtype in (torch.float16, torch.bfloat16):
        tmp = w.float()
        max_norm_array(tmp, max_value, dims, eps)
        w.copy_(tmp)
        return w
    keep = [d for d in range(w.dim()) if d not in dims]
    t = w.permute(keep + list(dims))
    rows, cols = math.prod(t.shape[:len(keep)]), math.prod(t.shape[len(keep):])
    try:
        v = t.view(rows, cols)
        copy_back = False
    except RuntimeError:
        v = t.contiguous().view(rows, cols)
        copy_back = True
    with cuda.gpus[w.device.index]:
        max_norm_device(cuda.as_cuda_array(v, sync=False), max_value, eps, _torch_stream(w))
    if copy_back:
        t.copy_(v.view(t.shape))
    return w


def dropout_tensor(x, p, seed, offset, scale):
    """dropout(x) for a torch CUDA tensor (no autograd), through fastdrop's CUDA dropout kernel."""
    from .. import _cuda
    return _cuda.apply_tensor(x, p, seed, offset, scale, 0)


def dropout_matmul_tensor(a, b, p, seed, offset, scale):
    """dropout(a) @ b for torch CUDA tensors (no autograd)."""
    import torch
    from .._cuda import require_gpu
    from ..variants import _matmul_shapes
    require_gpu()
    if a.dtype in (torch.float16, torch.bfloat16):
        return dropout_matmul_tensor(a.float(), b.float(), p, seed, offset, scale).to(a.dtype)
    batch, M, K, N, a_batched, b_batched = _matmul_shapes(a.shape, b.shape)
    a3 = a.detach().contiguous().reshape(-1, M, K)
    b3 = b.detach().contiguous().reshape(-1, K, N)
    out = torch.empty(batch + (M, N), dtype=a.dtype, device=a.device)
    with cuda.gpus[a.device.index]:
        dropout_matmul_device(cuda.as_cuda_array(a3, sync=False), cuda.as_cuda_array(b3, sync=False),
                              cuda.as_cuda_array(out.view(-1, M, N), sync=False), a_batched, b_batched,
                              p, seed, offset, scale, _torch_stream(a))
    return out
