"""The dropout family from the literature, on fastdrop's kernels and mask contract.

- drop_path (stochastic depth; Huang et al. 2016, timm's `drop_path`, torchvision's
  `stochastic_depth`): a whole sample (all non-batch dims) is kept or dropped, mask
  `dropout_mask(x.shape[:1], p, seed, offset)`; mode="batch" drops the whole batch with one draw,
  `dropout_mask((1,), p, seed, offset)`.
- max_norm_ (Srivastava et al. 2014, sec. 5.1; Keras `MaxNorm`): every unit's incoming weight
  vector is projected onto the L2 ball of radius c, in place. For torch's (out, in) layout the
  incoming vector of unit o is the row weight[o, :], hence dim=1 (Keras stores (in, out) and uses
  axis=0). max_norm_hook applies it after every optimizer step.
- dropout_matmul: dropout(a) @ b (attention: dropout(softmax(QK^T)) @ V); backward regenerates
  the mask from (seed, offset), nothing but a and b is saved. CPU tensors: fastdrop's mask kernel
  into a temporary, then torch's GEMM (measured faster than a tiled kernel calling BLAS per tile,
  see kernels/dropout_matmul_cpu.py); numpy: the tiled kernel; CUDA: a tiled kernel that masks a
  while loading its tiles.
- mc_predict (Gal & Ghahramani 2016): predictive mean/variance with fastdrop's dropout kept on.

Every op takes the scaling rule where it is meaningful: "inverted" (kept values scaled by 1/(1-p)
in training, identity at eval) or "classic" (unscaled in training, times (1-p) at eval).
"""
import math
import numbers

import numpy as np

from . import _seeds
from ._checks import check_float_dtype, check_mode, check_p, check_u64
from ._dispatch import CUDA_ARRAY, NUMPY, TORCH, array_kind, dtype_of
from .functional import RankError, _apply, _resolve_seed, _scaled
from .kernels import dropout_matmul_cpu, max_norm_cpu
from .mask import dropout_mask, kernel_rng_args

DROP_PATH_MODES = ("row", "batch")


# ----------------------------------------------------------------------------- drop_path
def drop_path(x, p=0.0, *, training=True, seed=None, offset=0, scale_by_keep=True, mode="row",
              scaling="inverted", inplace=False):
    """Stochastic depth: drop whole samples of a residual branch.

    Args:
        x: (N, ...) numpy array, torch tensor or CUDA array; sample n is x[n].
        p: drop probability of a sample in [0, 1].
        training: drop (True) or apply the eval rule of `scaling` (False).
        seed, offset: the mask is `dropout_mask(x.shape[:1], p, seed, offset)` ("row") or
            `dropout_mask((1,), p, seed, offset)` ("batch"); seed=None draws one.
        scale_by_keep: timm's flag: scale kept samples by 1/(1-p) (inverted scaling only).
        mode: "row" (torchvision's default: a draw per sample) or "batch" (one draw for all).
        scaling: "inverted" or "classic" (unscaled in training, times (1-p) at eval).
        inplace: write into x.
    Returns:
        the same kind of object as x.
    Example:
        >>> y = fastdrop.drop_path(torch.randn(8, 197, 768), 0.1)   # e.g. a ViT block's branch
    """
    p = check_p(p)
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode!r}")
    check_mode(scaling)
    if len(x.shape) == 0:
        raise RankError("drop_path needs input with a batch dimension, got a 0-d input")
    if not training:
        # timm and torchvision return x at eval; classic scaling multiplies by the keep probability.
        return _apply(x, p, False, seed, offset, scaling, 1, inplace)
    train_mode = "inverted" if (scaling == "inverted" and scale_by_keep) else "classic"
    if mode == "row":
        return _apply(x, p, True, seed, offset, train_mode, 1, inplace)
    # One draw for the whole batch: validate as _apply does, then scale x by 0 or the keep scale.
    offset = check_u64(offset, "offset")
    kind = array_kind(x)
    dtype = dtype_of(x, kind)
    if dtype != "bfloat16":
        check_float_dtype(dtype)
    if p == 0.0:
        return x
    seed = _resolve_seed(seed, kind)
    keep = bool(dropout_mask((1,), p, seed, offset)[0])
    factor = (1.0 / (1.0 - p) if train_mode == "inverted" else 1.0) if keep else 0.0
    return _scaled(x, kind, factor, inplace)


