"""DropPath, max-norm, dropout_matmul and MC dropout against boring references that take the
kernel's own mask (fastdrop.dropout_mask)."""
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _core
from fastdrop.nn import DropPath


# ----------------------------------------------------------------------------- references
def timm_drop_path(x, p, keep, scale_by_keep=True):
    """timm.layers.drop_path with its bernoulli draw replaced by the given per-sample keep mask."""
    if p == 0.0:
        return x
    keep_prob = 1 - p
    rnd = torch.as_tensor(keep, dtype=x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    if keep_prob > 0.0 and scale_by_keep:
        rnd = rnd / keep_prob
    return x * rnd


def torchvision_stochastic_depth(x, p, mode, keep):
    """torchvision.ops.stochastic_depth with the bernoulli draw replaced by `keep`."""
    if p == 0.0:
        return x
    survival = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.as_tensor(keep, dtype=x.dtype).reshape(size)
    if survival > 0.0:
        noise = noise / survival
    return x * noise


SHAPES = [(1,), (5,), (3, 7), (4, 3, 17), (2, 1, 1, 1023)]


# ----------------------------------------------------------------------------- drop_path
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_matches_timm(shape, p, scale_by_keep):
    x = torch.randn(shape)
    keep = fastdrop.dropout_mask(shape[:1], p, 11, 3)
    y = fastdrop.drop_path(x, p, seed=11, offset=3, scale_by_keep=scale_by_keep)
    torch.testing.assert_close(y, timm_drop_path(x, p, keep, scale_by_keep), rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.3, 0.9])
def test_drop_path_matches_torchvision(mode, p):
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    for seed in range(20):
        keep = fastdrop.dropout_mask((6,) if mode == "row" else (1,), p, seed)
        y = fastdrop.drop_path(x, p, seed=seed, mode=mode)
        torch.testing.assert_close(y, torchvision_stochastic_depth(x, p, mode, keep))


def test_drop_path_batch_mode_is_one_draw_and_both_outcomes_occur():
    x = torch.ones(8, 4)
    outcomes = {float(fastdrop.drop_path(x, 0.5, seed=s, mode="batch").sum()) for s in range(40)}
    assert outcomes == {0.0, 64.0}


def test_drop_path_eval_and_classic():
    x = torch.randn(4, 5)
    assert fastdrop.drop_path(x, 0.3, training=False) is x
    torch.testing.assert_close(fastdrop.drop_path(x, 0.3, training=False, scaling="classic"), x * 0.7)
    keep = fastdrop.dropout_mask((4,), 0.3, 2)
    y = fastdrop.drop_path(x, 0.3, seed=2, scaling="classic")
    torch.testing.assert_close(y, x * torch.as_tensor(keep, dtype=x.dtype)[:, None])


def test_drop_path_numpy_float16_and_inplace():
    x = np.random.randn(6, 9).astype(np.float16)
    keep = fastdrop.dropout_mask((6,), 0.5, 4)
    y = fastdrop.drop_path(x, 0.5, seed=4)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, (x.astype(np.float32) * keep[:, None] * 2).astype(np.float16))
    z = np.random.randn(6, 9)
    ref = z * keep[:, None] * 2
    out = fastdrop.drop_path(z, 0.5, seed=4, inplace=True)
    assert out is z
    np.testing.assert_array_equal(z, ref)


def test_drop_path_gradient_is_the_same_mask():
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastdrop.drop_path(t, 0.4, seed=9), (x,))
    assert torch.autograd.gradcheck(lambda t: fastdrop.drop_path(t, 0.4, seed=8, mode="batch"), (x,))


def test_drop_path_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="'batch' or 'row'"):
        fastdrop.drop_path(x, 0.1, mode="col")
    with pytest.raises(ValueError, match="between 0 and 1"):
        fastdrop.drop_path(x, 1.5)
    with pytest.raises(ValueError, match="0-d"):
        fastdrop.drop_path(torch.tensor(1.0), 0.1)
    with pytest.raises(TypeError):
        fastdrop.drop_path(torch.ones(3, 4, dtype=torch.int64), 0.1, mode="batch")


def test_drop_path_module():
    m = DropPath(0.25, mode="batch")
    assert "p=0.25" in repr(m) and "mode=batch" in repr(m)
    x = torch.randn(4, 6)
    assert m.eval()(x) is x
    with pytest.raises(ValueError):
        DropPath(0.1, mode="col")
    with pytest.raises(ValueError):
        DropPath(-0.1)
    torch.manual_seed(3)
    a = DropPath(0.5).train()(x)
    torch.manual_seed(3)
    b = DropPath(0.5).train()(x)
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- max-norm
def ref_max_norm(w, c, dims, eps=1e-7):
    w = np.asarray(w, np.float64)
    norms = np.sqrt((w ** 2).sum(axis=tuple(dims), keepdims=True))
    return np.where(norms > c, w * (c / (norms + eps)), w)


