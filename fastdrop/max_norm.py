"""Max-norm regularization (Srivastava et al. 2014, sec. 5.1; Keras `MaxNorm`): every unit's incoming
weight vector is projected onto the L2 ball of radius c, in place:

    w <- w * c / (||w|| + eps)   for every vector with ||w|| > c.

For torch's (out, in) layout the incoming vector of unit o is the row weight[o, :], hence dim=1
(Keras stores (in, out) and uses axis=0). `max_norm_hook` applies it after every optimizer step.
A plain function over fastdrop's kernels (no mask, no autograd: it runs between steps).
"""
import math
import numbers
import sys

import numpy as np

from . import _core
from ._checks import (CUDA_ARRAY, NUMPY, TORCH, WRITABLE_NUMPY, InterfaceArray, announce_write, array_kind, import_torch,
                      check_array, check_device_byte_order, check_plain_memory, check_storage, check_writable,
                      is_torch_tensor, mark_written, numpy_view, python_number, quiet_under_jit_trace,
                      refuse_while_tracing, shown, shown_number, squeeze_past_numpy)
from ._torch_state import tracing_dispatch_mode
from .kernels import max_norm_cpu
from .kernels.config import CPU_PARALLEL_MIN

__all__ = ["max_norm_", "max_norm_hook"]


def _as_float(v, name, what):
    """float(v) of a real v, refused with a ValueError where it overflows a float (an int or
    Fraction of 10**400): float() raises OverflowError there, which names nothing."""
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{name} must be a {what} finite number, got {shown_number(v)}") from None


def _check_max_norm_args(ndim, max_value, dim, eps):
    if type(max_value) is float and type(eps) is float and type(dim) is int and 0.0 < max_value < math.inf \
            and 0.0 <= eps < math.inf and -ndim <= dim < ndim:
        return max_value, [dim % ndim], eps  # the common call (a hook's every step), checked fast
    # a numpy scalar or 0-d array as its Python number, as p is taken (a 0-d array was refused)
    max_value, eps = python_number(max_value), python_number(eps)
    if isinstance(max_value, bool) or not isinstance(max_value, numbers.Real):
        raise TypeError(f"max_value must be a positive real number, got {type(max_value).__name__}")
    max_value = _as_float(max_value, "max_value", "positive")
    # comparisons, not math.isfinite: under torch.compile a max_value that changes between calls
    # is a symbolic float, which Dynamo compares but cannot pass to math (NaN fails both)
    if not (0.0 < max_value < math.inf):
        raise ValueError(f"max_value must be a positive finite number, got {max_value}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a non-negative real number, got {type(eps).__name__} {shown(eps)}")
    if not 0.0 <= _as_float(eps, "eps", "non-negative") < math.inf:  # (inf would zero every vector over the limit)
        raise ValueError(f"eps must be a non-negative finite number, got {shown(eps)}")
    if ndim == 0:
        raise ValueError("max_norm_ needs a weight with at least 1 dimension, got a 0-d tensor")
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (numbers.Integral, tuple, list)):
        raise TypeError(f"dim must be an int or a tuple/list of ints, got {type(dim).__name__} {shown(dim)}")
    dims = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    if not dims:
        raise ValueError("dim must name at least one dimension")
    norm_dims = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"dim must be an int or a tuple/list of ints, got {type(d).__name__} {shown(d)} in "
                            f"{shown(dim)}")
        if not -ndim <= d < ndim:
            raise ValueError(f"dim {shown(d)} is out of range for a weight with {ndim} dimensions "
                             f"(expected an int in [{-ndim}, {ndim - 1}])")
        norm_dims.append(int(d) % ndim)
    if len(set(norm_dims)) != len(norm_dims):
        raise ValueError(f"dim has repeated dimensions: {dim!r}")
    return max_value, sorted(norm_dims), float(eps)


