"""MC dropout (Gal & Ghahramani 2016): predictive statistics over T stochastic forward passes.

mc_predict keeps fastdrop's stochastic modules (fastdrop.nn.Dropout*, DropPath, DropoutLinear, DropoutMatmul,
DropConnectLinear) active, leaves every other module as it is, and streams the statistics (Chan et
al.'s pairwise merge of mean and M2), so memory does not grow with T. It changes nothing in the
model: a sampler installed for the calling thread (fastdrop/nn/_mc_state.py) receives each
fastdrop module's input, so other threads may run the same model, or mc_predict, meanwhile.

Every sample draws its own masks by a fixed rule, whatever the fast path: in sample t, the k-th
call of a fastdrop stochastic module uses (seed, offset + t * 2**32 + k), the mask the module's op
draws for that one sample's input. The one-sample-at-a-time path (chunk=1, fused=False) calls the
public ops with exactly that seed and offset; every faster path must give the same masks:
- chunk > 1: samples [t0, t0 + n) run as one forward of the input repeated n times along dim 0;
  each stochastic module applies sample t's mask to rows [t*N, (t+1)*N): one kernel call for
  Dropout and DropoutLinear (T offsets in one call), T masked weight copies and one batched GEMM
  for DropConnectLinear, and one op call per sample slice for the others. That needs every
  stochastic module's input to keep the samples stacked along its dim 0. Sample 0 runs alone
  first and records each call's input shape; a batched call whose input is not that shape with
  dim 0 times n (a model that moves its batch dim, as a sequence-first transformer does), or whose
  first call's n slices differ (they are one input repeated), stops the batching and the samples
  run one at a time;
- a Sequential runs its layers before the first stochastic module once;
- fused=True: a tail [fastdrop.nn.Dropout, nn.Linear] or [DropoutLinear] masks T copies of the
  hidden activation in one kernel call and multiplies them in one GEMM.
Hooks are honoured: the prefix and the fused tail are skipped where a hook (the model's, a
layer's of the tail, or a global module hook) or an instance-level forward would be bypassed.

Imports torch (fastdrop re-exports mc_predict lazily, so `import fastdrop` does not).
"""
import contextlib
import math
import threading
import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch

from .. import _core, _seeds
from . import _mc_state
from ..functional import drop_path
from ..linear import DROPOUT_LINEAR, dropconnect_linear, dropout_linear
from .._checks import check_bool, check_mode, check_p, check_storage, check_u64, module_inplace_flag, numpy_view
from .._torch_state import tracing_dispatch_mode
from ..kernels import mc_dropout_cpu
from ..kernels.philox import kernel_rng_args
from .convert import is_timm_drop_path, is_torchvision_stochastic_depth
from .drop_path import DropPath
from .dropout import Dropout, _DropoutNd
from .linear import DropConnectLinear, DropoutLinear
from .matmul import DropoutMatmul
from ..matmul import dropout_matmul

_U64 = (1 << 64) - 1

_STOCHASTIC = (_DropoutNd, DropPath, DropoutLinear, DropConnectLinear, DropoutMatmul)
# The batched DropConnect path holds n masked copies of the weight; above this many elements it
# runs one sample slice at a time instead (same masks, no n-fold weight memory).
_DROPCONNECT_BATCH_MAX = 1 << 24


class _UnfusedEncoderLayers(torch.overrides.TorchFunctionMode):
    """A torch-function mode that changes nothing, on while mc_predict samples a model with an
    nn.TransformerEncoderLayer, on the calling thread only. In eval mode without autograd, as
    mc_predict runs it, torch computes such a layer (and nn.TransformerEncoder's nested-tensor
    path) in one fused op that never calls the layer's dropout modules: their samples were all
    the same, silently where other fastdrop layers of the model ran. A tensor argument "with a
    torch function", as any argument is under a mode, is one of the conditions that keeps torch
    on the unfused path. torch's process-wide switch (torch.backends.mha.set_fastpath_enabled)
    would do it for every thread: another thread's forward of the same model would change (its
    padded positions are zeros only on the fused path), and a toggle from another thread during
    the call would bring the skipped dropouts back."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class MCResult(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    mutual_info: Optional[torch.Tensor] = None


# ----------------------------------------------------------------------------- finding the modules
def _foreign_dropout(model):
    """'name (class)' of the dropout layers fastdrop does not drive: torch's, timm's, torchvision's."""
    found = []
    for name, m in model.named_modules(prefix="model"):
        if isinstance(m, _STOCHASTIC):  # fastdrop's Dropout* are torch.nn.Dropout* subclasses too
            continue
        cls = type(m)
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and cls.__module__.startswith("torch.nn"):
            found.append(f"{name} (torch.nn.{cls.__name__})")
        elif isinstance(m, torch.nn.modules.dropout._DropoutNd) or is_timm_drop_path(m) or \
                is_torchvision_stochastic_depth(m):
            found.append(f"{name} ({cls.__module__}.{cls.__qualname__})")
    return found


def _graph_calls_fastdrop(model):
    """Does a torch.fx graph in the model (an exported program's module, a traced GraphModule)
    call fastdrop: one of its torch ops, or one of its functions (a fastdrop module traced as the
    root of torch.fx.symbolic_trace records its functional call)?"""
    def is_fastdrop(target):
        return getattr(target, "namespace", None) == "fastdrop" or \
            str(getattr(target, "__module__", None)).startswith("fastdrop.")
    for m in model.modules():
        graph = getattr(m, "graph", None) if isinstance(m, torch.fx.GraphModule) else None
        if graph is not None and any(is_fastdrop(n.target) for n in graph.nodes):
            return True
    return False


