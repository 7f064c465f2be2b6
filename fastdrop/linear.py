"""Dense layers with masks: dropout -> linear and DropConnect, three masked ops.

x has shape (..., I), weight (O, I), bias (O,) or None; N = prod(x.shape[:-1]); s the keep scale.

dropout_linear     y = linear(x ⊙ M s, W, b),    M = dropout_mask(x.shape, p, seed, offset)
                   gx = M s ⊙ (g W)    gW = gᵀ (x ⊙ M s)    gb = Σ_n g
dropconnect_linear y = x (W ⊙ M s)ᵀ + b,         M = dropout_mask(weight.shape, p, seed, offset)
                   gx = g (W ⊙ M s)    gW = M s ⊙ (gᵀ x)    gb = Σ_n g
  per_sample=True: example n gets its own mask, M = dropout_mask((N, O, I), ...)[n], generated
                   inside the kernel and never stored (Wan et al. 2013); its gradients are two more
                   masked ops on the same kernel (see below), so double backward works too.
eval: linear(x, W, b) (dropout_linear in classic mode: linear(x (1-p), W, b)); DropConnect can
instead use moment matching (below).

Every product but the per-sample one is a vendor GEMM (torch's, numpy's) next to fastdrop's
mask kernel; backward regenerates the masks from (seed, offset) and saves x and W only.

Moment-matching inference (Wan et al. 2013, section 3.1), for dropconnect_linear at eval with an
`activation`: the pre-activation u = Σ_i x_i W_oi m_oi / (1-p) + b_o is a sum of independent terms
with m ~ Bernoulli(1-p), so
    E[u]   = x Wᵀ + b
    Var[u] = Σ_i x_i² W_oi² Var[m]/(1-p)² = p/(1-p) (x²)(W²)ᵀ
and the layer returns the average of activation(u_z) over `samples` draws u_z ~ N(E[u], Var[u]).
"""
import math
import numbers
import sys

import numpy as np

from . import _autocast, _core, _seeds
from ._alloc import check_output_bytes
from ._checks import (CUDA_ARRAY, MAX_U64, TORCH, array_kind, check_array, check_bool, check_companions,
                      check_mode, check_p, check_storage, check_u64, is_subclass_like, numpy_view, shown,
                      train_scale)
from ._torch_state import past_modes, tracing_dispatch_mode
from .kernels import linear_cpu
from .kernels.config import DENSE_PARALLEL_MIN
from .kernels.philox import kernel_rng_args

__all__ = ["dropout_linear", "dropconnect_linear", "DROPOUT_LINEAR", "DROPCONNECT", "DROPCONNECT_SAMPLE",
           "SAMPLE_GRAD_X", "SAMPLE_GRAD_W"]

DEFAULT_SAMPLES = 128
SAMPLE_GRAD_PARTS = 8  # partial gx buffers of the per-sample backward kernel (parallel tasks)
# ... fewer (never under 2, so both cores still work) where 8 x-sized buffers would pass this many
# bytes: a review found 8 x a 2 GiB x, allocated in backward with no check, enough to get the
# process killed. The count is a function of the shapes only, so the bits still do not depend on
# the thread count.
SAMPLE_GRAD_PART_BYTES = 1 << 30
_OPERANDS = ("x", "weight", "bias")


def _check(operands, params):
    x, w, b = operands
    xs, ws = tuple(x.shape), tuple(w.shape)  # tuples: device arrays' shapes may not take [-1]
    if len(xs) < 1:
        raise ValueError(f"x must have at least 1 dimension (..., in_features), got shape {xs}")
    if len(ws) != 2 or ws[1] != xs[-1]:
        raise ValueError(f"x has shape {xs} and weight has shape {ws}: "
                         f"weight must be (out_features, {xs[-1]})")
    if b is not None and tuple(b.shape) != (ws[0],):
        raise ValueError(f"bias has shape {tuple(b.shape)}, expected ({ws[0]},) for weight of shape {ws}")
    return params


def _fake(operands, params):
    x, w, _ = operands
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _out_numel(operands):
    # the output, or the weight where it is a small memory with a big logical size (an expanded
    # tensor, a broadcast array): DropConnect's masked copy and the per-sample kernels' dense
    # copy are W-sized
    x, w, _ = operands
    return max(math.prod(x.shape[:-1]) * w.shape[0], math.prod(w.shape))


def _plain(B, operands, params, factor, inplace=False):
    x, w, b = operands
    return B.linear(B.scale(x, factor), w, b)


# ---- dropout -> linear ---------------------------------------------------------------------------