# ----------------------------------------------------------------------------- max-norm
def _check_max_norm_args(ndim, max_value, dim, eps):
    if isinstance(max_value, bool) or not isinstance(max_value, numbers.Real):
        raise TypeError(f"max_value must be a positive real number, got {type(max_value).__name__}")
    max_value = float(max_value)
    if not (max_value > 0.0 and math.isfinite(max_value)):
        raise ValueError(f"max_value must be a positive finite number, got {max_value}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (float(eps) >= 0.0):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    if ndim == 0:
        raise ValueError("max_norm_ needs a weight with at least 1 dimension, got a 0-d tensor")
    dims = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    if not dims:
        raise ValueError("dim must name at least one dimension")
    norm_dims = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not -ndim <= d < ndim:
            raise ValueError(f"dim {d!r} is out of range for a weight with {ndim} dimensions "
                             f"(expected an int in [{-ndim}, {ndim - 1}])")
        norm_dims.append(int(d) % ndim)
    if len(set(norm_dims)) != len(norm_dims):
        raise ValueError(f"dim has repeated dimensions: {dim!r}")
    return max_value, sorted(norm_dims), float(eps)


def _max_norm_numpy(w, max_value, dims, eps):
    """Constrain numpy array w in place: the vectors are w's slices over `dims`."""
    if w.size == 0:
        return w
    keep = [d for d in range(w.ndim) if d not in dims]
    t = w.transpose(keep + dims)
    rows = math.prod(t.shape[:len(keep)])
    cols = math.prod(t.shape[len(keep):])
    v = t.view()
    try:
        v.shape = (rows, cols)
    except AttributeError:  # not expressible as a 2-D view: constrain a copy and write it back
        tmp = np.ascontiguousarray(t).reshape(rows, cols)
        max_norm_cpu.max_norm_rows(tmp, max_value, eps)
        t[...] = tmp.reshape(t.shape)
        return w
    if v.strides[0] == v.itemsize and v.strides[1] != v.itemsize and cols > 1:
        # The reduced axis is the strided one (e.g. dim=0 of a C-contiguous (out, in) weight):
        # walk memory in order and keep per-column sums.
        max_norm_cpu.max_norm_cols(v.T, max_value, eps)
    else:
        max_norm_cpu.max_norm_rows(v, max_value, eps)
    return w


def max_norm_(weight, max_value, dim=1, eps=1e-7):
    """Max-norm constraint, in place: w <- w * c / (||w|| + eps) for every vector with ||w|| > c.

    Args:
        weight: numpy array or torch tensor (CPU, or CUDA through the CUDA kernel), float dtype.
        max_value: the radius c > 0 (Srivastava et al. use c = 3 to 4).
        dim: the dimension(s) the norm runs over. Default 1: the rows of a Linear (out, in) weight,
            i.e. each unit's incoming weights. For Conv2d's (out, in, kh, kw) use dim=(1, 2, 3).
        eps: added to the norm in the scale, as torch.renorm and Keras do.
    Returns:
        weight (modified in place).
    Example:
        >>> fastdrop.max_norm_(layer.weight, 3.0)
    """
    kind = array_kind(weight, "weight")
    max_value, dims, eps = _check_max_norm_args(len(weight.shape), max_value, dim, eps)
    dtype = dtype_of(weight, kind)
    if dtype != "bfloat16":
        check_float_dtype(dtype, "weight")
    if kind == NUMPY:
        if not weight.flags.writeable:
            raise ValueError("max_norm_ writes in place; weight is read-only")
        if weight.dtype == np.float16:
            tmp = weight.astype(np.float32)
            weight[...] = _max_norm_numpy(tmp, max_value, dims, eps)
            return weight
        return _max_norm_numpy(weight, max_value, dims, eps)
    if kind == TORCH:
        from . import _torch_variants
        return _torch_variants.max_norm_tensor(weight, max_value, dims, eps)
    from .kernels import variants_cuda
    return variants_cuda.max_norm_array(weight, max_value, dims, eps)


def _weights_of(targets):
    import torch
    if isinstance(targets, torch.nn.Module) or isinstance(targets, torch.Tensor):
        targets = [targets]
    weights = []
    for t in targets:
        if isinstance(t, torch.nn.Module):
            w = getattr(t, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"{type(t).__name__} has no weight tensor to constrain")
            weights.append(w)
        elif isinstance(t, torch.Tensor):
            weights.append(t)
        else:
            raise TypeError(f"expected modules with a .weight or tensors, got {type(t).__name__}")
    return weights


def max_norm_hook(optimizer, targets, max_value, dim=1, eps=1e-7):
    """Apply max_norm_ to every target's weight after each `optimizer.step()`.

    Args:
        optimizer: a torch.optim.Optimizer.
        targets: a module with a `.weight` (e.g. nn.Linear), a weight tensor, or a list of them.
        max_value, dim, eps: as in max_norm_ (validated now, not at the first step).
    Returns:
        the hook handle; `handle.remove()` stops the constraint.
    Example:
        >>> fastdrop.max_norm_hook(opt, [model[0], model[2]], max_value=3.0)
    """
    weights = _weights_of(targets)
    for w in weights:
        _check_max_norm_args(w.ndim, max_value, dim, eps)
    # Constrain the starting point too, so every iterate the optimizer sees lies in the ball.
    for w in weights:
        max_norm_(w, max_value, dim, eps)

    def hook(opt, args, kwargs):
        for w in weights:
            max_norm_(w, max_value, dim, eps)

    return optimizer.register_step_post_hook(hook)


# ----------------------------------------------------------------------------- dropout_matmul
def _matmul_shapes(a_shape, b_shape):
    """(batch shape, M, K, N, a_batched, b_batched); batch dims equal, or one side 2-D."""
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise RankError(f"dropout_matmul needs a (..., M, K) and b (..., K, N) with at least 2 dims, "
                        f"got shapes {tuple(a_shape)} and {tuple(b_shape)}")
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"dropout_matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} cannot be "
                         f"multiplied ({a_shape[-1]} != {b_shape[-2]})")
    ba, bb = tuple(a_shape[:-2]), tuple(b_shape[:-2])
    if ba and bb and ba != bb:
        raise ValueError(f"dropout_matmul: batch dims must be equal or absent on one side, got "
                         f"{tuple(a_shape)} and {tuple(b_shape)}")
    return ba or bb, a_shape[-2], a_shape[-1], b_shape[-1], bool(ba), bool(bb)


