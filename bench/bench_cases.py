"""Benchmark cases shared by the pytest-benchmark suites (bench/test_bench_*.py) and the report
(bench/report.py): one definition of every op, shape and provider, so both measure the same thing.

A case builds, for one device, a dict of zero-argument callables, one per provider:
  "fastdrop"  fastdrop's op (module or functional),
  "torch"     what a user would otherwise write with torch (nn.Dropout, Dropout + Linear, ...),
  "floor"     the unavoidable cost of the same work: a numpy copy of the same bytes for memory-bound
              ops (np.copyto into a preallocated array, one copy per read+write pass), a bare
              nn.Linear / matmul for the fused layers.
Every callable synchronizes the device before returning, so CUDA timings are honest.

Ops whose fastdrop API has not landed yet (`requires` names the attribute) are skipped cleanly.
Setting FASTDROP_BENCH_TINY=1 swaps every shape for a tiny one (the smoke test uses it).
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np

TINY = os.environ.get("FASTDROP_BENCH_TINY") == "1"


@dataclass
class Case:
    op: str              # e.g. "dropout_fwd"
    shape: tuple         # the shape shown in tables ((N, in, out) for the dense layers)
    p: float
    dtype: str           # "float32" / "float64"
    kind: str            # "memory" (report GB/s) or "flops" (report GFLOP/s)
    work: float          # bytes moved or flops done by one call (the useful work, not torch's extras)
    build: object = field(repr=False)   # build(device) -> {provider: callable}
    requires: str = None  # fastdrop attribute that must exist, else the case is skipped
    floor_name: str = ""
    size: int = 0        # elements of the main operand (x axis of the plot)

    @property
    def id(self):
        return f"{self.op}|{shape_str(self.shape)}|p={self.p}|{self.dtype}"

    @property
    def group(self):
        """The pytest-benchmark group: providers of one case line up side by side."""
        g = f"{self.op}|{shape_str(self.shape)}|p={self.p}"
        return g if self.dtype == "float32" else f"{g}|{self.dtype}"

    def available(self):
        """None when the case can run, else the reason it cannot."""
        if self.requires is None:
            return None
        import fastdrop
        obj = fastdrop
        for part in self.requires.split("."):
            if not hasattr(obj, part):
                return f"fastdrop.{self.requires} does not exist yet"
            obj = getattr(obj, part)
        return None


def shape_str(shape):
    return "x".join(str(s) for s in shape)


def devices():
    import torch
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _sync(device):
    import torch
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _tdtype(dtype):
    import torch
    return getattr(torch, dtype)


def _copy_floor(nbytes_per_copy, copies, dtype, device):
    """`copies` copies of an array of nbytes_per_copy bytes into a preallocated destination."""
    itemsize = np.dtype(dtype).itemsize
    n = max(1, nbytes_per_copy // itemsize)
    if device == "cuda":
        import torch
        src = torch.ones(n, dtype=_tdtype(dtype), device="cuda")
        dst = torch.empty_like(src)

        def floor():
            for _ in range(copies):
                dst.copy_(src)
            torch.cuda.synchronize()
        return floor
    src = np.ones(n, dtype=dtype)
    dst = np.empty_like(src)
    dst.fill(0)  # fault the pages in now, not inside the timing

    def floor():
        for _ in range(copies):
            np.copyto(dst, src)
    return floor


def _fwd(layer, x, sync):
    def run():
        layer(x)
        sync()
    return run


def _fwd_bwd(fn, inputs, g, sync):
    """fn() -> y; one forward and one backward w.r.t. `inputs` (torch.autograd.grad, so no .grad
    accumulation differs between providers)."""
    import torch

    def run():
        torch.autograd.grad(fn(), inputs, g)
        sync()
    return run


# ----------------------------------------------------------------------------------------- dropout
def _with_numba_threads(fn, threads):
    """fn run with Numba's pool limited to `threads` (restored after): the serial-kernel probe."""
    import numba

    def run():
        prev = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            fn()
        finally:
            numba.set_num_threads(prev)
    return run


