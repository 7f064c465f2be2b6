"""dropout_matmul: dropout(a) @ b as one masked op (attention: dropout(softmax(QKᵀ)) @ V).

    y  = (a ⊙ M s) @ b,                     M = dropout_mask(a.shape, p, seed, offset)
    ga = M s ⊙ (g @ bᵀ)   (summed over the batch when a was broadcast)
    gb = (a ⊙ M s)ᵀ @ g   (summed over the batch when b was broadcast)

The mask kernel writes the masked a into a temporary, the vendor GEMM (torch's or numpy's)
multiplies; backward regenerates the mask from (seed, offset) and saves a and b only. Batch dims
broadcast as in torch.matmul (a missing dim or a dim of size 1 stretches); the mask has a's own
shape, so a stretched a keeps one mask for every batch element it meets, as dropout(a) @ b would.
"""
import math

from . import _autocast, _core
from .kernels.config import CPU_PARALLEL_MIN
from ._checks import CUDA_ARRAY, RankError, array_kind, check_mode, check_p, train_scale

__all__ = ["dropout_matmul", "DROPOUT_MATMUL"]


def _shapes(a_shape, b_shape):
    """(batch shape, M, K, N); the batch is the broadcast of a's and b's batch dims."""
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise RankError(f"dropout_matmul needs a (..., M, K) and b (..., K, N) with at least 2 dims, "
                        f"got shapes {tuple(a_shape)} and {tuple(b_shape)}")
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"dropout_matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} cannot be "
                         f"multiplied ({a_shape[-1]} != {b_shape[-2]})")
    return _broadcast_batch(tuple(a_shape), tuple(b_shape)), a_shape[-2], a_shape[-1], b_shape[-1]


def _broadcast_batch(a_shape, b_shape):
    """torch.matmul's batch of (..., M, K) @ (..., K, N): dims aligned from the right, each pair
    equal or one of them 1 (or missing)."""
    ba, bb = a_shape[:-2], b_shape[:-2]
    n = max(len(ba), len(bb))
    ba, bb = (1,) * (n - len(ba)) + ba, (1,) * (n - len(bb)) + bb
    batch = []
    for i, j in zip(ba, bb):
        if i != j and i != 1 and j != 1:
            raise ValueError(f"dropout_matmul: the batch dims of shapes {a_shape} and {b_shape} cannot "
                             f"be broadcast together ({i} against {j})")
        batch.append(j if i == 1 else i)
    return tuple(batch)


def _check(operands, params):
    a, b = operands
    if array_kind(a) == CUDA_ARRAY:
        raise TypeError("dropout_matmul takes numpy arrays or torch tensors (CPU or CUDA); wrap CUDA "
                        "device arrays with torch.as_tensor")
    _shapes(tuple(a.shape), tuple(b.shape))
    return params


def _forward(B, operands, rng, params, out=None):
    a, b = operands
    return B.matmul(B.mask(a, rng, parallel_min=CPU_PARALLEL_MIN), b)


def _backward(B, grad, operands, rng, params, needs):
    a, b = operands
    na, nb = needs
    ga = gb = None
    if na and len(a.shape) == 2 < len(b.shape):
        # a broadcast over b's batch: one GEMM over the batch's columns, (M, batch * N) @
        # (batch * N, K), not a GEMM per batch element summed after (a tensor the size of the
        # whole batch's (..., M, K): 64x a's size, 10x torch's time at a batch of 256; a review)
        ga = _autocast.in_dtype_of(B.matmul(B.mT(_core.rows(B.mT(grad))), _core.rows(B.mT(b))), a)
    elif na:
        ga = _autocast.in_dtype_of(B.sum_to(B.matmul(grad, B.mT(b)), a.shape), a)
    if na and nb:
        ga, am = B.mask_pair(ga, a, rng)  # one Philox pass for both
    elif na:
        ga = B.mask(ga, rng, parallel_min=CPU_PARALLEL_MIN)
    elif nb:
        am = B.mask(a, rng, parallel_min=CPU_PARALLEL_MIN)
    if nb and len(b.shape) == 2 < len(a.shape):
        # b broadcast over a's batch: one GEMM over all the batch's rows, not a GEMM per batch
        # element summed after (those partial products were rounded to a half type on CUDA first)
        gb = B.matmul(B.mT(_core.rows(am)), _core.rows(grad))
    elif nb:
        gb = B.sum_to(B.matmul(B.mT(am), grad), b.shape)
    return ga, gb


def _plain(B, operands, params, factor, inplace=False):
    return B.scale(B.matmul(*operands), factor)


def _fake(operands, params):
    a, b = operands
    batch, M, _, N = _shapes(tuple(a.shape), tuple(b.shape))
    return a.new_empty(batch + (M, N))


def _out_numel(operands):
    # the output, or b where it is an expanded or broadcast operand that the GEMM copies dense
    batch, M, _, N = _shapes(tuple(operands[0].shape), tuple(operands[1].shape))
    return max(math.prod(batch) * M * N, math.prod(operands[1].shape))


DROPOUT_MATMUL = _core.MaskedOp("dropout_matmul", ("a", "b"), forward=_forward, backward=_backward,
                                plain=_plain, fake=_fake, check=_check, saves=(0, 1), upcast_half=True,
                                out_numel=_out_numel, flops=_core.contracting_last_dim_flops)


def dropout_matmul(a, b, p=0.5, training=True, *, seed=None, offset=0, mode="inverted"):
    """dropout(a) @ b in one call, forward and backward; the mask is regenerated, never stored.

    Args:
        a: (..., M, K) float data (e.g. attention probabilities softmax(QK^T / sqrt(d))).
        b: (..., K, N) of a's dtype (e.g. V). Batch dims broadcast as in torch.matmul.
        p: drop probability of a's elements.
        training: apply the mask (True) or the eval rule of `mode` (False).
        seed, offset: the mask is `dropout_mask(a.shape, p, seed, offset)`; seed=None draws one.
        mode: "inverted" or "classic".
    Returns:
        (batch, M, N) with batch the broadcast of a's and b's batch dims, same kind as a (numpy
        array or torch tensor; differentiable in torch).
    Example:
        >>> out = fastdrop.dropout_matmul(torch.softmax(q @ k.mT, -1), v, 0.1)
    """
    p = check_p(p)
    check_mode(mode)
    return _core.call(DROPOUT_MATMUL, (a, b), p=p, training=training, seed=seed, offset=offset,
                      scale=train_scale(p, mode), eval_factor=1.0 - p if mode == "classic" else 1.0)
