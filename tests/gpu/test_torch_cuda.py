"""The torch-CUDA route on a real GPU, against the CPU route (issue 10, item 7).

Every public op of tests/op_table.py, called on torch CUDA tensors, gives what it gives on CPU
tensors with the same seed and offset: bit for bit for the dropout family (elementwise, spatial,
DropPath: the mask contract and one rounding), to float rounding for the GEMM ops (cuBLAS and the
CPU BLAS sum in different orders). Also: float16 / bfloat16, channels_last and other strides,
in-place and out=, gradients and double backward, seed=None under torch.manual_seed, side streams
(a launch on the wrong stream shows up as a wrong result, not as a flaky one: the producer of x
is held back with torch.cuda._sleep), several streams at once, sizes past one grid of the
grid-stride loops, torch.compile, max_norm_, mc_predict and Numba / foreign CUDA device arrays.

Collected only when asked and skipped without a GPU (tests/gpu/conftest.py).
"""
import copy
import importlib.util

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop.functional import DROPOUT
from op_table import CASES, numpy_operands, operands

SEED, OFFSET = 2**40 + 17, 2**33 + 1
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]
# Relative tolerance of the GEMM ops (the elementwise ops must be bit-identical), scaled by the
# largest |ref| for the absolute part. Half types: the CPU computes in float32 and rounds once; on
# CUDA the dense ops take cuBLAS's half GEMMs (`_core._native_half`): the masked operand rounded to
# the half type, then the product's own rounding, up to about one half-type ulp of the largest
# value each (float16 2^-10, bfloat16 2^-7), so two of them.
GEMM_RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7}
INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}
ELEMENTWISE = sorted(n for n, c in CASES.items() if c.op is DROPOUT)
ALL_CASES = sorted(CASES)
OUT_CASES = ["dropout", "dropout_classic", "dropout1d", "dropout2d", "dropout3d"]  # take out=
DEV = "cuda"


