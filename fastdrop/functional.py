"""Dropout, spatial dropout and DropPath: one masked op (DROPOUT) with a mask-shape rule.

inverted (default):  training  y = x * m / (1 - p)      eval  y = x
classic (Srivastava et al. 2014):  training  y = x * m   eval  y = x * (1 - p)
with m = fastdrop.dropout_mask(x.shape, p, seed, offset). The mask-shape rule `group_ndim` g:
g = 0 elementwise; g > 0 one mask element per index of x's first g dims, broadcast over the rest
(spatial dropout g = 2 or 1, DropPath g = 1); g = -1 one mask element for all of x
(DropPath's batch mode, mask `dropout_mask((1,), ...)`). Dropped elements are exactly 0.

Dropout is linear in x, so its backward is the same op, with the same (seed, offset), on the
incoming gradient: nothing but scalars is saved, and double backward is the op once more. The
grouped ops under autograd on small CPU tensors are recorded as torch's multiply by their per-group
factors instead, which saves those factors (fastdrop/_grouped.py, `native_grouped`).

Signatures follow torch's `F.dropout(x, p, training, inplace)` and timm's
`drop_path(x, drop_prob, training, scale_by_keep)` positionally; fastdrop's own arguments
(seed, offset, mode, ...) are keyword-only.
"""
import math
import sys
import warnings

from . import _core
from ._core import DROPOUT
from ._checks import RankError, check_array, check_bool, check_mode, check_p, shown, train_scale

__all__ = ["dropout", "dropout1d", "dropout2d", "dropout3d", "drop_path", "RankError", "DROPOUT"]

DROP_PATH_MODES = ("row", "batch")


def _call(x, p, training, inplace, seed, offset, mode, group_ndim, out, checked=None):
    """checked: check_array(x) when the caller already ran it (see _core.call)."""
    p = check_p(p)
    check_mode(mode)
    return _core.call(DROPOUT, (x,), (group_ndim,), p=p, training=training, seed=seed, offset=offset,
                      scale=train_scale(p, mode), eval_factor=1.0 - p if mode == "classic" else 1.0,
                      inplace=inplace, out=out, checked=checked)


def _lane(x, p, training, inplace, seed, offset, mode, out, g, ndim=None):
    """A training step's call (these arguments) through `_core.training_lane` with mask-shape
    rule g; None when the arguments or x are not the lane's, and the caller goes on to `_call`."""
    if training is True and type(p) is float and 0.0 < p < 1.0 and seed is None and \
            type(offset) is int and offset == 0 and (inplace is False or inplace is True) and out is None \
            and mode == "inverted":
        return _core.training_lane(x, p, g, ndim, inplace)
    return None


def dropout(x, p=0.5, training=True, inplace=False, *, seed=None, offset=0, mode="inverted", out=None):
    """Dropout on a numpy array, torch tensor (CPU or CUDA) or CUDA device array.

    Args:
        x: floating point data of any shape and strides.
        p: drop probability in [0, 1].
        training: apply the mask (True) or the eval-time rule of `mode` (False).
        inplace: write the result into x.
        seed: int in [0, 2^64), or None to draw one (torch's generator for tensors,
            `fastdrop.manual_seed`'s numpy generator otherwise).
        offset: int in [0, 2^64); selects an independent mask stream for the same seed.
        mode: "inverted" (scale kept elements by 1/(1-p) in training) or "classic"
            (no scaling in training, multiply by 1-p at eval).
        out: a numpy array / torch tensor of x's kind, shape, dtype and device to write the result
            into (sharing no memory with x: that is inplace=True; no autograd, as torch's out= ops).
    Returns:
        the same kind of object as x, same dtype, shape and device (out when given).
    Example:
        >>> y = fastdrop.dropout(np.ones((2, 3), np.float32), 0.5, seed=0)
    """
    y = _lane(x, p, training, inplace, seed, offset, mode, out, 0)
    if y is not None:
        return y
    return _call(x, p, training, inplace, seed, offset, mode, 0, out)


