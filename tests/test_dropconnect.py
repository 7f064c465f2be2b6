"""DropConnect (batch and per-sample masks), its autograd, moment matching and DropConnectLinear.

References materialize the kernel's own mask (fastdrop.dropout_mask) at tiny sizes."""
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import stats

import fastdrop
from fastdrop import dropconnect_linear

SHAPES = [((1,), 1, 1), ((3,), 7, 5), ((5,), 1023, 3), ((2, 3), 7, 4), ((3,), 33, 65),
          ((2,), 2100, 3)]  # in > CHUNK: a row of several mask chunks with a tail
NP_DTYPES = [(np.float32, 2e-4, 1e-4), (np.float64, 1e-10, 1e-10)]
TORCH_DTYPES = [(torch.float32, 2e-4, 1e-4), (torch.float64, 1e-10, 1e-10)]


def ref_batch(x, w, b, mask, scale):
    y = x @ (w * mask * scale).T
    return y if b is None else y + b


def ref_sample(x, w, b, mask, scale):
    """mask (N, O, I); x (..., I)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(x, torch.Tensor):
        y = torch.einsum("ni,noi->no", x2, w * mask * scale)
    else:
        y = np.einsum("ni,noi->no", x2, w * mask * scale)
    y = y.reshape(*lead, w.shape[0])
    return y if b is None else y + b


def _mask(x_shape, w_shape, p, seed, offset, per_sample):
    if per_sample:
        return fastdrop.dropout_mask((int(np.prod(x_shape[:-1])),) + tuple(w_shape), p, seed, offset)
    return fastdrop.dropout_mask(tuple(w_shape), p, seed, offset)


@pytest.mark.parametrize("lead,i,o", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", NP_DTYPES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_numpy_forward_matches_reference(lead, i, o, dtype, atol, rtol, per_sample, bias):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(lead + (i,)).astype(dtype)
    w = rng.standard_normal((o, i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    p, seed, offset = 0.35, 777, 5
    y = dropconnect_linear(x, w, b, p, seed=seed, offset=offset, per_sample=per_sample)
    mask = _mask(x.shape, w.shape, p, seed, offset, per_sample)
    ref = (ref_sample if per_sample else ref_batch)(x, w, b, mask, 1 / (1 - p))
    assert y.dtype == dtype and y.shape == lead + (o,)
    np.testing.assert_allclose(y, ref, atol=atol * np.sqrt(i), rtol=rtol)


@pytest.mark.parametrize("lead,i,o", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", TORCH_DTYPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_torch_forward_backward_match_reference(lead, i, o, dtype, atol, rtol, per_sample):
    x = torch.randn(*lead, i, dtype=dtype, requires_grad=True)
    w = torch.randn(o, i, dtype=dtype, requires_grad=True)
    b = torch.randn(o, dtype=dtype, requires_grad=True)
    p, seed = 0.5, 31337
    y = dropconnect_linear(x, w, b, p, seed=seed, per_sample=per_sample)
    mask = torch.from_numpy(_mask(tuple(x.shape), tuple(w.shape), p, seed, 0, per_sample)).to(dtype)
    yr = (ref_sample if per_sample else ref_batch)(x, w, b, mask, 2.0)
    tol = dict(atol=atol * i ** 0.5, rtol=rtol)
    torch.testing.assert_close(y, yr, **tol)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yr, (x, w, b), g)):
        torch.testing.assert_close(a, r, **tol)


def test_per_sample_mask_contract_is_exact():
    """I = 1: y[n, o] = x[n] W[o] M[n, o, 0] s shows the whole (N, O, 1) mask; with N = 1 the
    weight gradient shows the (1, O, I) mask in backward."""
    n, o, p = 9, 13, 0.4
    y = dropconnect_linear(np.ones((n, 1)), np.ones((o, 1)), None, p, seed=4, offset=2, per_sample=True)
    np.testing.assert_array_equal(y != 0, fastdrop.dropout_mask((n, o, 1), p, 4, 2)[..., 0])
    x = torch.ones(1, 21, dtype=torch.float64)
    w = torch.ones(o, 21, dtype=torch.float64, requires_grad=True)
    dropconnect_linear(x, w, None, p, seed=4, offset=2, per_sample=True).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy() != 0, fastdrop.dropout_mask((1, o, 21), p, 4, 2)[0])
    # batch mask: x = identity shows W ⊙ M s
    wb = np.ones((o, 21))
    yb = dropconnect_linear(np.eye(21), wb, None, p, seed=4, offset=2)
    np.testing.assert_array_equal(yb.T != 0, fastdrop.dropout_mask((o, 21), p, 4, 2))


def test_large_weight_takes_the_parallel_mask_kernel():
    from fastdrop.kernels.config import DENSE_PARALLEL_MIN as PARALLEL_MASK_MIN
    o, i = PARALLEL_MASK_MIN // 1024 + 1, 1024
    x = torch.randn(3, i, requires_grad=True)
    w = torch.randn(o, i, requires_grad=True)
    y = dropconnect_linear(x, w, None, 0.5, seed=6)
    yr = ref_batch(x, w, None, torch.from_numpy(fastdrop.dropout_mask((o, i), 0.5, 6)), 2.0)
    torch.testing.assert_close(y, yr, atol=1e-3, rtol=1e-4)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(yr, (x, w), g)):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-4)


def test_per_sample_masks_differ_between_examples():
    x = np.ones((2, 64))
    y = dropconnect_linear(x, np.ones((3, 64)), None, 0.5, seed=1, per_sample=True)
    assert not np.array_equal(y[0], y[1])
    yb = dropconnect_linear(x, np.ones((3, 64)), None, 0.5, seed=1)
    np.testing.assert_array_equal(yb[0], yb[1])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(3,), (2, 2)])
def test_gradcheck(per_sample, bias, lead):
    x = torch.randn(*lead, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    fn = lambda x, w, b: dropconnect_linear(x, w, b, 0.4, seed=9, per_sample=per_sample)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("per_sample", [False, True])
def test_saves_only_x_and_weight(per_sample):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    x = torch.randn(16, 64, requires_grad=True)
    m = fastdrop.nn.DropConnectLinear(64, 32, per_sample=per_sample)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    assert sum(saved) == x.nbytes + m.weight.nbytes


def test_per_sample_memory_does_not_grow_with_n_out_in():
    """numpy allocations (tracemalloc) of a per-sample forward + backward stay O(N I + O I + N O),
    far below one byte per (n, o, i) mask entry."""
    n, i, o = 64, 256, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, i), dtype=np.float32)
    w = rng.standard_normal((o, i), dtype=np.float32)
    g = rng.standard_normal((n, o), dtype=np.float32)
    from fastdrop._core import NumpyBackend, Rng
    from fastdrop.linear import DROPCONNECT_SAMPLE as op
    rng_ = Rng(0.5, 1, 0, 2.0)

    def run():
        op.forward(NumpyBackend, (x, w, None), rng_, ())
        op.backward(NumpyBackend, g, (x, w, None), rng_, (), (True, True, True))
    run()  # compile outside the trace
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the backward's partial gx buffers: a fixed count (bits independent of the thread count)
    from fastdrop.linear import SAMPLE_GRAD_PARTS
    words = n * i * (SAMPLE_GRAD_PARTS + 2) + 2 * o * i + 2 * n * o
    assert peak < min(4 * words + 64 * 1024, n * o * i // 4), peak


def test_per_sample_backward_takes_fewer_partials_for_a_large_x(monkeypatch):
    """Where 8 x-sized partial gx buffers would pass SAMPLE_GRAD_PART_BYTES, the backward takes
    fewer (2 here, its floor): the same gradients up to the summation order, and a smaller peak
    (a review: 8 x a 2 GiB x, unchecked in backward, could get the process killed)."""
    import fastdrop.linear as lin
    from fastdrop._core import NumpyBackend, Rng
    n, i, o = 64, 256, 64
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, i))
    w = rng.standard_normal((o, i))
    g = rng.standard_normal((n, o))
    rng_ = Rng(0.5, 3, 0, 2.0)

    def backward():
        lin.DROPCONNECT_SAMPLE.backward(NumpyBackend, g, (x, w, None), rng_, (), (True, True, False))
        tracemalloc.start()
        grads = lin.DROPCONNECT_SAMPLE.backward(NumpyBackend, g, (x, w, None), rng_, (), (True, True, False))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return grads, peak

    (gx8, gw8, _), peak8 = backward()
    monkeypatch.setattr(lin, "SAMPLE_GRAD_PART_BYTES", x.nbytes)  # 8 buffers would pass it
    (gx2, gw2, _), peak2 = backward()
    np.testing.assert_allclose(gx2, gx8, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(gw2, gw8)  # (each task owns its rows of gW: no partials)
    assert peak8 - peak2 >= 5 * x.nbytes, (peak8, peak2)


def test_eval_is_the_mean_network():
    x, w, b = torch.randn(4, 6), torch.randn(3, 6), torch.randn(3)
    for per_sample in (False, True):
        y = dropconnect_linear(x, w, b, 0.5, training=False, per_sample=per_sample)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b))


def test_moment_matching_moments_match_per_sample_dropconnect():
    """The Gaussian's mean and variance are those of the per-sample DropConnect pre-activation:
    R copies of one example each get their own mask; compare sample moments with scipy.stats."""
    rng = np.random.default_rng(5)
    i, o, r, p = 40, 3, 4000, 0.3
    x1 = rng.standard_normal(i)
    w = rng.standard_normal((o, i))
    u = dropconnect_linear(np.tile(x1, (r, 1)), w, None, p, seed=123, per_sample=True)
    mean = x1 @ w.T
    var = p / (1 - p) * (x1 ** 2) @ (w ** 2).T
    for k in range(o):
        assert stats.ttest_1samp(u[:, k], mean[k]).pvalue > 1e-4
        chi2 = (r - 1) * u[:, k].var(ddof=1) / var[k]
        assert stats.chi2.cdf(chi2, r - 1) > 1e-4 and stats.chi2.sf(chi2, r - 1) > 1e-4
    # identity activation: the average of the Gaussian draws estimates the mean
    ident = dropconnect_linear(x1[None], w, None, p, training=False, activation=lambda a: a,
                               samples=4000, seed=1)
    np.testing.assert_allclose(ident[0], mean, atol=5 * np.sqrt(var / 4000).max())


def test_moment_matching_relu_close_to_monte_carlo():
    """E[relu(u)] from moment matching vs the average of relu over real DropConnect draws."""
    torch.manual_seed(0)
    i, o, r, p = 256, 4, 3000, 0.5
    x1 = torch.randn(1, i, dtype=torch.float64)
    w = torch.randn(o, i, dtype=torch.float64) / i ** 0.5
    mc = torch.relu(dropconnect_linear(x1.expand(r, i), w, None, p, seed=3, per_sample=True)).mean(0)
    mm = dropconnect_linear(x1, w, None, p, training=False, activation=torch.relu, samples=2000, seed=3)[0]
    sd = torch.relu(dropconnect_linear(x1.expand(r, i), w, None, p, seed=3, per_sample=True)).std(0)
    assert (mm - mc).abs().max() < 5 * sd.max() / r ** 0.5 + 0.02
    assert not torch.allclose(mm, torch.relu(x1 @ w.T)[0], atol=1e-3)  # it is not relu(mean)


def test_moment_matching_seeded_and_in_both_kinds():
    x, w = np.random.default_rng(0).standard_normal((3, 8)), np.random.default_rng(1).standard_normal((2, 8))
    a = dropconnect_linear(x, w, None, 0.5, training=False, activation=np.tanh, seed=4, samples=16)
    b = dropconnect_linear(x, w, None, 0.5, training=False, activation=np.tanh, seed=4, samples=16)
    np.testing.assert_array_equal(a, b)
    t = dropconnect_linear(torch.tensor(x), torch.tensor(w), None, 0.5, training=False,
                           activation=torch.tanh, seed=4, samples=16)
    assert t.shape == (3, 2)
    # training with an activation: activation applied to the dropped layer
    y = dropconnect_linear(x, w, None, 0.5, seed=4)
    np.testing.assert_allclose(dropconnect_linear(x, w, None, 0.5, seed=4, activation=np.tanh), np.tanh(y))
    with pytest.raises(ValueError, match="p < 1"):
        dropconnect_linear(x, w, None, 1.0, training=False, activation=np.tanh)
    with pytest.raises(TypeError, match="callable"):
        dropconnect_linear(x, w, None, 0.5, activation="relu")
    with pytest.raises(ValueError, match="samples"):
        dropconnect_linear(x, w, None, 0.5, training=False, activation=np.tanh, samples=0)
    # the moment-matching branch checks training and offset as the pipeline does (a falsy
    # non-bool `training` from a config must not select eval)
    for bad in (0, None, ""):
        with pytest.raises(TypeError, match="training must be a bool"):
            dropconnect_linear(x, w, None, 0.5, training=bad, activation=np.tanh)
    for bad, err in ((-1, ValueError), (2**64, ValueError), ("a", TypeError)):
        with pytest.raises(err, match="offset"):
            dropconnect_linear(x, w, None, 0.5, training=False, activation=np.tanh, offset=bad)


def test_moment_matching_gradients_with_zero_rows():
    """An all-zero input row (a ReLU output, padding) or weight row has zero variance: sqrt's
    derivative there is inf, and the gradients were NaN. Now finite, and float64 gradcheck holds
    with zero rows in x and in w (the noise term contributes 0 there)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x[1], x[3], w[2] = 0.0, 0.0, 0.0
    x.requires_grad_(), w.requires_grad_()
    fn = lambda x, w: dropconnect_linear(x, w, None, 0.4, training=False, activation=torch.tanh,  # noqa: E731
                                         seed=1, samples=4)
    fn(x, w).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    assert torch.autograd.gradcheck(fn, (x, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_moment_matching_half_sums_in_float32(dtype):
    """Half inputs are computed in float32 and rounded once: a bfloat16 running sum of 1024
    sigmoid samples stopped growing at 256 (outputs off by up to 0.74)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 16, generator=g), torch.randn(3, 16, generator=g)
    kw = dict(training=False, activation=torch.sigmoid, seed=5, samples=1024)
    ref = dropconnect_linear(x, w, None, 0.3, **kw)
    y = dropconnect_linear(x.to(dtype), w.to(dtype), None, 0.3, **kw)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=0, atol=0.02)


def test_moment_matching_under_autocast():
    """Under autocast (a bfloat16 activation and a float32 weight, or float32 both) the samples are
    still summed in float32 (no GEMM of theirs in bfloat16): the result is the float32 one in
    autocast's dtype, as the other ops give it (float32 operands gave float32 before)."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 16, generator=g), torch.randn(3, 16, generator=g)
    kw = dict(training=False, activation=torch.sigmoid, seed=5, samples=1024)
    ref = dropconnect_linear(x, w, None, 0.3, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = dropconnect_linear(x, w, None, 0.3, **kw)
        mixed = dropconnect_linear(x.bfloat16(), w, None, 0.3, **kw)
    assert same.dtype == mixed.dtype == torch.bfloat16
    assert torch.equal(same, ref.bfloat16())
    torch.testing.assert_close(mixed.float(), ref, rtol=0, atol=0.02)


def test_module():
    torch.manual_seed(0)
    ref = torch.nn.Linear(9, 5)
    torch.manual_seed(0)
    m = fastdrop.nn.DropConnectLinear(9, 5, p=0.3, per_sample=True)
    assert torch.equal(ref.weight, m.weight) and torch.equal(ref.bias, m.bias)
    m.load_state_dict(torch.nn.Linear(9, 5).state_dict())
    assert repr(m) == "DropConnectLinear(in_features=9, out_features=5, bias=True, p=0.3, per_sample=True)"
    x = torch.randn(4, 9)
    torch.manual_seed(2)
    a = m(x)
    torch.manual_seed(2)
    assert torch.equal(a, m(x))
    m.eval()
    torch.testing.assert_close(m(x), torch.nn.functional.linear(x, m.weight, m.bias))
    with pytest.raises(ValueError, match="p=2"):
        fastdrop.nn.DropConnectLinear(3, 2, p=2)


def test_moment_matching_draws_no_seed_where_the_result_does_not_depend_on_it():
    """An empty operand or p = 0: the moment-matching branch drew a seed all the same (the
    pipeline draws none for an empty operand); now none, and the result is any seed's."""
    w, b = torch.randn(3, 6), torch.randn(3)
    for x, p in ((torch.randn(0, 6), 0.3), (torch.randn(4, 6), 0.0), (torch.randn(4, 0), 0.3)):
        wx = w[:, :x.shape[1]]
        state = torch.get_rng_state()
        y = dropconnect_linear(x, wx, b, p, training=False, activation=torch.relu)
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(y, dropconnect_linear(x, wx, b, p, training=False, activation=torch.relu, seed=5))
    xn = np.zeros((0, 6))
    state = fastdrop._seeds._numpy_source.bit_generator.state
    dropconnect_linear(xn, w.numpy().astype(np.float64), None, 0.3, training=False, activation=np.tanh)
    assert fastdrop._seeds._numpy_source.bit_generator.state == state


@pytest.mark.parametrize("per_sample", [False, True])
def test_expanded_weight_too_big_for_memory_refused_before_the_draw(per_sample):
    """DropConnect copies the weight (the masked copy; the per-sample kernels' dense copy): an
    expanded weight with a small memory and a huge logical size got past the size check, which
    counted x and the output only, drew the seed, then failed in the allocator."""
    big = fastdrop._alloc.PHYSICAL_BYTES // 4 // 32 + 1  # 32 rows of float32: more than memory
    x, w = torch.zeros(1, 1).expand(1, big), torch.zeros(1, 1).expand(32, big)
    state = torch.get_rng_state()
    with pytest.raises(MemoryError, match="physical memory"):
        dropconnect_linear(x, w, None, 0.3, per_sample=per_sample)
    assert torch.equal(torch.get_rng_state(), state)
    xn, wn = np.broadcast_to(np.zeros((1, 1), np.float32), (1, big)), \
        np.broadcast_to(np.zeros((1, 1), np.float32), (32, big))
    np_state = fastdrop._seeds._numpy_source.bit_generator.state
    with pytest.raises(MemoryError, match="physical memory"):
        dropconnect_linear(xn, wn, None, 0.3, per_sample=per_sample)
    assert fastdrop._seeds._numpy_source.bit_generator.state == np_state


@pytest.mark.parametrize("n", [1, 3])
def test_per_sample_backward_skips_dropped_terms_with_non_finite_values(n):
    """Per-sample DropConnect's CPU backward selects dropped terms away, as its forward and the
    CUDA kernels do (tests/cuda/test_linear_cuda.py has the same case; the one-mask route does
    for a non-finite W, whose dropped entries are zeros in the masked W): an
    inf weight or a NaN input at positions every mask drops leaves every gradient finite. The
    kernel multiplied those terms by 0, and 0 * inf made them NaN."""
    rng = np.random.default_rng(4)
    I, O, p, seed = 13, 4, 0.5, 11
    m = fastdrop.dropout_mask((n, O, I), p, seed)
    x, w, g = (rng.standard_normal(sh) for sh in ((n, I), (O, I), (n, O)))
    w[~m.any(0)] = np.inf   # weights dropped for every example
    x[~m.any(1)] = np.nan   # inputs dropped for every output
    assert np.isinf(w).any() and np.isnan(x).any()
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = fastdrop.dropconnect_linear(xt, wt, None, p, seed=seed, per_sample=True)
    y.backward(torch.tensor(g))
    s = 1.0 / (1.0 - p)
    kept = lambda a: np.where(m, a, 0.0)  # noqa: E731
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(y.detach().numpy(), s * kept(x[:, None, :] * w[None]).sum(2), rtol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), s * kept(g[:, :, None] * w[None]).sum(1), rtol=1e-12)
        np.testing.assert_allclose(wt.grad.numpy(), s * kept(g[:, :, None] * x[:, None, :]).sum(0), rtol=1e-12)
    assert np.isfinite(xt.grad.numpy()).all() and np.isfinite(wt.grad.numpy()).all()


@pytest.mark.parametrize("seed", [9, None])
@pytest.mark.parametrize("tracer", ["export", "jit.trace", "make_fx", "fake"])
def test_moment_matching_refuses_traces_before_the_draw(tracer, seed):
    """Moment-matching inference samples from a torch.Generator of its own, which a trace records
    as a constant object: a traced or exported program drew other Gaussians at every call (an
    explicit seed too) and an exported seed=None call failed inside torch. Refused with a clear
    error, before any draw and without a TracerWarning of fastdrop's; eager calls repeat."""
    import warnings
    from torch.fx.experimental.proxy_tensor import make_fx
    x, w = torch.randn(4, 6), torch.randn(3, 6)

    class MomentMatching(torch.nn.Module):
        def forward(self, x):
            return dropconnect_linear(x, w, None, 0.3, False, activation=torch.relu, seed=seed)
    trace = {"export": lambda m: torch.export.export(m, (x,)),
             "jit.trace": lambda m: torch.jit.trace(m, (x,), check_trace=False),
             "make_fx": lambda m: make_fx(m)(x),
             "fake": lambda m: make_fx(m, tracing_mode="fake")(x)}[tracer]
    state = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="moment-matching inference .* cannot run under"):
            trace(MomentMatching())
    assert torch.equal(state, torch.get_rng_state())
    assert not [c for c in caught if issubclass(c.category, torch.jit.TracerWarning)]
    if seed is not None:
        assert torch.equal(MomentMatching()(x), MomentMatching()(x))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_failed_call_gives_its_draw_back_only_if_nothing_drew_since(kind):
    """Moment matching gives its seed=None draw back when its activation fails, so a failed call
    changes nothing; but a draw another thread made meanwhile stays drawn (the whole generator
    went back: that thread's draw was repeated by the next call, the same mask twice)."""
    import threading
    if kind == "numpy":
        x, w = np.ones((1, 64), np.float32), np.ones((3, 64), np.float32)
        fastdrop.manual_seed(11)
    else:
        x, w = torch.ones(1, 64), torch.ones(3, 64)
        torch.manual_seed(11)

    def draw():
        return fastdrop.dropout(x[0], 0.5)
    drew, go = threading.Event(), threading.Event()

    def failing(_):
        drew.set()
        go.wait(10)
        raise RuntimeError("boom")

    def failing_call():
        with pytest.raises(RuntimeError, match="boom"):
            dropconnect_linear(x, w, None, 0.5, training=False, activation=failing)
    t = threading.Thread(target=failing_call)
    t.start()
    assert drew.wait(10)
    meanwhile = draw()  # another thread's seed=None call while the failing call holds its draw
    go.set()
    t.join()
    later = [draw() for _ in range(3)]
    assert not any((np.asarray(y) == np.asarray(meanwhile)).all() for y in later)
    # alone, the failed call leaves the generator as it found it
    state = _generator_state(kind)
    with pytest.raises(ZeroDivisionError):
        dropconnect_linear(x, w, None, 0.5, training=False, activation=lambda u: 1 / 0)
    assert _generator_state(kind) == state


def _generator_state(kind):
    from fastdrop import _seeds
    if kind == "numpy":
        return str(_seeds._numpy_source.bit_generator.state)
    return bytes(torch.get_rng_state().numpy())


def test_a_draw_of_another_thread_right_after_the_failed_call_s_own_stays_drawn(monkeypatch):
    """The torch undo replays its one draw on a private generator: a draw another thread makes
    between the call's snapshot and its check, here right after the call's own draw, is seen
    (a snapshot taken after the draw missed it, and undo rewound that thread's draw)."""
    from fastdrop import _seeds
    real = _seeds.draw_torch_seed
    other = []

    def draw_then_another_thread_draws():
        seed = real()
        other.append(fastdrop.dropout(torch.ones(64), 0.5))  # stands in for a thread switch
        return seed
    monkeypatch.setattr(_seeds, "draw_torch_seed", draw_then_another_thread_draws)
    torch.manual_seed(4)
    _, undo = _seeds.draw_torch_seed_undoably(torch)
    monkeypatch.setattr(_seeds, "draw_torch_seed", real)
    undo()
    assert not any(torch.equal(fastdrop.dropout(torch.ones(64), 0.5), other[0]) for _ in range(3))


@pytest.mark.parametrize("seed", [9, None])
@pytest.mark.parametrize("which", ["x", "weight", "bias"])
@pytest.mark.parametrize("nbytes", [0, 4])
def test_moment_matching_refuses_operands_without_memory(which, nbytes, seed):
    """Moment-matching inference reads its operands in torch's GEMMs: one whose storage was freed
    (FSDP) or cut short is refused with the pipeline's ValueError naming it, before any draw (it
    segfaulted for a cut-short x, or returned what lay past its memory: a review)."""
    for dtype, autocast in ((torch.float32, False), (torch.bfloat16, True)):  # (autocast casts them first)
        ops = {"x": torch.ones(64, 256, dtype=dtype), "weight": torch.ones(5, 256, dtype=dtype),
               "bias": torch.ones(5, dtype=dtype)}
        ops[which].untyped_storage().resize_(nbytes)
        state = torch.get_rng_state()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with pytest.raises(ValueError, match=f"^{which} has no memory for its elements"):
                dropconnect_linear(ops["x"], ops["weight"], ops["bias"], 0.3, False, activation=torch.relu,
                                   seed=seed)
        assert torch.equal(torch.get_rng_state(), state)


class _Sub(torch.Tensor):
    """A plain tensor subclass."""


class _OddAllocator(torch.Tensor):
    """A subclass whose new_empty / new_zeros hand back a one-element tensor: fastdrop's kernels
    must not write into memory such a class made (they wrote past it: heap corruption)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.new_empty, torch.Tensor.new_zeros):
            return torch.zeros(1)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("x_sub", [False, True])
@pytest.mark.parametrize("g_sub", [False, True])
def test_per_sample_classes_follow_torch_linear(x_sub, g_sub):
    """Per-sample DropConnect's output and gradients have the classes torch's F.linear gives for
    the same operands: a subclass x gives its class back; a subclass incoming gradient alone
    does not make the gradients its class (torch's C++ backward formulas)."""
    import torch.nn.functional as F
    x, w = torch.randn(4, 6), torch.randn(3, 6)
    x = x.as_subclass(_Sub) if x_sub else x
    g = torch.ones(4, 3)
    g = g.as_subclass(_Sub) if g_sub else g
    classes = []
    for f in (lambda a, b: dropconnect_linear(a, b, None, 0.5, per_sample=True, seed=3), F.linear):
        xr, wr = x.detach().requires_grad_(), w.clone().requires_grad_()
        y = f(xr, wr)
        gx, gw = torch.autograd.grad(y, (xr, wr), g)
        classes.append((type(y), type(gx), type(gw)))
    assert classes[0] == classes[1]


def test_per_sample_outputs_are_not_a_subclass_s_allocations():
    x = torch.randn(4, 6)
    want = dropconnect_linear(x, torch.ones(3, 6), None, 0.5, per_sample=True, seed=3)
    got = dropconnect_linear(x.as_subclass(_OddAllocator), torch.ones(3, 6), None, 0.5, per_sample=True, seed=3)
    assert type(got) is _OddAllocator and got.shape == (4, 3)
    assert torch.equal(got.as_subclass(torch.Tensor), want)