def assert_same(got, ref, exact, rtol=None, zero_sign=True):
    """got (any device) equals the CPU reference ref: bit for bit (exact) or to rtol, with an
    absolute tolerance scaled by the largest |ref| (products of values near 0). zero_sign=False:
    -0.0 and 0.0 count as the same bits."""
    got = got.detach().cpu()
    ref = ref.detach()
    if not zero_sign:  # x + 0.0 turns -0.0 into 0.0 and leaves every other value's bits alone
        got, ref = got + 0.0, ref + 0.0
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.shape, ref.dtype)
    if exact:
        same = torch.equal(got.contiguous().view(INT_VIEW[ref.dtype]), ref.contiguous().view(INT_VIEW[ref.dtype]))
        if not same:
            diff = (got.double() != ref.double()) & ~(got.isnan() & ref.isnan())
            mask_diff = ((got == 0) != (ref == 0)).sum().item()
            zero_signs = ((got == 0) & (ref == 0) & (got.signbit() != ref.signbit())).sum().item()
            raise AssertionError(f"not bit-identical: {int(diff.sum())} of {ref.numel()} elements differ, "
                                 f"{mask_diff} in the mask (zero pattern), {zero_signs} zeros of the "
                                 f"other sign, the rest NaN payloads")
        return
    scale = max(1.0, float(ref.double().abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(got.double(), ref.double(), rtol=rtol, atol=rtol * scale)


def on_gpu(ops, requires_grad=False):
    return tuple(t.detach().to(DEV).requires_grad_(requires_grad) for t in ops)


def _f64_on_both(case):
    """((cpu operands, "cpu"), (the same on the GPU, DEV)): float64, requiring grad."""
    cpu = tuple(t.requires_grad_(True) for t in operands(case, torch.float64))
    return (cpu, "cpu"), (on_gpu(cpu, requires_grad=True), DEV)


def _exact(name):
    return CASES[name].op is DROPOUT


def assert_same_gradient(got, ref, name, dtype):
    """A gradient on the GPU against the CPU's: as assert_same, but a grouped op's dropped
    gradients may differ in the sign of their zeros. On small CPU tensors the grouped ops take
    torch's multiply (`_grouped.native_grouped`: grad * 0 is -0.0 for a negative grad); the kernels
    (every CUDA tensor, larger CPU tensors) write 0.0. The first H200 run found exactly that
    difference and no other."""
    assert_same(got, ref, _exact(name), GEMM_RTOL[dtype], zero_sign=not CASES[name].groups)


# ---------------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ALL_CASES)
def test_forward_equals_cpu(name, dtype):
    case = CASES[name]
    ops = operands(case, dtype)
    ref = case.call(*ops, seed=SEED, offset=OFFSET)
    got = case.call(*on_gpu(ops), seed=SEED, offset=OFFSET)
    assert got.is_cuda and got.device == torch.device(DEV, torch.cuda.current_device())
    assert_same(got, ref, _exact(name), GEMM_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ALL_CASES)
def test_gradients_equal_cpu(name, dtype):
    case = CASES[name]
    cpu = tuple(t.requires_grad_(True) for t in operands(case, dtype))
    gpu = on_gpu(cpu, requires_grad=True)
    y_cpu = case.call(*cpu, seed=SEED, offset=OFFSET)
    y_gpu = case.call(*gpu, seed=SEED, offset=OFFSET)
    g = torch.randn(y_cpu.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    ref = torch.autograd.grad(y_cpu, cpu, g)
    got = torch.autograd.grad(y_gpu, gpu, g.to(DEV))
    for r, t in zip(ref, got):
        assert_same_gradient(t, r, name, dtype)


@pytest.mark.parametrize("name", ALL_CASES)
def test_double_backward_equals_cpu(name):
    """Backward with create_graph (the differentiable formulas, TorchAutogradBackend) on CUDA."""
    results = []
    for ops, dev in _f64_on_both(CASES[name]):
        y = CASES[name].call(*ops, seed=SEED, offset=OFFSET)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dev)
        g.requires_grad_(True)
        grads = torch.autograd.grad(y, ops, g, create_graph=True)
        v = [torch.randn(a.shape, generator=torch.Generator().manual_seed(3 + i), dtype=torch.float64).to(dev)
             for i, a in enumerate(grads)]
        s = sum((a * b).sum() for a, b in zip(grads, v))
        results.append(torch.autograd.grad(s, (*ops, g), allow_unused=True))
    for r, t in zip(*results):
        assert (r is None) == (t is None)
        if r is not None:
            assert_same_gradient(t, r, name, torch.float64)


PER_SAMPLE = ("dropconnect_sample", "dropconnect_sample_grad_x", "dropconnect_sample_grad_w")


@pytest.mark.parametrize("name", [n for n in ALL_CASES if n not in PER_SAMPLE])
def test_batched_gradients_equal_cpu(name):
    """is_grads_batched (jacobian / hessian with vectorize=True) on CUDA tensors: the legacy-vmap
    mask path (_core._materialized_mask) with the mask moved to the device, against the CPU."""
    results = []
    for ops, dev in _f64_on_both(CASES[name]):
        y = CASES[name].call(*ops, seed=SEED, offset=OFFSET)
        v = torch.randn((3,) + tuple(y.shape), generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64).to(dev)
        results.append(torch.autograd.grad(y, ops, v, is_grads_batched=True))
    for r, t in zip(*results):
        assert_same_gradient(t, r, name, torch.float64)


@pytest.mark.parametrize("name", [n for n in ALL_CASES if n not in PER_SAMPLE])
def test_jacrev_equals_cpu(name):
    """torch.func.jacrev (a vmap over the vjp of one forward) on CUDA tensors: the forward's one mask
    for every cotangent (_core.TorchReplayBackend), against the CPU."""
    results = []
    for ops, dev in _f64_on_both(CASES[name]):
        rest = ops[1:]
        results.append(torch.func.jacrev(lambda x: CASES[name].call(x, *rest, seed=SEED, offset=OFFSET))(ops[0]))
    assert_same(results[1], results[0], _exact(name), GEMM_RTOL[torch.float64])


@pytest.mark.parametrize("name", ALL_CASES)
def test_compiled_autograd_equals_cpu(name):
    """Compiled autograd traces the eager backward; on CUDA its masks go through the custom ops."""
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    case = CASES[name]
    results = []
    for dev in ("cpu", DEV):
        torch._dynamo.reset()
        ops = on_gpu(operands(case, torch.float64), requires_grad=True) if dev == DEV else \
            tuple(t.requires_grad_(True) for t in operands(case, torch.float64))
        y = case.call(*ops, seed=SEED, offset=OFFSET)
        with compiled_autograd._enable(torch.compile(backend="aot_eager", fullgraph=True)):
            (y * y).sum().backward()
        results.append([t.grad for t in ops])
    for r, t in zip(*results):
        assert_same(t, r, _exact(name), GEMM_RTOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", [n for n in ALL_CASES if CASES[n].inplace])
def test_inplace_equals_cpu(name, dtype):
    case = CASES[name]
    (x,) = operands(case, dtype)
    ref = case.call(x.clone(), seed=SEED, offset=OFFSET, inplace=True)
    xg = x.to(DEV)
    ptr = xg.data_ptr()
    got = case.call(xg, seed=SEED, offset=OFFSET, inplace=True)
    assert got is xg and xg.data_ptr() == ptr
    assert_same(xg, ref, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", OUT_CASES)
def test_out_equals_cpu(name, dtype):
    case = CASES[name]
    (x,) = operands(case, dtype)
    ref = case.call(x, seed=SEED, offset=OFFSET)
    out = torch.full(x.shape, float("nan"), dtype=dtype, device=DEV)
    got = case.call(x.to(DEV), seed=SEED, offset=OFFSET, out=out)
    assert got is out
    assert_same(out, ref, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fn", ["dropout", "dropout2d", "drop_path"])
def test_channels_last(fn, dtype):
    """channels_last in, channels_last out (torch's layout rule), same values as on the CPU; and
    the gradient."""
    f = getattr(fastdrop, fn)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last)
    ref = f(x, 0.4, seed=SEED, offset=OFFSET)
    xg = x.to(DEV).requires_grad_(True)
    assert xg.is_contiguous(memory_format=torch.channels_last)
    got = f(xg, 0.4, seed=SEED, offset=OFFSET)
    assert got.stride() == ref.stride() == x.stride()
    assert_same(got, ref, True)
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(got, xg, g.to(DEV))
    assert_same(gx, f(g, 0.4, seed=SEED, offset=OFFSET), True)


@pytest.mark.parametrize("view", ["transposed", "sliced", "expanded", "negative_bit"])
def test_strided_inputs(view):
    x = torch.randn(7, 9, dtype=torch.float32)
    make = {"transposed": lambda t: t.t(), "sliced": lambda t: t[1:, ::2],
            "expanded": lambda t: t[:1].expand(5, 9), "negative_bit": torch._neg_view}[view]
    xc = make(x)
    xg = make(x.to(DEV))
    for f in (fastdrop.dropout, fastdrop.drop_path):
        assert_same(f(xg, 0.3, seed=SEED, offset=OFFSET), f(xc, 0.3, seed=SEED, offset=OFFSET), True)


@pytest.mark.parametrize("case", ["neg_x", "neg_weight", "neg_bias", "no_in_features", "no_out_features"])
def test_per_sample_dropconnect_operands(case):
    """Per-sample DropConnect's CUDA kernels read operands through __cuda_array_interface__, which
    hands out a negated view's memory as it is (the CPU route resolves the neg bit), and its
    reshape could not infer -1 for 0 features: both are the CPU's results now (written without a
    GPU, 2026-12-05; first run on the next GPU session)."""
    n, i, o = {"no_in_features": (3, 0, 4), "no_out_features": (3, 5, 0)}.get(case, (3, 5, 4))
    x, w, b = torch.randn(n, i, dtype=torch.float64), torch.randn(o, i, dtype=torch.float64), \
        torch.randn(o, dtype=torch.float64)
    neg = {"neg_x": 0, "neg_weight": 1, "neg_bias": 2}.get(case)

    def run(device):
        ops = [t.to(device).requires_grad_() for t in (x, w, b)]
        used = [torch._neg_view(t) if k == neg else t for k, t in enumerate(ops)]
        y = fastdrop.dropconnect_linear(*used, 0.4, per_sample=True, seed=SEED, offset=OFFSET)
        grads = torch.autograd.grad(y, ops, torch.ones_like(y))
        return y, grads
    y, grads = run(DEV)
    y_cpu, grads_cpu = run("cpu")
    assert_same(y, y_cpu, False, rtol=1e-12)
    for got, ref in zip(grads, grads_cpu):
        assert_same(got, ref, False, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_sizes_cross_the_grid_stride(dtype):
    """More elements than one grid covers (CUDA_MAX_BLOCKS x CUDA_THREADS threads, 4 elements
    each), odd tails, and group counts past one grid."""
    n = (1 << 24) + 5
    x = torch.randn(n, dtype=torch.float32).to(dtype)
    assert_same(fastdrop.dropout(x.to(DEV), 0.3, seed=SEED, offset=OFFSET),
                fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET), True)
    x4 = torch.randn(64, 129, 17, 19, dtype=torch.float32).to(dtype)
    assert_same(fastdrop.dropout2d(x4.to(DEV), 0.5, seed=SEED, offset=OFFSET),
                fastdrop.dropout2d(x4, 0.5, seed=SEED, offset=OFFSET), True)
    x3 = torch.randn((1 << 22) + 1, 2, dtype=torch.float32).to(dtype)
    assert_same(fastdrop.drop_path(x3.to(DEV), 0.2, seed=SEED, offset=OFFSET),
                fastdrop.drop_path(x3, 0.2, seed=SEED, offset=OFFSET), True)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("fn", ["dropout_linear", "dropconnect_linear"])
def test_dense_layers_many_tiles(fn, per_sample):
    """Odd shapes (not multiples of the 16-wide tiles) with more output tiles than one grid."""
    if fn == "dropout_linear" and per_sample:
        pytest.skip("per_sample is a DropConnect option")
    kw = {"per_sample": True} if per_sample else {}
    f = getattr(fastdrop, fn)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1100, 21, generator=gen, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(1037, 21, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(1037, generator=gen, dtype=torch.float64).requires_grad_(True)
    y = f(x, w, b, 0.4, seed=SEED, offset=OFFSET, **kw)
    xg, wg, bg = on_gpu((x, w, b), requires_grad=True)
    yg = f(xg, wg, bg, 0.4, seed=SEED, offset=OFFSET, **kw)
    assert_same(yg, y, False, 1e-10)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for r, t in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yg, (xg, wg, bg), g.to(DEV))):
        assert_same(t, r, False, 1e-10)


@pytest.mark.parametrize("kernel", ["tiled", "registers"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(64, 1024, 256), (3, 1003, 37), (1100, 21, 1037), (2, 8, 140000)])
def test_per_sample_kernels_equal_cpu(monkeypatch, kernel, dtype, shape):
    """Both per-sample DropConnect kernels (fastdrop._cuda.SAMPLE_KERNEL) against the CPU: forward
    and every gradient. Shapes: split-K (few outputs, a long reduction), `in` not a multiple of 8
    (rows straddle Philox blocks), more row groups than one grid, out above the 65535 grid rows."""
    import fastdrop._cuda as C
    monkeypatch.setattr(C, "SAMPLE_KERNEL", kernel)
    n, fin, fout = shape
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, fin, generator=gen, dtype=dtype).requires_grad_(True)
    w = torch.randn(fout, fin, generator=gen, dtype=dtype).requires_grad_(True)
    b = torch.randn(fout, generator=gen, dtype=dtype).requires_grad_(True)
    y = fastdrop.dropconnect_linear(x, w, b, 0.4, seed=SEED, offset=OFFSET, per_sample=True)
    xg, wg, bg = on_gpu((x, w, b), requires_grad=True)
    yg = fastdrop.dropconnect_linear(xg, wg, bg, 0.4, seed=SEED, offset=OFFSET, per_sample=True)
    rtol = 1e-10 if dtype == torch.float64 else 2e-4
    assert_same(yg, y, False, rtol)
    g = torch.randn(y.shape, generator=gen, dtype=dtype)
    for r, t in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yg, (xg, wg, bg), g.to(DEV))):
        assert_same(t, r, False, rtol)