def _max_norm_numpy(w, max_value, dims, eps):
    """Constrain numpy array w in place: the vectors are w's slices over `dims`."""
    if w.size == 0:
        return w
    if dims == [1] and w.ndim == 2 and w.flags.c_contiguous:  # a Linear's weight: its rows, as it lies
        _launch("max_norm_rows", w, max_value, eps)
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
        _launch("max_norm_rows", tmp, max_value, eps)
        t[...] = tmp.reshape(t.shape)
        return w
    if v.strides[0] == v.itemsize and v.strides[1] != v.itemsize and cols > 1:
        # The reduced axis is the strided one (e.g. dim=0 of a C-contiguous (out, in) weight):
        # walk memory in order and keep per-column sums.
        _launch("max_norm_cols", v.T, max_value, eps)
    else:
        _launch("max_norm_rows", v, max_value, eps)
    return w


def _launch(name, w2d, max_value, eps):
    # a small weight on the calling thread: waking the thread pool costs more than the threads
    # save (CPU_PARALLEL_MIN, as for the elementwise kernels); the serial twin gives the same bits
    kernel = getattr(max_norm_cpu, name if w2d.size >= CPU_PARALLEL_MIN else name + "_serial")
    kernel(w2d, max_value, eps)


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
    # (the checks read traced sizes under torch.jit.trace: a TracerWarning each)
    return quiet_under_jit_trace(_max_norm, weight, max_value, dim, eps)


def _max_norm(weight, max_value, dim, eps):
    kind, max_value, dims, eps = _checked(weight, max_value, dim, eps)
    if kind == NUMPY:
        # an np.matrix through a plain view of its memory (a matrix's operators mean other things)
        w = weight.view(np.ndarray) if type(weight) is np.matrix else weight
        if w.dtype == np.float16:
            w[...] = _max_norm_numpy(w.astype(np.float32), max_value, dims, eps)
        else:
            _max_norm_numpy(w, max_value, dims, eps)
        return weight
    if kind == TORCH:
        torch = sys.modules["torch"]
        # make_fx and torch.jit.trace record torch's ops only (a write through a numpy view would
        # be lost from the graph: a traced max_norm_ replayed as nothing) and a fake tensor has no
        # memory: all take the custom op, as torch.compile does
        if torch.is_grad_enabled() and weight.requires_grad and (not weight.is_leaf or _view_of_recorded(torch, weight)):
            # (grad_fn is not None, asked in the form Dynamo traces: compiled and traced calls too,
            # whose custom op has no derivative either) torch's renorm_ would be recorded (the
            # gradient through the projection); the kernels write outside autograd, so backward
            # would take the projection for the identity
            raise RuntimeError("max_norm_ of a tensor computed by autograd would not be recorded: "
                               "its gradient would be wrong. Constrain the leaf it is made from (a "
                               "parameter), or call it under torch.no_grad() on a tensor whose gradient "
                               "you do not need")
        if torch.compiler.is_compiling() or torch._C._is_tracing() or tracing_dispatch_mode(torch):
            return _max_norm_traced(weight, max_value, dims, eps)
        if weight.is_meta:  # no values to project: the weight as it is, as torch's renorm_ gives
            return weight
        check_plain_memory(weight, "weight")  # a wrapper subclass: no memory to write
        return _max_norm_tensor(weight, max_value, dims, eps)
    _max_norm_device(weight, max_value, dims, eps)
    return weight  # the object given (a CuPy array stays one), written in place


def _view_of_recorded(torch, weight):
    """Is weight a view, made under no_grad, of a tensor autograd computed? Such a view is a leaf
    (no grad_fn) whose writes land in that tensor: torch's renorm_ refuses it under grad mode, and
    the kernels' write would reach the recorded tensor unrecorded. (A no_grad view of a parameter
    is projected, as the parameter is.) Not asked while compiling: Dynamo's tensors are traced."""
    if torch.compiler.is_compiling():
        return False
    base = weight._base
    return base is not None and base.requires_grad and not base.is_leaf


_MAX_NORM_OP = None


