"""Every CUDA launch fastdrop makes: the dropout kernels (kernels/dropout_cuda.py) and the fused
dense-layer kernels (kernels/linear_cuda.py), on CUDA device arrays and torch CUDA tensors.

Imported by the op core on the first CUDA input only, so `import fastdrop` never loads
numba.cuda. Without a GPU (and without NUMBA_ENABLE_CUDASIM=1) every entry point raises a
RuntimeError before any work: a CUDA input never silently falls back to the CPU; inside a CUDA
graph capture the seed can live in device memory (`seeds` below).

Dropout. The kernels work on flat C-contiguous memory; on a torch tensor with a dense permuted
layout, spatial dropout and DropPath (channels_last, timm's (N, H, W, C) views: `group_layout`)
and float16/32/64 elementwise dropout (a batched transpose such as channels_last or a transposed
matrix: `transpose_layout`) index its memory directly. Anything else, and any non-contiguous
device array, is first
copied into a contiguous one (one extra device copy; the mask still follows the logical C-order
index, so the result is the same as for a contiguous input); with inplace=True the result is
then copied back into x. float16 data, and bfloat16 torch tensors (as int16 views of their bits),
are computed in float32 and rounded once on the store, exactly as the CPU path does.

Dense layers: 2-D C-contiguous device arrays of one dtype (float32 or float64), x2d (N, in),
w (out, in), b (out,) or None, g (N, out); masks (s = multiplier of kept elements):
    dropout_linear         M = dropout_mask((N, in), p, seed, offset) on x
    batch DropConnect      M = dropout_mask((out, in), p, seed, offset) on W
    per-sample DropConnect M = dropout_mask((N, out, in), p, seed, offset), never materialized
and the products, each one fused launch that regenerates the mask inside (the public ops use
these fused launchers for per-sample DropConnect only: dropout_linear and one-mask DropConnect run
the mask kernel, then torch's cuBLAS GEMM on torch tensors or `masked_gemm` with the mask off on
device arrays; the fused ones stay for the tests' references):
    dropout_linear   y = (x⊙M s) Wᵀ + b     gx = M s ⊙ (g W)     gW = gᵀ (x⊙M s)
    DropConnect      y = x (W⊙M s)ᵀ + b     gx = g (W⊙M s)       gW = M s ⊙ (gᵀ x)
    per-sample       y[n] = (W⊙M[n] s) x[n] + b, gx[n] = (W⊙M[n] s)ᵀ g[n], gW = Σ_n M[n] s ⊙ g[n] x[n]ᵀ
and gb = g.sum(0) always. Every dense launcher takes an optional `stream` (default: numba's
default stream) and `empty` (an allocator `empty(shape, dtype) -> device array`, default numba's),
so the torch route launches on torch's current stream into memory from torch's caching allocator
(`TorchEmpty`): the same launch code as for device arrays, which the CUDA simulator tests run.

Seeds. Every Philox kernel takes `seeds, key_lo, key_hi, ...`: with `seeds` empty the key is the
host seed (kernel_rng_args), with one element it is the 64-bit seed in device memory
(dropout_cuda.philox_key). The torch route passes a seed tensor there during CUDA-graph capture
(fastdrop/_core.py draws it on the stream with torch's graph-safe CUDA generator), so each replay
reads a new seed and the backward the forward's; every launcher below takes such an array as
`seeds` (default: the empty one, the host seed).
"""
import math

import numba
import numpy as np
from numba import cuda

from .kernels import direct_launch as D
from .kernels import dropout_cuda as K
from .kernels import linear_cuda as L
from .kernels import sample_cuda as S
# max_norm_'s kernel, loaded (and marked for Dynamo: _core.cuda_module) with the others
from .kernels.variants_cuda import max_norm_device  # noqa: F401
from .kernels.config import (CUDA_FILL_THREADS, CUDA_MAX_BLOCKS, CUDA_MAX_SPLITS, SPLIT_MIN_REDUCTION, env_choice,
                             launch_shape)
from .kernels.layout import channels_innermost, dense_after, groups_outermost
from .kernels.philox import LANES, MAX_U64, kernel_rng_args

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
# numba-cuda 0.30 registers an overload of np.row_stack while it loads its array lowering (at the
# first kernel compile), and numpy 2.5 removed row_stack: every compile then fails with an
# AttributeError deep inside numba (seen on the first H200 run, numpy 2.5 + numba-cuda 0.30.4).
# pyproject.toml pins numpy < 2.5; an environment that has it anyway gets this message instead.
NUMPY_TOO_NEW = not SIMULATOR and not hasattr(np, "row_stack")