def test_p_edge_cases():
    x = torch.randn(1000, device=DEV)
    assert torch.equal(fastdrop.dropout(x, 0.0, seed=1), x)
    assert (fastdrop.dropout(x, 1.0, seed=1) == 0).all()
    assert torch.equal(fastdrop.dropout(x, 0.5, training=False), x)
    assert_same(fastdrop.dropout(x, 0.25, training=False, mode="classic"),
                fastdrop.dropout(x.cpu(), 0.25, training=False, mode="classic"), True)
    e = torch.empty(0, 3, device=DEV)
    assert fastdrop.dropout(e, 0.5, seed=1).shape == (0, 3)


# -------------------------------------------------------------------------- seeds and the modules

def _model(dtype=torch.float64):
    torch.manual_seed(5)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), fastdrop.nn.Dropout(0.3),
        fastdrop.nn.DropoutLinear(16, 16, p=0.2), torch.nn.ReLU(),
        fastdrop.nn.DropConnectLinear(16, 16, p=0.3), torch.nn.Tanh(),
        fastdrop.nn.DropConnectLinear(16, 8, p=0.3, per_sample=True), fastdrop.nn.DropPath(0.2),
    ).to(dtype)


def test_seed_none_follows_torch_manual_seed_on_cpu_and_gpu():
    """The README: torch.manual_seed reproduces a model's masks on CPU and GPU alike (seeds come
    from torch's CPU generator whatever the device)."""
    m_cpu = _model()
    m_gpu = copy.deepcopy(m_cpu).to(DEV)
    x = torch.randn(6, 12, dtype=torch.float64)
    res = []
    for m, xx in ((m_cpu, x), (m_gpu, x.to(DEV))):
        torch.manual_seed(123)
        xx = xx.clone().requires_grad_(True)
        y = m(xx)
        y2 = m(xx)  # successive calls draw new masks
        (gx,) = torch.autograd.grad((y * y2).sum(), xx)
        res.append((y, y2, gx))
    for r, t in zip(*res):
        assert_same(t, r, False, 1e-10)
    assert not torch.equal(res[0][0], res[0][1])