def _stochastic_modules(model):
    drops = [m for m in model.modules() if isinstance(m, _STOCHASTIC)]
    foreign = _foreign_dropout(model)
    hint = ("convert them with fastdrop.nn.convert(model) first (it leaves AlphaDropout and "
            "FeatureAlphaDropout alone)")
    if not drops and foreign:
        raise ValueError(f"mc_predict: the model has no fastdrop stochastic module, only dropout "
                         f"layers mc_predict does not drive: {', '.join(foreign)}; every sample would "
                         f"be the same forward (zero variance); {hint}")
    if not drops and _graph_calls_fastdrop(model):
        raise ValueError("mc_predict: the model calls fastdrop's ops from a traced graph (a torch.export "
                         "program's .module(), a torch.fx GraphModule) instead of through fastdrop's modules, "
                         "which mc_predict drives to batch and count the samples: pass the model before "
                         "export or tracing, or call the program once per sample yourself (each call draws "
                         "its own masks)")
    if not drops:
        raise ValueError("mc_predict: the model has no stochastic module (fastdrop.nn.Dropout*, DropPath, "
                         "DropoutLinear, DropConnectLinear): every sample would be the same forward")
    if foreign:
        warnings.warn(f"mc_predict: these dropout layers are not fastdrop's and run as they are (off in "
                      f"eval mode, unless a subclass's forward keeps them on), so fastdrop's mask "
                      f"contract does not cover them: {', '.join(foreign)}; {hint} (a subclass with its "
                      f"own forward is not converted)", stacklevel=4)
    attention = [f"{name} (dropout={m.dropout})" for name, m in model.named_modules(prefix="model")
                 if isinstance(m, torch.nn.MultiheadAttention) and m.dropout > 0]
    # the same for torch's recurrent layers: dropout between stacked layers, a float (a review)
    recurrent = [f"{name} (dropout={m.dropout})" for name, m in model.named_modules(prefix="model")
                 if isinstance(m, torch.nn.RNNBase) and m.dropout > 0 and m.num_layers > 1]
    if recurrent:
        warnings.warn(f"mc_predict: these recurrent layers drop between their stacked layers with a "
                      f"float inside the layer, not a module, which mc_predict cannot sample (off in "
                      f"eval mode): {', '.join(recurrent)}; the samples' variance leaves that dropout "
                      f"out. Stack one-layer nn.RNN / LSTM / GRU modules with fastdrop.nn.Dropout between "
                      f"them, or set their dropout to 0 to silence this", stacklevel=4)
    if attention:
        # (nn.TransformerEncoderLayer's attention among them: fastdrop.nn.convert replaces its
        # Dropout modules, not this float; a review, 2026-12-06)
        warnings.warn(f"mc_predict: these nn.MultiheadAttention layers drop attention weights with a "
                      f"float inside the layer, not a module, which mc_predict cannot sample (off in "
                      f"eval mode): {', '.join(attention)}; the samples' variance leaves that dropout "
                      f"out. Write the attention with fastdrop.nn.DropoutMatmul (dropout(attn) @ v), "
                      f"or set their dropout to 0 to silence this", stacklevel=4)
    return drops


def _not_run(model, ran):
    """'name (class)' of the model's fastdrop stochastic modules that sample 0's forward did not
    call (ran: the ids it called)."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules(prefix="model")
            if isinstance(m, _STOCHASTIC) and id(m) not in ran]


# ----------------------------------------------------------------------------- one module, n samples
class _NotStacked(Exception):
    """A batched forward met a stochastic call whose input does not stack the samples on dim 0."""


class _Sampler:
    """Called by each fastdrop stochastic module's forward (`_mc_state`) during one forward of
    samples [t0, t0 + n): applies the module's masks of those samples. While `shapes` is a list
    (the one-sample forward of sample 0) it records each call's input shape; a batched forward
    checks its calls against them."""

    def __init__(self, seed, base):
        self.seed, self.base = seed, base
        self.t0, self.n, self.k = 0, 1, 0
        self.shapes = None
        self.ran = set()  # ids of the modules sample 0 ran

    def offsets(self):
        """The offsets of this call (k) for the n samples; modulo 2**64 as the rank streams are."""
        k = self.k
        self.k += 1
        return [(self.base + (self.t0 + t) * (1 << 32) + k) & _U64 for t in range(self.n)]

    def __call__(self, m, x, *rest):  # (through _mc_state.sample, which Dynamo leaves eager)
        if self.n > 1:
            self._check_stacked(x)
        elif self.t0 == 0:
            self.ran.add(id(m))
            if self.shapes is not None:
                self.shapes.append(tuple(x.shape))
        y = _batched(m, x, self.seed, self.offsets(), rest)
        inplace = getattr(m, "inplace", False)
        if inplace is not False and module_inplace_flag(inplace):
            # the module's in-place write, which a model may rely on (`self.drop(h)`, its result
            # unused, as torch's Dropout(inplace=True) allows): x is this sample's activation (the
            # samples' input is a copy or a repeat of the prefix's output, never shared)
            return x.copy_(y)
        return y

    def _check_stacked(self, x):
        k, n = self.k, self.n
        if self.shapes is None or k >= len(self.shapes) or not self.shapes[k]:
            raise _NotStacked
        one = self.shapes[k]
        if tuple(x.shape) != (n * one[0],) + one[1:]:
            raise _NotStacked
        if k == 0:  # the first call's input is one input repeated: its n slices are equal
            slices = x.reshape(n, -1)
            # compared at about 4096 evenly spread positions, not in full (a pass over the whole
            # input cost a tenth of an MLP's mc_predict): a slice mixing other rows differs there
            probe = slices[:, ::max(1, slices.shape[1] // 4096)]
            first = probe[:1].expand(n - 1, -1)
            if not torch.equal(probe[1:], first) and not _repeats(probe[1:], first):
                raise _NotStacked


def _repeats(rest, first):
    """Are the slices `rest` copies of `first` up to rounding? A GEMM before the first stochastic
    layer (a plain module's `fc1`, not a Sequential's prefix, which runs once) gives a repeated
    row other last bits at other positions in the batch (BLAS's blocking: 28 of 31 float64 rows
    equal to row 0, a review, 2026-12-07), where a reordering of rows across examples gives other
    values. Each element is compared to 2**8 ulps of its own magnitude plus the probe's median
    magnitude (for a value near 0 from cancellation), not of the probe's largest (one large
    feature then let every other element through; a review): float32 GEMMs of 16-4096 terms,
    batches of 1-7 rows repeated 3-31 times, differed by at most 21 such ulps; at most 1/16 for
    the half types; NaN equal to NaN (a NaN in the input is in every slice). Integer, bool and complex
    slices compare exactly. A reorder whose values differ by less than that rounding (rows that
    one dominant feature makes nearly equal) passes: its samples are valid MC samples, with other
    masks than chunk=1's (README)."""
    same = (rest == first) | (rest.isnan() & first.isnan())
    exact = bool(same.all())
    if exact or not rest.is_floating_point():
        return exact
    ulps = min(256 * torch.finfo(rest.dtype).eps, 1 / 16)
    first_finite = first.isfinite()
    finite = first_finite & rest.isfinite()
    size = torch.where(finite, torch.maximum(first.abs(), rest.abs()), 0)
    floor = float(first.abs()[first_finite].median()) if bool(first_finite.any()) else 0.0
    return bool((same | (finite & ((rest - first).abs() <= ulps * (size + floor)))).all())