def matmul_into(a, b, out, p, seed, offset, scale):
    """out = dropout(a) @ b on numpy arrays (out has the broadcast (..., M, N) shape)."""
    batch, M, K, N, a_batched, b_batched = _matmul_shapes(a.shape, b.shape)
    if out.size == 0:
        return out
    if K == 0:
        out[...] = 0
        return out
    a3 = np.ascontiguousarray(a).reshape(-1, M, K)
    b3 = np.ascontiguousarray(b, dtype=a.dtype).reshape(-1, K, N)
    o3 = out.reshape(-1, M, N) if out.flags.c_contiguous else np.empty((math.prod(batch), M, N), a.dtype)
    dropout_matmul_cpu.dropout_matmul(a3, b3, o3, a_batched, b_batched, *kernel_rng_args(seed, offset, p),
                                      a.dtype.type(scale))
    if o3.base is not out and o3 is not out:
        out[...] = o3.reshape(out.shape)
    return out


def dropout_matmul(a, b, p=0.5, *, training=True, seed=None, offset=0, mode="inverted"):
    """dropout(a) @ b in one call, forward and backward; the mask is regenerated, never stored.

    Args:
        a: (..., M, K) float data (e.g. attention probabilities softmax(QK^T / sqrt(d))).
        b: (..., K, N) of a's dtype (e.g. V). Batch dims equal, or one side without batch dims.
        p: drop probability of a's elements.
        seed, offset: the mask is `dropout_mask(a.shape, p, seed, offset)`; seed=None draws one.
        mode: "inverted" or "classic".
    Returns:
        (..., M, N), same kind as a (numpy array or torch tensor; differentiable in torch).
    Example:
        >>> out = fastdrop.dropout_matmul(torch.softmax(q @ k.mT, -1), v, 0.1)
    """
    p = check_p(p)
    mode = check_mode(mode)
    offset = check_u64(offset, "offset")
    kind = array_kind(a, "a")
    if array_kind(b, "b") != kind:
        raise TypeError(f"a and b must be the same kind of array, got {type(a).__name__} and {type(b).__name__}")
    _matmul_shapes(a.shape, b.shape)
    da, db = dtype_of(a, kind), dtype_of(b, kind)
    if da != "bfloat16":
        check_float_dtype(da, "a")
    if da != db:
        raise TypeError(f"a and b must have the same dtype, got {da} and {db}")
    if seed is not None:
        seed = check_u64(seed, "seed")
    if kind == TORCH:
        from . import _torch_variants
        if not training or p == 0.0:
            scale = (1.0 - p) if (mode == "classic" and not training) else 1.0
            out = a @ b
            return out * scale if scale != 1.0 else out
        seed = _resolve_seed(seed, kind)
        return _torch_variants.DropoutMatmul.apply(a, b, p, seed, offset, _train_scale(p, mode))
    if kind == CUDA_ARRAY:
        raise TypeError("dropout_matmul takes numpy arrays or torch tensors (CPU or CUDA); wrap CUDA "
                        "device arrays with torch.as_tensor")
    batch, M, K, N, _, _ = _matmul_shapes(a.shape, b.shape)
    work_dtype = np.float32 if a.dtype == np.float16 else a.dtype
    if not training or p == 0.0:
        out = np.matmul(a, b)
        return out * out.dtype.type(1.0 - p) if (mode == "classic" and not training) else out
    seed = _resolve_seed(seed, kind)
    out = np.empty(batch + (M, N), work_dtype)
    matmul_into(a.astype(work_dtype, copy=False), b.astype(work_dtype, copy=False), out, p, seed,
                offset, _train_scale(p, mode))
    return out.astype(a.dtype, copy=False)