def test_mc_predict_equals_cpu():
    m_cpu = _model()
    m_gpu = copy.deepcopy(m_cpu).to(DEV)
    x = torch.randn(5, 12, dtype=torch.float64)
    ref = fastdrop.mc_predict(m_cpu, x, samples=6, seed=77)
    got = fastdrop.mc_predict(m_gpu, x.to(DEV), samples=6, seed=77)
    assert_same(got.mean, ref.mean, False, 1e-10)
    assert_same(got.var, ref.var, False, 1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, dim", [((40, 30), 1), ((40, 30), 0), ((8, 3, 5, 5), (1, 2, 3))])
def test_max_norm_equals_cpu(shape, dim, dtype):
    w = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    wg = w.to(DEV)
    fastdrop.max_norm_(w, 2.0, dim=dim)
    fastdrop.max_norm_(wg, 2.0, dim=dim)
    # float64 sums in another order: a norm within rounding of the bound may go either way
    assert_same(wg, w, False, {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2))


# ------------------------------------------------------------------------------------------ streams

def _hold(stream, ms=30):
    """Keep `stream` busy for about ms milliseconds (nothing queued after this runs before)."""
    with torch.cuda.stream(stream):
        torch.cuda._sleep(int(ms * 1e-3 * 2e9))  # cycles at ~2 GHz


STREAM_CALLS = {
    "dropout": lambda x, w: fastdrop.dropout(x, 0.5, seed=SEED, offset=OFFSET),
    "dropout_bf16": lambda x, w: fastdrop.dropout(x.bfloat16(), 0.5, seed=SEED, offset=OFFSET),
    "dropout2d": lambda x, w: fastdrop.dropout2d(x.reshape(64, 32, 16, 16), 0.5, seed=SEED, offset=OFFSET),
    "drop_path": lambda x, w: fastdrop.drop_path(x.reshape(512, 1024), 0.5, seed=SEED, offset=OFFSET),
    "dropout_linear": lambda x, w: fastdrop.dropout_linear(x.reshape(512, 1024), w, None, 0.5,
                                                           seed=SEED, offset=OFFSET),
    "dropconnect": lambda x, w: fastdrop.dropconnect_linear(x.reshape(512, 1024), w, None, 0.5,
                                                            seed=SEED, offset=OFFSET),
    "dropconnect_per_sample": lambda x, w: fastdrop.dropconnect_linear(
        x.reshape(512, 1024)[:64], w, None, 0.5, seed=SEED, offset=OFFSET, per_sample=True),
    "dropout_matmul": lambda x, w: fastdrop.dropout_matmul(x.reshape(8, 64, 1024), w.mT, 0.5,
                                                           seed=SEED, offset=OFFSET),
    "max_norm_": lambda x, w: fastdrop.max_norm_(x.reshape(512, 1024).clone(), 1.0, dim=1),
}


@pytest.mark.parametrize("name", sorted(STREAM_CALLS))
def test_side_stream_is_used(name):
    """Under torch.cuda.stream(s) the op runs on s: x is written on s behind a ~30 ms sleep, so a
    launch on any other stream would read x before it is written; the result is read on s."""
    call = STREAM_CALLS[name]
    gen = torch.Generator().manual_seed(6)
    src_cpu = torch.randn(1 << 19, generator=gen)
    w_cpu = torch.randn(32, 1024, generator=gen) / 32
    ref = call(src_cpu, w_cpu)
    src, w = src_cpu.to(DEV), w_cpu.to(DEV)
    s = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        x = torch.zeros_like(src)
        _hold(s)
        x.copy_(src)
        y = call(x, w)
        y = y.clone()  # consumed on s
    s.synchronize()
    assert_same(y, ref, name in ("dropout", "dropout_bf16", "dropout2d", "drop_path"), 1e-5)


def test_side_stream_backward():
    """Backward of ops run under a side stream (autograd runs backward on the forward's streams)."""
    gen = torch.Generator().manual_seed(7)
    x_cpu = torch.randn(256, 512, generator=gen).requires_grad_(True)
    w_cpu = (torch.randn(128, 512, generator=gen) / 16).requires_grad_(True)

    def f(x, w):
        h = fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET)
        return fastdrop.dropconnect_linear(h, w, None, 0.2, seed=SEED + 1, offset=OFFSET, per_sample=True)
    ref = torch.autograd.grad(f(x_cpu, w_cpu).square().sum(), (x_cpu, w_cpu))
    x_src, w_src = x_cpu.detach().to(DEV), w_cpu.detach().to(DEV)
    s = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        x = torch.zeros(256, 512, device=DEV)
        w = torch.zeros(128, 512, device=DEV)
        _hold(s)
        x.copy_(x_src)
        w.copy_(w_src)
        x.requires_grad_(True)
        w.requires_grad_(True)
        got = torch.autograd.grad(f(x, w).square().sum(), (x, w))
        got = tuple(t.clone() for t in got)
    s.synchronize()
    for r, t in zip(ref, got):
        assert_same(t, r, False, 1e-5)


