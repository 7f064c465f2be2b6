"""torch side of fastdrop.variants: max-norm on tensors, the dropout_matmul autograd Function,
and the MC-dropout driver. Imports torch (fastdrop.variants imports this module lazily)."""
from typing import NamedTuple, Optional

import numpy as np
import torch

from . import _torch_bridge, variants
from ._checks import check_u64
from .kernels import mc_dropout_cpu
from .mask import kernel_rng_args

HALF_TYPES = (torch.float16, torch.bfloat16)


def _bump_version(t):
    # The kernels write through a numpy view, which autograd cannot see: bump the version counter
    # so a graph that saved this tensor reports the in-place change instead of using stale values.
    torch.autograd.graph.increment_version(t)


# ----------------------------------------------------------------------------- max-norm
def max_norm_tensor(w, max_value, dims, eps):
    if w.is_cuda:
        from .kernels import variants_cuda
        with torch.no_grad():
            variants_cuda.max_norm_array(w.detach(), max_value, dims, eps)
        _bump_version(w)
        return w
    if w.device.type != "cpu":
        raise ValueError(f"max_norm_ runs on CPU and CUDA tensors, got device {w.device}")
    with torch.no_grad():
        if w.dtype in HALF_TYPES:
            tmp = w.detach().float()
            variants._max_norm_numpy(tmp.numpy(), max_value, dims, eps)
            w.copy_(tmp)
            return w
        variants._max_norm_numpy(w.detach().numpy(), max_value, dims, eps)
    _bump_version(w)
    return w


# ----------------------------------------------------------------------------- dropout_matmul
def _masked(a, p, seed, offset, scale):
    """dropout(a) with the contract's mask over a.shape, no autograd (CPU or CUDA)."""
    if a.is_cuda:
        from .kernels import variants_cuda
        return variants_cuda.dropout_tensor(a, p, seed, offset, scale)
    return _torch_bridge.apply_tensor(a, p, seed, offset, scale, 0)


def _matmul_forward(a, b, p, seed, offset, scale):
    if a.is_cuda:
        from .kernels import variants_cuda
        return variants_cuda.dropout_matmul_tensor(a, b, p, seed, offset, scale)
    if a.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError(f"dropout_matmul needs a and b on the same CPU or CUDA device, got "
                         f"{a.device} and {b.device}")
    # Measured on the 2-core machine: fastdrop's parallel mask kernel into a temporary, then torch's
    # GEMM (MKL on torch's OpenMP pool, which Numba's omp layer shares) beats a tiled kernel calling
    # np.dot per tile (scipy's OpenBLAS, a second spinning pool) by about 3x; see
    # kernels/dropout_matmul_cpu.py. The temporary lives for this call only; nothing is saved.
    return torch.matmul(_masked(a.detach(), p, seed, offset, scale), b.detach())