def _scale(p, mode):
    return 1.0 if (mode == "classic" or p == 1.0) else 1.0 / (1.0 - p)


def _one_sample(m, x, seed, offset, rest=()):
    """m's stochastic op on one sample's input (rest: DropoutMatmul's b), through the public op
    with (seed, offset). Never in place: x may be the prefix output that every sample reuses."""
    if isinstance(m, DropoutMatmul):
        return dropout_matmul(x, *rest, m.p, seed=seed, offset=offset, mode=m.mode)
    if isinstance(m, DropoutLinear):
        return dropout_linear(x, m.weight, m.bias, m.p, seed=seed, offset=offset, mode=m.mode)
    if isinstance(m, DropConnectLinear):
        return dropconnect_linear(x, m.weight, m.bias, m.p, seed=seed, offset=offset,
                                  per_sample=m.per_sample)
    if isinstance(m, DropPath):
        return drop_path(x, m.p, seed=seed, offset=offset, scale_by_keep=m.scale_by_keep, mode=m.mode,
                         scaling=m.scaling)
    return m._fn(x, m.p, seed=seed, offset=offset, mode=m.mode)


def _sample_masks(src, p, scale, seed, offsets):
    """(n, L) array: row t = src[t] (or src[0], broadcast) with sample t's mask, one kernel call."""
    n = len(offsets)
    if src.shape[0] not in (1, n):  # the kernel reads row t, or row 0 for every sample
        raise ValueError(f"_sample_masks: src has {src.shape[0]} rows for {n} samples (1 or {n})")
    out = np.empty((n, src.shape[1]), src.dtype)
    lo = np.array([o & 0xFFFFFFFF for o in offsets], np.uint64)
    hi = np.array([o >> 32 for o in offsets], np.uint64)
    key_lo, key_hi, _, _, thr = kernel_rng_args(seed, 0, p)
    kern = mc_dropout_cpu.dropout_samples if out.size >= mc_dropout_cpu.PARALLEL_MIN else \
        mc_dropout_cpu.dropout_samples_serial
    # The fused head and DropConnect mask n copies of one row: the kernel reads that (1, L) row for
    # every sample, never copied (a stride-0 broadcast view ran its loop scalar)
    kern(np.ascontiguousarray(src), out, lo, hi, key_lo, key_hi, thr, src.dtype.type(scale))
    return out