def test_many_streams_at_once():
    """Eight streams, each with its own input and seed, launched back to back; every result is its
    own CPU result."""
    gen = torch.Generator().manual_seed(8)
    xs = [torch.randn(1 << 18, generator=gen) for _ in range(8)]
    refs = [fastdrop.dropout(x, 0.5, seed=i, offset=OFFSET) for i, x in enumerate(xs)]
    streams = [torch.cuda.Stream() for _ in xs]
    srcs = [x.to(DEV) for x in xs]
    outs = []
    torch.cuda.synchronize()
    for i, (src, s) in enumerate(zip(srcs, streams)):
        with torch.cuda.stream(s):
            xg = torch.zeros(src.shape, device=DEV)
            _hold(s, 5)
            xg.copy_(src)
            outs.append(fastdrop.dropout2d(xg.reshape(64, 64, 64), 0.5, seed=i, offset=OFFSET).reshape(-1)
                        if i % 2 else fastdrop.dropout(xg, 0.5, seed=i, offset=OFFSET))
    torch.cuda.synchronize()
    for i, (o, r, x) in enumerate(zip(outs, refs, xs)):
        if i % 2:
            r = fastdrop.dropout2d(x.reshape(64, 64, 64), 0.5, seed=i, offset=OFFSET).reshape(-1)
        assert_same(o, r, True)