# ---- preconditions of every launch --------------------------------------------------------------

def require_gpu():
    """CUDA data needs a GPU (or Numba's simulator): a clear error, never a silent CPU fallback."""
    if not cuda.is_available():
        raise RuntimeError("fastdrop got CUDA data (a torch CUDA tensor or an object with "
                           "__cuda_array_interface__); running its kernels needs a CUDA GPU (or "
                           "NUMBA_ENABLE_CUDASIM=1 for Numba's CUDA simulator), and none is "
                           "available to numba.cuda in this process")
    if NUMPY_TOO_NEW:
        raise RuntimeError(f"numba-cuda {_version('numba-cuda')} cannot compile CUDA kernels with numpy "
                           f"{np.__version__} (it needs np.row_stack, removed in numpy 2.5): install "
                           f"numpy<2.5, as fastdrop's requirements say")


def _version(dist):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "(version unknown)"


def as_device_array(x):
    """x as a numba device array sharing its memory (no copy)."""
    if SIMULATOR:
        return x  # the simulator's arrays expose no __cuda_array_interface__; use them as they are
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    if isinstance(x, DeviceNDArray):
        return x
    return cuda.as_cuda_array(x)  # CuPy & co: a view; syncs on the stream x's owner exports


def unsqueeze0(a):
    """a view of device array a with a leading dim of 1, over the same memory and strides (numba's
    reshape gives a non-C-contiguous array, e.g. a transpose, C strides over its memory instead)."""
    shape = (1,) + tuple(a.shape)
    if SIMULATOR or a.is_c_contiguous():  # (the simulator's reshape is numpy's)
        return a.reshape(shape)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(shape, (0,) + tuple(a.strides), a.dtype, stream=a.stream, gpu_data=a.gpu_data)


_NO_SEEDS = {}  # context handle -> an empty int64 device array: "the seed is the host's"


def no_seeds():
    """The empty `seeds` array of the current context (numba's dispatch route)."""
    key = 0 if SIMULATOR else int(cuda.current_context().handle)
    a = _NO_SEEDS.get(key)
    if a is None:
        a = _NO_SEEDS[key] = cuda.device_array(0, dtype=np.int64)
    return a


def rng_args(seed, offset, p, seeds=None):
    """(seeds, key_lo, key_hi, off_lo, off_hi, threshold) for a Philox kernel: the host seed
    `seed` (seeds None or empty), or the seed in the one-element int64 device array `seeds`
    (then `seed`, possibly the tensor holding it, is not read)."""
    if seeds is None:
        seeds = no_seeds()
    return (seeds, *kernel_rng_args(0 if seeds.size else seed, offset, p))


# ---- elementwise and grouped dropout (kernels/dropout_cuda.py) ------------------------------------

def launch(kernel, blocks, threads, stream, *args):
    """kernel[blocks, threads, stream](*args), or, for a D.TorchStream (the torch route), the same
    launch without numba's per-call dispatch (kernels/direct_launch.py)."""
    if type(stream) is D.TorchStream:
        stream.launch(kernel, blocks, threads, args)
    else:
        kernel[blocks, threads, stream](*args)


def _compute_scalar(dtype, value):
    """A scalar of the compute type: x's dtype, float32 for float16 (rounded once on the store)."""
    return np.float32(value) if dtype == np.float16 else dtype.type(value)


def _flat(a):
    return a.reshape(a.size)


def _kernel_scale(dtype, value, bf16):
    return np.float32(value) if bf16 else _compute_scalar(dtype, value)


