"""dropout_linear, its autograd, the DropoutLinear module, and the validation shared with DropConnect.

References are plain numpy/torch that take the kernel's own mask (fastdrop.dropout_mask)."""
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import dropout_linear, dropconnect_linear

# (N-shape, in, out): odd on purpose; N-shape may have several leading dims.
SHAPES = [((1,), 1, 1), ((3,), 7, 5), ((5,), 1023, 3), ((2, 3), 7, 4), ((4,), 33, 65)]
NP_DTYPES = [(np.float32, 1e-4, 1e-4), (np.float64, 1e-10, 1e-10)]
TORCH_DTYPES = [(torch.float32, 1e-4, 1e-4), (torch.float64, 1e-10, 1e-10)]


def _data(lead, i, o, dtype, rng, bias=True):
    x = rng.standard_normal(lead + (i,)).astype(dtype)
    w = rng.standard_normal((o, i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, w, b


def ref_dropout_linear(x, w, b, mask, scale):
    y = (x * mask * scale) @ w.T
    return y if b is None else y + b


@pytest.mark.parametrize("lead,i,o", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", NP_DTYPES)
@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("bias", [True, False])
def test_numpy_forward_matches_reference(lead, i, o, dtype, atol, rtol, mode, bias):
    rng = np.random.default_rng(1)
    x, w, b = _data(lead, i, o, dtype, rng, bias)
    p, seed, offset = 0.3, 12345, 7
    y = dropout_linear(x, w, b, p, seed=seed, offset=offset, mode=mode)
    mask = fastdrop.dropout_mask(x.shape, p, seed, offset)
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    assert y.dtype == dtype and y.shape == lead + (o,)
    np.testing.assert_allclose(y, ref_dropout_linear(x, w, b, mask, scale), atol=atol, rtol=rtol)


def test_mask_contract_is_exact():
    """With W = identity and x = 1 the output is the scaled mask itself."""
    n, i, p = 6, 37, 0.4
    x = np.ones((n, i), np.float64)
    y = dropout_linear(x, np.eye(i), None, p, seed=99, offset=3)
    mask = fastdrop.dropout_mask((n, i), p, 99, 3)
    np.testing.assert_array_equal(y != 0, mask)
    np.testing.assert_allclose(y[mask], 1 / (1 - p), rtol=1e-15)
    # and the torch path uses the same bits
    yt = dropout_linear(torch.ones(n, i, dtype=torch.float64), torch.eye(i, dtype=torch.float64), None, p,
                        seed=99, offset=3)
    np.testing.assert_array_equal(yt.numpy() != 0, mask)


def test_large_operands_take_the_parallel_mask_kernels():
    """Above PARALLEL_MASK_MIN the torch path masks with the parallel kernels: same bits."""
    from fastdrop.kernels.config import DENSE_PARALLEL_MIN as PARALLEL_MASK_MIN
    n, i = PARALLEL_MASK_MIN // 512 + 3, 512
    x = torch.randn(n, i, requires_grad=True)
    w = torch.randn(3, i, requires_grad=True)
    y = dropout_linear(x, w, None, 0.5, seed=6)
    mask = torch.from_numpy(fastdrop.dropout_mask((n, i), 0.5, 6))
    yr = torch.nn.functional.linear(x * mask * 2.0, w)
    torch.testing.assert_close(y, yr, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(yr, (x, w), g)):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_layers_mask_by_address(dtype, monkeypatch):
    """A small dense layer's masks (below DENSE_PARALLEL_MIN) go to the serial kernels on the
    tensors' memory, forward (`dropout_flat_serial_at`) and backward (`dropout_pair_serial_at`:
    one mask for x and g W), not through numpy views (DropoutLinear 8x512 forward 85 -> 68 us,
    backward 137 -> 115 us, 2026-12-06); the same bits as the numpy launcher's kernels."""
    from fastdrop import _core, _cpu
    from fastdrop.kernels import mask_pair_cpu
    x = torch.randn(8, 513, dtype=dtype, requires_grad=True)
    w = torch.randn(7, 513, dtype=dtype, requires_grad=True)
    g = torch.randn(8, 7, dtype=dtype)
    mask = torch.from_numpy(fastdrop.dropout_mask((8, 513), 0.3, 4, offset=9))
    scale = torch.tensor(1 / 0.7, dtype=dtype)
    want_y = torch.nn.functional.linear(torch.where(mask, x.detach() * scale, torch.zeros((), dtype=dtype)), w.detach())
    want_gx = torch.where(mask, (g @ w.detach()) * scale, torch.zeros((), dtype=dtype))
    want_gw = g.T @ torch.where(mask, x.detach() * scale, torch.zeros((), dtype=dtype))

    def no_numpy(*args, **kwargs):
        raise AssertionError("a small dense layer's mask went through the numpy launcher")
    monkeypatch.setattr(_cpu, "dropout_into", no_numpy)
    pairs = []
    kernel = mask_pair_cpu.dropout_pair_serial_at
    monkeypatch.setattr(_core, "dropout_pair_serial_at", lambda *a: (pairs.append(a[4]), kernel(*a))[1])
    y = dropout_linear(x, w, None, 0.3, seed=4, offset=9)
    assert torch.equal(y.detach(), want_y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    assert pairs == [8 * 513]
    assert torch.equal(gx, want_gx) and torch.equal(gw, want_gw)


@pytest.mark.parametrize("lead,i,o", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", TORCH_DTYPES)
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_torch_forward_backward_match_reference(lead, i, o, dtype, atol, rtol, mode):
    x = torch.randn(*lead, i, dtype=dtype, requires_grad=True)
    w = torch.randn(o, i, dtype=dtype, requires_grad=True)
    b = torch.randn(o, dtype=dtype, requires_grad=True)
    p, seed = 0.25, 2024
    y = dropout_linear(x, w, b, p, seed=seed, mode=mode)
    mask = torch.from_numpy(fastdrop.dropout_mask(tuple(x.shape), p, seed)).to(dtype)
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    yr = torch.nn.functional.linear(x * mask * scale, w, b)
    torch.testing.assert_close(y, yr, atol=atol, rtol=rtol)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yr, (x, w, b), g)):
        torch.testing.assert_close(a, r, atol=atol, rtol=rtol)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_gradcheck(mode, bias, lead):
    x = torch.randn(*lead, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    fn = lambda x, w, b: dropout_linear(x, w, b, 0.4, seed=5, mode=mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_only_some_grads_requested():
    """A first layer: x needs no grad, and backward skips its GEMM but still gets W right."""
    x = torch.randn(6, 9, dtype=torch.float64)
    w = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    y = dropout_linear(x, w, None, 0.5, seed=1)
    (gw,) = torch.autograd.grad(y.sum(), (w,))
    mask = torch.from_numpy(fastdrop.dropout_mask((6, 9), 0.5, 1)).double()
    torch.testing.assert_close(gw, (x * mask * 2).sum(0).expand(3, 9))


def _saved_bytes(fn):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved)


def test_saves_only_x_and_weight():
    x = torch.randn(64, 128, requires_grad=True)
    lin = torch.nn.Linear(128, 32)
    fd = fastdrop.nn.DropoutLinear(128, 32, p=0.5)
    ours = _saved_bytes(lambda: fd(x))
    assert ours == x.nbytes + fd.weight.nbytes
    theirs = _saved_bytes(lambda: lin(torch.nn.functional.dropout(x, 0.5)))
    assert theirs > ours  # torch keeps the mask and the dropped copy of x


def test_eval_rules():
    rng = np.random.default_rng(0)
    x, w, b = _data((4,), 6, 3, np.float64, rng)
    plain = x @ w.T + b
    np.testing.assert_allclose(dropout_linear(x, w, b, 0.3, training=False), plain)
    np.testing.assert_allclose(dropout_linear(x, w, b, 0.3, training=False, mode="classic"),
                               (0.7 * x) @ w.T + b)
    np.testing.assert_allclose(dropout_linear(x, w, b, 0.0, seed=1), plain)
    np.testing.assert_allclose(dropout_linear(x, w, b, 1.0, seed=1), np.broadcast_to(b, (4, 3)))


def test_seed_none_draws_from_the_generators():
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    torch.manual_seed(3)
    a = dropout_linear(x, w)
    torch.manual_seed(3)
    assert torch.equal(a, dropout_linear(x, w))
    assert not torch.equal(a, dropout_linear(x, w))
    xn, wn = x.numpy(), w.numpy()
    fastdrop.manual_seed(3)
    an = dropout_linear(xn, wn)
    fastdrop.manual_seed(3)
    np.testing.assert_array_equal(an, dropout_linear(xn, wn))


def test_non_contiguous_inputs():
    base = torch.randn(7, 10, dtype=torch.float64)
    x = base.t()[:, ::2]  # (10, 4) non-contiguous
    w = torch.randn(6, 4, dtype=torch.float64).t().contiguous().t()  # contiguous values, F-order
    wt = torch.randn(4, 6, dtype=torch.float64).t()  # (6, 4) non-contiguous
    for weight in (w, wt):
        y = dropout_linear(x, weight, None, 0.5, seed=8)
        ref = dropout_linear(x.contiguous(), weight.contiguous(), None, 0.5, seed=8)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    yn = dropout_linear(x.numpy(), wt.numpy(), None, 0.5, seed=8)
    np.testing.assert_allclose(yn, ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", ["dropout", "batch", "sample"])
def test_half_precision_computes_in_float32(dtype, fn):
    x = torch.randn(3, 7, 17).to(dtype).requires_grad_()
    w = torch.randn(5, 17).to(dtype).requires_grad_()
    b = torch.randn(5).to(dtype)
    call = {"dropout": lambda x, w, b: dropout_linear(x, w, b, 0.3, seed=4),
            "batch": lambda x, w, b: dropconnect_linear(x, w, b, 0.3, seed=4),
            "sample": lambda x, w, b: dropconnect_linear(x, w, b, 0.3, seed=4, per_sample=True)}[fn]
    y = call(x, w, b)
    assert y.dtype == dtype
    ref = call(x.detach().float(), w.detach().float(), b.float())
    torch.testing.assert_close(y.float(), ref.to(dtype).float())
    y.sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", ["dropout_linear", "dropconnect", "dropout_matmul"])
def test_native_half_route_is_the_mask_kernel_and_torch_half_gemms(monkeypatch, dtype, fn):
    """On torch CUDA tensors the dense ops keep float16/bfloat16 (`_core._native_half`: cuBLAS half
    GEMMs; in float32 they ran 17x slower than nn.Linear on the H200). The route is the same Python
    as on the CPU, so it is checked here with the gate opened for CPU tensors: forward and gradients
    are, bit for bit, the mask kernel's half output (x * scale rounded once) fed to torch's own half
    GEMMs, and no float32 copy is made."""
    from fastdrop import _core
    monkeypatch.setattr(_core, "_native_half", lambda op, B, x: B is _core.TorchBackend and not op.own_products)
    gen = torch.Generator().manual_seed(5)
    drop = lambda t: fastdrop.dropout(t, 0.3, seed=4)  # noqa: E731  (the op's mask: same seed, offset 0)
    x = torch.randn(3, 7, 16, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(5, 16, generator=gen).to(dtype).requires_grad_()
    b = torch.randn(5, generator=gen).to(dtype)
    if fn == "dropout_matmul":
        w = torch.randn(16, 5, generator=gen).to(dtype).requires_grad_()
        y = fastdrop.dropout_matmul(x, w, 0.3, seed=4)
        ref = lambda x, w: drop(x) @ w  # noqa: E731
    elif fn == "dropout_linear":
        y = dropout_linear(x, w, b, 0.3, seed=4)
        ref = lambda x, w: torch.nn.functional.linear(drop(x), w, b)  # noqa: E731
    else:
        y = dropconnect_linear(x, w, b, 0.3, seed=4)
        ref = lambda x, w: torch.nn.functional.linear(x, drop(w), b)  # noqa: E731
    assert y.dtype == dtype
    g = torch.randn(y.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(y, (x, w), g)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    yr = ref(xr, wr)
    assert torch.equal(y, yr)
    # the reference's backward multiplies by the mask after torch's GEMM, as the op does
    for a, r in zip(got, torch.autograd.grad(yr, (xr, wr), g)):
        assert a.dtype == dtype and torch.equal(a, r)
    # and the gate is what changed the route: closed (the CPU's rule), the op computes in float32
    monkeypatch.undo()
    if fn == "dropout_linear":
        wide = dropout_linear(x.float(), w.float(), b.float(), 0.3, seed=4).to(dtype)
        assert torch.equal(dropout_linear(x, w, b, 0.3, seed=4), wide)


@pytest.mark.parametrize("fn", [dropout_linear, dropconnect_linear])
def test_validation_errors_name_the_problem(fn):
    x, w = np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(3, 6\).*\(5, 4\)"):
        fn(np.ones((3, 6), np.float32), w, seed=0)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\)"):
        fn(x, w, np.ones(4, np.float32), seed=0)
    with pytest.raises(TypeError, match="float32.*float64"):
        fn(x, w.astype(np.float64), seed=0)
    with pytest.raises(TypeError, match="floating point"):
        fn(x.astype(np.int32), w.astype(np.int32), seed=0)
    with pytest.raises(TypeError, match="numpy.*torch"):
        fn(x, torch.ones(5, 4), seed=0)
    with pytest.raises(ValueError, match="p=1.5"):
        fn(x, w, p=1.5, seed=0)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        fn(torch.ones(3, 6), torch.ones(5, 4), seed=0)
    with pytest.raises(TypeError, match="torch.float32.*torch.float64"):
        fn(torch.ones(3, 4), torch.ones(5, 4, dtype=torch.float64), seed=0)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="x is on cpu but weight is on meta"):
        fn(torch.ones(3, 4), torch.ones(5, 4, device="meta"))
    assert torch.equal(state, torch.get_rng_state())  # refused before drawing a seed


@pytest.mark.parametrize("fn", [dropout_linear, dropconnect_linear])
def test_unbatched_and_zero_features(fn):
    x, w, b = np.arange(5.0), np.ones((3, 5)), np.arange(3.0)
    y = fn(x, w, b, 0.5, seed=2)
    assert y.shape == (3,)
    np.testing.assert_allclose(y, fn(x[None], w, b, 0.5, seed=2)[0])
    assert fn(torch.tensor(x), torch.tensor(w), torch.tensor(b), 0.5, seed=2).shape == (3,)
    np.testing.assert_array_equal(fn(np.ones((2, 0)), np.ones((3, 0)), b, 0.5, seed=2), [b, b])
    bt = torch.tensor(b, requires_grad=True)
    fn(torch.ones(2, 0, dtype=torch.float64), torch.ones(3, 0, dtype=torch.float64), bt, 0.5, seed=2).sum().backward()
    torch.testing.assert_close(bt.grad, torch.full((3,), 2.0, dtype=torch.float64))
    for ps in (False, True):
        bt = torch.tensor(b, requires_grad=True)
        dropconnect_linear(torch.ones(2, 0, dtype=torch.float64), torch.ones(3, 0, dtype=torch.float64), bt,
                           0.5, seed=1, per_sample=ps).sum().backward()
        torch.testing.assert_close(bt.grad, torch.full((3,), 2.0, dtype=torch.float64))


class _FakeDeviceArray:
    """Claims to live on a GPU (__cuda_array_interface__) in a session that has none."""
    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype(np.float32)
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (4096, False), "version": 3}


@pytest.mark.parametrize("fn", [dropout_linear, dropconnect_linear])
def test_cuda_arrays_dispatch_to_the_cuda_module(fn):
    import numba.cuda
    if numba.cuda.is_available():
        pytest.skip("a GPU (or the simulator) is present; tests/cuda covers the kernels")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        fn(_FakeDeviceArray((3, 4)), _FakeDeviceArray((2, 4)), None, 0.5, seed=0)


def test_empty_batch():
    x = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    y = dropout_linear(x, w, None, 0.5, seed=1)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(3, 4))


# ---- module ------------------------------------------------------------------------------------

def test_module_matches_nn_linear_init_and_state_dict():
    torch.manual_seed(0)
    ref = torch.nn.Linear(13, 7)
    torch.manual_seed(0)
    m = fastdrop.nn.DropoutLinear(13, 7, p=0.2)
    assert torch.equal(ref.weight, m.weight) and torch.equal(ref.bias, m.bias)
    assert list(m.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    trained = torch.nn.Linear(13, 7)
    m.load_state_dict(trained.state_dict())
    x = torch.randn(4, 13)
    m.eval()
    torch.testing.assert_close(m(x), trained(x))
    assert "DropoutLinear(in_features=13, out_features=7, bias=True, p=0.2)" == repr(m)
    assert "mode=classic" in repr(fastdrop.nn.DropoutLinear(2, 2, mode="classic"))
    assert fastdrop.nn.DropoutLinear(3, 2, bias=False).bias is None


def test_module_training_and_reproducibility():
    m = fastdrop.nn.DropoutLinear(32, 8, p=0.5)
    x = torch.randn(16, 32)
    torch.manual_seed(11)
    a = m(x)
    torch.manual_seed(11)
    assert torch.equal(a, m(x))
    assert not torch.equal(a, m(x))
    m.eval()
    torch.testing.assert_close(m(x), torch.nn.functional.linear(x, m.weight, m.bias))
    with pytest.raises(ValueError, match="p=-0.1"):
        fastdrop.nn.DropoutLinear(3, 2, p=-0.1)
    with pytest.raises(ValueError, match="mode"):
        fastdrop.nn.DropoutLinear(3, 2, mode="bogus")


def test_torch_compile_fullgraph_matches_eager():
    """Under torch.compile the layers are torch.library custom ops (no graph break), and a compiled
    model gives the eager masks and gradients after the same torch.manual_seed."""
    torch._dynamo.reset()
    m = torch.nn.Sequential(fastdrop.nn.DropoutLinear(8, 4), torch.nn.ReLU(),
                            fastdrop.nn.DropConnectLinear(4, 2, per_sample=True), torch.nn.ReLU(),
                            fastdrop.nn.DropConnectLinear(2, 3, bias=False))
    c = torch.compile(m, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 8, requires_grad=True)

    def run(f):
        torch.manual_seed(0)
        m.zero_grad()
        x.grad = None
        y = f(x)
        y.square().sum().backward()
        return [y.detach()] + [p.grad.clone() for p in m.parameters()] + [x.grad.clone()]

    for a, b in zip(run(c), run(m)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul"])
def test_autocast_backward_runs_in_the_forwards_autocast_region(op, dtype):
    """Under torch.autocast the forward's GEMMs run in the half type; the backward's GEMMs must too
    (as torch.amp.custom_bwd does), or a half gradient meets a float32 saved weight. Gradients
    equal the torch composite with the same mask under the same autocast, bit for bit: the mask
    scales the GEMM's result in the float32 operand's dtype, as the composite's dropout backward
    does after autocast's cast (it scaled in the half type: rounded twice, and a float16 gradient
    of 40000 * 2 became inf where the composite gives 80000; a review, 2026-12-06)."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    p, s = 0.3, 1 / 0.7
    if op == "dropout_linear":
        fd = lambda: fastdrop.dropout_linear(x, w, b, p, seed=4)
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        ref = lambda: torch.nn.functional.linear(torch.where(m, x * s, 0.0), w, b)
        params = [x, w, b]
    elif op == "dropconnect_linear":
        fd = lambda: fastdrop.dropconnect_linear(x, w, b, p, seed=4)
        m = torch.from_numpy(fastdrop.dropout_mask((5, 8), p, 4))
        ref = lambda: torch.nn.functional.linear(x, torch.where(m, w * s, 0.0), b)
        params = [x, w, b]
    else:
        v = torch.randn(8, 5, requires_grad=True)
        fd = lambda: fastdrop.dropout_matmul(x, v, p, seed=4)
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        ref = lambda: torch.matmul(torch.where(m, x * s, 0.0), v)
        params = [x, v]
    grads = []
    for fn in (fd, ref):
        with torch.autocast("cpu", dtype=dtype):
            y = fn()
        assert y.dtype == dtype
        grads.append(torch.autograd.grad(y, params, torch.linspace(-3, 3, y.numel()).view(y.shape)))
    for g, r in zip(*grads):
        assert g.dtype == r.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul"])
def test_autocast_float16_gradient_scaled_past_float16s_range(op, compiled):
    """A float16 GEMM gradient of 40000 scaled by 1/(1-p) = 2 is 80000, past float16's range:
    torch's composite scales it in float32 (its dropout's backward follows autocast's cast node),
    and so does fastdrop now; it gave inf (the scale applied in float16), which a GradScaler reads
    as an overflow and skips the step (a review, 2026-12-06). Compiled too: the graph cast the
    float32 operands to float16 before the custom op, whose backward then scaled in float16."""
    one = lambda *shape: torch.ones(*shape, requires_grad=True)  # noqa: E731
    x, w = one(1, 4), one(4, 1) if op == "dropout_matmul" else one(1, 4)
    call = {"dropout_linear": lambda x, w: fastdrop.dropout_linear(x, w, None, 0.5, seed=0),
            "dropconnect_linear": lambda x, w: fastdrop.dropconnect_linear(x, w, None, 0.5, seed=0),
            "dropout_matmul": lambda x, w: fastdrop.dropout_matmul(x, w, 0.5, seed=0)}[op]
    if compiled:
        torch._dynamo.reset()
        call = torch.compile(call, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.float16):
        y = call(x, w)
    wrt, masked = (w, (1, 4)) if op == "dropconnect_linear" else (x, (1, 4))
    (g,) = torch.autograd.grad(y, wrt, torch.full_like(y, 40000.0))
    m = torch.from_numpy(fastdrop.dropout_mask(masked, 0.5, 0))
    torch.testing.assert_close(g, torch.where(m, 80000.0, 0.0), rtol=0, atol=0)


@pytest.mark.parametrize("half_x", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul"])
def test_autocast_with_mixed_dtypes(op, dtype, half_x):
    """Under torch.autocast a layer after an autocast one gets a half activation and its own
    float32 weight (half_x), or the mirror case: torch's composite masks its operand in that
    operand's dtype and the GEMM's autocast casts the product; so do the dense ops (they refused
    the mixed dtypes once, then cast every operand to the half type before the mask: DropConnect's
    float32 weight was rounded twice, and its float16 gradient scaled past 65504 was inf; a review,
    2026-12-06). Output and gradients equal the composite with the same mask bit for bit, each
    gradient in its operand's dtype, also for gradients that overflow float16 if scaled there."""
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    w = torch.randn(8, 5) if op == "dropout_matmul" else torch.randn(5, 8)
    x = (x.to(dtype) if half_x else x).requires_grad_()
    w = (w if half_x else w.to(dtype)).requires_grad_()
    b = torch.randn(5, requires_grad=True)  # float32, as a layer's bias (the matmul has none)
    p, s = 0.3, 1 / 0.7
    if op == "dropout_linear":
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        fd = lambda b=b: fastdrop.dropout_linear(x, w, b, p, seed=4)  # noqa: E731
        ref = lambda b=b: torch.nn.functional.linear(torch.where(m, x * s, 0), w, b)  # noqa: E731
    elif op == "dropconnect_linear":
        m = torch.from_numpy(fastdrop.dropout_mask((5, 8), p, 4))
        fd = lambda b=b: fastdrop.dropconnect_linear(x, w, b, p, seed=4)  # noqa: E731
        ref = lambda b=b: torch.nn.functional.linear(x, torch.where(m, w * s, 0), b)  # noqa: E731
    else:
        b = None
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        fd = lambda: fastdrop.dropout_matmul(x, w, p, seed=4)  # noqa: E731
        ref = lambda: torch.matmul(torch.where(m, x * s, 0), w)  # noqa: E731
    wrt = (x, w) if b is None else (x, w, b)
    # a random upstream (the bias's sum rounds as the composite's: in the GEMM's dtype), and one
    # of 30000 (* 8 weights * s: past float16's range if scaled there)
    # compiled too: the graph passes the operands as they are and the custom op's body re-enters
    # autocast (a half x's float32 weight was cast to the half type before DropConnect's mask)
    torch._dynamo.reset()
    compiled = torch.compile(fd, backend="aot_eager", fullgraph=True)
    for upstream in (torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), 30000.0):
        results = []
        for fn in (ref, fd, compiled):
            with torch.autocast("cpu", dtype=dtype):
                y = fn()
            assert y.dtype == dtype
            g = upstream.to(dtype) if isinstance(upstream, torch.Tensor) else torch.full_like(y, upstream)
            results.append((y, *torch.autograd.grad(y, wrt, g)))
        for got in results[1:]:
            for a, r in zip(got, results[0]):
                assert a.dtype == r.dtype
                torch.testing.assert_close(a, r, rtol=0, atol=0, equal_nan=True)
    if op != "dropout_matmul":
        # forward-mode AD under autocast: a tangent of y's dtype, without a bias (it was lost: a
        # half GEMM tangent replaced by None) and with a perturbed float32 bias (its tangent
        # promoted the sum to float32 under a half y)
        call = fastdrop.dropout_linear if op == "dropout_linear" else fastdrop.dropconnect_linear
        with torch.autocast("cpu", dtype=dtype):
            y, ty = torch.func.jvp(lambda xx: call(xx, w, None, p, seed=4), (x.detach(),), (torch.ones_like(x),))
            yb, tyb = torch.func.jvp(lambda xx, bb: call(xx, w, bb, p, seed=4), (x.detach(), b.detach()),
                                     (torch.ones_like(x), torch.ones_like(b)))
        for out, tangent in ((y, ty), (yb, tyb)):
            assert tangent is not None and tangent.dtype == out.dtype and torch.isfinite(tangent).all()


@pytest.mark.parametrize("half, autocast_dtype", [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)])
@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul"])
def test_autocast_casts_the_other_half_type(op, half, autocast_dtype):
    """float16 operands under bfloat16 autocast (and the mirror case) go to autocast's dtype, as
    torch's linear / matmul take them: the ops computed them in float32 and returned the operands'
    own type (values rounded twice; eval mode gave autocast's dtype, training not; the compiled op
    skipped autocast altogether). Training, eval and the compiled call give autocast's dtype now,
    values within its rounding of the torch composite with the same mask (helper review)."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=half)
    p, s = 0.3, 1 / 0.7
    if op == "dropout_linear":
        w = torch.randn(5, 8, dtype=half)
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        fd = lambda training=True: fastdrop.dropout_linear(x, w, None, p, training=training, seed=4)  # noqa: E731
        ref = lambda: torch.nn.functional.linear(torch.where(m, x * s, 0), w)  # noqa: E731
    elif op == "dropconnect_linear":
        w = torch.randn(5, 8, dtype=half)
        m = torch.from_numpy(fastdrop.dropout_mask((5, 8), p, 4))
        fd = lambda training=True: fastdrop.dropconnect_linear(x, w, None, p, training=training, seed=4)  # noqa: E731
        ref = lambda: torch.nn.functional.linear(x, torch.where(m, w * s, 0))  # noqa: E731
    else:
        w = torch.randn(8, 5, dtype=half)
        m = torch.from_numpy(fastdrop.dropout_mask((6, 8), p, 4))
        fd = lambda training=True: fastdrop.dropout_matmul(x, w, p, training=training, seed=4)  # noqa: E731
        ref = lambda: torch.matmul(torch.where(m, x * s, 0), w)  # noqa: E731
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=autocast_dtype):
        y, want, y_eval = fd(), ref(), fd(False)
        compiled = torch.compile(fd, backend="aot_eager", fullgraph=True)()
    assert y.dtype == want.dtype == y_eval.dtype == compiled.dtype == autocast_dtype
    for got in (y, compiled):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_autocast_leaves_float64_alone():
    """autocast never casts float64, and torch's linear refuses a bfloat16 x with a float64
    weight: so do the dense ops (TypeError naming the dtypes), with nothing drawn."""
    x = torch.randn(3, 4).bfloat16()
    w = torch.randn(2, 4, dtype=torch.float64)
    state = torch.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="same dtype"):
            fastdrop.dropout_linear(x, w, None, 0.5)
    assert torch.equal(torch.get_rng_state(), state)


def test_per_sample_dropconnect_follows_autocast():
    """Its products come from its own kernel, not an autocast GEMM: under autocast x and the bias go
    to autocast's dtype, as autocast casts a GEMM's operands, and the float32 weight the mask
    multiplies stays float32, as torch's composite masks it before its GEMM's cast (every operand
    was cast: the weight's masked product was rounded twice, and its float16 gradient scaled past
    65504 was inf). The kernel computes in float32, the output is bfloat16 (rounded once) and the
    gradients come back in the operands' dtypes, the weight's scaled in float32."""
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(3, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastdrop.dropconnect_linear(x, w, None, 0.4, per_sample=True, seed=2)
    assert y.dtype == torch.bfloat16
    xr = x.detach().bfloat16().float().requires_grad_()
    ref = fastdrop.dropconnect_linear(xr, w, None, 0.4, per_sample=True, seed=2)
    assert torch.equal(y, ref.bfloat16())
    g = torch.linspace(-2, 2, y.numel()).view(y.shape).bfloat16()
    gx, gw = torch.autograd.grad(y, (x, w), g)
    rx, rw = torch.autograd.grad(ref, (xr, w), g.float())
    assert gx.dtype == gw.dtype == torch.float32
    assert torch.equal(gw, rw) and torch.equal(gx, rx.bfloat16().float())
    # a float16 gradient of 40000 through a kept weight: 80000 in float32, not inf
    one = lambda *shape: torch.ones(*shape, requires_grad=True)  # noqa: E731
    x, w = one(1, 4), one(1, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        y = fastdrop.dropconnect_linear(x, w, None, 0.5, per_sample=True, seed=0)
    (gw,) = torch.autograd.grad(y, w, torch.full_like(y, 40000.0))
    m = torch.from_numpy(fastdrop.dropout_mask((1, 1, 4), 0.5, 0))[0]
    assert torch.equal(gw, torch.where(m, 80000.0, 0.0))


@pytest.mark.parametrize("make", [
    lambda: fastdrop.nn.DropoutLinear(4, 3, p=1.5), lambda: fastdrop.nn.DropoutLinear(4, 3, p=True),
    lambda: fastdrop.nn.DropoutLinear(4, 3, mode="bogus"),
    lambda: fastdrop.nn.DropConnectLinear(4, 3, p=-0.1),
    lambda: fastdrop.nn.DropConnectLinear(4, 3, per_sample="yes")])
def test_layer_constructors_refuse_before_drawing_weights(make):
    """nn.Linear's init draws the weights from torch's generator: the layers' own arguments are
    checked first, so a refused constructor (a config tried in a try block) leaves torch's
    generator where it was, as torch.nn.Dropout(1.5) does."""
    state = torch.get_rng_state()
    with pytest.raises((TypeError, ValueError)):
        make()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("op", ["dropout_linear", "dropconnect_linear", "dropout_matmul"])
def test_autocast_mixed_dtypes_save_the_operands_themselves(op):
    """Mixed half / float32 operands under autocast go into the op as they are: it saves them
    for backward, not float32 copies of a half activation (twice its size; a first version of the
    mixed-dtype fix saved those, a review, 2026-12-06), so an in-place change of the activation
    after the forward is caught by torch's version counter, as in torch's composite."""
    x = (torch.randn(6, 8).bfloat16() * 1).requires_grad_()
    h = x * 1  # an activation (not a leaf): written in place below
    w = torch.randn(*((8, 5) if op == "dropout_matmul" else (5, 8)), requires_grad=True)
    call = {"dropout_linear": lambda: fastdrop.dropout_linear(h, w, None, 0.3, seed=4),
            "dropconnect_linear": lambda: fastdrop.dropconnect_linear(h, w, None, 0.3, seed=4),
            "dropout_matmul": lambda: fastdrop.dropout_matmul(h, w, 0.3, seed=4)}[op]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = call()
    mine = [t for t in saved if t.dim() > 0 and t.numel() == h.numel() and t.dtype == torch.float32]
    assert not mine, "a float32 copy of the half activation was saved"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (no hooks: they skip the version check)
        y = call()
    with torch.no_grad():
        h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.float().sum().backward()