def test_outputs_come_from_torchs_allocator():
    """Issue 10: outputs of the torch route are torch allocations (visible to torch.cuda.memory_*)."""
    x = torch.randn(1 << 22, device=DEV)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    ys = [fastdrop.dropout(x, 0.5, seed=1), fastdrop.dropout_linear(x.reshape(1024, 4096),
                                                                     torch.randn(64, 4096, device=DEV), None, 0.5,
                                                                     seed=1)]
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before >= sum(y.numel() * y.element_size() for y in ys)


def test_per_sample_dropconnect_outputs_come_from_torchs_allocator():
    """Issue 10 item 1: the per-sample kernels' outputs too (not numba's cuda.device_array)."""
    x = torch.randn(256, 1024, device=DEV)
    w = torch.randn(1024, 1024, device=DEV)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    y = fastdrop.dropconnect_linear(x, w, None, 0.5, seed=1, per_sample=True)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before >= y.numel() * y.element_size()


# ------------------------------------------------------------------- the direct launcher (host path)
# kernels/direct_launch.py launches the dropout kernels of the torch route without numba's
# dispatch; tests/test_direct_launch.py checks its types and parameters against numba's without a
# GPU. Here: it is the route taken, and its results are numba's, bit for bit.
DIRECT_CALLS = {
    "dropout f32": lambda x: fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET),
    "dropout f16": lambda x: fastdrop.dropout(x.half(), 0.3, seed=SEED, offset=OFFSET),
    "dropout bf16": lambda x: fastdrop.dropout(x.bfloat16(), 0.3, seed=SEED, offset=OFFSET),
    "dropout f64 channels_last": lambda x: fastdrop.dropout(
        x.double().to(memory_format=torch.channels_last), 0.3, seed=SEED, offset=OFFSET),
    "dropout2d": lambda x: fastdrop.dropout2d(x, 0.5, seed=SEED, offset=OFFSET),
    "dropout2d bf16 channels_last": lambda x: fastdrop.dropout2d(
        x.bfloat16().to(memory_format=torch.channels_last), 0.5, seed=SEED, offset=OFFSET),
    "drop_path": lambda x: fastdrop.drop_path(x, 0.2, seed=SEED, offset=OFFSET),
    "dropout inplace": lambda x: fastdrop.dropout(x.clone(), 0.3, seed=SEED, offset=OFFSET, inplace=True),
}