def dropout_flat_into(x, out, p, seed, offset, scale, stream=0, bf16=False, seeds=None):
    """out = where(dropout_mask(x.shape, p, seed, offset), x * scale, 0); x, out contiguous.
    bf16: x and out are int16 arrays holding bfloat16 bits (computed in float32, rounded once)."""
    blocks, threads = launch_shape(-(-x.size // K.TILE) * K.CUDA_THREADS)  # one block per tile
    kernel = K.dropout_flat_bf16 if bf16 else K.dropout_flat
    launch(kernel, blocks, threads, stream, _flat(x), _flat(out), *rng_args(seed, offset, p, seeds),
           _kernel_scale(x.dtype, scale, bf16))
    return out


def dropout_transposed_into(x, out, layout, p, seed, offset, scale, stream=0, seeds=None):
    """Elementwise dropout over the flat memory of x and out (one dense layout) that
    `transpose_layout` describes as (A, R, L): the mask of the logical C-order index, no copies."""
    A, R, L = layout
    tiles = A * -(-R // K.T_ROWS) * -(-L // K.T_COLS)
    blocks = max(1, min(CUDA_MAX_BLOCKS, tiles))
    launch(K.dropout_transposed, blocks, K.CUDA_THREADS, stream, _flat(x), _flat(out), A, R, L,
           *rng_args(seed, offset, p, seeds), _compute_scalar(x.dtype, scale))
    return out


def transpose_layout(shape, strides):
    """(A, R, L) when an array of `shape` and element `strides` is dense and laid out as a batched
    transpose: logical dims (outer..., k, inner...) stored as (outer..., inner..., k), dim k with
    stride 1 and the others in their logical order (channels_last (N, C, H, W): A = N, R = C,
    L = H*W; a transposed matrix: A = 1). None otherwise, C-contiguous data included. Size-1 dims
    are skipped: they change no index."""
    dims = [(size, stride) for size, stride in zip(shape, strides) if size != 1]
    units = [k for k, (_, stride) in enumerate(dims) if stride == 1]
    if len(units) != 1 or units[0] == len(dims) - 1:
        return None
    k = units[0]
    others = dims[k + 1:][::-1] + dims[:k][::-1]  # innermost first, as stored around dim k
    if dense_after(dims[k][0], [(stride, size) for size, stride in others]) is None:
        return None
    return math.prod(s for s, _ in dims[:k]), dims[k][0], math.prod(s for s, _ in dims[k + 1:])


def keep_mask_into(keep, p, seed, offset, stream=0, seeds=None):
    """keep (a contiguous bool device array) = dropout_mask(keep.shape, p, seed, offset)."""
    blocks, threads = launch_shape(-(-keep.size // LANES))
    launch(K.keep_mask, blocks, threads, stream, _flat(keep), *rng_args(seed, offset, p, seeds))
    return keep


def grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, stream=0, keep=None, bf16=False,
                         layout=None, seeds=None):
    """Mask = dropout_mask(x.shape[:group_ndim], p, seed, offset) broadcast over the remaining dims
    (same as fastdrop._cpu.grouped_dropout_into); x, out contiguous; `keep`: an optional
    bool scratch buffer of prod(x.shape[:group_ndim]) elements; bf16 as in dropout_flat_into.
    layout: (row, inner) of `group_layout` when x and out are the flat memory of a dense permuted
    layout (then `keep` must be given; its size is the number of groups)."""
    if keep is None:
        keep = cuda.device_array(math.prod(x.shape[:group_ndim]), dtype=np.bool_, stream=stream)
    if layout is None:
        layout = (x.size // keep.size, 1)
    keep_mask_into(keep, p, seed, offset, stream, seeds)
    blocks, threads = launch_shape(x.size)
    kernel = K.apply_group_mask_bf16 if bf16 else K.apply_group_mask
    launch(kernel, blocks, threads, stream, _flat(x), _flat(out), keep, *layout,
           _kernel_scale(x.dtype, scale, bf16))
    return out


def group_layout(shape, strides, group_ndim):
    """(row, inner) for kernels/dropout_cuda.apply_group_mask when an array of `shape` and element
    `strides` is dense and its groups (the index over its first group_ndim dims) can be read off
    its memory position j as (j // row) * inner + j % inner; None otherwise. Two layouts qualify:
      - the group dims outermost, in order (each group one run of memory): C-contiguous data, and
        DropPath on channels_last or on timm's permuted (N, H, W, C) views: (n // groups, 1);
      - the leading group dims outermost in order, the last group dim innermost with stride 1 and
        the other dims dense in between (channels_last spatial dropout): (n // lead, C).
    Size-1 dims are skipped: they change no index."""
    shape, strides = tuple(shape), tuple(strides)
    n = math.prod(shape)
    if groups_outermost(shape, strides, group_ndim):
        return n // math.prod(shape[:group_ndim]), 1
    if channels_innermost(shape, strides, group_ndim):
        c = group_ndim - 1
        return n // math.prod(shape[:c]), shape[c]
    return None


def _run(x, out, p, seed, offset, scale, group_ndim, stream=0):
    if group_ndim:
        return grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, stream)
    return dropout_flat_into(x, out, p, seed, offset, scale, stream)


def _contiguous(x):
    if x.is_c_contiguous():
        return x
    tmp = cuda.device_array(x.shape, x.dtype)
    tmp[:] = x  # numba's strided device-to-device assignment kernel (it takes no Ellipsis)
    return tmp


def dropout_array(x, p, seed, offset, scale, group_ndim, inplace):
    """Dropout on a CUDA device array (numba, CuPy, anything with __cuda_array_interface__).

    Returns a numba device array of x's shape and dtype, or x itself (written) when inplace.
    Arguments are already validated by fastdrop.functional.
    """
    require_gpu()
    xd = as_device_array(x)
    if xd.size == 0:
        return x if inplace else cuda.device_array(xd.shape, xd.dtype)
    src = _contiguous(xd)
    if inplace and src is xd:
        _run(xd, xd, p, seed, offset, scale, group_ndim)
        return x
    out = cuda.device_array(xd.shape, xd.dtype)
    _run(src, out, p, seed, offset, scale, group_ndim)
    if inplace:
        xd[:] = out
        return x
    return out


def scale_array(x, factor, inplace):
    """x * factor on a CUDA device array (classic dropout at eval), in x's dtype."""
    require_gpu()
    xd = as_device_array(x)
    if xd.size == 0:
        return x if inplace else cuda.device_array(xd.shape, xd.dtype)
    # float16: float32(x) * float32(factor), rounded once on the store (as on the CPU)
    src = _contiguous(xd)
    out = src if inplace and src is xd else cuda.device_array(xd.shape, xd.dtype)
    blocks, threads = launch_shape(xd.size)
    K.scale[blocks, threads](_flat(src), _flat(out), _compute_scalar(xd.dtype, factor))
    if inplace and out is not xd:
        xd[:] = out
    return x if inplace else out


def astype(x, dtype):
    """A new contiguous device array of x's values in `dtype` (float16 <-> float32 around the
    dense layers' kernels, which compute in float32 or float64): the eval-scale kernel times 1."""
    require_gpu()
    xd = as_device_array(x)
    out = cuda.device_array(tuple(xd.shape), dtype)
    if xd.size:
        blocks, threads = launch_shape(xd.size)
        K.scale[blocks, threads](_flat(_contiguous(xd)), _flat(out), np.float32(1.0))
    return out


def apply_tensor(x, p, seed, offset, scale, group_ndim, out=None):
    """The torch CUDA path of fastdrop._core (no autograd): launches on torch's current stream,
    writes into `out` (default: empty_like(x), torch's layout rules). seed: an int, or a 0-d int64
    tensor on x's device holding it (CUDA-graph capture: read by the kernels, never by the host)."""
    import torch
    require_gpu()
    # numba has no bfloat16 arrays: bfloat16 goes into the kernels as its bits (int16 views), as
    # on the CPU; float16 goes as it is. Both are computed in float32 and rounded once.
    bf16 = x.dtype == torch.bfloat16
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    layout = transposed = None
    if not x.is_contiguous() and out.stride() == x.stride():
        if group_ndim:
            layout = group_layout(x.shape, x.stride(), group_ndim)
        elif not bf16:
            transposed = transpose_layout(x.shape, x.stride())
    if layout is not None or transposed is not None:
        # A dense permuted layout the kernels index directly (channels_last and the like; out has
        # x's strides): the flat memory of both, no copies.
        n = x.numel()
        src, dst, direct = x.detach().as_strided((n,), (1,)), out.detach().as_strided((n,), (1,)), True
    else:
        src = x.detach() if x.is_contiguous() else x.detach().contiguous()
        direct = out.is_contiguous()
        dst = out.detach() if direct else torch.empty_like(src)
    result = dst  # (bfloat16: its own dtype, for the copy back below)
    if bf16:
        src, dst = src.view(torch.int16), dst.view(torch.int16)
    # The group mask buffer comes from torch's allocator, stream-ordered like the rest.
    keep = torch.empty(math.prod(x.shape[:group_ndim]), dtype=torch.bool, device=x.device) \
        if group_ndim else None
    seeds = _seed_tensor(torch, seed, x.device)
    args = (p, seed, offset, scale, group_ndim, bf16, layout, transposed)
    # Our launches go on torch's current stream: ordered after the ops that produced x and before
    # those that read the result, with no synchronization (hence sync=False below).
    if not _launched_directly(torch, x.device, src, dst, keep, seeds, args):
        with cuda.gpus[x.device.index]:
            stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
            _launch_tensor(lambda t: cuda.as_cuda_array(t, sync=False), src, dst, keep, seeds, stream, *args)
    if not direct:
        # e.g. channels_last: the result keeps torch's layout for x. From the bfloat16 tensor, not
        # its int16 view, whose copy_ converted the bits' integer values into bfloat16 numbers.
        out.copy_(result)
    return out


_EMPTY_SEEDS = {}  # device index -> an empty int64 tensor: the kernels' "the seed is the host's"


def _seed_tensor(torch, seed, device):
    """The kernels' `seeds` for the torch route: seed (a 0-d int64 tensor on `device`) as one
    element, or, for an int seed, an empty tensor."""
    if not isinstance(seed, int):
        if seed.device != device or seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"a seed tensor for a launch on {device} must be one int64 element on "
                             f"that device, got {seed.dtype} of shape {tuple(seed.shape)} on {seed.device}")
        return seed.reshape(1)
    empty = _EMPTY_SEEDS.get(device.index)
    if empty is None:
        empty = _EMPTY_SEEDS[device.index] = torch.empty(0, dtype=torch.int64, device=device)
    return empty


def _launched_directly(torch, device, src, dst, keep, seeds, args):
    """apply_tensor's launches through kernels/direct_launch.py; False where that route does
    not take them (off, another context current on this thread, a first launch whose parameter
    check failed: raised before that launch, so a rerun writes what a first run would have)."""
    stream = D.torch_stream(torch, device)
    if stream is None:
        return False
    try:
        _launch_tensor(D.Flat, src, dst, keep, seeds, stream, *args)
    except D.DirectLaunchUnsupported:
        return False
    return True


def _launch_tensor(view, src, dst, keep, seeds, stream, p, seed, offset, scale, group_ndim, bf16, layout,
                   transposed):
    """apply_tensor's launches on `view`s of its tensors (D.Flat, or numba device arrays)."""
    xd, od, sd = view(src), view(dst), view(seeds)
    if group_ndim:
        grouped_dropout_into(xd, od, p, seed, offset, scale, group_ndim, stream, keep=view(keep),
                             bf16=bf16, layout=layout, seeds=sd)
    elif transposed is not None:
        dropout_transposed_into(xd, od, transposed, p, seed, offset, scale, stream, seeds=sd)
    else:
        dropout_flat_into(xd, od, p, seed, offset, scale, stream, bf16=bf16, seeds=sd)


# ---- dense layers (kernels/linear_cuda.py; the products are in the module docstring) -----------

THREADS_2D = (L.TILE, L.TILE)
MAX_GRID_Y = 65535  # the kernels loop over the rest
# Per-example DropConnect's kernels: "registers" (kernels/sample_cuda.py: mask bits in registers,
# split-K for small products) or "tiled" (linear_cuda.sample_gemm, the kernel the 2026-12-04 H200 run
# measured). Read once, at import.
# (another value warns and keeps "tiled": it failed every CUDA op, per-sample DropConnect or not)
SAMPLE_KERNEL = env_choice("FASTDROP_SAMPLE_KERNEL", {"tiled": "tiled", "registers": "registers"}, "tiled")


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


def _gemm(A, B, shape, bias, a_trans, b_trans, mask_on, p, seed, offset, scale, stream, empty, seeds=None):
    """C (shape) = opA @ opB (+ bias) with one 2-D mask (linear_cuda.masked_gemm)."""
    C = empty(shape, A.dtype)
    if C.size == 0:
        return C
    bb, has_bias = _bias_arg(bias, A.dtype, empty)
    L.masked_gemm[_tiles(*shape), THREADS_2D, stream](
        A, B, C, bb, has_bias, a_trans, b_trans, mask_on, *rng_args(seed, offset, p, seeds),
        A.dtype.type(scale))
    return C


def _sample_gemm(A, B, shape, bias, a_trans, b_trans, product, dims, p, seed, offset, scale, stream, empty,
                 seeds=None):
    """C (shape) for per-example DropConnect; dims = (N, out, in). The kernels of SAMPLE_KERNEL:
    "registers" (kernels/sample_cuda.py) or "tiled" (linear_cuda.sample_gemm)."""
    C = empty(shape, A.dtype)
    if C.size == 0:
        return C
    bb, has_bias = _bias_arg(bias, A.dtype, empty)
    rng = (*rng_args(seed, offset, p, seeds), A.dtype.type(scale))
    if SAMPLE_KERNEL == "tiled":
        L.sample_gemm[_tiles(*shape), THREADS_2D, stream](
            A, B, C, bb, has_bias, a_trans, b_trans, product, *dims, *rng)
        return C
    M, Nc = shape
    if product == L.SAMPLE_FWD:  # x = A (N, in), W = B (out, in): a thread per (o, ROWS_DOT n)
        kernel, rows_per, cols, reduction = S.sample_dot, S.ROWS_DOT, Nc, A.shape[1]
        units = -(-reduction // S.CHUNK)
    else:  # g = A (N, out); Q = W (gx) or x (gW): a thread per (8 i, ROWS_AXPY rows)
        rows_are_n = product == L.SAMPLE_GRAD_X
        kernel, rows_per, cols = S.sample_axpy, S.ROWS_AXPY, -(-Nc // S.CHUNK)
        reduction = units = B.shape[0]
    groups = -(-M // rows_per)
    bx, by = S.block_shape(cols)
    blocks = (-(-cols // bx), min(-(-groups // by), MAX_GRID_Y))
    threads = cols * groups  # the threads with work: the split-K decision counts these
    splits = max(1, min(-(-CUDA_FILL_THREADS // threads), CUDA_MAX_SPLITS,
                        reduction // SPLIT_MIN_REDUCTION))
    splits = -(-units // -(-units // splits)) if units else 1  # no empty split (none: zeros, + bias)
    dst = C.reshape(1, M, Nc) if splits == 1 else empty((splits, M, Nc), A.dtype)
    tail = (bb, has_bias) if product == L.SAMPLE_FWD else (a_trans, rows_are_n, dims[1])
    kernel[(*blocks, splits), (bx, by), stream](A, B, dst, *tail, *rng)
    if splits > 1:
        bl, th = launch_shape(M * Nc)
        S.sum_splits[bl, th, stream](dst, C, bb, has_bias, rng[-1])
    return C


def _bias_grad(g, stream, empty):
    gb = empty((g.shape[1],), g.dtype)
    if gb.size:
        blocks, threads = launch_shape(g.shape[1])
        L.column_sums[blocks, threads, stream](g, gb)
    return gb


def dropout_linear_forward(x2d, w, b, p, seed, offset, scale, stream=0, empty=None, seeds=None):
    """y (N, out) = (x2d ⊙ M * scale) @ w.T + b,  M = dropout_mask(x2d.shape, p, seed, offset)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    return _gemm(x2d, w, (x2d.shape[0], w.shape[0]), b, False, True, L.MASK_A,
                 p, seed, offset, scale, stream, empty, seeds)


def dropout_linear_backward(g, x2d, w, p, seed, offset, scale, stream=0, empty=None, seeds=None):
    """(grad_x, grad_w, grad_b) of dropout_linear_forward for the output gradient g (N, out)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    gx = _gemm(g, w, x2d.shape, None, False, False, L.MASK_C, p, seed, offset, scale, stream, empty, seeds)
    gw = _gemm(g, x2d, w.shape, None, True, False, L.MASK_B, p, seed, offset, scale, stream, empty, seeds)
    return gx, gw, _bias_grad(g, stream, empty)


def dropconnect_forward(x2d, w, b, p, seed, offset, scale, per_sample, stream=0, empty=None, seeds=None):
    """y (N, out) = x2d @ (w ⊙ M * scale).T + b; M = dropout_mask(w.shape, ...) or, per_sample,
    row n uses dropout_mask((N, out, in), ...)[n]."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    shape = (x2d.shape[0], w.shape[0])
    if per_sample:
        return _sample_gemm(x2d, w, shape, b, False, True, L.SAMPLE_FWD, (x2d.shape[0], *w.shape),
                            p, seed, offset, scale, stream, empty, seeds)
    return _gemm(x2d, w, shape, b, False, True, L.MASK_B, p, seed, offset, scale, stream, empty, seeds)


def dropconnect_backward(g, x2d, w, p, seed, offset, scale, per_sample, stream=0, empty=None,
                         bias_grad=True, seeds=None):
    """(grad_x, grad_w, grad_b) of dropconnect_forward for the output gradient g (N, out); grad_b
    is None with bias_grad=False (the per-sample op's formula takes it from g.sum(0) itself)."""
    require_gpu()
    empty = empty or _numba_empty(stream)
    if per_sample:
        dims = (x2d.shape[0], *w.shape)
        gx = _sample_gemm(g, w, x2d.shape, None, False, False, L.SAMPLE_GRAD_X, dims,
                          p, seed, offset, scale, stream, empty, seeds)
        gw = _sample_gemm(g, x2d, w.shape, None, True, False, L.SAMPLE_GRAD_W, dims,
                          p, seed, offset, scale, stream, empty, seeds)
    else:
        gx = _gemm(g, w, x2d.shape, None, False, False, L.MASK_B, p, seed, offset, scale, stream, empty, seeds)
        gw = _gemm(g, x2d, w.shape, None, True, False, L.MASK_C, p, seed, offset, scale, stream, empty, seeds)
    return gx, gw, (_bias_grad(g, stream, empty) if bias_grad else None)


def dense_call(name, x, w, b, rng, per_sample=None, grad=None, **options):
    """The dense-layer launcher `name` of this module on CUDA device arrays or torch CUDA tensors
    (any leading dims: run on 2-D C-contiguous views). Forward: (x, w, b); backward (grad given):
    (grad, x, w), returning (gx, gw, gb). Results are of x's kind; options go to the launcher."""
    require_gpu()
    launcher = globals()[name]
    in_memory = getattr(rng.seed, "is_cuda", False)  # (an int has no is_cuda)
    seed, offset = 0 if in_memory else int(rng.seed) & MAX_U64, rng.offset & MAX_U64
    extra = () if per_sample is None else (per_sample,)
    if getattr(x, "is_cuda", False):  # a torch CUDA tensor (device arrays have no is_cuda)
        import torch
        with cuda.gpus[x.device.index]:
            stream = cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
            empty = TorchEmpty(x.device)
            if in_memory:  # the seed tensor of a CUDA-graph capture (apply_tensor's docstring)
                options["seeds"] = cuda.as_cuda_array(_seed_tensor(torch, rng.seed, x.device), sync=False)

            def dev(t, rows=False):  # rows: x or grad, 2-D even when 1-D (one row)
                if t is None:
                    return None
                # torch's __cuda_array_interface__ hands out the memory of a negated view (neg
                # bit) as it is: resolved first, as the CPU route does. Explicit sizes: reshape's
                # -1 cannot be inferred for 0 features (in or out), which the core lets through.
                t = t.detach().resolve_neg()
                if rows or t.dim() > 1:
                    t = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])
                return cuda.as_cuda_array(t.contiguous(), sync=False)
            first = (dev(grad, True), dev(x, True), dev(w)) if grad is not None else \
                (dev(x, True), dev(w), dev(b))
            res = launcher(*first, rng.p, seed, offset, rng.scale, *extra, stream=stream, empty=empty,
                           **options)
            if isinstance(res, tuple):
                return tuple(None if r is None else empty.tensor(r) for r in res)
            return empty.tensor(res)

    def dev2(a, rows=False):
        if a is None:
            return None
        a = _contiguous(as_device_array(a))  # any strides, as the docstrings say: one device copy
        shape = tuple(a.shape)  # the simulator's shapes take no negative index
        return a.reshape(math.prod(shape[:-1]), shape[-1]) if rows or len(shape) > 1 else a
    first = (dev2(grad, True), dev2(x, True), dev2(w)) if grad is not None else \
        (dev2(x, True), dev2(w), dev2(b))
    res = launcher(*first, rng.p, seed, offset, rng.scale, *extra, **options)
    if isinstance(res, tuple):
        return res
    return res.reshape(tuple(x.shape[:-1]) + (tuple(w.shape)[0],))