def _kernel_ok(x):
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _batched(m, x, seed, offsets, rest=()):
    """m on the rows of n samples stacked along dim 0, sample t's rows with offsets[t] (rest:
    DropoutMatmul's b, split with x where it stacks the samples too, else shared)."""
    n = len(offsets)
    if n == 1:
        return _one_sample(m, x, seed, offsets[0], rest)
    if x.shape[0] % n:
        raise ValueError(f"mc_predict: a dropout input of shape {tuple(x.shape)} cannot be split into "
                         f"{n} samples along dim 0; pass chunk=1")
    if isinstance(m, (Dropout, DropoutLinear)) and _kernel_ok(x):
        xn = numpy_view(x.detach().resolve_neg().contiguous())[0].reshape(n, x.numel() // n)
        xm = _sample_masks(xn, m.p, _scale(m.p, m.mode), seed, offsets)
        xm = torch.from_numpy(xm).reshape(x.shape)
        return xm if isinstance(m, Dropout) else torch.nn.functional.linear(xm, m.weight, m.bias)
    if isinstance(m, DropConnectLinear) and not m.per_sample and _kernel_ok(x) and \
            x.dtype == m.weight.dtype and n * m.weight.numel() <= _DROPCONNECT_BATCH_MAX:
        w = numpy_view(m.weight.detach().resolve_neg().contiguous())[0].reshape(1, -1)
        wm = torch.from_numpy(_sample_masks(w, m.p, _scale(m.p, "inverted"), seed, offsets))
        rows = x.shape[0] // n * math.prod(x.shape[1:-1])
        y = torch.bmm(x.reshape(n, rows, x.shape[-1]), wm.reshape(n, *m.weight.shape).mT)
        y = y.reshape(*x.shape[:-1], m.weight.shape[0])
        return y if m.bias is None else y + m.bias
    if isinstance(m, DropoutMatmul):
        (b,) = rest
        if b.dim() > 2 and b.dim() == x.dim() and b.shape[0] == x.shape[0]:  # (attention's V, stacked)
            parts = zip(x.chunk(n, 0), b.chunk(n, 0))
        elif b.dim() == 2 or b.dim() < x.dim() or b.shape[0] == 1:  # a matrix, or broadcast over the
            parts = ((xs, b) for xs in x.chunk(n, 0))                 # batch: every sample's
        else:  # b's dim 0 stretches x's (a 1-row x): not the samples stacked
            raise _NotStacked
        return torch.cat([_one_sample(m, xs, seed, off, (bs,)) for (xs, bs), off in zip(parts, offsets)], 0)
    # Dropout1d/2d/3d, DropPath, per-sample DropConnect, CUDA and half inputs: one op per sample.
    return torch.cat([_one_sample(m, xs, seed, off) for xs, off in zip(x.chunk(n, 0), offsets)], 0)


# ----------------------------------------------------------------------------- fused head
def _hooked(m):
    """m's call does more than its class's forward: hooks, or a forward set on the instance (as
    accelerate's hooks do)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def _runs_forward_of(m, cls):
    """m is a cls whose call runs cls's own forward (not a subclass's override: a residual
    `nn.Sequential` or a `DropoutLinear` with an activation after it), so its layers may be
    called one by one, or the fused GEMM may stand in for it."""
    return isinstance(m, cls) and type(m).forward is cls.forward


def _global_hooks():
    module = torch.nn.modules.module
    return bool(getattr(module, "_global_forward_hooks", None) or
                getattr(module, "_global_forward_pre_hooks", None))


def _fused_head(rest):
    """(p, mode, weight, bias, op) when the tail is [fastdrop Dropout, nn.Linear] or [DropoutLinear]
    and none of its layers has a hook the fused GEMM would skip. op: the masked op whose operand
    checks the GEMM stands in for (DropoutLinear's), or None (nn.Linear's own F.linear runs)."""
    mods = list(rest)
    if any(_hooked(m) for m in mods):
        return None
    if len(mods) == 2 and type(mods[0]) is Dropout and type(mods[1]) is torch.nn.Linear:
        return mods[0].p, mods[0].mode, mods[1].weight, mods[1].bias, None
    if len(mods) == 1 and _runs_forward_of(mods[0], DropoutLinear):
        m = mods[0]
        return m.p, m.mode, m.weight, m.bias, DROPOUT_LINEAR
    return None


def _checked_head(h, head):
    """head with the checks the layers' own forwards make on h, which the fused GEMM skips: the
    dropout's p and mode as set on the module (a bool p, a misspelt mode), and a DropoutLinear's
    operands (shapes, dtypes, devices: a weight left on the meta device); refused as the model's
    forward refuses them."""
    p, mode, weight, bias, op = head
    p, mode = check_p(p), check_mode(mode)
    if op is not None:
        _core.validate(op, (h, weight, bias), ())
    return p, mode, weight, bias, op


def _run_fused_head(h, head, seed, offsets):
    """All samples of [Dropout, Linear] on h at once: one kernel call writes the n masked copies
    of h (mask t with offsets[t]), one torch GEMM multiplies them by the weight."""
    p, mode, weight, bias, _ = head
    check_storage(h, "the head's input")  # (before torch's copy, which would read past it too)
    h2 = h.detach().resolve_neg().contiguous()
    if h2.numel() == 0:  # no mask to make (and numpy may not view an empty (0, 2**58, ...) tensor)
        return torch.nn.functional.linear(h2.new_empty((len(offsets),) + tuple(h2.shape)), weight, bias)
    masked = torch.from_numpy(_sample_masks(numpy_view(h2)[0].reshape(1, -1), p, _scale(p, mode), seed, offsets))
    masked = masked.reshape((len(offsets),) + tuple(h2.shape))
    return torch.nn.functional.linear(masked, weight, bias)


# ----------------------------------------------------------------------------- statistics
def _check_class_dim(out_shape, x):
    """logits=True takes softmax over the output's last dim: refused where that is no class dim
    of 2 or more: one logit (K = 1), or a batched input's (N,) output, whose softmax would run over
    the batch (the call gives its draw back). An unbatched input's (K,) output is its classes; an x
    of 2 or more dims whose first size is the output's only one is taken for a batch (an unbatched
    image with as many channels as classes would need x[None])."""
    if out_shape and out_shape[-1] >= 2 and not (len(out_shape) == 1 and x.dim() >= 2 and
                                                 out_shape[0] == x.shape[0]):
        return
    raise ValueError(f"mc_predict(logits=True) needs outputs (N, ..., K) (or (K,) for an unbatched input) "
                     f"with a class dim of K >= 2 last, got a sample's output of shape {out_shape} for "
                     f"an input of shape {tuple(x.shape)}; for one logit per example z (a sigmoid "
                     f"classifier) return torch.stack([z, torch.zeros_like(z)], -1), or pass "
                     f"logits=False (an unbatched input with as many channels as classes: pass x[None])")


class _Merger:
    """Chan et al.'s pairwise merge of (count, mean, M2): streaming mean/variance over chunks."""

    def __init__(self):
        self.n, self.mean, self.m2, self.h_sum, self.dtype = 0, None, None, None, None

    def add(self, y, logits):
        # y: (c, N, ...) outputs of c samples (an unbatched input's: (c, K))
        self.dtype = y.dtype
        y = y.to(torch.complex128) if y.is_complex() else y.double()
        if logits:
            y = torch.softmax(y, -1)
            ent = -(y * torch.log(y.clamp_min(1e-300))).sum(-1).sum(0)
            self.h_sum = ent if self.h_sum is None else self.h_sum + ent
        c = y.shape[0]
        mean_b = y.mean(0)
        m2_b = _squared(y - mean_b).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = c, mean_b, m2_b
            return
        n = self.n + c
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (c / n)
        self.m2 = self.m2 + m2_b + _squared(delta) * (self.n * c / n)
        self.n = n