def _train_scale(p, mode):
    return 1.0 if (mode == "classic" or p == 1.0) else 1.0 / (1.0 - p)


# ----------------------------------------------------------------------------- MC dropout
def mc_predict(model, x, samples=32, seed=None, *, offset=0, logits=False, chunk=None, fused=True):
    """MC dropout: predictive statistics over `samples` stochastic forward passes.

    Only fastdrop's dropout modules (fastdrop.nn.Dropout*, DropPath, and DropoutLinear /
    DropConnectLinear where present) are switched to training for the call and restored after;
    BatchNorm and every other module keep their state. Statistics are accumulated in a streaming
    way (Welford/Chan merges of chunks), so memory does not grow with `samples`.

    Mask contract: in MC sample t (0 <= t < samples), the k-th fastdrop dropout call of the
    forward (k = 0, 1, ... in execution order) uses `seed` and offset `offset + t * 2**32 + k`,
    its mask over that call's input for one sample, exactly as `dropout_mask` gives it.

    Fast paths (same masks, same contract): for an nn.Sequential, the layers before the first
    fastdrop dropout module are deterministic and run once; samples are evaluated `chunk` at a
    time as one batched forward (auto: when no other module is in training mode); and a tail
    `[fastdrop.nn.Dropout, nn.Linear]` (or a DropoutLinear) is evaluated for all samples of a
    chunk with one mask-kernel call (T masked copies of the hidden activation) and one torch GEMM
    (`fused=True`, CPU float32/float64).

    Args:
        model: a torch.nn.Module mapping x (N, ...) to (N, ...) outputs.
        x: input tensor.
        samples: T, the number of MC samples.
        seed: int, or None to draw one from torch's generator.
        logits: outputs are classifier logits: also return the predictive entropy and the
            mutual information (BALD) of the softmax probabilities, and mean/var of the probabilities.
        chunk: samples per batched forward (None: auto, 1: one forward per sample).
    Returns:
        MCResult(mean, var, entropy, mutual_info); var is the unbiased sample variance
        (zeros when samples == 1); entropy and mutual_info are None unless logits=True.
    Example:
        >>> r = fastdrop.mc_predict(model, x, samples=32, logits=True)
    """
    from . import _torch_variants
    return _torch_variants.mc_predict(model, x, samples, seed, offset, logits, chunk, fused)