def _register_max_norm_op():
    """fastdrop::max_norm_, the custom op (mutating its weight) that torch.compile / export trace a
    tensor's max_norm_ as. Dynamo cannot trace the kernels (they write through a numpy or device
    view of the weight), so a compiled graph calls them opaquely and gives eager's bits."""
    global _MAX_NORM_OP
    if _MAX_NORM_OP is not None:
        return
    import torch

    # cudagraph_unsafe as every fastdrop op: Numba's launches have not been checked under capture
    @torch.library.custom_op("fastdrop::max_norm_", mutates_args=("weight",), tags=(torch.Tag.cudagraph_unsafe,))
    # max_value (and eps) a Scalar, as renorm_'s maxnorm: Dynamo specializes a `float` argument, a graph per
    # value for a changing max_value where renorm_ takes one symbolic float
    def op(weight: torch.Tensor, max_value: torch.types.Number, dims: list[int], eps: torch.types.Number) -> None:
        # Every check again on the real weight: a graph may run the op on a tensor the trace never
        # saw (an overlapping view, an inference tensor; the eager backend), and an exported
        # graph may call it with any arguments.
        _, max_value, dims, eps = _checked(weight, max_value, dims, eps)
        _max_norm_tensor(weight, max_value, dims, eps)

    @op.register_fake
    def _(weight, max_value, dims, eps):
        return None

    _MAX_NORM_OP = op


_core.TORCH_OP_REGISTRARS.append(_register_max_norm_op)


def _max_norm_traced(w, max_value, dims, eps):
    """max_norm_ of a tensor inside torch.compile / export: the custom op (registered with the others
    by _core.register_torch_ops, before any graph can be traced)."""
    import torch
    if _MAX_NORM_OP is None:  # (make_fx before any registration ran)
        _core.register_torch_ops()
    torch.ops.fastdrop.max_norm_(w, max_value, dims, eps)
    return w


def _checked(weight, max_value, dim, eps):
    """(kind, max_value, dims, eps) of a max_norm_ call, every argument checked."""
    if not is_torch_tensor(weight):
        refuse_while_tracing(weight, "weight")
    kind = array_kind(weight, "weight")
    if kind == NUMPY and type(weight) not in WRITABLE_NUMPY and type(weight) is not np.matrix:
        raise TypeError(f"weight must be a numpy.ndarray, np.memmap or np.matrix (max_norm_ writes in "
                        f"place), got {type(weight).__name__}")
    if kind == NUMPY and not weight.dtype.isnative:
        raise TypeError(f"weight has non-native byte order ({weight.dtype}); convert it first")
    # (an object with only __cuda_array_interface__ comes back with the shape its interface gives)
    checked = check_array(weight, "weight")[0]
    if kind == CUDA_ARRAY:  # (max_norm_ always runs its kernel)
        check_device_byte_order([checked], ("weight", "weight"))
    max_value, dims, eps = _check_max_norm_args(len(checked.shape), max_value, dim, eps)
    if kind == NUMPY and not weight.flags.writeable:
        raise ValueError("max_norm_ writes in place; weight is read-only")
    # an expanded or otherwise self-overlapping view: refused as torch's renorm_ refuses it (each
    # row would be rescaled once per alias)
    check_writable(weight, kind, "weight")
    return kind, max_value, dims, eps


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
            if t._parameters.get("weight") is not w:
                # a parametrization (weight_norm, spectral_norm), pruning or another pre-hook makes
                # .weight anew from other parameters: projecting today's copy would change nothing
                raise TypeError(f"{type(t).__name__}.weight is not a parameter of the module but "
                                f"computed from others (a parametrization such as weight_norm or "
                                f"spectral_norm, or pruning): max_norm_hook would project a copy that "
                                f"the next forward discards; constrain the parameter it is made from")
            weights.append(w)
        elif isinstance(t, torch.Tensor):
            if t.grad_fn is not None:
                raise TypeError("max_norm_hook needs the weight itself (a leaf tensor, such as a "
                                "module's parameter), got a tensor computed by autograd "
                                f"({type(t.grad_fn).__name__}): projecting it would not change the "
                                "parameters the optimizer steps")
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
    import_torch("fastdrop.max_norm_hook")
    weights = _weights_of(targets)
    for w in weights:  # every argument before any weight changes, and every weight's memory (a
        _checked(w, max_value, dim, eps)  # parameter FSDP freed), as max_norm_ checks it later
        check_storage(w, "weight")
    if not callable(getattr(optimizer, "register_step_post_hook", None)):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    # Constrain the starting point too, so every iterate the optimizer sees lies in the ball.
    for w in weights:
        max_norm_(w, max_value, dim, eps)

    def hook(opt, args, kwargs):
        for w in weights:
            max_norm_(w, max_value, dim, eps)

    return optimizer.register_step_post_hook(hook)