def _batch_mixing_layer(model):
    """What in model mixes stacked samples, in words, or None: a sequence-first attention or
    recurrent layer, torch's default (L, N, E) layout, whose dim 0 is the sequence (stacked samples
    make one longer sequence, which attention mixes and a recurrence carries from sample to sample:
    not detectable from the shapes); a BatchNorm without running statistics, which normalizes by
    its batch's own statistics in eval mode too (stacked samples would share them; a review)."""
    for name, m in model.named_modules():
        where = name or type(model).__name__
        if isinstance(m, (torch.nn.MultiheadAttention, torch.nn.RNNBase)) and not m.batch_first:
            return (f"{where} is a sequence-first nn.{type(m).__name__} (batch_first=False), whose input's "
                    f"dim 0 is the sequence (also where the model moves its batch dim to dim 1 first)")
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None and \
                m.running_var is None:
            return (f"{where} is an nn.{type(m).__name__} without running statistics "
                    f"(track_running_stats=False), which normalizes by its batch's own statistics in "
                    f"eval mode too")
    return None


def _squared(d):
    """|d|^2: a complex output's variance is E|y - mean|^2, real, as torch.var's and numpy's."""
    return d.real ** 2 + d.imag ** 2 if d.is_complex() else d ** 2


def _sequence_dims(model):
    """The widths of the attention and recurrent layers in model, whose 2-d input may be one sequence."""
    return {m.embed_dim if isinstance(m, torch.nn.MultiheadAttention) else m.input_size
            for m in model.modules() if isinstance(m, (torch.nn.MultiheadAttention, torch.nn.RNNBase))}


def _is_compiled(model):
    optimized = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    return optimized is not None and isinstance(model, getattr(optimized, "OptimizedModule", ()))


def _output(y):
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"mc_predict: the model must return one tensor (N, ...), got {type(y).__name__}")
    if y.dim() == 0:  # the samples are stacked and split along dim 0
        raise ValueError("mc_predict: the model must return one tensor (N, ...) with the batch dim "
                         "first, got a 0-d tensor (a reduced loss?)")
    return y


# A model whose fastdrop modules exist but do not run: every sample would be the same output
_NONE_RAN = ("mc_predict: none of the model's fastdrop stochastic modules ran in its forward, so every "
             "sample would be the same (zero variance); the attention's own dropout, a float inside "
             "nn.MultiheadAttention, is not a module and never samples")


def _compiled_parts(model):
    """Does model hold compiled code that would run while it samples: a submodule that is a
    torch.compile wrapper, or any module whose .compile() ran (nn.Module.compile, torch's in-place
    form), the model itself included (a root wrapper is unwrapped before)?"""
    return any(_is_compiled(m) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


@contextlib.contextmanager
def _eagerly(compiled):
    """The context the samples run in: for a model with compiled parts (`_compiled_parts`), torch's
    "force_eager" stance, which runs them as their original modules. Compiled, they reach the
    sampler through a graph break (`_mc_state.sample` is opaque to Dynamo), which fullgraph=True
    refuses (Dynamo's "Unsupported" from inside the forward; a review, 2026-12-06), and a compiled
    nn.TransformerEncoderLayer takes torch's fused eval path, which skips its dropout modules
    (Dynamo traces the path's condition as it finds it: `_UnfusedEncoderLayers` cannot reach it).
    torch's stance is process-wide, one value that each set_stance saves and puts back: calls on
    several threads at once share one stance, set by the first to enter and put back by the last
    to leave (each restoring its own, two overlapping calls put them back out of order: the
    second sampled compiled and the process stayed in force_eager; a review). While any such call
    samples, compiled code that other threads run runs eagerly too (the same values, without the
    compiled speed)."""
    if not compiled:
        yield
        return
    global _EAGER_CALLS, _EAGER_STANCE
    with _EAGER_LOCK:
        if _EAGER_CALLS == 0:
            _EAGER_STANCE = torch.compiler.set_stance("force_eager")  # (set now; its __exit__ restores)
        _EAGER_CALLS += 1
    try:
        yield
    finally:
        with _EAGER_LOCK:
            _EAGER_CALLS -= 1
            if _EAGER_CALLS == 0:
                _EAGER_STANCE.__exit__(None, None, None)
                _EAGER_STANCE = None


def _compiled_function_broke(e):
    """Is e Dynamo's refusal of the sampler's graph break (`_mc_state.sample`, a disabled function)
    under fullgraph=True, from a compiled function inside the forward (`@torch.compile` on a method,
    `self.body = torch.compile(fn)`), which `_compiled_parts` cannot see (it sees modules)?"""
    return type(e).__name__ == "Unsupported" and type(e).__module__.startswith("torch._dynamo") and \
        "disable" in str(e)


_COMPILED_FUNCTION = (
    "mc_predict: a function compiled with fullgraph=True inside the model's forward reaches a "
    "fastdrop module, which hands its input to mc_predict's sampler outside the graph (a graph "
    "break fullgraph refuses); mc_predict runs compiled modules eagerly (torch.compile(module), "
    "module.compile()) but cannot see compiled functions: compile the module instead, or compile "
    "the function without fullgraph=True")


_EAGER_LOCK = threading.Lock()
_EAGER_CALLS = 0  # mc_predict calls sampling under `_eagerly`'s stance now
_EAGER_STANCE = None  # the set_stance object of the first of them (it holds the stance to put back)


def _positive_int(v, name, none_ok=False):
    """v as an int (Python or numpy integer, not bool) >= 1; ValueError otherwise."""
    if v is None and none_ok:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if none_ok else ''}, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------- the driver
