"""Launchers for the fused dense-layer CUDA kernels (kernels/linear_cuda.py), called by
fastdrop.linear / fastdrop._torch_linear with 2-D C-contiguous numba device arrays of one dtype
(float32 or float64): x2d (N, in), w (out, in), b (out,) or None, g (N, out). Same four functions
and signatures as the CPU launchers in fastdrop.linear (`CPU`).

Masks (scale = multiplier of kept elements):
    dropout_linear        M = dropout_mask((N, in), p, seed, offset) on x
    batch DropConnect     M = dropout_mask((out, in), p, seed, offset) on W
    per-sample DropConnect M = dropout_mask((N, out, in), p, seed, offset), never materialized
The products (every one a single fused kernel launch; the mask is regenerated inside):
    dropout_linear   y = (x⊙M s) Wᵀ + b     gx = M s ⊙ (g W)     gW = gᵀ (x⊙M s)
    DropConnect      y = x (W⊙M s)ᵀ + b     gx = g (W⊙M s)       gW = M s ⊙ (gᵀ x)
    per-sample       y[n] = (W⊙M[n] s) x[n] + b, gx[n] = (W⊙M[n] s)ᵀ g[n], gW = Σ_n M[n] s ⊙ g[n] x[n]ᵀ
and gb = g.sum(0) always. Every function takes an optional `stream` (default: numba's default
stream) and `empty` (an allocator `empty(shape, dtype) -> device array`, default numba's), so the
torch route launches on torch's current stream into memory from torch's caching allocator
(`TorchEmpty`): the same launch code as for device arrays, which the CUDA simulator tests run.
"""
import math
import sys

import numpy as np
from numba import cuda

from ._checks import as_device_array, refuse_graph_capture, require_gpu
from .kernels.config import launch_shape
from .kernels import linear_cuda as L
from .kernels.config import CUDA_MAX_BLOCKS
from .kernels.philox import kernel_rng_args

THREADS_2D = (L.TILE, L.TILE)