@pytest.mark.parametrize("name", sorted(DIRECT_CALLS))
def test_direct_launch_equals_numba_dispatch(name, monkeypatch):
    from fastdrop.kernels import direct_launch as D
    x = torch.randn(6, 8, 10, 12, device=DEV)
    launched = []
    real = D.TorchStream.launch
    monkeypatch.setattr(D.TorchStream, "launch",
                        lambda self, *a: (launched.append(a[0]), real(self, *a))[1])
    direct = DIRECT_CALLS[name](x)
    assert launched and D.enabled(), (launched, D.why_off())
    monkeypatch.setitem(D._state, "on", False)
    launched.clear()
    numba = DIRECT_CALLS[name](x)
    assert not launched
    assert direct.stride() == numba.stride()
    assert_same(direct, numba.cpu(), True)


def test_direct_launch_from_a_fresh_thread():
    """A thread whose current context torch has not set up yet launches through numba's route (or
    the direct one once the context is current): the same results either way."""
    import threading
    x = torch.randn(1 << 16, device=DEV)
    ref = fastdrop.dropout(x, 0.4, seed=SEED, offset=OFFSET).cpu()
    got, errors = [], []

    def run():
        try:
            got.append(fastdrop.dropout(x, 0.4, seed=SEED, offset=OFFSET))
            torch.cuda.current_stream().synchronize()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors
    assert_same(got[0], ref, True)


# --------------------------------------------------------------------------------------- compile

def _compile_case(backend):
    x = torch.randn(64, 128, device=DEV)
    w = torch.randn(32, 128, device=DEV)

    def f(x, w):
        h = fastdrop.dropout(x, 0.3)
        return fastdrop.dropout_linear(torch.relu(h), w, None, 0.2)
    torch.manual_seed(9)
    eager = f(x, w)
    compiled = torch.compile(f, backend=backend, fullgraph=True)
    torch.manual_seed(9)
    got = compiled(x, w)
    assert_same(got, eager.cpu(), False, 1e-5)


def test_torch_compile_aot_eager_equals_eager():
    _compile_case("aot_eager")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_torch_compile_inductor_equals_eager():
    _compile_case("inductor")