# Called from compiled code, it runs eagerly (a graph break): it samples eagerly by design, and
# Dynamo tracing into it failed at torch's set_stance (forbidden in a compiled region; `_eagerly`).
# The wrapper is one frame more between the caller and the warnings (their stacklevel counts it).
@torch.compiler.disable
def mc_predict(model, x, samples=32, seed=None, *, offset=0, logits=False, chunk=None, fused=True):
    """MC dropout: predictive statistics over `samples` stochastic forward passes.

    Only fastdrop's stochastic modules (fastdrop.nn.Dropout*, DropPath, DropoutLinear,
    DropConnectLinear) sample, whatever their training flag; BatchNorm and every other module run
    as they are. The model itself is not changed (no flag set, no forward replaced), so other
    threads may use it meanwhile. Statistics are accumulated in a streaming way
    (Welford/Chan merges of chunks), so memory does not grow with `samples`. A call that fails
    gives back its seed draw and what its forwards wrote into the buffers of modules left in
    training mode (a BatchNorm's running statistics).

    Mask contract: in MC sample t (0 <= t < samples), the k-th call of a fastdrop stochastic module
    in the forward (k = 0, 1, ... in execution order) uses `seed` and offset `offset + t * 2**32 + k`,
    and draws the mask that module's op draws for one sample's input with that seed and offset
    (`dropout_mask(x.shape, ...)` for Dropout and DropoutLinear, over (N, C) for Dropout1d/2d/3d,
    over (N,) or (1,) for DropPath, over the weight for DropConnectLinear, over (N, out, in) for
    DropConnectLinear(per_sample=True)). So every sample has its own masks, DropConnect included.
    With seed=None under torch.distributed, rank r runs at offset + r * 2**48 (mod 2**64), as every
    seed=None call does (`fastdrop.set_rank_streams`).

    Fast paths (same masks, same contract): for an nn.Sequential (or a subclass that keeps its
    forward), the layers before the first stochastic module run once, taken for deterministic
    (not where one of them is a dropout layer fastdrop does not drive, which a subclass may keep
    on in eval, nor with chunk=1 given: a prefix with randomness of its own, a noise layer, needs
    chunk=1; and a prefix whose output is not one tensor, an nn.LSTM's tuple, is run again with
    the rest in every sample);
    samples are evaluated `chunk` at a time as one batched forward (auto: when no other module is
    in training mode); and a tail `[fastdrop.nn.Dropout, nn.Linear]` (or a DropoutLinear that keeps
    its class's forward) is evaluated for all samples of a
    chunk with one mask-kernel call (T masked copies of the hidden activation) and one torch GEMM
    (`fused=True`, CPU float32/float64). `chunk=1, fused=False` evaluates one sample at a time.
    Batching samples assumes the model treats examples independently (every torch layer in eval
    mode does, but the BatchNorm below): a forward that mixes the rows of its batch with plain torch ops (`h - h.mean(0)`,
    attention across the batch), or whose number of dropout calls depends on the data, gives other
    statistics with chunk > 1 and cannot be detected: pass chunk=1 for such a model. A model with a
    sequence-first nn.MultiheadAttention or nn.RNN / LSTM / GRU (batch_first=False, torch's default,
    also inside nn.Transformer* layers) runs one sample at a time: its dim 0 is the sequence; so
    does one with a BatchNorm without running statistics (track_running_stats=False: batch
    statistics in eval mode too), and
    a 2-d float input as wide as an nn.MultiheadAttention's embed_dim or an RNN's input_size that
    the samples reach, taken for one unbatched sequence (L, E) (token ids, integers, batch). An
    unbatched sequence projected first (Linear, then attention), or hand-written attention over
    it, is not detected: pass chunk=1.

    Args:
        model: a torch.nn.Module mapping x (N, ...) to (N, ...) outputs, with at least one fastdrop
            stochastic module (`fastdrop.nn.convert(model)` swaps torch's / timm's / torchvision's
            dropout layers for fastdrop's).
        x: input tensor.
        samples: T, the number of MC samples.
        seed: int, or None to draw one from torch's generator.
        offset: int; sample t's masks use offsets from offset + t * 2**32.
        logits: outputs are classifier logits: also return the predictive entropy and the
            mutual information (BALD) of the softmax probabilities, and mean/var of the probabilities.
        chunk: samples per batched forward (None: auto, 1: one forward per sample).
        fused: use the fused [Dropout, Linear] head when the model ends in one.
    Returns:
        MCResult(mean, var, entropy, mutual_info); var is the unbiased sample variance
        (zeros when samples == 1); entropy and mutual_info are None unless logits=True. Computed in
        float64, returned in the wider of x's and the model output's float dtypes (torch's default
        float dtype stands for an integer x or output). A complex output (an FFT) gets a complex
        mean and a real variance E|y - mean|^2, as torch.var's.
    Raises:
        ValueError: the model has no fastdrop stochastic module (the message names the torch, timm
            or torchvision dropout layers found, which fastdrop.nn.convert replaces), or bad
            samples / chunk / offset. A warning names such layers when fastdrop's are present too.
    Example:
        >>> r = fastdrop.mc_predict(fastdrop.nn.convert(model).eval(), x, samples=32, logits=True)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("mc_predict: x must have a batch dim (N, ...), got a 0-d tensor")
    samples = _positive_int(samples, "samples")
    chunk = _positive_int(chunk, "chunk", none_ok=True)
    logits, fused = check_bool(logits, "logits"), check_bool(fused, "fused")  # "False" is truthy
    offset = check_u64(offset, "offset")
    if offset + samples * (1 << 32) > _U64 + 1:  # the last sample's offsets end at offset + samples*2**32 - 1
        raise ValueError(f"offset {offset} leaves no room for {samples} samples (offset + samples*2**32 "
                         f"must not exceed 2**64)")
    if seed is not None:
        seed = check_u64(seed, "seed")
    # a torch.compile'd model samples through its original module, eagerly: the compiled graph
    # holds the modules' ops, not the sampler's per-sample masks (compiled parts inside it:
    # `_eagerly`). Hooks on the wrapper itself run as its call runs them: the samples then go
    # through the wrapper, under torch's force_eager stance (a review, 2026-12-07: they were lost)
    # (not `_hooked`: torch sets every wrapper's own `forward` on the instance, which would keep
    # every compiled model off the prefix split and the fused head; a review)
    compiled = _is_compiled(model)
    wrapper = model if compiled and (model._forward_hooks or model._forward_pre_hooks) else None
    model = getattr(model, "_orig_mod", model) if compiled else model
    drops = _stochastic_modules(model)  # refusals come before the seed draw
    drop_ids = {id(m) for m in drops}
    # Batching samples and running the deterministic prefix once are valid only when nothing else
    # in the model behaves differently per batch (e.g. BatchNorm in training mode).
    others_eval = not any(m.training for m in model.modules() if id(m) not in drop_ids)
    auto_chunk = chunk is None
    if chunk is None:
        chunk = min(samples, 32) if others_eval else 1
    elif chunk > 1 and not others_eval:
        raise ValueError("mc_predict: chunk > 1 needs every non-dropout module in eval mode "
                         "(call model.eval() first; mc_predict keeps fastdrop's dropout active)")
    mixing = _batch_mixing_layer(model)
    if chunk > 1 and mixing:
        if not auto_chunk:
            warnings.warn(f"mc_predict: chunk={chunk} stacks the samples along dim 0 of the input, and "
                          f"{mixing}: the samples run one at a time", stacklevel=3)
        chunk = 1
    if torch._C._is_tracing() or tracing_dispatch_mode(torch):
        # its samples run eagerly (host-side masks, streaming statistics, a seed read as an int):
        # under fake tensors the first int() failed with torch's DataDependentOutputException
        raise RuntimeError("mc_predict cannot run under make_fx, FakeTensorMode or torch.jit.trace: "
                           "it samples eagerly; trace or compile the model itself, and call "
                           "mc_predict on real tensors")
    # what no sample could run on, refused before the seed draw as every op refuses it. A model's
    # own errors (a dtype its first layer does not take) come from its forward, after the draw,
    # and so does a tensor subclass that reaches a fastdrop layer (the model may unwrap one first:
    # a jagged NestedTensor padded by its first module is valid input): a failed call gives its
    # draw back (below)
    if x.device.type == "meta":
        raise ValueError("mc_predict: x is on device meta, which holds no data to sample on")
    if seed is None:
        if getattr(x, "is_cuda", False) and torch.cuda.is_current_stream_capturing():
            # one host seed for all samples: a captured graph would replay it forever
            raise RuntimeError("mc_predict with seed=None cannot be captured in a CUDA graph (its seed "
                               "is drawn on the host, so every replay would draw the same samples); "
                               "pass seed= explicitly for a fixed set of masks, or call it eagerly")
        # the generator as it was: a call that fails (a model error, an input the model cannot
        # take) gives back its draw, as every op's refusal leaves the stream untouched
        seed, give_back = _seeds.draw_torch_seed_undoably(torch)
        base = _seeds.stream_offset(offset)
    else:
        give_back = None
        base = offset  # an explicit seed names one set of masks, the same on every rank

    prefix, rest = None, model if wrapper is None else wrapper
    # the split and the fused tail call layers, not the model: only where no hook is bypassed
    plain = not _hooked(model) and not _global_hooks() and wrapper is None
    # The prefix runs once only where it is deterministic as far as can be seen: no dropout layer
    # that is not fastdrop's (a subclass whose forward keeps it on in eval draws anew per call),
    # and not when the caller asked for one sample per forward (chunk=1), which then runs the
    # whole forward, prefix and all, once per sample (a noise layer cannot be detected)
    if plain and others_eval and not (chunk == 1 and not auto_chunk) and \
            _runs_forward_of(model, torch.nn.Sequential):
        first = next((i for i, layer in enumerate(model)
                      if any(id(s) in drop_ids for s in layer.modules())), None)
        if first is not None and first > 0 and \
                not any(_foreign_dropout(layer) for layer in list(model)[:first]):
            # plain Sequentials of its layers: slicing calls the model's class, whose __init__ a
            # subclass may have changed (torchvision.ops.MLP)
            layers = list(model)
            prefix, rest = torch.nn.Sequential(*layers[:first]), torch.nn.Sequential(*layers[first:])
    head = None
    if plain and fused and _runs_forward_of(rest, torch.nn.Sequential):
        head = _fused_head(rest)
    elif plain and fused and _runs_forward_of(rest, DropoutLinear):
        head = _fused_head([rest])

    sampler = _Sampler(seed, base)
    merger = _Merger()
    # what the forwards change in modules left in training mode (a BatchNorm's running statistics,
    # every sample's forward updates them), kept to be given back if the call fails: a refusal of
    # the first sample's output (logits without a class dim) changed them (a review)
    trained = [] if others_eval else [(b, b.clone()) for m in model.modules() if m.training and id(m) not in drop_ids
                                      for b in m.buffers(recurse=False)]
    encoders = any(isinstance(m, torch.nn.TransformerEncoderLayer) for m in rest.modules())
    # the attention / recurrent layers the samples reach, whose 2-d input may be one sequence
    sequence_dims = _sequence_dims(rest)
    try:
        with _mc_state.sampling(sampler), torch.no_grad(), _eagerly(wrapper is not None or _compiled_parts(model)), \
                _UnfusedEncoderLayers() if encoders else contextlib.nullcontext():
            # the prefix on a copy of x: its first layer may write its input in place
            # (nn.ReLU(inplace=True)), which must not change the caller's tensor (a review)
            h = prefix(x.clone()) if prefix is not None else x
            if type(h) is not torch.Tensor:
                # the prefix's output is what its next layer takes, not always one tensor (an
                # nn.LSTM's (output, (h, c)), a dict): the samples go through the whole model,
                # which takes x (a review: h was used as a tensor)
                prefix, rest, head, h = None, model, None, x
                sequence_dims = _sequence_dims(rest)
            # (the fused GEMM takes the layer's weight as it is: an h of another dtype takes the
            # model's own forward, which refuses it as the eager call does)
            use_fused = head is not None and _kernel_ok(h) and h.dtype == head[2].dtype and \
                (head[3] is None or h.dtype == head[3].dtype)
            if use_fused:
                head = _checked_head(h, head)
            if chunk > 1 and not use_fused and (h.dim() < 2 or h.dim() == 2 and h.is_floating_point()
                                                and h.shape[-1] in sequence_dims):
                # an unbatched input: its dim 0 is a feature dim, which the model's layers mix (a
                # Linear, a softmax), so the samples cannot be stacked along it. A 2-d float input
                # as wide as the embedding of an attention or recurrent layer the samples reach is
                # taken for one unbatched sequence (L, E), which torch's layers take whatever their
                # batch_first: stacked, the samples would be one longer sequence, mixed by
                # attention, carried by a recurrence (token ids, (N, L) integers, batch)
                if not auto_chunk:
                    what = "has no batch dim" if h.dim() < 2 else \
                        "may be one unbatched sequence (L, E) of the model's attention or recurrent layer"
                    warnings.warn(f"mc_predict: chunk={chunk} stacks the samples along dim 0 of the input, "
                                  f"and this input of shape {tuple(h.shape)} {what}: the samples run "
                                  f"one at a time", stacklevel=3)
                chunk = 1
            if chunk > 1 and not use_fused:
                sampler.shapes = []  # sample 0 alone first: the shapes batched forwards must stack
            t0 = 0
            while t0 < samples:
                n = 1 if sampler.shapes == [] else min(chunk, samples - t0)
                sampler.t0, sampler.n, sampler.k = t0, n, 0
                if use_fused:
                    y = _run_fused_head(h, head, seed, sampler.offsets())
                else:
                    # one sample: a copy of the prefix's output (the whole model's forward would make
                    # it anew) or of x (the user's), since a first layer may write its input in place
                    # (nn.ELU(inplace=True)), which would change every later sample's input
                    hin = h.repeat(n, *([1] * (h.dim() - 1))) if n > 1 else h.clone()
                    try:
                        y = _output(rest(hin))
                        if sampler.k == 0 and t0 == 0:
                            raise ValueError(_NONE_RAN)
                        if t0 == 0:  # (the prefix split off holds no stochastic module)
                            idle = _not_run(model, sampler.ran)
                            if idle:  # (a review, 2026-12-06: timm's fused attention never calls attn_drop)
                                warnings.warn(f"mc_predict: these fastdrop stochastic modules did not run in "
                                              f"the first sample's forward, so they add no variance: "
                                              f"{', '.join(idle)} (a module the forward calls only in training "
                                              f"mode, or one whose p a block passes to "
                                              f"F.scaled_dot_product_attention instead of calling it, as timm's "
                                              f"fused attention does: fused_attn=False samples it)", stacklevel=3)
                        if t0 == 0:
                            one_shape = tuple(y.shape)  # sample 0's output, run alone
                        elif n > 1 and tuple(y.shape) != (n * one_shape[0],) + one_shape[1:]:
                            # an output that does not stack the samples on dim 0 (one pooled over
                            # the batch): these samples and the rest run one at a time
                            raise _NotStacked
                        y = y.reshape(n, y.shape[0] // n, *y.shape[1:])
                    except Exception as e:
                        # sample 0 ran alone first, so a batched forward that fails does so because of
                        # the batching (an unbatched image into a Conv2d: its channels repeated): these
                        # samples and the rest run one at a time, where a model's own error shows again
                        if n == 1:
                            if _compiled_function_broke(e):
                                raise RuntimeError(_COMPILED_FUNCTION) from e
                            raise
                        if not auto_chunk:
                            why = "" if isinstance(e, _NotStacked) else f" ({type(e).__name__}: {e})"
                            warnings.warn(f"mc_predict: chunk={chunk} needs every fastdrop module's input to "
                                          f"stack the samples along its dim 0, and this model's does not"
                                          f"{why}: the samples run one at a time", stacklevel=3)
                        chunk = 1
                        continue
                if logits and t0 == 0:
                    if y.is_complex():
                        raise TypeError(f"mc_predict: logits=True needs real logits, got a {y.dtype} output")
                    _check_class_dim(tuple(y.shape[1:]), x)
                merger.add(y, logits)
                t0 += n
    except BaseException:
        if give_back is not None:  # (if nothing drew since: not the model's own draws, nor another thread's)
            give_back()
        with torch.no_grad():
            for buffer, before in trained:
                buffer.copy_(before)
        raise

    # the statistics in the wider of x's and the model output's float dtypes (a float64 model fed
    # token ids: float64; a half input cast up by the first layer, or a float32 model under half
    # autocast: float32, where a half result rounded small variances to 0); an integer or bool
    # output's in x's float dtype, or torch's default
    out = merger.dtype if merger.dtype.is_floating_point or merger.dtype.is_complex else torch.get_default_dtype()
    out_dtype = torch.promote_types(out, x.dtype) if x.is_floating_point() else out
    var = merger.m2 / (merger.n - 1) if merger.n > 1 else torch.zeros_like(merger.m2)
    if not logits:  # (a complex output: a complex mean, a real variance of the same precision)
        return MCResult(merger.mean.to(out_dtype), var.to(out_dtype.to_real()))
    mean = merger.mean
    entropy = -(mean * torch.log(mean.clamp_min(1e-300))).sum(-1)
    mutual_info = (entropy - merger.h_sum / merger.n).clamp_min(0.0)
    return MCResult(mean.to(out_dtype), var.to(out_dtype), entropy.to(out_dtype), mutual_info.to(out_dtype))