# torch.renorm sums float32 in float32, we sum in float64: allow float32 rounding of the scale.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 11), (33, 1023), (64, 3)])
def test_max_norm_rows_match_torch_renorm(dtype, tol, shape):
    w = torch.randn(shape, dtype=dtype) * 2
    c = 0.999 * float(np.median(w.norm(dim=1)))  # about half outside; none on the boundary
    ref = torch.renorm(w, 2, 0, c)
    out = fastdrop.max_norm_(w, c)
    assert out is w
    torch.testing.assert_close(w, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("shape", [(7, 11), (1023, 5), (3, 130)])
def test_max_norm_columns_match_torch_renorm(shape):
    w = torch.randn(shape, dtype=torch.float64)
    c = 0.999 * float(np.median(w.norm(dim=0)))
    ref = torch.renorm(w, 2, 1, c)
    fastdrop.max_norm_(w, c, dim=0)
    torch.testing.assert_close(w, ref, atol=1e-12, rtol=0)


def blocked_column_norms(w):
    """The column kernel's summation order, in numpy: squares added row by row in float64 within
    each block of MAX_NORM_ROW_BLOCK rows, then the blocks' sums added in block order."""
    from fastdrop.kernels.max_norm_cpu import MAX_NORM_ROW_BLOCK as rb
    total = None
    for r0 in range(0, w.shape[0], rb):
        acc = np.zeros(w.shape[1])
        for row in w[r0:r0 + rb].astype(np.float64):
            acc = acc + row * row
        total = acc if total is None else total + acc
    return np.sqrt(total)


@pytest.mark.parametrize("kernel", ["parallel", "serial"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("blocks", [3, 1])
def test_max_norm_columns_in_blocks_and_tiles_bit_for_bit(kernel, dtype, blocks):
    # 3 row blocks, the last of 7 rows (a pass of 4 rows, then 3 one by one), or one block of 37
    # rows (its own code path: each tile summed and scaled by one task); 2 column tiles, the
    # second partial; tile 0 has columns on both sides of the limit, tile 1 only columns inside.
    # (float32 results hide most summation orders behind the scale's rounding; float64's show them.)
    from fastdrop.kernels import max_norm_cpu as K
    rows = (blocks - 1) * K.MAX_NORM_ROW_BLOCK + (7 if blocks > 1 else 37)
    cols = K.MAX_NORM_COL_TILE + 37
    rng = np.random.default_rng(5)
    w = rng.standard_normal((rows, cols)).astype(dtype)
    w[:, K.MAX_NORM_COL_TILE:] *= 0.01
    w[:, :K.MAX_NORM_COL_TILE:3] *= 4
    # a signalling NaN in a column inside the ball of the mixed tile: never written, so its bits
    # stay (a store of x * 1 would set its quiet bit)
    bits = w.view(np.uint32 if dtype == np.float32 else np.uint64)
    bits[rows // 2, 1] = 0x7F800001 if dtype == np.float32 else 0x7FF0000000000001
    c = float(np.median(blocked_column_norms(w)[2:K.MAX_NORM_COL_TILE]))
    norms = blocked_column_norms(w)
    out = norms > c
    assert out[:K.MAX_NORM_COL_TILE].any() and not out.all() and not out[K.MAX_NORM_COL_TILE:].any()
    with np.errstate(invalid="ignore"):
        expect = np.where(out, w * (c / (norms + 1e-7)).astype(dtype), w)
    expect.view(bits.dtype)[rows // 2, 1] = bits[rows // 2, 1]
    got = w.copy()
    getattr(K.max_norm_cols, kernel)(got, c, 1e-7)
    np.testing.assert_array_equal(got.view(bits.dtype), expect.view(bits.dtype))
    # the public call on the transposed view (dim=1 of w.T: the reduced axis strided) takes this kernel
    got_t = w.T.copy(order="F")
    fastdrop.max_norm_(got_t, c, dim=1)
    np.testing.assert_array_equal(got_t.T.view(bits.dtype), expect.view(bits.dtype))
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=0)[out], c, rtol=1e-6)


def test_max_norm_columns_inside_the_ball_are_never_written():
    # every column but one inside: the masked store path; the inside columns' bits, signalling
    # NaNs included, stay (the row kernel's rule for rows)
    w = np.random.default_rng(2).standard_normal((300, 50)).astype(np.float32) * 0.01
    w[:, 7] *= 1000
    w.view(np.uint32)[5, 3] = 0x7F800001
    before = w.copy()
    fastdrop.max_norm_(w, 1.0, dim=0)
    assert np.linalg.norm(w[:, 7]) == pytest.approx(1.0, rel=1e-6)
    inside = np.ones(50, bool)
    inside[7] = False
    np.testing.assert_array_equal(w[:, inside].view(np.uint32), before[:, inside].view(np.uint32))


def test_max_norm_columns_of_a_tall_narrow_and_a_short_wide_weight():
    # an embedding table (many row blocks, one narrow tile) and few rows of many tiles
    for shape in [(70001, 16), (5, 3 * 4096 + 1)]:
        w = np.random.default_rng(1).standard_normal(shape)
        c = 0.999 * float(np.median(np.linalg.norm(w, axis=0)))
        ref = ref_max_norm(w, c, [0])
        fastdrop.max_norm_(w, c, dim=0)
        np.testing.assert_allclose(w, ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dims", [(1, 2, 3), (0,), (1, 3), (-1,), (0, 1, 2, 3)])
def test_max_norm_conv_and_odd_dims(dims):
    w = np.random.randn(6, 3, 5, 4)
    c = 2.5
    ref = ref_max_norm(w, c, [d % 4 for d in dims])
    fastdrop.max_norm_(w, c, dim=dims)
    np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-12)


def test_max_norm_units_inside_the_ball_are_untouched_bitwise():
    w = torch.randn(50, 20)
    w[::2] *= 10
    before = w.clone()
    norms = before.norm(dim=1)
    fastdrop.max_norm_(w, 3.0)
    inside = norms <= 3.0
    assert inside.any() and (~inside).any()
    assert torch.equal(w[inside], before[inside])
    assert (w.norm(dim=1) <= 3.0 + 1e-5).all()


def test_max_norm_non_contiguous_half_and_numpy():
    base = torch.randn(12, 20, dtype=torch.float64) * 3
    view = base[::2, 1::3]
    ref = torch.renorm(view.clone(), 2, 0, 1.5)
    fastdrop.max_norm_(view, 1.5)
    torch.testing.assert_close(view, ref, atol=1e-12, rtol=0)
    for dt in (torch.float16, torch.bfloat16):
        h = (torch.randn(9, 17) * 3).to(dt)
        ref = torch.renorm(h.float(), 2, 0, 2.0).to(dt)
        fastdrop.max_norm_(h, 2.0)
        torch.testing.assert_close(h, ref, atol=1e-2, rtol=1e-2)
    n = np.random.randn(5, 8).astype(np.float32) * 3
    ref = ref_max_norm(n, 2.0, [1])
    fastdrop.max_norm_(n, 2.0)
    np.testing.assert_allclose(n, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dim", [0, 1])
def test_max_norm_of_an_np_matrix_writes_it(dtype, dim):
    """np.matrix is taken as the in-place dropout ops take it (README, inputs): written in place
    and returned, with the values of the plain array (it was refused with a TypeError)."""
    a = (np.random.default_rng(1).standard_normal((5, 8)) * 3).astype(dtype)
    m = np.matrix(a.copy())
    assert fastdrop.max_norm_(m, 2.0, dim=dim) is m and type(m) is np.matrix
    np.testing.assert_array_equal(np.asarray(m), fastdrop.max_norm_(a, 2.0, dim=dim))


def test_max_norm_errors_name_the_value():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        fastdrop.max_norm_(w, 1.0, dim=2)
    with pytest.raises(ValueError, match="repeated"):
        fastdrop.max_norm_(w, 1.0, dim=(1, -1))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_value"):
            fastdrop.max_norm_(w, bad)
    with pytest.raises(TypeError, match="max_value"):
        fastdrop.max_norm_(w, "3")
    with pytest.raises(TypeError, match="floating point"):
        fastdrop.max_norm_(torch.ones(3, 4, dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="0-d"):
        fastdrop.max_norm_(torch.tensor(2.0), 1.0)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.ones((3, 4))
        ro.flags.writeable = False
        fastdrop.max_norm_(ro, 1.0)


def test_max_norm_bumps_the_autograd_version():
    w = torch.randn(4, 5, requires_grad=True)
    y = (w * w).sum()
    fastdrop.max_norm_(w, 0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("make", [lambda p: p * 1.0, lambda p: p[:, :3]])
def test_max_norm_of_a_tensor_autograd_records_is_refused(make):
    """A tensor computed by autograd (or a view of a parameter) under grad mode: torch's renorm_
    would be recorded, the kernels' write would not, and backward took the projection for the
    identity (found by a review on 2026-12-06): refused, the tensor untouched; under no_grad, or
    on the parameter itself, it is projected."""
    p = torch.tensor([[3.0, 4.0, 0.0, 1.0]], requires_grad=True)
    w = make(p)
    before = w.detach().clone()
    with pytest.raises(RuntimeError, match="computed by autograd"):
        fastdrop.max_norm_(w, 1.0)
    assert torch.equal(w.detach(), before)
    with torch.no_grad():
        w = make(p)
        fastdrop.max_norm_(w, 1.0)
        assert torch.allclose(w.norm(), torch.tensor(1.0))


def test_max_norm_of_a_no_grad_view_of_a_recorded_tensor_is_refused():
    """A view made under no_grad of a tensor autograd computed is a leaf whose writes reach that
    tensor: torch's renorm_ refuses it under grad mode, and so does max_norm_ (it wrote before
    2026-12-06), the tensor untouched; a no_grad view of the parameter itself is projected."""
    p = torch.tensor([[3.0, 4.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    h = p * 1.0
    with torch.no_grad():
        v = h[:1]
    assert v.is_leaf and v.requires_grad
    with pytest.raises(RuntimeError, match="no_grad"):
        v.renorm_(2, 0, 1.0)  # torch's own refusal of the same write
    before = h.detach().clone()
    with pytest.raises(RuntimeError, match="computed by autograd"):
        fastdrop.max_norm_(v, 1.0)
    assert torch.equal(h.detach(), before)
    with torch.no_grad():
        u = p[:1]
    fastdrop.max_norm_(u, 1.0)
    assert torch.allclose(p[0].detach().norm(), torch.tensor(1.0))


@pytest.mark.parametrize("how", ["compile", "compile-fullgraph", "jit.trace"])
def test_compiled_and_traced_max_norm_of_a_tensor_autograd_records_is_refused(how):
    """The same refusal inside torch.compile and torch.jit.trace (found by a review on
    2026-12-06: the custom op has no derivative either, and the traced gradient was the
    identity's, 3 * arange where renorm's is another)."""
    x = torch.randn(3, 5, requires_grad=True)

    def f(x):
        w = x * 3
        fastdrop.max_norm_(w, 1.0)
        return (w * torch.arange(5.0)).sum()
    if how == "jit.trace":
        with pytest.raises(RuntimeError, match="computed by autograd"):
            torch.jit.trace(f, (x,))
        return
    fn = torch.compile(f, backend="aot_eager", fullgraph=how == "compile-fullgraph")
    with pytest.raises(Exception, match="computed by autograd"):
        fn(x)


def test_max_norm_hook_refuses_a_freed_weight_before_projecting_any():
    """Every target's memory is checked with its arguments, before the first projection: a
    parameter FSDP freed (storage resized to 0) among the targets left the earlier ones projected."""
    l1, l2 = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    with torch.no_grad():
        l1.weight.mul_(10)
    before = l1.weight.detach().clone()
    l2.weight.untyped_storage().resize_(0)
    opt = torch.optim.SGD(l1.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no memory"):
        fastdrop.max_norm_hook(opt, [l1, l2], 1.0)
    assert torch.equal(before, l1.weight.detach()) and not opt._optimizer_step_post_hooks


@pytest.mark.parametrize("tracing_mode", ["real", "fake"])
def test_max_norm_under_make_fx_is_recorded(tracing_mode):
    """make_fx records max_norm_ as its custom op (the kernel's write through a numpy view was
    lost from the graph: a replay left the weight unconstrained); the replay gives eager's bits.
    Under FakeTensorMode with a real weight the op runs its fake function: the weight is untouched."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    def constrain(w):
        w = w.clone()
        fastdrop.max_norm_(w, 1.5, dim=(1, 2))
        return w
    w = torch.randn(6, 4, 3) * 2
    graph = make_fx(constrain, tracing_mode=tracing_mode)(w)
    assert "fastdrop.max_norm_.default" in [str(n.target) for n in graph.graph.nodes]
    other = torch.randn(6, 4, 3) * 2
    assert torch.equal(graph(other), constrain(other))
    before = w.clone()
    with FakeTensorMode(allow_non_fake_inputs=True):
        fastdrop.max_norm_(w, 1.5)
    assert torch.equal(w, before)


def test_max_norm_under_jit_trace_is_recorded():
    """torch.jit.trace records torch's ops only: max_norm_ wrote through a numpy view, so the trace
    held nothing of it and a replay left the weight unconstrained (silently; torch only warned about
    a numpy conversion). It records the custom op now, replays eager's bits on another weight, and
    raises no TracerWarning of fastdrop's shape checks."""
    import warnings

    def constrain(w):
        w = w.clone()
        fastdrop.max_norm_(w, 1.5, dim=(1, 2))
        return w
    w = torch.randn(6, 4, 3) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(constrain, (w,), check_trace=False)
    assert "fastdrop::max_norm_" in [n.kind() for n in traced.graph.nodes()]
    other = torch.randn(5, 4, 3) * 2
    assert torch.equal(traced(other), constrain(other))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_max_norm_compiles_to_eager_bits(backend):
    """Inside torch.compile(fullgraph=True) a tensor's max_norm_ is the custom op fastdrop::max_norm_
    (the kernels write through a numpy view Dynamo cannot trace): same bits as eager, in place on the
    parameter, for float and half types and norms over rows, columns and several dims; also in a
    compiled training step after optimizer.step()."""
    for dtype, dim in [(torch.float32, 1), (torch.float64, 0), (torch.bfloat16, (1, 2)), (torch.float16, 2)]:
        torch._dynamo.reset()  # one lambda, new closures: no recompile limit
        w = torch.nn.Parameter((torch.rand(8, 4, 3) * 3).to(dtype))
        expected = fastdrop.max_norm_(w.detach().clone(), 1.0, dim=dim)
        out = torch.compile(lambda t: fastdrop.max_norm_(t, 1.0, dim=dim), fullgraph=True, backend=backend)(w)
        assert out is w and torch.equal(w.detach(), expected), (dtype, dim)
    torch._dynamo.reset()
    torch.manual_seed(0)
    models = [torch.nn.Linear(6, 5) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    x = torch.randn(4, 6)

    def step(model, opt):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        fastdrop.max_norm_(model.weight, 0.5)

    compiled = torch.compile(step, backend=backend)
    for _ in range(3):
        compiled(models[0], opts[0])
        step(models[1], opts[1])
    assert torch.equal(models[0].weight, models[1].weight)
    assert float(models[0].weight.detach().norm(dim=1).max()) <= 0.5 + 1e-6


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_max_norm_takes_a_changing_max_value(backend):
    """A max_value that changes between calls becomes a symbolic float under torch.compile (and is
    one from the start with dynamic=True): checked with comparisons, eager's bits, and no more
    graphs than torch's renorm_ takes for the same values. The op's max_value is a Scalar, as
    renorm_'s maxnorm: as a `float` argument Dynamo specialized it, one graph per value (5 against
    renorm_'s 2, and 1 with dynamic=True, on the eager backend). (AOTAutograd specializes a float
    that reaches any op but a tensor op's Scalar, renorm_'s as fastdrop's: a graph per value for
    both there.)"""
    from torch._dynamo.utils import counters

    def graphs(fn, dynamic):
        torch._dynamo.reset()
        counters.clear()
        f = torch.compile(fn, fullgraph=True, backend=backend, dynamic=dynamic)
        for c in (1.0, 0.5, 2, 0.25, 0.3):
            w = torch.randn(4, 5) * 3
            expected = fn(w.clone(), c)
            assert torch.equal(f(w, c), expected), (dynamic, c)
        return counters["stats"]["unique_graphs"]
    for dynamic in (None, True):
        ours = graphs(lambda t, c: fastdrop.max_norm_(t, c, dim=1), dynamic)
        torchs = graphs(lambda t, c: t.renorm_(2, 0, c), dynamic)
        assert ours <= torchs, (dynamic, ours, torchs)


def test_compiled_max_norm_refuses_what_eager_refuses_untouched():
    """The op checks the real weight when it runs: an overlapping view or an inference tensor that
    only the running graph sees (the eager backend runs the op on it directly) is refused as in
    eager, memory untouched; and the op called directly (as an exported graph calls it) validates
    its arguments."""
    torch._dynamo.reset()
    f = torch.compile(lambda t: fastdrop.max_norm_(t, 1.0), backend="eager")
    base = torch.arange(1.0, 7.0)
    with pytest.raises(RuntimeError, match="more than one element"):
        f(base.as_strided((4, 3), (1, 1)))
    assert torch.equal(base, torch.arange(1.0, 7.0))
    with torch.inference_mode():
        w = torch.full((3, 4), 5.0)
    with pytest.raises(RuntimeError, match="inference tensor"):
        f(w)
    assert (w == 5.0).all()
    assert torch.is_grad_enabled()  # (a no_grad block around the op stayed off after such a refusal)
    fastdrop.register_torch_ops()
    w = torch.tensor([[3.0, 4.0]])
    for args, exc in [((-1.0, [1], 1e-7), ValueError), ((1.0, [], 1e-7), ValueError),
                      ((1.0, [2], 1e-7), ValueError), ((1.0, [1], -1.0), ValueError)]:
        with pytest.raises(exc):
            torch.ops.fastdrop.max_norm_(w, *args)
    assert torch.equal(w, torch.tensor([[3.0, 4.0]]))


def test_eager_writes_are_checked_while_another_thread_compiles(monkeypatch):
    """torch.compiler.is_compiling() is the whole process's flag: while a graph compiles in another
    thread it is True here too. Eager calls on real tensors are still checked (in place on an
    overlapping view, out= sharing x's memory, max_norm_ of an overlapping view)."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    base = torch.arange(1.0, 7.0)
    with pytest.raises(RuntimeError, match="more than one element"):
        fastdrop.dropout(base.as_strided((4, 3), (1, 1)), 0.5, inplace=True, seed=1)
    with pytest.raises(RuntimeError, match="more than one element"):
        fastdrop.max_norm_(base.as_strided((4, 3), (1, 1)), 1.0)
    assert torch.equal(base, torch.arange(1.0, 7.0))
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="shares memory"):
        fastdrop.dropout(x, 0.5, seed=1, out=x[:, :])


def test_max_norm_of_numpy_inside_compile():
    """numpy weights run eagerly where Dynamo may fall back (no fullgraph), and are refused with the
    reason under fullgraph (Dynamo's own "ndarray attribute access" message before)."""
    w = np.random.default_rng(0).random((6, 4), dtype=np.float32) * 3
    expected = fastdrop.max_norm_(w.copy(), 1.0)
    torch._dynamo.reset()
    out = torch.compile(lambda a: fastdrop.max_norm_(a, 1.0), backend="aot_eager")(w)
    assert out is w and np.array_equal(w, expected)
    with pytest.raises(Exception, match=r"take torch tensors, got numpy\.ndarray"):
        torch.compile(lambda a: fastdrop.max_norm_(a, 1.0), fullgraph=True, backend="aot_eager")(w.copy())


def test_max_norm_hook_constrains_every_step():
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    handle = fastdrop.max_norm_hook(opt, [model[0], model[2]], max_value=1.0)
    x, t = torch.randn(64, 8), torch.randn(64, 4)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), t).backward()
        opt.step()
        for layer in (model[0], model[2]):
            assert (layer.weight.norm(dim=1) <= 1.0 + 1e-5).all()
    handle.remove()
    with torch.no_grad():
        model[0].weight.mul_(10)
    opt.step()
    assert (model[0].weight.norm(dim=1) > 1.0).any()
    with pytest.raises(ValueError, match="out of range"):
        fastdrop.max_norm_hook(opt, model[0], 1.0, dim=3)
    with pytest.raises(TypeError, match="no weight"):
        fastdrop.max_norm_hook(opt, [model[1]], 1.0)
    # a refused call changes no weight: every argument is checked before the first projection
    with torch.no_grad():
        model[0].weight.mul_(10)
    before = model[0].weight.clone()
    bad = [(opt, [model[0], torch.ones(3, 3, dtype=torch.int32)]), (model[0], [model[0]]), (None, [model[0]])]
    for optimizer, targets in bad:
        with pytest.raises(TypeError):
            fastdrop.max_norm_hook(optimizer, targets, 1.0)
        assert torch.equal(model[0].weight, before)
    assert not opt._optimizer_step_post_hooks


def test_max_norm_hook_refuses_weights_made_from_other_parameters():
    """A parametrized weight (weight_norm, spectral_norm) or a pruned one is made anew from other
    parameters at each forward: projecting the copy the hook found at install time changed
    nothing (the norms stayed at 6.1, 4.6, 2.3 for max_value 1), silently. Refused, as is a tensor
    computed by autograd; nothing is projected and no hook is left."""
    from torch.nn.utils import parametrizations, prune
    made = [parametrizations.weight_norm(torch.nn.Linear(4, 3)),
            parametrizations.spectral_norm(torch.nn.Linear(4, 3)),
            prune.random_unstructured(torch.nn.Linear(4, 3), "weight", amount=0.5)]
    for layer in made:
        opt = torch.optim.SGD(layer.parameters(), lr=0.01)
        before = [p.detach().clone() for p in layer.parameters()]
        with pytest.raises(TypeError, match="computed from others"):
            fastdrop.max_norm_hook(opt, layer, max_value=1.0)
        assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), before))
        assert not opt._optimizer_step_post_hooks
    w = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(TypeError, match="computed by autograd"):
        fastdrop.max_norm_hook(torch.optim.SGD([w], lr=0.1), w * 2, max_value=1.0)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(dim=None), TypeError, "dim must be an int"), (dict(dim=1.0), TypeError, "dim must be an int"),
    (dict(dim=True), TypeError, "dim must be an int"), (dict(dim=(0, 1.5)), TypeError, "dim must be an int"),
    (dict(dim=2), ValueError, "out of range"), (dict(eps=None), TypeError, "eps"),
    (dict(eps=-1.0), ValueError, "eps"), (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
])
def test_max_norm_argument_errors_name_the_argument(kw, exc, match):
    w = np.ones((3, 3), np.float32)
    with pytest.raises(exc, match=match):
        fastdrop.max_norm_(w, 1.0, **kw)
    assert (w == 1).all()


# ----------------------------------------------------------------------------- dropout_matmul
def ref_dropout_matmul(a, b, keep, scale):
    return (a * torch.as_tensor(keep, dtype=a.dtype) * scale) @ b


MATMUL_SHAPES = [((3, 5), (5, 4)), ((2, 3, 7), (2, 7, 9)), ((2, 2, 33, 17), (2, 2, 17, 5)),
                 ((4, 1, 1023), (1023, 3)), ((6, 13), (3, 13, 2)), ((1, 1), (1, 1)),
                 # torch.matmul's broadcasting: size-1 batch dims on either side, unequal ranks
                 ((2, 1, 3, 7), (1, 4, 7, 5)), ((1, 3, 7), (2, 1, 7, 5)), ((3, 2, 6, 4), (2, 4, 3))]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
def test_dropout_matmul_forward(dtype, tol, shapes):
    a, b = torch.randn(shapes[0], dtype=dtype), torch.randn(shapes[1], dtype=dtype)
    keep = fastdrop.dropout_mask(a.shape, 0.3, 21, 5)
    out = fastdrop.dropout_matmul(a, b, 0.3, seed=21, offset=5)
    torch.testing.assert_close(out, ref_dropout_matmul(a, b, keep, 1 / 0.7), atol=tol, rtol=tol)


@pytest.mark.parametrize("shapes", [((2, 3, 7), (2, 7, 4)), ((2, 3, 7), (7, 4)), ((3, 7), (2, 7, 4)),
                                    ((2, 1, 3, 7), (1, 3, 7, 4)), ((1, 3, 7), (2, 2, 7, 4))])
def test_dropout_matmul_gradcheck(shapes):
    a = torch.randn(shapes[0], dtype=torch.float64, requires_grad=True)
    b = torch.randn(shapes[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fastdrop.dropout_matmul(a, b, 0.4, seed=3), (a, b))


@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (3, 1, 5)), ((2, 3, 4, 5), (1, 1, 4, 1)), ((3, 4), (4,)),
                                    ((2, 3, 4), (2, 3, 4)), ((2, 0, 4), (1, 4))])
def test_sum_to_reduces_as_torch_sum_to_size(shapes):
    """The backends' sum_to (a broadcast operand's gradient) over numpy and torch: extra leading
    dims and size-1 dims, as torch's sum_to_size."""
    big, small = shapes
    t = torch.randn(big, dtype=torch.float64)
    expected = t.sum_to_size(small)
    torch.testing.assert_close(_core._sum_to(t, small), expected, rtol=1e-12, atol=1e-12)
    got = _core._sum_to(t.numpy(), small)
    assert got.shape == tuple(small)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


def test_dropout_matmul_saves_inputs_only():
    a = torch.randn(4, 16, 16, requires_grad=True)
    b = torch.randn(4, 16, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fastdrop.dropout_matmul(a, b, 0.5, seed=1)
    assert sum(t.numel() for t in saved) == a.numel() + b.numel()
    assert all(t.dtype != torch.bool for t in saved)
    out.sum().backward()
    keep = torch.as_tensor(fastdrop.dropout_mask(a.shape, 0.5, 1))
    torch.testing.assert_close(a.grad, keep * 2.0 * b.sum(-1)[:, None, :].expand_as(a))


def test_dropout_matmul_eval_classic_numpy_and_edges():
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    torch.testing.assert_close(fastdrop.dropout_matmul(a, b, 0.3, training=False), a @ b)
    torch.testing.assert_close(fastdrop.dropout_matmul(a, b, 0.3, training=False, mode="classic"), 0.7 * (a @ b))
    keep = fastdrop.dropout_mask(a.shape, 0.3, 2)
    torch.testing.assert_close(fastdrop.dropout_matmul(a, b, 0.3, seed=2, mode="classic"),
                               ref_dropout_matmul(a, b, keep, 1.0))
    assert (fastdrop.dropout_matmul(a, b, 1.0, seed=2) == 0).all()
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    out = fastdrop.dropout_matmul(an, bn, 0.3, seed=2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, (an * keep / 0.7) @ bn, rtol=1e-12)
    assert fastdrop.dropout_matmul(torch.randn(2, 0, 3), torch.randn(2, 3, 4), 0.5, seed=0).shape == (2, 0, 4)
    assert (fastdrop.dropout_matmul(torch.randn(2, 0), torch.randn(0, 4), 0.5, seed=0) == 0).all()


def test_dropout_matmul_errors():
    with pytest.raises(ValueError, match="cannot be multiplied"):
        fastdrop.dropout_matmul(torch.randn(3, 4), torch.randn(5, 2), 0.1)
    with pytest.raises(ValueError, match="batch dims"):
        fastdrop.dropout_matmul(torch.randn(2, 3, 4), torch.randn(3, 4, 2), 0.1)
    with pytest.raises(ValueError, match=r"cannot be broadcast together \(2 against 3\)"):
        fastdrop.dropout_matmul(torch.randn(2, 1, 3, 4), torch.randn(3, 3, 4, 2), 0.1)
    with pytest.raises(TypeError, match="same dtype"):
        fastdrop.dropout_matmul(torch.randn(3, 4), torch.randn(4, 2, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="at least 2 dims"):
        fastdrop.dropout_matmul(torch.randn(4), torch.randn(4, 2), 0.1)


def test_attention_use():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    attn = torch.softmax(q @ k.mT / 8 ** 0.5, -1)
    keep = fastdrop.dropout_mask(attn.shape, 0.1, 5)
    torch.testing.assert_close(fastdrop.dropout_matmul(attn, v, 0.1, seed=5),
                               ref_dropout_matmul(attn, v, keep, 1 / 0.9), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- MC dropout
def mlp(p=0.5, bn=False):
    layers = [torch.nn.Linear(6, 16)] + ([torch.nn.BatchNorm1d(16)] if bn else []) + \
        [torch.nn.ReLU(), fastdrop.nn.Dropout(p), torch.nn.Linear(16, 16), torch.nn.ReLU(),
         fastdrop.nn.Dropout(p), torch.nn.Linear(16, 3)]
    return torch.nn.Sequential(*layers).double()


def manual_mc(model, x, samples, seed, offset=0):
    """The contract written out: sample t, dropout call k -> dropout_mask(shape, p, seed, offset + t*2^32 + k)."""
    outs = []
    with torch.no_grad():
        for t in range(samples):
            h, k = x, 0
            for layer in model:
                if isinstance(layer, fastdrop.nn.Dropout):
                    keep = fastdrop.dropout_mask(h.shape, layer.p, seed, offset + t * 2 ** 32 + k)
                    h = h * torch.as_tensor(keep, dtype=h.dtype) / (1 - layer.p)
                    k += 1
                else:
                    h = layer(h)
            outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("chunk, fused", [(None, True), (1, True), (3, False), (32, False)])
def test_mc_predict_follows_the_mask_contract(chunk, fused):
    model = mlp().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    ys = manual_mc(model, x, 7, seed=13, offset=2)
    r = fastdrop.mc_predict(model, x, samples=7, seed=13, offset=2, chunk=chunk, fused=fused)
    torch.testing.assert_close(r.mean, ys.mean(0))
    torch.testing.assert_close(r.var, ys.var(0))
    assert r.entropy is None and r.mutual_info is None


def test_mc_predict_logits_statistics():
    model = mlp().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    probs = torch.softmax(manual_mc(model, x, 9, seed=1), -1)
    r = fastdrop.mc_predict(model, x, samples=9, seed=1, logits=True, chunk=4)
    mean = probs.mean(0)
    entropy = -(mean * mean.log()).sum(-1)
    expected_entropy = -(probs * probs.log()).sum(-1).mean(0)
    torch.testing.assert_close(r.mean, mean)
    torch.testing.assert_close(r.var, probs.var(0))
    torch.testing.assert_close(r.entropy, entropy)
    torch.testing.assert_close(r.mutual_info, entropy - expected_entropy)
    assert (r.mutual_info >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mc_predict_fused_head_matches_unfused(dtype):
    head = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), fastdrop.nn.Dropout(0.3),
                               torch.nn.Linear(40, 5)).to(dtype).eval()
    x = torch.randn(37, 6, dtype=dtype)
    a = fastdrop.mc_predict(head, x, samples=11, seed=4, fused=True)
    b = fastdrop.mc_predict(head, x, samples=11, seed=4, fused=False, chunk=1)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for u, v in zip(a[:2], b[:2]):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def test_mc_predict_dropout_linear_head():
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(),
                                fastdrop.nn.DropoutLinear(12, 4, p=0.4)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    a = fastdrop.mc_predict(model, x, samples=6, seed=8)
    b = fastdrop.mc_predict(model, x, samples=6, seed=8, fused=False, chunk=1)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.var, b.var)
    h = model[1](model[0](x))
    ys = torch.stack([torch.nn.functional.linear(
        h * torch.as_tensor(fastdrop.dropout_mask(h.shape, 0.4, 8, t * 2 ** 32)) / 0.6,
        model[2].weight, model[2].bias) for t in range(6)])
    torch.testing.assert_close(a.mean, ys.mean(0))


def test_mc_predict_restores_state_and_leaves_batchnorm_alone():
    model = mlp(bn=True)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 6, dtype=torch.float64))
    model.eval()
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    x = torch.randn(8, 6, dtype=torch.float64)
    r = fastdrop.mc_predict(model, x, samples=5, seed=0)
    assert r.var.sum() > 0  # dropout was active
    assert not any(m.training for m in model.modules())
    assert "forward" not in model[3].__dict__
    torch.testing.assert_close((bn.running_mean, bn.running_var, int(bn.num_batches_tracked)), stats)
    torch.testing.assert_close(model(x), model(x))  # back to deterministic eval
    # A model left in training mode: BatchNorm would see the batch, so samples are not batched.
    model.train()
    model[3].eval()
    before = bn.running_mean.clone()
    fastdrop.mc_predict(model, x, samples=3, seed=0)
    assert model[3].training is False and model[1].training is True
    # (README: its other modules run as they are, so BatchNorm in training mode updates its stats)
    assert not torch.equal(bn.running_mean, before)
    with pytest.raises(ValueError, match="eval mode"):
        fastdrop.mc_predict(model, x, samples=3, seed=0, chunk=2)


def test_mc_predict_spatial_and_drop_path_modules():
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), fastdrop.nn.Dropout1d(0.5), torch.nn.Flatten(),
                                DropPath(0.3), torch.nn.Linear(4 * 6, 2)).double().eval()
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    a = fastdrop.mc_predict(model, x, samples=6, seed=2, chunk=1)
    b = fastdrop.mc_predict(model, x, samples=6, seed=2, chunk=6)
    torch.testing.assert_close(a, b)
    assert a.var.sum() > 0