def _dl_forward(B, operands, rng, params, out=None):
    x, w, b = operands
    xm = B.mask(x, rng, parallel_min=DENSE_PARALLEL_MIN)
    if B is _core.TorchBackend and xm.dim() > 2:
        # as 2-D rows (a view of a contiguous xm; a permuted one is copied, as F.linear's own
        # reshape copied it): on a permuted 3-D input torch's F.linear picks
        # its GEMM route from the calling context, and the eager Function and a compiled graph's
        # custom op gave results an ulp apart
        return B.linear(_core.rows(xm), w, b).reshape(tuple(x.shape[:-1]) + (w.shape[0],))
    return B.linear(xm, w, b)


def _dl_backward(B, grad, operands, rng, params, needs):
    x, w, _ = operands
    nx, nw, nb = needs
    gx = gw = None
    if nx and nw:
        # (one Philox pass for both; the GEMM's result in x's dtype first: `_autocast.in_dtype_of`)
        gx, xm = B.mask_pair(_autocast.in_dtype_of(B.matmul(grad, w), x), x, rng, DENSE_PARALLEL_MIN)
        gw = B.matmul(B.mT(_core.rows(grad)), _core.rows(xm))
    elif nx:
        gx = B.mask(_autocast.in_dtype_of(B.matmul(grad, w), x), rng, parallel_min=DENSE_PARALLEL_MIN)
    elif nw:
        gw = B.matmul(B.mT(_core.rows(grad)), _core.rows(B.mask(x, rng, parallel_min=DENSE_PARALLEL_MIN)))
    return gx, gw, _core.rows(grad).sum(0) if nb else None


DROPOUT_LINEAR = _core.MaskedOp("dropout_linear", _OPERANDS, forward=_dl_forward, backward=_dl_backward,
                                plain=_plain, fake=_fake, check=_check, saves=(0, 1), optional=(2,),
                                bias=2, upcast_half=True, out_numel=_out_numel,
                                flops=_core.contracting_last_dim_flops)


# ---- DropConnect, one mask per call ----------------------------------------------------------------

def _dc_forward(B, operands, rng, params, out=None):
    x, w, b = operands
    return B.linear(x, B.mask(w, rng, parallel_min=DENSE_PARALLEL_MIN), b)


def _dc_backward(B, grad, operands, rng, params, needs):
    x, w, _ = operands
    nx, nw, nb = needs
    gx = B.matmul(grad, B.mask(w, rng, parallel_min=DENSE_PARALLEL_MIN)) if nx else None
    gw = B.mask(_autocast.in_dtype_of(B.matmul(B.mT(_core.rows(grad)), _core.rows(x)), w), rng,
                parallel_min=DENSE_PARALLEL_MIN) if nw else None
    return gx, gw, _core.rows(grad).sum(0) if nb else None


def _mean_network(B, operands, params, factor, inplace=False):
    return B.linear(*operands)


DROPCONNECT = _core.MaskedOp("dropconnect", _OPERANDS, forward=_dc_forward, backward=_dc_backward,
                             plain=_mean_network, fake=_fake, check=_check, saves=(0, 1),
                             optional=(2,), bias=2, upcast_half=True, masked=1, out_numel=_out_numel,
                             flops=_core.contracting_last_dim_flops)


# ---- DropConnect, one mask per example (its own kernels: no vendor op exists) ----------------------

def _host(a, keep_class=True):
    """(2-D C-contiguous numpy view of a CPU tensor / numpy array, output maker): the maker's
    `make(shape, zeros)` gives (the numpy array a kernel writes, the output of a's kind). Torch
    outputs are torch's own tensors written through a view (`numpy_view`: a tensor made by
    torch.from_numpy, like one lent to numpy by .numpy(), could never be resize_d), of a's class
    where keep_class and a is a subclass (as torch's F.linear gives it back)."""
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a)

        def make_array(shape, zeros=False):
            r = (np.zeros if zeros else np.empty)(shape, a.dtype)
            return r, r
        return a, make_array
    import torch
    if _core.is_legacy_batched(a):
        # the fused kernels need memory; a batch of gradients would need the mask materialized
        raise RuntimeError("per-sample DropConnect does not support batched gradients "
                           "(torch.autograd.grad(..., is_grads_batched=True), jacobian / hessian with "
                           "vectorize=True): its (N, O, I) mask is never materialized; take the "
                           "gradients one at a time (vectorize=False)")
    dtype = a.dtype
    cls = type(a) if keep_class and type(a) not in (torch.Tensor, torch.nn.Parameter) else None

    def make(shape, zeros=False):
        t = (torch.zeros if zeros else torch.empty)(shape, dtype=dtype, device="cpu")  # not the default device
        # made plain, then seen as a's class (as_subclass runs no __torch_function__): the kernel
        # writes into memory the subclass had no say in (its new_empty could hand back any tensor)
        return numpy_view(t)[0], (t if cls is None else t.as_subclass(cls))
    a = a.detach()
    if not torch.compiler.is_compiling() and a._is_zerotensor():
        a = a.clone()  # torch's efficient zeros (an incoming gradient): no memory to view
    return numpy_view(a.contiguous().resolve_neg())[0], make