def _spatial_group_ndim(x, name, batched_rank, unbatched_rank):
    """The mask-shape rule of validated x (the rank rule needs a shape, so x is validated first)."""
    ndim = len(x.shape)
    if ndim == batched_rank:
        return 2
    if ndim == unbatched_rank:
        return 1
    raise RankError(f"{name}: Expected {unbatched_rank}D or {batched_rank}D input, "
                    f"but received a {ndim}D input of shape {tuple(x.shape)}")


def _warn(message, stacklevel=3):
    """A UserWarning at the caller's caller (the user's line), except while torch.compile traces
    the call: Dynamo cannot trace warnings.warn (a graph break, and fullgraph=True failed on a
    rank torch's own dropout2d/3d compile), so a compiled call runs without it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.compiler.is_compiling():
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


def _deprecated_rank(name, ndim):
    """torch's warning for a rank it still takes (or refuses only where a mask is drawn)."""
    _warn(f"{name}: Received a {ndim}-D input to {name}, which is deprecated and will result in an "
          f"error in a future release (torch's rule); use dropout for elementwise masks.", stacklevel=4)


def _draws(p, training):
    """A mask is drawn (training, 0 < p < 1): where torch raises its feature-dropout rank error.
    Elsewhere (eval, p = 0, p = 1) torch passes a too-small input through its rule (x, or zeros
    for p = 1), and so does fastdrop (one mask element for all: p = 1 drops it)."""
    return check_bool(training, "training") and 0.0 < check_p(p) < 1.0


def dropout1d(x, p=0.5, training=True, inplace=False, *, seed=None, offset=0, mode="inverted", out=None):
    """Drops whole channels of (N, C, L) or (C, L) input; mask = dropout_mask((N, C) or (C,), ...)."""
    y = _lane(x, p, training, inplace, seed, offset, mode, out, 2, 3)
    if y is not None:
        return y
    checked = check_array(x)  # once: the op core takes the result
    group_ndim = _spatial_group_ndim(checked[0], "dropout1d", 3, 2)
    return _call(x, p, training, inplace, seed, offset, mode, group_ndim, out, checked)


def dropout2d(x, p=0.5, training=True, inplace=False, *, seed=None, offset=0, mode="inverted", out=None):
    """Drops whole channels of (N, C, H, W) input (torch's rules: 3-D input is read as (N, C, L)
    with a warning, as torch does; fewer than 2 dims is an error where a mask is drawn)."""
    y = _lane(x, p, training, inplace, seed, offset, mode, out, 2, 4)
    if y is not None:
        return y
    checked = check_array(x)
    draws = _draws(p, training)  # a bad p or training refused before the rank warnings, as torch's (a review)
    ndim = len(checked[0].shape)
    if ndim < 2:
        _deprecated_rank("dropout2d", ndim)
        if draws and math.prod(checked[0].shape):  # (torch passes empty input through)
            raise RankError(f"dropout2d: Feature dropout requires at least 2 dimensions in the input, "
                            f"got shape {tuple(x.shape)}")
        return _call(x, p, training, inplace, seed, offset, mode, -1, out, checked)
    if ndim == 3:
        _warn("dropout2d: Received a 3D input; as torch does, it is read as (N, C, L) and "
              "1D channel-wise dropout is applied. Use dropout1d for that.")
    elif ndim != 4:
        _warn(f"dropout2d: Received a {ndim}-D input; expected a 4-D (N, C, H, W) input.")
    return _call(x, p, training, inplace, seed, offset, mode, 2, out, checked)