def test_mc_predict_one_sample_and_errors():
    model = mlp().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    r = fastdrop.mc_predict(model, x, samples=1, seed=0)
    assert (r.var == 0).all()
    with pytest.raises(ValueError, match="samples"):
        fastdrop.mc_predict(model, x, samples=0)
    with pytest.raises(TypeError, match="nn.Module"):
        fastdrop.mc_predict(lambda t: t, x)
    with pytest.raises(ValueError, match="chunk"):
        fastdrop.mc_predict(model, x, chunk=0)
    with pytest.raises(ValueError, match="offset"):
        fastdrop.mc_predict(model, x, samples=4, offset=2 ** 64 - 10)


def test_mc_predict_seed_none_uses_torch_generator():
    model = mlp().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.manual_seed(5)
    a = fastdrop.mc_predict(model, x, samples=4)
    torch.manual_seed(5)
    b = fastdrop.mc_predict(model, x, samples=4)
    torch.testing.assert_close(a, b)


class TwoCalls(torch.nn.Module):
    """Not a Sequential, and one dropout module called twice per forward (calls k = 0 and 1)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.drop = torch.nn.Linear(6, 9), torch.nn.Linear(9, 4), fastdrop.nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(self.l2(self.drop(torch.relu(self.l1(x)))))


@pytest.mark.parametrize("chunk", [1, 4])
def test_mc_predict_custom_module_counts_calls(chunk):
    model = TwoCalls().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    outs = []
    for t in range(5):
        h = torch.relu(model.l1(x))
        h = h * torch.as_tensor(fastdrop.dropout_mask(h.shape, 0.3, 6, t * 2 ** 32)) / 0.7
        h = model.l2(h)
        outs.append(h * torch.as_tensor(fastdrop.dropout_mask(h.shape, 0.3, 6, t * 2 ** 32 + 1)) / 0.7)
    ys = torch.stack(outs)
    r = fastdrop.mc_predict(model, x, samples=5, seed=6, chunk=chunk)
    torch.testing.assert_close(r.mean, ys.mean(0))
    torch.testing.assert_close(r.var, ys.var(0))


@pytest.mark.parametrize("broadcast", [False, True])
def test_mc_sample_kernels_parallel_and_serial_follow_the_contract(broadcast):
    from fastdrop.kernels import mc_dropout_cpu
    from fastdrop.mask import kernel_rng_args
    T, L, p, seed = 3, 5000, 0.3, 77
    offsets = [9, 2 ** 32 + 1, 2 ** 40 + 3]
    x = np.random.randn(1 if broadcast else T, L).astype(np.float32)
    xs = np.broadcast_to(x, (T, L)) if broadcast else x
    lo = np.array([o & 0xFFFFFFFF for o in offsets], np.uint64)
    hi = np.array([o >> 32 for o in offsets], np.uint64)
    key_lo, key_hi, _, _, thr = kernel_rng_args(seed, 0, p)
    expected = np.stack([np.where(fastdrop.dropout_mask((L,), p, seed, o), xs[t] * np.float32(1 / 0.7), 0)
                         for t, o in enumerate(offsets)])
    for kern in (mc_dropout_cpu.dropout_samples, mc_dropout_cpu.dropout_samples_serial):
        out = np.empty((T, L), np.float32)
        kern(xs, out, lo, hi, key_lo, key_hi, thr, np.float32(1 / 0.7))
        np.testing.assert_array_equal(out, expected)


def test_max_norm_refuses_a_weight_without_memory():
    """A weight whose storage FSDP freed (or a user cut short): ValueError, not a write past it."""
    w = torch.randn(5, 6)
    w.untyped_storage().resize_(8)
    with pytest.raises(ValueError, match="weight has no memory for its elements"):
        fastdrop.max_norm_(w, 1.0)
    compiled = torch.compile(lambda t: fastdrop.max_norm_(t, 1.0), backend="eager")  # the custom op's body
    compiled(torch.randn(5, 6))
    with pytest.raises(ValueError, match="weight has no memory for its elements"):
        compiled(w)


@pytest.mark.parametrize("ndim, max_value, dim, eps", [(2, 3.0, 1, 1e-7), (2, 0.5, -1, 0.0), (3, 1e300, 0, 1e-3),
                                                       (1, 2.0, 0, 1e-7), (4, 7.5, -3, 2.5)])
def test_max_norm_fast_argument_path_equals_the_general_one(ndim, max_value, dim, eps):
    # plain float / int arguments take a shortcut; numpy scalars the general rule: the same result
    from fastdrop.max_norm import _check_max_norm_args
    fast = _check_max_norm_args(ndim, max_value, dim, eps)
    general = _check_max_norm_args(ndim, np.float64(max_value), np.int64(dim), np.float64(eps))
    assert fast == general and all(type(a) is type(b) for a, b in zip(fast, general))
    assert type(fast[0]) is float and type(fast[2]) is float and fast[1] == [dim % ndim]


@pytest.mark.parametrize("max_value, dim, eps", [(float("nan"), 1, 1e-7), (float("inf"), 1, 1e-7), (-1.0, 1, 1e-7),
                                                 (0.0, 1, 1e-7), (1.0, 2, 1e-7), (1.0, -3, 1e-7), (1.0, 1, -1e-7),
                                                 (1.0, 1, float("inf")), (1.0, 1, float("nan"))])
def test_max_norm_plain_float_arguments_out_of_range_are_refused(max_value, dim, eps):
    w = torch.randn(4, 3)
    before = w.clone()
    with pytest.raises(ValueError):
        fastdrop.max_norm_(w, max_value, dim=dim, eps=eps)
    assert torch.equal(w, before)