def _max_norm_tensor(w, max_value, dims, eps):
    import torch
    check_storage(w, "weight")  # (eager and the custom op's body: the kernels write w's memory)
    if w.numel() == 0:  # no row to renorm (and numpy cannot view (0, 2**62), which torch holds)
        return w
    if w.dtype in (torch.float16, torch.bfloat16):
        with torch.no_grad():
            tmp = w.detach().float()
            _max_norm_tensor(tmp, max_value, dims, eps)
            w.copy_(tmp)  # (torch's op: a dispatch mode sees it)
        return w
    announce_write(torch, w)
    if w.is_cuda:
        with torch.no_grad():
            _max_norm_device(w.detach(), max_value, dims, eps)
    else:  # (only detach below, and the kernels: no grad mode to set, ~1.5 us a call; a dispatch
        # mode now sees announce_write's copy_ and the detach with grad mode on, as the caller set it)
        v, vdims = squeeze_past_numpy(w.detach(), dims)  # (more dims than numpy's 64: torch allows them)
        _max_norm_numpy(numpy_view(v)[0], max_value, vdims, eps)
    mark_written(w)  # the kernels wrote through a numpy/device view
    return w


def _max_norm_device(w, max_value, dims, eps):
    """max_norm_ on a torch CUDA tensor, or a C-contiguous device array whose `dims` are trailing."""
    from numba import cuda
    _cuda = _core.cuda_module()
    as_device_array, max_norm_device = _cuda.as_device_array, _cuda.max_norm_device
    _cuda.require_gpu()
    if not is_torch_tensor(w):
        if not (hasattr(w, "shape") and hasattr(w, "dtype")):
            w = InterfaceArray(w, "weight")  # only __cuda_array_interface__: its shape and dtype
        nd = len(w.shape)
        if list(dims) != list(range(nd - len(dims), nd)):
            raise ValueError(f"max_norm_ on a CUDA device array needs the normed dims to be the trailing "
                             f"ones, got dim={tuple(dims)} for {nd} dims (use a torch tensor for others)")
        w = as_device_array(w)
        if np.dtype(w.dtype) == np.float16:
            # computed in float32 and rounded once, as the numpy and torch paths do (the kernel
            # would round the scale to float16 first: 1 ulp off)
            tmp = _cuda.astype(w, np.float32)
            _max_norm_device(tmp, max_value, dims, eps)
            w[:] = _cuda.astype(tmp, np.float16)
            return w
        if not w.is_c_contiguous():
            # the kernel reads (rows, cols) C-contiguous memory: a contiguous copy, written back
            # (a reshape of a strided array would be a copy, or C strides over other memory)
            tmp = _cuda._contiguous(w)
            _max_norm_device(tmp, max_value, dims, eps)
            w[:] = tmp
            return w
        rows = math.prod(w.shape[:nd - len(dims)])
        max_norm_device(w.reshape(rows, w.size // max(rows, 1)), max_value, eps)
        return w
    import torch
    keep = [d for d in range(w.dim()) if d not in dims]
    t = w.permute(keep + list(dims))
    rows, cols = math.prod(t.shape[:len(keep)]), math.prod(t.shape[len(keep):])
    try:
        v, copy_back = t.view(rows, cols), False
    except RuntimeError:
        v, copy_back = t.contiguous().view(rows, cols), True
    with cuda.gpus[w.device.index]:
        stream = cuda.external_stream(torch.cuda.current_stream(w.device).cuda_stream)
        max_norm_device(cuda.as_cuda_array(v, sync=False), max_value, eps, stream)
    if copy_back:
        t.copy_(v.view(t.shape))
    return w