def _tiles(M, Nc):
    return max(1, min(CUDA_MAX_BLOCKS, -(-M // L.TILE) * -(-Nc // L.TILE)))


def _numba_empty(stream):
    return lambda shape, dtype: cuda.device_array(shape, dtype=dtype, stream=stream)


class TorchEmpty:
    """An `empty` for the launchers that takes memory from torch's caching allocator on `device`
    (stream-ordered on torch's current stream, visible to torch.cuda.memory_*), and remembers the
    tensor behind every device array it hands out."""

    def __init__(self, device):
        import torch
        self.torch, self.device, self.tensors = torch, device, {}

    def __call__(self, shape, dtype):
        t = self.torch.empty(shape, dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)
        d = cuda.as_cuda_array(t, sync=False)
        self.tensors[id(d)] = t
        return d

    def tensor(self, d):
        return self.tensors[id(d)]


def _bias_arg(b, dtype, empty):
    if b is None:
        return empty((1,), dtype), False
    return b, True


def _gemm(A, B, shape, bias, a_trans, b_trans, mask_on, p, seed, offset, scale, stream, empty):
    """C (shape) = opA @ opB (+ bias) with one 2-D mask (linear_cuda.masked_gemm)."""
    C = empty(shape, A.dtype)
    if C.size == 0:
        return C
    bb, has_bias = _bias_arg(bias, A.dtype, empty)
    L.masked_gemm[_tiles(*shape), THREADS_2D, stream](
        A, B, C, bb, has_bias, a_trans, b_trans, mask_on, *kernel_rng_args(seed, offset, p),
        A.dtype.type(scale))
    return C


def _sample_gemm(A, B, shape, bias, a_trans, b_trans, product, dims, p, seed, offset, scale, stream, empty):
    """C (shape) for per-example DropConnect (linear_cuda.sample_gemm); dims = (N, out, in)."""
    C = empty(shape, A.dtype)
    if C.size == 0:
        return C
    bb, has_bias = _bias_arg(bias, A.dtype, empty)
    L.sample_gemm[_tiles(*shape), THREADS_2D, stream](
        A, B, C, bb, has_bias, a_trans, b_trans, product, *dims, *kernel_rng_args(seed, offset, p),
        A.dtype.type(scale))
    return C


def _bias_grad(g, stream, empty):
    gb = empty((g.shape[1],), g.dtype)
    if gb.size:
        blocks, threads = launch_shape(g.shape[1])
        L.column_sums[blocks, threads, stream](g, gb)
    return gb


def dropout_linear_forward(x2d, w, b, p, seed, offset, scale, stream=0, empty=None):
    """y (N, out) = (x2d ⊙ M * scale) @ w.T + b,  M = dropout_mask(x2d.shape, p, seed, offset)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    return _gemm(x2d, w, (x2d.shape[0], w.shape[0]), b, False, True, L.MASK_A,
                 p, seed, offset, scale, stream, empty)


def dropout_linear_backward(g, x2d, w, p, seed, offset, scale, stream=0, empty=None):
    """(grad_x, grad_w, grad_b) of dropout_linear_forward for the output gradient g (N, out)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    gx = _gemm(g, w, x2d.shape, None, False, False, L.MASK_C, p, seed, offset, scale, stream, empty)
    gw = _gemm(g, x2d, w.shape, None, True, False, L.MASK_B, p, seed, offset, scale, stream, empty)
    return gx, gw, _bias_grad(g, stream, empty)


def dropconnect_forward(x2d, w, b, p, seed, offset, scale, per_sample, stream=0, empty=None):
    """y (N, out) = x2d @ (w ⊙ M * scale).T + b; M = dropout_mask(w.shape, ...) or, per_sample,
    row n uses dropout_mask((N, out, in), ...)[n]."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    shape = (x2d.shape[0], w.shape[0])
    if per_sample:
        return _sample_gemm(x2d, w, shape, b, False, True, L.SAMPLE_FWD, (x2d.shape[0], *w.shape),
                            p, seed, offset, scale, stream, empty)
    return _gemm(x2d, w, shape, b, False, True, L.MASK_B, p, seed, offset, scale, stream, empty)


def dropconnect_backward(g, x2d, w, p, seed, offset, scale, per_sample, stream=0, empty=None):
    """(grad_x, grad_w, grad_b) of dropconnect_forward for the output gradient g (N, out)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    if per_sample:
        dims = (x2d.shape[0], *w.shape)
        gx = _sample_gemm(g, w, x2d.shape, None, False, False, L.SAMPLE_GRAD_X, dims,
                          p, seed, offset, scale, stream, empty)
        gw = _sample_gemm(g, x2d, w.shape, None, True, False, L.SAMPLE_GRAD_W, dims,
                          p, seed, offset, scale, stream, empty)
    else:
        gx = _gemm(g, w, x2d.shape, None, False, False, L.MASK_B, p, seed, offset, scale, stream, empty)
        gw = _gemm(g, x2d, w.shape, None, True, False, L.MASK_C, p, seed, offset, scale, stream, empty)
    return gx, gw, _bias_grad(g, stream, empty)


def dense_call(name, x, w, b, rng, per_sample=None, grad=None):
    """`<name>` of this module on CUDA device arrays or torch CUDA tensors (any leading
    dims: run on 2-D C-contiguous views). Forward: (x, w, b); backward (grad given): (grad, x, w),
    returning (gx, gw, gb). Results are of x's kind."""
    require_gpu()
    from ._checks import MAX_U64, is_torch_tensor
    CL = sys.modules[__name__]
    seed, offset = int(rng.seed) & MAX_U64, rng.offset & MAX_U64
    extra = () if per_sample is None else (per_sample,)
    if is_torch_tensor(x):
        import torch
        refuse_graph_capture(torch)
        with cuda.gpus[x.device.index]:
            stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
            empty = TorchEmpty(x.device)

            def dev(t):
                if t is None:
                    return None
                t = t.detach()
                return cuda.as_cuda_array((t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t).contiguous(),
                                          sync=False)
            first = (dev(grad), dev(x), dev(w)) if grad is not None else (dev(x), dev(w), dev(b))
            res = getattr(CL, name)(*first, rng.p, seed, offset, rng.scale, *extra, stream=stream,
                                    empty=empty)
            return tuple(map(empty.tensor, res)) if isinstance(res, tuple) else empty.tensor(res)

    def dev2(a):
        if a is None:
            return None
        a = as_device_array(a)
        if not a.is_c_contiguous():
            raise ValueError("CUDA device arrays given to the dense layers must be C-contiguous (copy first)")
        shape = tuple(a.shape)  # the simulator's shapes take no negative index
        return a.reshape(math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else a
    first = (dev2(grad), dev2(x), dev2(w)) if grad is not None else (dev2(x), dev2(w), dev2(b))
    res = getattr(CL, name)(*first, rng.p, seed, offset, rng.scale, *extra)
    if isinstance(res, tuple):
        return res
    return res.reshape(tuple(x.shape[:-1]) + (tuple(w.shape)[0],))