def _without_output_cache(fn):
    """fn run with fastdrop's output cache off (`fastdrop._alloc`, as FASTDROP_CACHE_MAX_BYTES=0
    sets it; restored after): every output of 32 MiB or more is then fresh memory whose pages
    fault in during the call, as torch's outputs are. The default rows let fastdrop reuse the
    blocks of the outputs the timing loop drops, torch's allocator cannot; these rows separate the
    kernels' speed from that allocation policy (a benchmark review, 2026-12-07)."""
    from fastdrop import _alloc

    def run():
        prev = _alloc.MAX_CACHED_BYTES
        try:
            _alloc.MAX_CACHED_BYTES = 0
            _alloc.empty_cache()  # the blocks of earlier calls' outputs: released, not reused
            fn()
        finally:
            _alloc.MAX_CACHED_BYTES = prev
    return run


def dropout_case(shape, p, dtype, backward, spatial=False, numba_threads=None, channels_last=False,
                 output_cache=True):
    """numba_threads=1: fastdrop with Numba's pool serial (a diagnostic row: is the parallel
    fork/join worth it at this size, and on a loaded machine?). channels_last: a 4-D input in
    torch.channels_last memory format (the tiled kernel for elementwise dropout). output_cache=False:
    fastdrop's outputs freshly allocated on every call, as torch's are (`_without_output_cache`)."""
    n = math.prod(shape)
    itemsize = np.dtype(dtype).itemsize
    passes = 2 if backward else 1  # fwd: read x, write y; bwd: read g, write grad_x
    op = ("dropout2d" if spatial else "dropout") + ("_fwd_bwd" if backward else "_fwd")
    if numba_threads:
        op += f"[numba_threads={numba_threads}]"
    if channels_last:
        op += "[channels_last]"
    if not output_cache:
        op += "[output_cache=off]"

    def build(device):
        import torch
        import fastdrop
        sync = _sync(device)
        td = _tdtype(dtype)
        x = torch.randn(shape, dtype=td, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fd = (fastdrop.nn.Dropout2d if spatial else fastdrop.nn.Dropout)(p)
        th = (torch.nn.Dropout2d if spatial else torch.nn.Dropout)(p)
        floor = _copy_floor(n * itemsize, passes, dtype, device)
        if not backward:
            fns = {"fastdrop": _fwd(fd, x, sync), "torch": _fwd(th, x, sync), "floor": floor}
        else:
            x.requires_grad_(True)
            g = torch.randn(shape, dtype=td, device=device)
            if channels_last:
                g = g.contiguous(memory_format=torch.channels_last)
            fns = {"fastdrop": _fwd_bwd(lambda: fd(x), [x], g, sync),
                   "torch": _fwd_bwd(lambda: th(x), [x], g, sync), "floor": floor}
        if numba_threads:
            fns["fastdrop"] = _with_numba_threads(fns["fastdrop"], numba_threads)
        if not output_cache:
            fns["fastdrop"] = _without_output_cache(fns["fastdrop"])
        return fns

    return Case(op, tuple(shape), p, dtype, "memory", 2 * passes * n * itemsize, build,
                floor_name=f"numpy copy x{passes}", size=n)


# ------------------------------------------------------------------------------ fused dense layers
def _linear_flops(n, fin, fout, backward):
    return 2.0 * n * fin * fout * (3 if backward else 1)


def _dense_inputs(n, fin, fout, dtype, device):
    import torch
    td = _tdtype(dtype)
    x = torch.randn(n, fin, dtype=td, device=device, requires_grad=True)
    lin = torch.nn.Linear(fin, fout, dtype=td, device=device)
    g = torch.randn(n, fout, dtype=td, device=device)
    return x, lin, g


def dropout_linear_case(n, fin, fout, p, dtype):
    """fastdrop.nn.DropoutLinear vs nn.Sequential(nn.Dropout, nn.Linear), fwd+bwd; floor: nn.Linear."""
    def build(device):
        import torch
        import fastdrop
        sync = _sync(device)
        x, lin, g = _dense_inputs(n, fin, fout, dtype, device)
        fd = fastdrop.nn.DropoutLinear(fin, fout, p=p).to(device=device, dtype=_tdtype(dtype))
        fd.load_state_dict(lin.state_dict())
        th = torch.nn.Sequential(torch.nn.Dropout(p), lin)
        return {"fastdrop": _fwd_bwd(lambda: fd(x), [x, fd.weight, fd.bias], g, sync),
                "torch": _fwd_bwd(lambda: th(x), [x, lin.weight, lin.bias], g, sync),
                "floor": _fwd_bwd(lambda: lin(x), [x, lin.weight, lin.bias], g, sync)}

    return Case("dropout_linear_fwd_bwd", (n, fin, fout), p, dtype, "flops",
                _linear_flops(n, fin, fout, True), build, requires="nn.DropoutLinear",
                floor_name="nn.Linear fwd+bwd", size=n * fin)


def dropconnect_case(n, fin, fout, p, dtype, per_sample):
    """fastdrop.dropconnect_linear vs the torch composite a user would write, fwd+bwd.

    batch mask:  F.linear(x, F.dropout(W, p), b)
    per sample:  M = empty(N, out, in).bernoulli_(1 - p); einsum("ni,noi->no", x, W * M / (1 - p)) + b
    """
    def build(device):
        import torch
        import torch.nn.functional as F
        import fastdrop
        sync = _sync(device)
        x, lin, g = _dense_inputs(n, fin, fout, dtype, device)
        w, b = lin.weight, lin.bias
        params = [x, w, b]

        def fd():
            return fastdrop.dropconnect_linear(x, w, b, p, per_sample=per_sample)

        if per_sample:
            def th():
                m = torch.empty(n, fout, fin, dtype=w.dtype, device=device).bernoulli_(1 - p)
                return torch.einsum("ni,noi->no", x, w * m / (1 - p)) + b
        else:
            def th():
                return F.linear(x, F.dropout(w, p), b)
        return {"fastdrop": _fwd_bwd(fd, params, g, sync), "torch": _fwd_bwd(th, params, g, sync),
                "floor": _fwd_bwd(lambda: lin(x), params, g, sync)}

    op = "dropconnect_per_sample_fwd_bwd" if per_sample else "dropconnect_fwd_bwd"
    return Case(op, (n, fin, fout), p, dtype, "flops", _linear_flops(n, fin, fout, True), build,
                requires="dropconnect_linear", floor_name="nn.Linear fwd+bwd", size=n * fin)


# ---------------------------------------------------------------------------------------- variants
def drop_path_case(shape, p, dtype, output_cache=True):
    """fastdrop.drop_path vs timm's composite (x * bernoulli keep per sample / (1 - p)), fwd+bwd.
    output_cache=False: fastdrop's outputs freshly allocated, as torch's (`_without_output_cache`)."""
    n = math.prod(shape)
    itemsize = np.dtype(dtype).itemsize

    def build(device):
        import torch
        import fastdrop
        sync = _sync(device)
        td = _tdtype(dtype)
        x = torch.randn(shape, dtype=td, device=device, requires_grad=True)
        g = torch.randn(shape, dtype=td, device=device)

        def th():
            keep = x.new_empty((shape[0],) + (1,) * (len(shape) - 1)).bernoulli_(1 - p)
            return x * keep.div_(1 - p)
        fd = _fwd_bwd(lambda: fastdrop.drop_path(x, p), [x], g, sync)
        return {"fastdrop": fd if output_cache else _without_output_cache(fd),
                "torch": _fwd_bwd(th, [x], g, sync),
                "floor": _copy_floor(n * itemsize, 2, dtype, device)}

    op = "drop_path_fwd_bwd" + ("" if output_cache else "[output_cache=off]")
    return Case(op, tuple(shape), p, dtype, "memory", 4 * n * itemsize, build,
                requires="drop_path", floor_name="numpy copy x2", size=n)


def max_norm_case(shape, dtype, dim=1):
    """fastdrop.max_norm_(W, c, dim=1) vs W.renorm_(2, 0, c): rows of an (out, in) weight onto the
    L2 ball, every row over the limit, as after an optimizer step that grew them all (dim=0:
    columns, the strided axis, vs W.renorm_(2, 1, c); op "max_norm_dim0"). Each call
    lowers c by 0.1% (the same sequence on both sides), so every call rewrites every row: a
    constant c left the rows on the ball after the warm-up, and the timed calls only read them
    where torch's renorm_ still writes every row (a benchmark review, 2026-12-07). The rate counts
    the bytes of one read and one write of the weight (fastdrop's pass over each row; renorm_
    reads it twice); the floor is one copy, which moves as many."""
    n = math.prod(shape)
    itemsize = np.dtype(dtype).itemsize

    def build(device):
        import torch
        import fastdrop
        sync = _sync(device)
        td = _tdtype(dtype)
        c = 0.5 * math.sqrt(shape[1 - dim])
        w1 = torch.randn(shape, dtype=td, device=device)
        w2 = w1.clone()
        calls = {"fastdrop": 0, "torch": 0}

        def limit(side, w):
            """c * 0.999**k at a side's k-th call of a cycle: below every row's norm from call
            k - 1. Every MAX_NORM_CYCLE calls the rows, then on the ball of c * 0.999**CYCLE,
            are scaled back onto the ball of c (one multiply per cycle, the same on both sides)
            and the cycle starts again: a limit lowered forever underflowed float32 after ~87k
            calls (pytest-benchmark's rounds can make that many)."""
            calls[side] += 1
            k = (calls[side] - 1) % MAX_NORM_CYCLE + 1
            if k == 1 and calls[side] > 1:
                with torch.no_grad():
                    w.mul_(MAX_NORM_SHRINK ** -MAX_NORM_CYCLE)
            return c * MAX_NORM_SHRINK ** k

        def fd():
            fastdrop.max_norm_(w1, limit("fastdrop", w1), dim=dim)
            sync()

        def th():
            with torch.no_grad():
                w2.renorm_(2, 1 - dim, limit("torch", w2))  # renorm_'s dim is the one kept
            sync()
        return {"fastdrop": fd, "torch": th, "floor": _copy_floor(n * itemsize, 1, dtype, device)}

    return Case("max_norm_" if dim == 1 else "max_norm_dim0", tuple(shape), 0.0, dtype, "memory", 2 * n * itemsize, build,
                requires="max_norm_", floor_name="numpy copy x1", size=n)


MAX_NORM_SHRINK = 0.999
MAX_NORM_CYCLE = 1000  # calls per cycle of limits (`max_norm_case`)


def _mlp(fin, hidden, fout, p, dropout_cls, dtype, device):
    import torch
    nn = torch.nn
    return nn.Sequential(nn.Linear(fin, hidden), nn.ReLU(), dropout_cls(p), nn.Linear(hidden, hidden),
                         nn.ReLU(), dropout_cls(p), nn.Linear(hidden, fout)).to(device, _tdtype(dtype))


def mc_predict_case(n, samples, p, dtype, fin=64, hidden=512, fout=10):
    """fastdrop.mc_predict(model, x, samples=T) vs T separate torch forward passes with dropout active
    (stack, mean, var); floor: one eval forward of the T*N rows (the same flops, no dropout)."""
    flops = 2.0 * samples * n * (fin * hidden + hidden * hidden + hidden * fout)

    def build(device):
        import torch
        import fastdrop
        sync = _sync(device)
        x = torch.randn(n, fin, dtype=_tdtype(dtype), device=device)
        torch.manual_seed(0)
        th = _mlp(fin, hidden, fout, p, torch.nn.Dropout, dtype, device)
        fd = _mlp(fin, hidden, fout, p, fastdrop.nn.Dropout, dtype, device)
        fd.load_state_dict(th.state_dict())
        fd.eval()
        xs = x.repeat(samples, 1)

        def run_fd():
            with torch.no_grad():
                fastdrop.mc_predict(fd, x, samples=samples)
            sync()

        def run_th():
            th.train()
            with torch.no_grad():
                out = torch.stack([th(x) for _ in range(samples)])
                out.mean(0), out.var(0)
            sync()

        def run_floor():
            th.eval()
            with torch.no_grad():
                th(xs)
            sync()
        return {"fastdrop": run_fd, "torch": run_th, "floor": run_floor}

    return Case("mc_predict", (n, fin, hidden, fout, samples), p, dtype, "flops", flops, build,
                requires="mc_predict", floor_name="one eval fwd of T*N rows", size=samples * n)


def dropout_matmul_case(b, h, length, d, p, dtype):
    """fastdrop.dropout_matmul(a, v, p) vs torch.matmul(F.dropout(a, p), v), fwd+bwd, with a the
    (B, H, L, L) attention probabilities and v (B, H, L, d); floor: the bare matmul fwd+bwd."""
    flops = 2.0 * b * h * length * length * d * 3

    def build(device):
        import torch
        import torch.nn.functional as F
        import fastdrop
        sync = _sync(device)
        td = _tdtype(dtype)
        a = torch.rand(b, h, length, length, dtype=td, device=device, requires_grad=True)
        v = torch.randn(b, h, length, d, dtype=td, device=device, requires_grad=True)
        g = torch.randn(b, h, length, d, dtype=td, device=device)
        return {"fastdrop": _fwd_bwd(lambda: fastdrop.dropout_matmul(a, v, p), [a, v], g, sync),
                "torch": _fwd_bwd(lambda: torch.matmul(F.dropout(a, p), v), [a, v], g, sync),
                "floor": _fwd_bwd(lambda: torch.matmul(a, v), [a, v], g, sync)}

    return Case("dropout_matmul_fwd_bwd", (b, h, length, length, d), p, dtype, "flops", flops, build,
                requires="dropout_matmul", floor_name="matmul fwd+bwd", size=b * h * length * length)


# ------------------------------------------------------------------------------------- small calls
SMALL_CALL = dict(shape=(64, 512), p=0.5, dtype="float32")  # issue 9's per-call-cost row


def small_call_providers(shape, p, dtype="float32"):
    """Where the time of one small CPU dropout goes. Keys are "<call>|fwd" / "<call>|fwd_bwd":
      fastdrop        fastdrop.nn.Dropout(p), the whole pipeline;
      torch_mul       x * m with m a precomputed float tensor (bool mask * 1/(1-p)): the cheapest
                      eager torch op that applies a mask, the reference for this machine's speed;
      torch_dropout   torch.nn.Dropout(p);
      bare_function   a bare torch.autograd.Function around the serial kernel (seed draw, kernel
                      on the tensors' addresses as the library calls it, (seed, p) saved for
                      backward): the floor of this design, without validation or dispatch;
      kernel          fastdrop.kernels.dropout_cpu.dropout_flat_serial_at alone, on preallocated
                      tensors' addresses, fixed seed (forward only);
      seed            fastdrop._seeds.draw_torch_seed() alone (forward only).
    Backward is torch.autograd.grad with a fixed upstream gradient, as in every fwd+bwd case."""
    import torch
    import fastdrop
    try:
        from fastdrop._seeds import draw_torch_seed
        from fastdrop.kernels.dropout_cpu import dropout_flat_serial_at
        from fastdrop.kernels.philox import keep_threshold
    except ImportError as e:
        # Internals moved: the breakdown probes raise when called (the report lists them as
        # errors, the smoke test fails on them) while the public-API rows still run.
        def draw_torch_seed(*args, _e=e):
            raise _e
        dropout_flat_serial_at = keep_threshold = draw_torch_seed

    td = _tdtype(dtype)
    scale = 1.0 / (1.0 - p)
    np_scale = np.dtype(dtype).type(scale)
    try:
        thr = int(keep_threshold(p))  # the README's T(p), as the kernel takes it
    except ImportError:  # internals moved: `kernel` raises when called, as above
        thr = None

    def kernel(src, dst, seed):
        """The serial kernel on two contiguous tensors' memory, offset 0 (seed < 2^63, as drawn)."""
        dropout_flat_serial_at(src.data_ptr(), dst.data_ptr(), src.numel(), seed, 0, thr, np_scale, np_scale)

    class BareDropout(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seed = draw_torch_seed()
            out = torch.empty_like(x)
            kernel(x, out, seed)
            ctx.seed = seed
            return out

        @staticmethod
        def backward(ctx, g):
            g = g.contiguous()
            gx = torch.empty_like(g)
            kernel(g, gx, ctx.seed)
            return gx

    x = torch.randn(shape, dtype=td)
    xg = x.clone().requires_grad_(True)
    g = torch.randn(shape, dtype=td)
    m = (torch.rand(shape) >= p).to(td) * scale
    fd, th = fastdrop.nn.Dropout(p), torch.nn.Dropout(p)
    out = torch.empty_like(x)
    seed = 12345

    def grad(fn):
        return lambda: torch.autograd.grad(fn(), [xg], g)

    return {
        "fastdrop|fwd": lambda: fd(x),
        "torch_mul|fwd": lambda: x * m,
        "torch_dropout|fwd": lambda: th(x),
        "bare_function|fwd": lambda: BareDropout.apply(x),
        "kernel|fwd": lambda: kernel(x, out, seed),
        "seed|fwd": draw_torch_seed,
        "fastdrop|fwd_bwd": grad(lambda: fd(xg)),
        "torch_mul|fwd_bwd": grad(lambda: xg * m),
        "torch_dropout|fwd_bwd": grad(lambda: th(xg)),
        "bare_function|fwd_bwd": grad(lambda: BareDropout.apply(xg)),
    }


# ---------------------------------------------------------------------------- timm-style training
def train_step_providers(model, batch, **kw):
    """One CPU training step (forward, cross-entropy, backward, SGD) of bench/models.py's `model`
    ("resnet", "convnext", "cnn_dropout2d") with torch's drop layers ("torch"), fastdrop's
    ("fastdrop"), a bare Function around the same kernel ("bare", the design floor) and none
    ("none": nn.Identity, the step without dropout); same initial weights
    and batch. kw (width, image_size, ...) shrink the model for the smoke test."""
    import models
    image_size = kw.pop("image_size", None)
    x, y = models.example_batch(model, batch, image_size)
    return {kind: models.train_step(models.build(model, kind, **kw), x, y) for kind in models.KINDS}


def train_step_cases(mode="default"):
    """(model, batch, build kwargs) rows of the training-step report section."""
    names = ("resnet", "convnext", "cnn_dropout2d")
    if TINY or mode == "tiny":
        return [(n, 2, dict(width=4, image_size=16)) for n in names]
    if mode == "quick":
        return [(n, 16, {}) for n in names]
    return [(n, b, {}) for n in names for b in (8, 32)]


# --------------------------------------------------------------------------------------- the matrix
def all_cases(mode="default"):
    """The benchmark matrix. mode: "default" (the report, < 10 min on 2 cores), "quick" (< 1 min),
    "full" (the pytest-benchmark suites: every shape x p x dtype). FASTDROP_BENCH_TINY=1 or
    mode="tiny" gives tiny shapes for the smoke test."""
    if TINY or mode == "tiny":
        return [dropout_case((8, 16), 0.5, "float32", False),
                dropout_case((8, 16), 0.5, "float64", True),
                dropout_case((2, 3, 4, 4), 0.5, "float32", True, spatial=True),
                dropout_case((2, 3, 4, 4), 0.5, "float32", True, channels_last=True),
                dropout_linear_case(4, 8, 6, 0.5, "float32"),
                dropconnect_case(4, 8, 6, 0.5, "float32", per_sample=False),
                dropconnect_case(4, 8, 6, 0.5, "float32", per_sample=True),
                dropout_case((8, 16), 0.5, "float32", True, output_cache=False),
                drop_path_case((4, 3, 5), 0.5, "float32"),
                drop_path_case((4, 3, 5), 0.5, "float32", output_cache=False),
                max_norm_case((8, 16), "float32"),
                max_norm_case((8, 16), "float32", dim=0),
                mc_predict_case(4, 3, 0.5, "float32", fin=8, hidden=16, fout=3),
                dropout_matmul_case(1, 2, 8, 4, 0.5, "float32")]
    big = (4096, 4096)
    if mode == "quick":
        return [dropout_case((64, 512), 0.5, "float32", False),
                dropout_case(big, 0.5, "float32", False),
                dropout_case(big, 0.5, "float32", True),
                dropout_linear_case(256, 1024, 1024, 0.5, "float32"),
                dropconnect_case(64, 512, 512, 0.5, "float32", per_sample=True)]
    cases = []
    if mode == "full":
        for backward in (False, True):
            for shape in [(64, 512), (1024, 1024), big, (8192, 1024)]:
                for p in (0.1, 0.5, 0.9):
                    for dtype in ("float32", "float64"):
                        cases.append(dropout_case(shape, p, dtype, backward))
    else:
        for backward in (False, True):
            for shape in [(64, 512), (256, 1024), (1024, 1024), (8192, 1024), big]:
                cases.append(dropout_case(shape, 0.5, "float32", backward))
            cases += [dropout_case(big, 0.1, "float32", backward),
                      dropout_case(big, 0.9, "float32", backward),
                      dropout_case(big, 0.5, "float64", backward)]
        # The big rows again with fastdrop's outputs freshly allocated, as torch's are: the
        # kernels' speed apart from the output cache's reuse of the dropped outputs' blocks
        cases += [dropout_case(big, 0.5, "float32", backward, output_cache=False) for backward in (False, True)]
        # Diagnostic rows: the same kernels with Numba's pool serial.
        for shape in [(64, 512), (256, 1024), big]:
            cases.append(dropout_case(shape, 0.5, "float32", False, numba_threads=1))
        cases.append(dropout_case((64, 512), 0.5, "float32", True, numba_threads=1))
        # Permuted layouts: channels_last CNN activations whose rows are whole Philox blocks apart
        # (28x28) and not (14x14), the two ways the tiled kernel makes its words.
        for shape in [(32, 128, 28, 28), (32, 256, 14, 14)]:
            cases.append(dropout_case(shape, 0.5, "float32", False, channels_last=True))
    cases += [dropout_case((8, 16, 32, 32), 0.5, "float32", True, spatial=True),
              dropout_case((32, 64, 56, 56), 0.5, "float32", True, spatial=True),
              dropout_case((32, 64, 56, 56), 0.5, "float32", True, spatial=True, channels_last=True)]
    for n, fin, fout in [(8, 512, 512), (64, 512, 512), (256, 1024, 1024), (8192, 512, 512)]:
        cases.append(dropout_linear_case(n, fin, fout, 0.5, "float32"))
    if mode == "full":
        cases.append(dropout_linear_case(256, 1024, 1024, 0.5, "float64"))
    cases += [dropconnect_case(256, 1024, 1024, 0.5, "float32", per_sample=False),
              dropconnect_case(64, 512, 512, 0.5, "float32", per_sample=True),
              drop_path_case((256, 197, 384), 0.1, "float32"),
              drop_path_case((256, 197, 384), 0.1, "float32", output_cache=False),
              max_norm_case(big, "float32"),
              max_norm_case(big, "float32", dim=0),
              mc_predict_case(256, 32, 0.5, "float32"),
              dropout_matmul_case(8, 8, 256, 64, 0.1, "float32")]
    return cases


# ------------------------------------------------------------------------------- pytest-benchmark
PROVIDERS = ("fastdrop", "torch", "floor")
_BUILT = {}  # (case id, device) -> providers; only the latest case is kept alive (memory)


def pytest_params(cases):
    """One pytest.param per (case, device, provider), case-major so a case is built once. CUDA
    providers are listed always and skipped without a GPU, so a reader sees they exist."""
    import pytest
    out = []
    for case in cases:
        for device in ("cpu", "cuda"):
            for provider in PROVIDERS:
                # ids friendly to -k: "dropout_fwd-4096x4096-p0.5-float32-cpu-fastdrop"
                cid = case.id.replace("|p=", "|p").replace("|", "-")
                out.append(pytest.param(case, device, provider, id=f"{cid}-{device}-{provider}"))
    return out


def run_benchmark(benchmark, case, device, provider):
    """Build (or reuse) the case, warm up outside the timing (JIT compile, thread pools, page
    faults), time the provider, and attach GB/s or GFLOP/s to the result's extra_info."""
    import pytest
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = case.available()
    if reason:
        pytest.skip(reason)
    key = (case.id, device)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = case.build(device)
    fn = _BUILT[key][provider]
    fn()
    fn()
    benchmark.group = case.group
    benchmark.extra_info.update(op=case.op, shape=shape_str(case.shape), p=case.p,
                                dtype=case.dtype, device=device, provider=provider)
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        rate = case.work / stats.stats.median / 1e9
        benchmark.extra_info["GB/s" if case.kind == "memory" else "GFLOP/s"] = round(rate, 2)