class DropoutMatmul(torch.autograd.Function):
    """y = (M * a * scale) @ b. Saves a and b (the inputs) and (seed, offset), never the mask:
    grad_a = M * scale * (g @ b^T), grad_b = (M * a * scale)^T @ g, the mask regenerated."""

    @staticmethod
    def forward(ctx, a, b, p, seed, offset, scale):
        if a.device != b.device:
            raise ValueError(f"a and b must be on the same device, got {a.device} and {b.device}")
        ctx.rng = (p, seed, offset, scale)
        ctx.save_for_backward(a, b)
        return _matmul_forward(a, b, p, seed, offset, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        p, seed, offset, scale = ctx.rng
        need_a, need_b = ctx.needs_input_grad[:2]
        batched = g.dim() > 2
        ga = ad = None
        if need_a:
            ga = g @ b.mT
            if batched and a.dim() == 2:  # a was broadcast over the batch: sum its gradients
                ga = ga.reshape(-1, *ga.shape[-2:]).sum(0)
        if need_a and need_b and _pair_ok(a, ga):
            # Both masks in one parallel region, between the torch GEMMs (docs/threads.md: every
            # switch between Numba's pool and torch's costs a wait on the other's spinning threads).
            ga, ad = _masked_pair(ga, a.detach(), p, seed, offset, scale)
        else:
            ga = _masked(ga.contiguous(), p, seed, offset, scale) if need_a else None
            ad = _masked(a.detach(), p, seed, offset, scale) if need_b else None
        grad_b = None
        if need_b:
            if batched and b.dim() == 2:  # b was broadcast: one (K, N) gradient summed over rows
                grad_b = ad.expand(*g.shape[:-2], *a.shape[-2:]).reshape(-1, a.shape[-1]).mT @ \
                    g.reshape(-1, g.shape[-1])
            else:
                grad_b = ad.mT @ g
        return ga, grad_b, None, None, None, None


def _pair_ok(a, ga):
    return (not a.is_cuda and a.dtype in (torch.float32, torch.float64) and ga.dtype == a.dtype
            and ga.shape == a.shape)


def _masked_pair(x1, x2, p, seed, offset, scale):
    from .kernels import dropout_matmul_cpu
    x1, x2 = x1.contiguous(), x2.contiguous()
    o1, o2 = torch.empty_like(x1), torch.empty_like(x2)
    if x1.numel():
        dropout_matmul_cpu.dropout_pair(x1.numpy().reshape(-1), x2.numpy().reshape(-1), o1.numpy().reshape(-1),
                                        o2.numpy().reshape(-1), *kernel_rng_args(seed, offset, p),
                                        x1.numpy().dtype.type(scale))
    return o1, o2


# ----------------------------------------------------------------------------- MC dropout
class MCResult(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    mutual_info: Optional[torch.Tensor] = None


def _dropout_modules(model):
    from .nn.dropout import _DropoutNd
    from .nn.drop_path import DropPath
    found = []
    for m in model.modules():
        if isinstance(m, (_DropoutNd, DropPath)) or _is_dropout_linear(m) or \
                type(m).__name__ == "DropConnectLinear":
            found.append(m)
    return found


def _is_dropout_linear(m):
    return type(m).__name__ == "DropoutLinear" and type(m).__module__.startswith("fastdrop")


class _Sampler:
    """State shared by the patched forwards during one batched forward of samples [t0, t0 + n)."""

    def __init__(self, seed, offset):
        self.seed, self.offset = seed, offset
        self.t0, self.n, self.k = 0, 1, 0

    def offsets(self):
        k = self.k
        self.k += 1
        return [self.offset + (self.t0 + t) * (1 << 32) + k for t in range(self.n)]


def _elementwise_samples(x, p, mode, seed, offsets):
    """x (n*N, ...) -> slice t of it dropped with offsets[t], in one kernel call."""
    if p == 0.0:
        return x
    scale = 1.0 if (mode == "classic" or p == 1.0) else 1.0 / (1.0 - p)
    n = len(offsets)
    if x.is_cuda or x.dtype in HALF_TYPES or x.shape[0] % n:
        return _sliced_samples(x, offsets, lambda xs, off: _torch_bridge.apply_tensor(
            xs, p, seed, off, scale, 0) if not xs.is_cuda else _masked(xs, p, seed, off, scale))
    xc = x.contiguous()
    out = torch.empty_like(xc)
    lo = np.array([o & 0xFFFFFFFF for o in offsets], np.uint64)
    hi = np.array([o >> 32 for o in offsets], np.uint64)
    key_lo, key_hi, _, _, thr = kernel_rng_args(seed, 0, p)
    kern = mc_dropout_cpu.dropout_samples if xc.numel() >= mc_dropout_cpu.PARALLEL_MIN else \
        mc_dropout_cpu.dropout_samples_serial
    kern(xc.numpy().reshape(n, -1), out.numpy().reshape(n, -1), lo, hi, key_lo, key_hi, thr,
         xc.numpy().dtype.type(scale))
    return out


def _sliced_samples(x, offsets, fn):
    n = len(offsets)
    if x.shape[0] % n:
        raise ValueError(f"mc_predict: a dropout input of shape {tuple(x.shape)} cannot be split into "
                         f"{n} samples along dim 0; pass chunk=1")
    parts = x.chunk(n, 0) if n > 1 else (x,)
    return torch.cat([fn(xs, off) for xs, off in zip(parts, offsets)], 0) if n > 1 else fn(x, offsets[0])


def _patched_forward(m, sampler):
    from . import functional as F
    from .nn.dropout import Dropout
    from .nn.drop_path import DropPath

    if isinstance(m, Dropout):
        return lambda x: _elementwise_samples(x, m.p, m.mode, sampler.seed, sampler.offsets())
    if isinstance(m, DropPath):
        return lambda x: _sliced_samples(x, sampler.offsets(), lambda xs, off: variants.drop_path(
            xs, m.p, training=True, seed=sampler.seed, offset=off, scale_by_keep=m.scale_by_keep,
            mode=m.mode, scaling=m.scaling))
    if _is_dropout_linear(m):
        mode = getattr(m, "mode", "inverted")
        return lambda x: torch.nn.functional.linear(
            _elementwise_samples(x, m.p, mode, sampler.seed, sampler.offsets()), m.weight, m.bias)
    if hasattr(m, "_fn") and m._fn in (F.dropout1d, F.dropout2d, F.dropout3d):
        return lambda x: _sliced_samples(x, sampler.offsets(), lambda xs, off: m._fn(
            xs, m.p, training=True, seed=sampler.seed, offset=off, mode=m.mode))
    return None  # e.g. DropConnectLinear: kept in training, masks from its own seed=None draws


class _Merger:
    """Chan et al.'s pairwise merge of (count, mean, M2): streaming mean/variance over chunks."""

    def __init__(self):
        self.n, self.mean, self.m2, self.h_sum = 0, None, None, None

    def add(self, y, logits):
        # y: (c, N, ...) outputs of c samples
        y = y.double()
        if logits:
            y = torch.softmax(y, -1)
            ent = -(y * torch.log(y.clamp_min(1e-300))).sum(-1).sum(0)
            self.h_sum = ent if self.h_sum is None else self.h_sum + ent
        c = y.shape[0]
        mean_b = y.mean(0)
        m2_b = ((y - mean_b) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = c, mean_b, m2_b
            return
        n = self.n + c
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (c / n)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * c / n)
        self.n = n


def _fused_head(rest):
    """(p, mode, weight, bias) when the tail is [fastdrop Dropout, nn.Linear] or [DropoutLinear]."""
    from .nn.dropout import Dropout
    mods = list(rest)
    if len(mods) == 2 and type(mods[0]) is Dropout and type(mods[1]) is torch.nn.Linear:
        return mods[0].p, mods[0].mode, mods[1].weight, mods[1].bias
    if len(mods) == 1 and _is_dropout_linear(mods[0]):
        m = mods[0]
        return m.p, getattr(m, "mode", "inverted"), m.weight, m.bias
    return None


def _run_fused_head(h, head, seed, offsets):
    """All samples of [Dropout, Linear] on h at once: one kernel call writes the n masked copies
    of h (mask t with offsets[t]), one torch GEMM multiplies them by the weight."""
    p, mode, weight, bias = head
    scale = 1.0 if (mode == "classic" or p == 1.0) else 1.0 / (1.0 - p)
    n = len(offsets)
    h2 = h.detach().contiguous()
    hn = h2.numpy().reshape(1, -1)
    masked = torch.empty((n,) + tuple(h2.shape), dtype=h2.dtype)
    lo = np.array([o & 0xFFFFFFFF for o in offsets], np.uint64)
    hi = np.array([o >> 32 for o in offsets], np.uint64)
    key_lo, key_hi, _, _, thr = kernel_rng_args(seed, 0, p)
    kern = mc_dropout_cpu.dropout_samples if masked.numel() >= mc_dropout_cpu.PARALLEL_MIN else \
        mc_dropout_cpu.dropout_samples_serial
    kern(np.broadcast_to(hn, (n, hn.shape[1])), masked.numpy().reshape(n, -1), lo, hi, key_lo, key_hi,
         thr, hn.dtype.type(scale))
    return torch.nn.functional.linear(masked, weight.to(h2.dtype),
                                      None if bias is None else bias.to(h2.dtype))


def mc_predict(model, x, samples, seed, offset, logits, chunk, fused):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
    offset = check_u64(offset, "offset")
    if offset + samples * (1 << 32) > (1 << 64) - 1:
        raise ValueError(f"offset {offset} leaves no room for {samples} samples (offset + samples*2**32 "
                         f"must stay below 2**64)")
    seed = check_u64(seed, "seed") if seed is not None else int(torch.randint(0, (1 << 63) - 1, ()))

    drops = _dropout_modules(model)
    drop_ids = {id(m) for m in drops}
    # Batching samples and running the deterministic prefix once are valid only when nothing else
    # in the model behaves differently per batch (e.g. BatchNorm in training mode).
    others_eval = not any(m.training for m in model.modules() if id(m) not in drop_ids)
    if chunk is None:
        chunk = min(samples, 32) if others_eval else 1
    elif chunk > 1 and not others_eval:
        raise ValueError("mc_predict: chunk > 1 needs every non-dropout module in eval mode "
                         "(call model.eval() first; mc_predict keeps fastdrop's dropout active)")

    prefix, rest = None, model
    if others_eval and isinstance(model, torch.nn.Sequential):
        first = next((i for i, layer in enumerate(model)
                      if any(id(s) in drop_ids for s in layer.modules())), None)
        if first is not None and first > 0:
            prefix, rest = model[:first], model[first:]
    head = None
    if fused and isinstance(rest, torch.nn.Sequential):
        head = _fused_head(rest)
    elif fused and _is_dropout_linear(rest):
        head = _fused_head([rest])

    sampler = _Sampler(seed, offset)
    saved = [(m, m.training) for m in drops]
    merger = _Merger()
    try:
        for m in drops:
            m.train(True)
            fwd = _patched_forward(m, sampler)
            if fwd is not None:
                m.forward = fwd
        with torch.no_grad():
            h = prefix(x) if prefix is not None else x
            use_fused = head is not None and not h.is_cuda and h.dtype in (torch.float32, torch.float64)
            for t0 in range(0, samples, chunk):
                n = min(chunk, samples - t0)
                sampler.t0, sampler.n, sampler.k = t0, n, 0
                if use_fused:
                    y = _run_fused_head(h, head, seed, sampler.offsets())
                else:
                    hin = h.repeat(n, *([1] * (h.dim() - 1))) if n > 1 else h
                    y = rest(hin)
                    y = y.reshape(n, y.shape[0] // n, *y.shape[1:])
                merger.add(y, logits)
    finally:
        for m, was_training in saved:
            m.train(was_training)
            m.__dict__.pop("forward", None)

    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    var = merger.m2 / (merger.n - 1) if merger.n > 1 else torch.zeros_like(merger.m2)
    if not logits:
        return MCResult(merger.mean.to(out_dtype), var.to(out_dtype))
    mean = merger.mean
    entropy = -(mean * torch.log(mean.clamp_min(1e-300))).sum(-1)
    mutual_info = (entropy - merger.h_sum / merger.n).clamp_min(0.0)
    return MCResult(mean.to(out_dtype), var.to(out_dtype), entropy.to(out_dtype), mutual_info.to(out_dtype))