@past_modes  # (its outputs and copies: the kernels write and read through their memory)
def _sample_forward(B, operands, rng, params, out=None):
    x, w, b = operands
    lead = tuple(x.shape[:-1])
    if B is _core.CudaArrayBackend or getattr(x, "is_cuda", False):
        _cuda = _core.cuda_module()
        y = _cuda.dense_call("dropconnect_forward", x, w, b, rng, True)
        return y.reshape(lead + (w.shape[0],))
    x2, make = _host(_core.rows(x))
    wn, _ = _host(w)
    yn, y = make((x2.shape[0], wn.shape[0]))
    if yn.size:
        bn = np.zeros(0, x2.dtype) if b is None else _host(b)[0]
        linear_cpu.dropconnect_sample_fwd(x2, wn, bn, b is not None, yn, *_kernel_args(rng, x2.dtype))
    return y.reshape(lead + (wn.shape[0],))


@past_modes
def _sample_grads(grad, x, w, rng):
    """(gx, gw) of the per-sample product in one pass of the fused kernel (no autograd)."""
    if getattr(x, "is_cuda", False):
        _cuda = _core.cuda_module()
        gx, gw, _ = _cuda.dense_call("dropconnect_backward", x, w, None, rng, True, grad=grad,
                                     bias_grad=False)  # the op's formula has gb = g.sum(0)
        return gx.reshape(x.shape), gw
    # plain gradients, as torch's C++ backward formulas give them whatever the classes around
    x2, make = _host(_core.rows(x), keep_class=False)
    wn, _ = _host(w)
    g2, _ = _host(_core.rows(grad))
    (gxn, gx), (gwn, gw) = make(x2.shape, True), make(wn.shape, True)
    if g2.size and x2.size:
        # A fixed number of partial gx buffers (not one per thread), so the summation order and
        # the bits do not depend on the thread count; never more than there are output rows.
        parts = max(1, min(SAMPLE_GRAD_PARTS, wn.shape[0], max(2, SAMPLE_GRAD_PART_BYTES // x2.nbytes)))
        check_output_bytes(parts * x2.nbytes)  # a MemoryError, not the OOM killer
        part = np.empty((parts,) + x2.shape, x2.dtype)
        linear_cpu.dropconnect_sample_bwd(g2, x2, wn, part, gxn, gwn, np.empty(wn.shape[0], x2.dtype),
                                          *_kernel_args(rng, x2.dtype))
    return gx.reshape(tuple(x.shape)), gw


def _zeros(like, shape):
    return np.zeros(shape, like.dtype) if isinstance(like, np.ndarray) else like.new_zeros(shape)


def _sample_backward(B, grad, operands, rng, params, needs):
    x, w, _ = operands
    nx, nw, nb = needs
    gb = _core.rows(grad).sum(0) if nb else None
    if nx and nw and B.raw_ok(rng, grad, x, w):
        return (*_sample_grads(grad, x, w, rng), gb)  # both in one pass when nothing records them
    gx = B.op(SAMPLE_GRAD_X, (grad, w), rng) if nx else None
    gw = B.op(SAMPLE_GRAD_W, (grad, x), rng) if nw else None
    return gx, gw, gb


# The two gradients of the per-sample product are masked ops themselves, bilinear like it, and the
# three are closed under differentiation (mask M[n, o, i] of dropout_mask((N, O, I)), scale s):
#   y  = F(x, W):  y[n, o]  = s Σ_i x[n, i] W[o, i] M    dF = (GX(g, W), GW(g, x))
#   gx = GX(g, W): gx[n, i] = s Σ_o g[n, o] W[o, i] M    dGX = (F(gg, W), GW(g, gg))
#   gW = GW(g, x): gW[o, i] = s Σ_n g[n, o] x[n, i] M    dGW = (F(x, gg), GX(g, gg))
# so double backward works. GX and GW run the fused kernel with the other factor zero.

def _gx_forward(B, operands, rng, params, out=None):
    g, w = operands
    return _sample_grads(g, _zeros(w, tuple(g.shape[:-1]) + (w.shape[1],)), w, rng)[0]


def _gx_backward(B, grad, operands, rng, params, needs):
    g, w = operands
    return (B.op(DROPCONNECT_SAMPLE, (grad, w, None), rng) if needs[0] else None,
            B.op(SAMPLE_GRAD_W, (g, grad), rng) if needs[1] else None)


def _gw_forward(B, operands, rng, params, out=None):
    g, x = operands
    return _sample_grads(g, x, _zeros(x, (g.shape[-1], x.shape[-1])), rng)[1]


def _gw_backward(B, grad, operands, rng, params, needs):
    g, x = operands
    return (B.op(DROPCONNECT_SAMPLE, (x, grad, None), rng) if needs[0] else None,
            B.op(SAMPLE_GRAD_X, (g, grad), rng) if needs[1] else None)


def _kernel_args(rng, dtype):
    return (*kernel_rng_args(_core._seed_int(rng.seed), rng.offset & MAX_U64, rng.p),
            dtype.type(rng.scale))


def _not_public(B, operands, params, factor, inplace=False):
    raise NotImplementedError("internal op: called in training mode only")


DROPCONNECT_SAMPLE = _core.MaskedOp("dropconnect_sample", _OPERANDS, forward=_sample_forward,
                                    backward=_sample_backward, plain=_mean_network, fake=_fake,
                                    check=_check, saves=(0, 1), optional=(2,), bias=2, upcast_half=True,
                                    own_products=True, masked=1, out_numel=_out_numel,
                                    flops=_core.contracting_last_dim_flops)
def _host_only(a):
    if array_kind(a) == CUDA_ARRAY:
        raise TypeError("the per-sample DropConnect gradient ops take numpy arrays or torch tensors")


def _check_gx(operands, params):
    g, w = operands
    _host_only(g)
    if len(w.shape) != 2 or len(g.shape) < 1 or g.shape[-1] != w.shape[0]:
        raise ValueError(f"grad has shape {tuple(g.shape)} and weight {tuple(w.shape)}: expected "
                         f"(..., O) and (O, I)")
    return params


def _check_gw(operands, params):
    g, x = operands
    _host_only(g)
    if len(g.shape) < 1 or len(x.shape) < 1 or tuple(g.shape[:-1]) != tuple(x.shape[:-1]):
        raise ValueError(f"grad has shape {tuple(g.shape)} and x {tuple(x.shape)}: expected "
                         f"(..., O) and (..., I) with the same leading dims")
    return params


SAMPLE_GRAD_X = _core.MaskedOp(
    "dropconnect_sample_grad_x", ("grad", "weight"), forward=_gx_forward, backward=_gx_backward,
    plain=_not_public, check=_check_gx, saves=(0, 1), upcast_half=True, own_products=True, masked=1,
    flops=_core.contracting_last_dim_flops, fake=lambda ops, params: ops[0].new_empty((*ops[0].shape[:-1], ops[1].shape[1])))
SAMPLE_GRAD_W = _core.MaskedOp(
    "dropconnect_sample_grad_w", ("grad", "x"), forward=_gw_forward, backward=_gw_backward,
    plain=_not_public, check=_check_gw, saves=(0, 1), upcast_half=True, own_products=True, masked=None,
    flops=lambda shapes, out_shape: 2 * math.prod(out_shape) * math.prod(shapes[0][:-1]),  # gᵀ x over rows
    fake=lambda ops, params: ops[0].new_empty((ops[0].shape[-1], ops[1].shape[-1])))


# ---- the training lane ---------------------------------------------------------------------------
# A small dense layer spends most of its time in Python: at 8x512 -> 512 the general route
# (`_core.call`: validate, resolve the seed, `_torch_call`, the eager Function's setup for half
# types, autocast and forward-mode AD, its backward's route) cost ~70 us of a ~290 us forward +
# backward against torch's Dropout + Linear at ~225 (docs/cpu_kernels.md, "The dense layers'
# lane"). Like `_core.training_lane` for dropout, the lane takes only calls every check of the
# pipeline passes, refuses anything else before the seed draw (the caller goes on to the
# pipeline, which checks and raises or serves it), and runs the op's own declared forward and
# backward (above) on `_core.TorchBackend`: the same kernels and torch GEMMs on the same tensors,
# so the same bits, the same draw from torch's generator at the same rank-stream offset, and the
# same saved tensors (x and W, never a mask).

def dense_lane(op, x, w, b, p):
    """op (DROPOUT_LINEAR or DROPCONNECT) on (x, w, b) in training mode with inverted scaling,
    seed=None at offset 0 (the caller checked those arguments, and 0 < p < 1 a float), or None,
    having touched nothing, when the call is not the lane's: plain CPU float32/float64 tensors
    of one dtype with the shapes the op takes, x contiguous, nothing tracing, transforming,
    autocasting or in forward-mode AD. Under autograd the lane's Function (`_lane_function`);
    with nothing to record, the op's forward."""
    queries = _core._LANE_QUERIES
    if queries is None:  # torch's ops not registered yet: `call` registers them
        return None
    tensor, compiling, grad_enabled, strided, transforms_active, wrapped, tracing, forward_ad = queries
    if compiling() or tracing() or type(x) is not tensor:  # (traced shapes: no comparisons below)
        return None
    plain, flat = _core._PLAIN_TENSORS, _core._FLAT_SCALARS
    # (the types first: the subclass query takes tensors only, and a numpy or device-array
    # weight gave torch's own TypeError instead of the general route's, a review)
    if type(w) not in plain or b is not None and type(b) not in plain or \
            is_subclass_like(x) or is_subclass_like(w) or b is not None and is_subclass_like(b):
        # plain-typed operands whose memory is not their values (a functionalization wrapper:
        # data_ptr() 0): the general route checks and refuses them (`_core.training_lane`)
        return None
    dtype = x.dtype
    if dtype not in flat or w.dtype != dtype or not x.is_cpu or not w.is_cpu or \
            x.layout != strided or w.layout != strided or x.is_nested or w.is_nested or w.dim() != 2 or \
            x.dim() < 1 or x.shape[-1] != w.shape[1] or not x.is_contiguous() or x.is_neg() or w.is_neg() or \
            x._is_zerotensor() or w._is_zerotensor():
        return None
    if b is not None and (b.dtype != dtype or not b.is_cpu or b.layout != strided or
                          b.is_nested or b.shape != (w.shape[0],) or b.is_neg() or b._is_zerotensor()):
        return None
    n = x.numel()
    if n == 0 or w.numel() == 0:
        return None  # an empty operand: the pipeline draws no seed
    torch = sys.modules["torch"]
    if transforms_active() or forward_ad._current_level >= 0 or wrapped(x) or wrapped(w) or \
            b is not None and wrapped(b) or tracing_dispatch_mode(torch) or \
            torch.is_autocast_enabled("cpu") or _core.is_legacy_batched(x) or _core.is_legacy_batched(w):
        return None
    recorded = grad_enabled() and (x.requires_grad or w.requires_grad or b is not None and b.requires_grad)
    if recorded and (x.is_inference() or w.is_inference()):
        return None  # the pipeline saves a copy of such an operand (`_core._savable`)
    # an output or working copy beyond physical memory, or memory short of the elements (a weight
    # FSDP freed): refused before the draw, as `call` refuses them
    check_output_bytes(max(n, n // x.shape[-1] * w.shape[0], w.numel()) * x.element_size())
    check_storage(x)
    check_storage(w, "weight")
    if b is not None:
        check_storage(b, "bias")
    offset = _seeds.stream_offset(0)
    if offset >= 1 << 63:
        return None  # a rank of 2^15 or more: the general route
    rng = _core._rng(p, _seeds.draw_torch_seed_eager(torch), offset, 1.0 / (1.0 - p))
    if recorded:
        return _lane_function()(op, rng, x, w, b)
    return _forward(op, (x, w, b), rng)


def _forward(op, operands, rng):
    # (an x of 3 or more dims: the GEMM's output reshaped, as `_core._kernel_forward` returns it)
    return _core.own_output(op.forward(_core.TorchBackend, operands, rng, ()))


_LANE_FUNCTION = None


def _lane_function():
    """The apply (torch's C method, `_core._c_apply`) of the lane's autograd.Function, made on
    first use (`import fastdrop` needs no torch)."""
    global _LANE_FUNCTION
    if _LANE_FUNCTION is None:
        import torch
        is_compiling, transforms_active = torch.compiler.is_compiling, torch._C._are_functorch_transforms_active
        grad_enabled, forward_ad = torch.is_grad_enabled, torch.autograd.forward_ad
        plain = _core.plain_class

        class LaneDense(torch.autograd.Function):
            """The op's declared forward and backward; saves x and W, as the eager Function."""

            @staticmethod
            def forward(ctx, op, rng, x, w, b):
                ctx.op, ctx.rng = op, rng
                ctx.save_for_backward(x, w)
                return _forward(op, (x, w, b), rng)

            @staticmethod
            def backward(ctx, grad):
                x, w = ctx.saved_tensors
                if not is_compiling() and not transforms_active() and not grad_enabled() and \
                        forward_ad._current_level < 0:
                    # the common case, `_core._backward_route`'s TorchBackend answer asked inline;
                    # a saved operand freed since the forward refused as `_core._op_backward` does
                    B, rng = _core.TorchBackend, ctx.rng
                    check_storage(x, "a saved operand")
                    check_storage(w, "a saved operand")
                else:  # create_graph, a torch.func transform, compiled autograd, a dual level
                    B, rng = _core._backward_route(torch, ctx)
                    if not _core._tracing(torch, [x, w]):
                        _core._check_storages(torch, [x, w], ("a saved operand",) * 2)
                gx, gw, gb = ctx.op.backward(B, plain(torch, grad), (x, w, None), rng, (), ctx.needs_input_grad[2:])
                # plain gradients, as torch's F.linear gives them, whatever the classes of the
                # incoming gradient and of x and W (their GEMMs ran through __torch_function__)
                return None, None, plain(torch, gx), plain(torch, gw), plain(torch, gb)

        _LANE_FUNCTION = _core._c_apply(torch, LaneDense)
    return _LANE_FUNCTION


# ---- public API ---------------------------------------------------------------------------------

def dropout_linear(x, weight, bias=None, p=0.5, training=True, *, seed=None, offset=0, mode="inverted"):
    """linear(dropout(x, p), weight, bias) in one call, with a backward that regenerates the mask.

    Args:
        x: (..., in_features) numpy array, torch tensor (CPU/CUDA) or CUDA device array; any strides.
        weight: (out_features, in_features), same kind and dtype as x.
        bias: (out_features,) or None.
        p: drop probability of the inputs, in [0, 1].
        training: apply the mask (True) or the eval rule of `mode` (False).
        seed, offset: the mask is exactly `fastdrop.dropout_mask(x.shape, p, seed, offset)`;
            seed=None draws one (torch's generator for tensors, fastdrop's numpy source otherwise).
        mode: "inverted" (kept inputs scaled by 1/(1-p) in training) or "classic" (no scaling in
            training, inputs scaled by 1-p at eval).
    Shape:
        x (..., I), weight (O, I), bias (O,) -> (..., O)
    Example:
        >>> y = fastdrop.dropout_linear(np.ones((4, 3), np.float32), np.ones((2, 3), np.float32), p=0.5, seed=0)
    """
    if training is True and seed is None and mode == "inverted" and type(p) is float and 0.0 < p < 1.0 and \
            type(offset) is int and offset == 0:
        # a training step's call: the dense lane first (`dense_lane`; None: not the lane's)
        y = dense_lane(DROPOUT_LINEAR, x, weight, bias, p)
        if y is not None:
            return y
    return dropout_linear_call(x, weight, bias, p, training, seed, offset, mode)


def dropout_linear_call(x, weight, bias, p, training, seed, offset, mode):
    """`dropout_linear` through the general pipeline (the module's call after its own try of the
    lane: its weight and bias read once, so a parametrization runs once per forward)."""
    p = check_p(p)
    check_mode(mode)
    return _core.call(DROPOUT_LINEAR, (x, weight, bias), p=p, training=training, seed=seed,
                      offset=offset, scale=train_scale(p, mode),
                      eval_factor=1.0 - p if mode == "classic" else 1.0)


def dropconnect_linear(x, weight, bias=None, p=0.5, training=True, *, seed=None, offset=0,
                       per_sample=False, activation=None, samples=DEFAULT_SAMPLES):
    """DropConnect (Wan et al. 2013): a linear layer whose weights are dropped.

    Args:
        x: (..., in_features) numpy array, torch tensor (CPU/CUDA) or CUDA device array; any strides.
        weight: (out_features, in_features), same kind and dtype as x.
        bias: (out_features,) or None (never dropped).
        p: drop probability of each weight, in [0, 1]; kept weights are scaled by 1/(1-p).
        training: drop weights (True) or use the mean network / moment matching (False).
        seed, offset: the mask is `fastdrop.dropout_mask(weight.shape, p, seed, offset)`, or with
            per_sample=True `dropout_mask((N, out, in), p, seed, offset)` (never materialized).
        per_sample: one weight mask per example instead of one per call.
        activation: optional callable applied to the layer output (same kind of array as x). At
            eval it selects moment-matching inference: the average of activation over `samples`
            Gaussian draws of the pre-activation (module docstring); numpy arrays and torch
            tensors only (CUDA device arrays are refused with a TypeError).
        samples: number of Gaussian draws for moment matching.
    Shape:
        x (..., I), weight (O, I), bias (O,) -> (..., O)
    Example:
        >>> y = fastdrop.dropconnect_linear(np.ones((4, 3)), np.ones((2, 3)), p=0.5, seed=0, per_sample=True)
    """
    if training is True and seed is None and per_sample is False and activation is None and \
            type(p) is float and 0.0 < p < 1.0 and type(offset) is int and offset == 0 and \
            type(samples) is int and samples >= 1:
        # a training step's call: the dense lane first (`dense_lane`; None: not the lane's)
        y = dense_lane(DROPCONNECT, x, weight, bias, p)
        if y is not None:
            return y
    return dropconnect_linear_call(x, weight, bias, p, training, seed, offset, per_sample, activation, samples)


def dropconnect_linear_call(x, weight, bias, p, training, seed, offset, per_sample, activation, samples):
    """`dropconnect_linear` without the lane (see `dropout_linear_call`)."""
    p = check_p(p)
    # checked here, not only in the pipeline: the moment-matching branch below does not reach it
    training = check_bool(training, "training")
    check_u64(offset, "offset")
    per_sample = check_bool(per_sample, "per_sample")
    if activation is not None and not callable(activation):
        raise TypeError(f"activation must be a callable or None, got {type(activation).__name__}")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {shown(samples)}")
    if not training and activation is not None and 0.0 < p:
        # under torch.compile: run eagerly (a graph break; fullgraph=True names the reason)
        return (_EAGER_MOMENT_MATCHING or _moment_matching)(x, weight, bias, p, seed, activation, int(samples))
    op = DROPCONNECT_SAMPLE if per_sample else DROPCONNECT
    y = _core.call(op, (x, weight, bias), p=p, training=training, seed=seed, offset=offset,
                   scale=train_scale(p, "inverted"))
    return y if activation is None else activation(y)


_EAGER_MOMENT_MATCHING = None


def _register_eager_moment_matching():
    """Moment matching draws its Gaussians from a torch.Generator made per call and reads its seed
    as an int, neither of which Dynamo can trace: inside torch.compile it runs eagerly, marked so,
    so that fullgraph=True says why rather than failing inside torch's tracing."""
    global _EAGER_MOMENT_MATCHING
    import torch
    _EAGER_MOMENT_MATCHING = torch._dynamo.disable(
        _moment_matching, reason="fastdrop's moment-matching inference (dropconnect_linear at eval with "
                                 "an activation) runs eagerly: it draws from a torch.Generator of its own")


_core.TORCH_OP_REGISTRARS.append(_register_eager_moment_matching)


def _moment_matching(x, weight, bias, p, seed, activation, samples):
    """mean over z of activation(mu + sigma * eps_z), mu = x Wᵀ + b, sigma² = p/(1-p) (x²)(W²)ᵀ.

    eps comes from numpy's PCG64 (numpy input) or a torch.Generator on x's device (tensors), both
    seeded with `seed`; draws are made one sample at a time, so memory stays O(N * out)."""
    if p == 1.0:
        raise ValueError("moment-matching inference needs p < 1 (p = 1 drops every weight)")
    if seed is not None:
        seed = check_u64(seed, "seed")
    x, kind = check_array(x)
    if kind == TORCH:
        torch = sys.modules["torch"]
        if torch._C._is_tracing() or tracing_dispatch_mode(torch):
            # a trace would record the torch.Generator it seeds as a constant object: a replay
            # drew other Gaussians at every call, an explicit seed included, and an exported
            # seed=None call failed inside torch
            raise RuntimeError("moment-matching inference (dropconnect_linear at eval with an "
                               "activation) cannot run under torch.jit.trace, make_fx, FakeTensorMode "
                               "or torch.export: it samples eagerly from a torch.Generator of its own; "
                               "call it eagerly, or under torch.compile (it runs eagerly there)")
        # under autocast: in float32 (where the samples are summed anyway), the result in
        # autocast's dtype, as the other ops and torch's linear give it (float32 operands too)
        autocast = _autocast.autocast_state(x)
        present = [a for a in (x, weight, bias) if a is not None]
        if autocast and all(isinstance(a, torch.Tensor) and a.dtype in _autocast.lower_dtypes(torch) for a in present):
            _core._check_storages(torch, (x, weight, bias), _OPERANDS)  # before the casts read them
            cast = [None if a is None else a.float() for a in (x, weight, bias)]
            with torch.autocast(autocast[0], enabled=False):
                y = _moment_matching(*cast, p, seed, activation, samples)
            return y.to(autocast[1])
    weight, bias = check_companions(x, kind, [("weight", weight), ("bias", bias)])
    _check((x, weight, bias), ())
    if kind == TORCH:  # memory the GEMMs below read: a freed or cut-short storage crashed them
        _core._check_storages(sys.modules["torch"], (x, weight, bias), _OPERANDS)
    if kind == CUDA_ARRAY:
        raise TypeError("moment-matching inference takes numpy arrays or torch tensors; wrap CUDA "
                        "device arrays with torch.as_tensor")
    if kind != TORCH or x.is_cpu:
        # its working arrays (x-sized copies, (N, out) moments and samples, and the weight-sized
        # W * W and float copy of W, which an expanded weight makes large from small memory) in
        # host memory, refused before the draw as the pipeline refuses an output larger than memory
        itemsize = max(x.element_size() if kind == TORCH else x.dtype.itemsize, 4)  # halves in float32
        check_output_bytes(max(math.prod(x.shape), _out_numel((x, weight, bias))) * itemsize)
    if kind == TORCH and x.is_meta:
        # shapes only: the samples' mean has activation(mu)'s shape and dtype, no seed drawn (a
        # torch.Generator on meta raised "not an accelerator": a review)
        return _meta_moment_matching(x, weight, bias, activation)
    if seed is not None:
        return _moment_matching_samples(x, weight, bias, p, seed, activation, samples, kind)
    # none drawn for an empty operand, whose result does not depend on it, as the pipeline
    if any(0 in a.shape for a in (x, weight, bias) if a is not None):
        return _moment_matching_samples(x, weight, bias, p, 0, activation, samples, kind)
    # a call that fails after the draw (an activation that cannot take the moments, memory) gives
    # the draw back, as mc_predict does
    seed, undo = _seeds.draw_torch_seed_undoably(sys.modules["torch"]) if kind == TORCH \
        else _seeds.draw_numpy_seed_undoably()
    try:
        return _moment_matching_samples(x, weight, bias, p, seed, activation, samples, kind)
    except BaseException:
        undo()
        raise


def _meta_moment_matching(x, weight, bias, activation):
    """Moment matching on meta tensors: the output a real call gives, in shape and dtype."""
    torch = sys.modules["torch"]
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    with torch.autocast("cpu", enabled=False):
        mu = torch.nn.functional.linear(x.to(work), weight.to(work), None if bias is None else bias.to(work))
        return activation(mu).to(x.dtype)


def _moment_matching_samples(x, weight, bias, p, seed, activation, samples, kind):
    """`_moment_matching` on checked operands with the seed resolved."""
    var_factor = p / (1.0 - p)
    if kind == TORCH:
        import torch
        import torch.nn.functional as F
        # half inputs in float32, as every other half path: a bfloat16 running sum stops growing
        # at 256 samples of values near 1
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xw, ww = x.to(work), weight.to(work)
        # outside autocast too, whose GEMMs would hand the sum bfloat16 terms
        with torch.autocast("cuda" if x.is_cuda else "cpu", enabled=False):
            mu = F.linear(xw, ww, None if bias is None else bias.to(work))
            var = var_factor * F.linear(xw * xw, ww * ww)
            # sqrt's derivative at 0 is inf, and inf * 0 (an all-zero input row: a ReLU output,
            # padding) made the gradients NaN; at zero variance the noise term's gradient is 0
            positive = var > 0
            sigma = torch.where(positive, torch.sqrt(torch.where(positive, var, 1.0)), 0.0)
            gen = torch.Generator(device=x.device).manual_seed(seed)
            acc = None
            for _ in range(samples):
                eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=work)
                a = activation(mu + sigma * eps)
                acc = a if acc is None else acc + a
        return (acc / samples).to(x.dtype)
    work = np.float32 if x.dtype == np.float16 else x.dtype
    xw, ww = x.astype(work, copy=False), weight.astype(work, copy=False)
    mu = np.matmul(xw, ww.T) + (0 if bias is None else bias.astype(work))
    sigma = np.sqrt(var_factor * np.matmul(xw * xw, (ww * ww).T))
    gen = np.random.default_rng(seed)
    acc = np.zeros(mu.shape, work)
    for _ in range(samples):
        acc += activation(mu + sigma * gen.standard_normal(mu.shape, dtype=work))
    return (acc / samples).astype(x.dtype, copy=False)