@pytest.mark.parametrize("half_x", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul", "per_sample"])
def test_autocast_compiled_equals_eager(op, dtype, half_x):
    """Under torch.autocast on CUDA tensors a compiled call (its custom op re-enters autocast,
    `_autocast.library_arg`) gives eager's output and gradients bit for bit, in eager's dtypes, for
    float32 operands and a half activation meeting a float32 weight, with an upstream gradient
    whose GEMMs overflow float16 (an inf is eager's too; the CPU suite checks on CPU tensors that
    a masked float32 operand's gradient scaled past 65504 stays finite)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, generator=g)
    w = torch.randn(64, 32, generator=g) if op == "dropout_matmul" else torch.randn(32, 64, generator=g)
    x = (x.to(dtype) if half_x else x).to(DEV)
    w = w.to(DEV)
    call = {"dropout_linear": lambda x, w: fastdrop.dropout_linear(x, w, None, 0.5, seed=4),
            "dropconnect_linear": lambda x, w: fastdrop.dropconnect_linear(x, w, None, 0.5, seed=4),
            "dropout_matmul": lambda x, w: fastdrop.dropout_matmul(x, w, 0.5, seed=4),
            "per_sample": lambda x, w: fastdrop.dropconnect_linear(x, w, None, 0.5, per_sample=True,
                                                                   seed=4)}[op]
    torch._dynamo.reset()
    results = []
    for fn in (call, torch.compile(call, backend="aot_eager", fullgraph=True)):
        xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            y = fn(xs, ws)
        upstream = torch.full_like(y, 30000.0)
        results.append((y, *torch.autograd.grad(y, (xs, ws), upstream)))
    for got, ref in zip(*results):
        assert got.dtype == ref.dtype
        assert_same(got, ref.cpu(), True)


# ------------------------------------------------------------------------------ CUDA device arrays

DEVICE_ARRAY_OPS = [n for n in ALL_CASES if "matmul" not in n and "_grad_" not in n]


class Foreign:
    """A foreign CUDA array (CuPy-like): only __cuda_array_interface__, shape and dtype."""

    def __init__(self, t):
        self._t = t
        self.__cuda_array_interface__ = t.__cuda_array_interface__
        self.shape = tuple(t.shape)
        self.dtype = np.dtype(str(t.dtype).replace("torch.", ""))


@pytest.mark.parametrize("kind", ["numba", "foreign"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", DEVICE_ARRAY_OPS)
def test_device_arrays_equal_numpy(name, dtype, kind):
    """CUDA device arrays: Numba's, and foreign ones (torch's memory seen through
    __cuda_array_interface__ only); float16 included (the simulator run covers float32/64)."""
    from numba import cuda
    case = CASES[name]
    ops = numpy_operands(case, dtype)
    ref = case.call(*ops, seed=SEED, offset=OFFSET)
    if kind == "numba":
        dev = tuple(cuda.to_device(a) for a in ops)
    else:
        dev = tuple(Foreign(torch.from_numpy(a).to(DEV)) for a in ops)
    got = case.call(*dev, seed=SEED, offset=OFFSET)
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else np.asarray(got)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    if case.op is DROPOUT:
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
    else:
        rtol = {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-10}[dtype]
        scale = max(1.0, float(np.abs(ref.astype(np.float64)).max()))
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", [n for n in DEVICE_ARRAY_OPS if CASES[n].inplace])
def test_inplace_on_foreign_device_arrays(name):
    case = CASES[name]
    (x,) = numpy_operands(case, np.float32)
    t = torch.from_numpy(x).to(DEV)
    f = Foreign(t)
    assert case.call(f, seed=SEED, offset=OFFSET, inplace=True) is f
    torch.cuda.synchronize()
    np.testing.assert_array_equal(t.cpu().numpy(), case.call(x, seed=SEED, offset=OFFSET))


def test_large_device_array_and_strided_device_array():
    from numba import cuda
    x = np.random.default_rng(0).standard_normal((1 << 22) + 3).astype(np.float32)
    got = fastdrop.dropout(cuda.to_device(x), 0.5, seed=SEED, offset=OFFSET).copy_to_host()
    np.testing.assert_array_equal(got, fastdrop.dropout(x, 0.5, seed=SEED, offset=OFFSET))
    m = np.random.default_rng(1).standard_normal((300, 200)).astype(np.float64)
    d = cuda.to_device(m)[:, ::3]
    assert not d.is_c_contiguous()
    got = fastdrop.dropout(d, 0.5, seed=SEED, offset=OFFSET)
    np.testing.assert_array_equal(got.copy_to_host(), fastdrop.dropout(m[:, ::3], 0.5, seed=SEED, offset=OFFSET))


def test_float16_device_array_conversions_keep_nan_payloads():
    """float16 device arrays go through `_cuda.astype` (float16 -> float32 -> float16 around
    max_norm_ and the dense layers' kernels), whose float32 -> float16 store is a hardware
    conversion on a GPU, which may write the canonical NaN where numpy's astype on the CPU keeps
    sign and payload (a review of the simulator, 2026-12-06: the simulator converts with numpy, so
    only a GPU can tell). max_norm_ leaves a row whose norm is NaN as it is: its bits must be the
    CPU's, payloads included (quiet NaNs: a signalling one is quieted on a GPU, README)."""
    from numba import cuda
    w = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float16) * np.float16(3)
    bits = w.view(np.uint16)
    bits[0, 1], bits[1, 4], bits[2, 0] = 0x7E01, 0xFE55, 0x7F80  # quiet NaNs, payloads, a negative one
    d = cuda.to_device(w.copy())
    fastdrop.max_norm_(d, 1.0)
    cpu = w.copy()
    fastdrop.max_norm_(cpu, 1.0)
    np.testing.assert_array_equal(d.copy_to_host().view(np.uint16)[:3], cpu.view(np.uint16)[:3])


@pytest.mark.parametrize("name", ALL_CASES)
def test_cuda_tensors_without_memory_are_refused(name):
    """A CUDA tensor whose storage was freed (FSDP's resize_(0) of an unsharded parameter) as x or
    as any operand: the CPU's ValueError before the seed draw, not an illegal memory access (a
    sticky error that ends the process's CUDA context)."""
    case = CASES[name]
    ops = on_gpu(operands(case, torch.float32))
    for i in range(len(ops)):
        bad = tuple(a.clone() for a in ops)
        bad[i].untyped_storage().resize_(0)
        state = torch.get_rng_state()
        with pytest.raises(ValueError, match="no memory for its elements"):
            case.call(*bad)
        assert torch.equal(torch.get_rng_state(), state)
    torch.cuda.synchronize()  # the context still works