def dropout3d(x, p=0.5, training=True, inplace=False, *, seed=None, offset=0, mode="inverted", out=None):
    """Drops whole channels of (N, C, D, H, W) or unbatched (C, D, H, W) input (torch's rules: any
    other rank of at least 1 is read as unbatched, a mask element per index of dim 0, with
    torch's deprecation warning; 0-D input is an error where a mask is drawn)."""
    y = _lane(x, p, training, inplace, seed, offset, mode, out, 2, 5)
    if y is not None:
        return y
    checked = check_array(x)
    draws = _draws(p, training)  # a bad p or training refused before the rank warnings, as torch's (a review)
    ndim = len(checked[0].shape)
    if ndim not in (4, 5):
        if ndim == 0:
            _deprecated_rank("dropout3d", ndim)
            if draws:
                raise RankError(f"dropout3d: Feature dropout requires at least 2 dimensions in the input "
                                f"(a 0-D input is read as unbatched, shape (1,)), got shape ()")
            return _call(x, p, training, inplace, seed, offset, mode, -1, out, checked)
        _warn(f"dropout3d: Received a {ndim}-D input to dropout3d, which torch deprecates; as "
              f"torch does, it is read as unbatched, with a mask element per index of dim 0. "
              f"dropout3d is for (N, C, D, H, W) or (C, D, H, W) input; use dropout for "
              f"elementwise masks.")
    return _call(x, p, training, inplace, seed, offset, mode, 2 if ndim == 5 else 1, out, checked)


def drop_path(x, p=0.0, training=True, scale_by_keep=True, *, drop_prob=None, seed=None, offset=0, mode="row",
              scaling="inverted", inplace=False):
    """Stochastic depth (Huang et al. 2016; timm's `drop_path`, torchvision's `stochastic_depth`):
    drop whole samples of a residual branch.

    Args:
        x: (N, ...) numpy array, torch tensor or CUDA array; sample n is x[n].
        p: drop probability of a sample in [0, 1] (timm's drop_prob).
        drop_prob: timm's keyword for p (`drop_path(x, drop_prob=0.1, training=True)`); give one.
        training: drop (True; timm's functional defaults to False) or apply the eval rule.
        scale_by_keep: timm's flag: scale kept samples by 1/(1-p) (inverted scaling only).
        seed, offset: the mask is `dropout_mask(x.shape[:1], p, seed, offset)` ("row") or
            `dropout_mask((1,), p, seed, offset)` ("batch"); seed=None draws one.
        mode: "row" (torchvision's default: a draw per sample) or "batch" (one draw for all).
        scaling: "inverted" or "classic" (unscaled in training, times (1-p) at eval).
        inplace: write into x.
    Returns:
        the same kind of object as x; dropped samples are exactly 0.
    Example:
        >>> y = fastdrop.drop_path(torch.randn(8, 197, 768), 0.1)   # e.g. a ViT block's branch
    """
    if drop_prob is not None:
        if not (type(p) is float and p == 0.0):
            raise TypeError(f"drop_path got both p={shown(p)} and drop_prob={shown(drop_prob)} (timm's name for p): "
                            f"pass one")
        p = drop_prob
    y = _lane(x, p, training, inplace, seed, offset, scaling, None, 1) \
        if mode == "row" and scale_by_keep is True else None
    if y is not None:
        return y
    p = check_p(p)
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {shown(mode)}")
    check_mode(scaling, "scaling")
    scale_by_keep = check_bool(scale_by_keep, "scale_by_keep")
    checked = check_array(x)  # once: the op core takes the result
    if len(checked[0].shape) == 0 and mode == "row" and check_bool(training, "training") and p > 0.0:
        # (as timm's and torchvision's, which index x.shape[0] only where they draw; batch mode
        # draws one element for all, which a 0-d input has)
        raise RankError("drop_path(mode='row') needs input with a batch dimension, got a 0-d input")
    scale = train_scale(p, "inverted" if (scaling == "inverted" and scale_by_keep) else "classic")
    return _core.call(DROPOUT, (x,), (1 if mode == "row" else -1,), p=p, training=training,
                      seed=seed, offset=offset, scale=scale,
                      eval_factor=1.0 - p if scaling == "classic" else 1.0, inplace=inplace, checked=checked)
